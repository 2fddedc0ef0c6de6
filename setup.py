"""The compiled part of layoutkit, built when the package is installed (pyproject.toml has
everything else): the allocator replay's engine (layoutkit/window/_replay.c). layoutkit
never compiles it at run time; without it the replay runs its numpy twin, slower."""

from setuptools import Extension, setup

setup(ext_modules=[Extension("layoutkit.window._replay", ["layoutkit/window/_replay.c"],
                             depends=["layoutkit/window/_replay_rng.h"],
                             extra_compile_args=["-O2", "-std=c11"])])
