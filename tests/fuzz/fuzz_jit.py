"""Fuzz harness: the JIT detectors added for V8, PHP's opcache and OpenResty's LuaJIT.

One input is one file: :func:`~layoutkit.window.v8.detect_v8` (the blob from its symbols,
or from the code of a stripped V8's exported accessors; Node's version string),
:func:`~layoutkit.window.opcache.php_generation` and the opcache placement
(:func:`~layoutkit.window.opcache.predict`), :func:`~layoutkit.window.openresty.
openresty_generation`, then ``inspect`` under each of those profiles with its text and
JSON renderings. Seeds: small ELF files gcc builds from tests/fuzz/seeds/*.c (V8's
symbols and version string, a stripped V8 library, PHP, opcache.so, OpenResty), whose
symbol values and sizes the mutations then point outside the file.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from dataclasses import replace
from functools import cache
from pathlib import Path

from layoutkit.commands.inspect import inspect_binary
from layoutkit.core.scenario import OpcacheSize, Scenario
from layoutkit.elf import ElfReader
from layoutkit.output import document
from layoutkit.output.text import inspection_lines
from layoutkit.window import opcache, openresty, v8
from tests.fuzz.harness import FEW_RUNS, check, scratch_file

NAME = "jit"
SOURCES = Path(__file__).resolve().parent / "seeds"
# Executables with no libc (small seeds); libraries as V8, opcache and OpenResty ship.
_EXE = ("-nostdlib", "-static", "-no-pie")
_LIB = ("-nostdlib", "-shared", "-fPIC", "-s")
RECIPES = {"v8": _EXE, "php": _EXE, "v8_stripped": _LIB, "opcache": _LIB,
           "openresty": _LIB}
# A few replay runs (FEW_RUNS): the replay's figures are not what this harness checks.
SCENARIOS = tuple(replace(FEW_RUNS, **change) for change in (
    {},
    {"jit": "v8", "code_range": 3 << 20},
    {"jit": "php-opcache", "opcache": OpcacheSize(128 << 20, 64 << 20)},
    {"jit": "php-opcache", "opcache": OpcacheSize(0, 4 << 30)},
    {"jit": "luajit-openresty"},
))


@cache
def built() -> dict[str, Path]:
    """The seed ELF files, built once per process by gcc into a private folder."""
    gcc = shutil.which("gcc")
    if gcc is None:
        raise RuntimeError("the jit harness builds its seeds with gcc, which is not on PATH")
    out = Path(tempfile.mkdtemp(prefix="layoutkit-fuzz-jit-"))
    found = {}
    for name, flags in RECIPES.items():
        target = out / name
        subprocess.run([gcc, "-O2", *flags, "-Wl,--build-id=none", "-Wl,-z,noseparate-code",
                        "-o", str(target), str(SOURCES / f"{name}.c")], check=True)
        found[name] = target
    return found


def seeds() -> dict[str, bytes]:
    return {name: path.read_bytes() for name, path in built().items()}


def detect(path: str) -> None:
    with ElfReader(path) as reader:
        v8.detect_v8(reader)
        opcache.php_generation(reader)
        openresty.openresty_generation(reader)
        for size in (OpcacheSize(128 << 20, 64 << 20), OpcacheSize(0, 1 << 40)):
            opcache.predict(reader, opcache.PROFILE, 0, size, None)
            opcache.predict(reader, opcache.PROFILE, 0x555555554000, size, 0x555555600000)


def inspect(path: str, scenario: Scenario) -> None:
    result = inspect_binary(path, scenario)
    "\n".join(inspection_lines(result))
    document.dumps(document.inspection_json(result))


def one_input(data: bytes) -> None:
    path = scratch_file(NAME)
    path.write_bytes(data)
    check(lambda: detect(str(path)))
    for scenario in SCENARIOS:
        check(lambda s=scenario: inspect(str(path), s))  # type: ignore[misc]
