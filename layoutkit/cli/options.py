"""The options every command shares, declared once: ``--format``, ``--svg``, ``--jit``,
the scenario options, the exit-code epilog, and the two wrappers that print a result or
turn an error into one line and its exit code."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

import click

from layoutkit.boundary import internal
from layoutkit.config import KERNEL_KEYS, SAMPLING_KEYS, SCENARIO_KEYS
from layoutkit.errors import (
    EXIT_FINDINGS,
    EXIT_INPUT,
    EXIT_INTERNAL,
    EXIT_PROBE,
    EXIT_USAGE,
    LayoutkitError,
)

F = TypeVar("F", bound=Callable[..., Any])

# Kept in step with window/profiles.py PROFILES by tests/test_cli.py (importing the
# profiles here would load the whole window model for `layoutkit --help`).
PROFILE_NAMES = ("generic", "luajit-2017", "luajit-2.1", "luajit-2025", "luajit-openresty",
                 "php-opcache", "v8")
LINKER_NAMES = ("bfd", "gold", "lld", "mold")

EXIT_CODES = f"""Exit codes: 0 ok; {EXIT_FINDINGS} a check failed or no advice is possible;
{EXIT_USAGE} usage error; {EXIT_INPUT} an input could not be analysed; {EXIT_PROBE} the
native probe is unavailable or failed; {EXIT_INTERNAL} internal error (a bug in layoutkit:
please report it; --debug shows the traceback)."""


def output_options(func: F) -> F:
    """``--format``, shared by every command."""
    return click.option(
        "--format", "fmt", type=click.Choice(["text", "json"]), default="text",
        show_default=True, help="Output format (JSON carries a schema version).",
    )(func)


def svg_option(func: F) -> F:
    return click.option("--svg", "svg_path", metavar="FILE", default=None,
                        help="Also draw the address space around the anchor as SVG.")(func)


def jit_option(default: str | None = None) -> Callable[[F], F]:
    """``--jit``: the allocator profile (declared once, here)."""
    text = ("JIT allocator profile (default: detected from the binary)." if default is None
            else "JIT allocator profile: its window and, with --threads, its probe sequence.")
    return click.option("--jit", "jit", type=click.Choice(PROFILE_NAMES), default=default,
                        show_default=default is not None, help=text)


def scenario_options(*, kernel: bool = True) -> Callable[[F], F]:
    """The options that make a :class:`Scenario`, declared once for every command.

    The command receives them as one dict, ``scenario_args`` (None: not given), and
    builds the scenario with :func:`layoutkit.config.scenario_from` (``check`` merges its
    configuration file under them). ``kernel=False`` leaves out the kernel choice and the
    replay's sampling (``verify`` measures the runner's own kernel, with runs of its own).
    """
    options = [
        jit_option(),
        click.option("--form", metavar="NAME", default=None,
                     help="Branch form for --jit generic (default: the direct branch)."),
        click.option("--heap", metavar="SIZE", default=None,
                     help="How far the brk heap grows beyond its start (default 64M: "
                          "one glibc arena, HEAP_MAX_SIZE)."),
        click.option("--states", type=click.IntRange(min=1), default=None,
                     help="How many JIT states (threads with their own lua_State) compete "
                          "(default 1)."),
        click.option("--mcode", metavar="SIZE", default=None,
                     help="Code per JIT state (default: the profile's maxmcode, 512K "
                          "for LuaJIT 2.1)."),
        click.option("--opcache-size", "opcache_size", metavar="MEM+JIT", default=None,
                     help="php-opcache: opcache.memory_consumption + jit_buffer_size, "
                          "e.g. 128M+64M, or one SIZE for the whole segment with the JIT "
                          "on (default PHP 8.2's: 128M+0, the JIT off)."),
        click.option("--code-range", "code_range", metavar="SIZE", default=None,
                     help="V8's code range for --jit v8 (default: the version's own, "
                          "512M for V8 11.3 on x86-64)."),
    ]
    if kernel:
        options += [
            click.option("--va-bits", "va_bits", type=int, default=None,
                         help="User VA size of the kernel (arm64: 39/42/47/48/52; "
                              "x86-64: 47/57)."),
            click.option("--mmap-min-addr", "mmap_min_addr", metavar="ADDR", default=None,
                         help="vm.mmap_min_addr (default: the kernel's, e.g. 0x10000 on "
                              "Debian's x86-64 kernels)."),
            click.option("--kernel", "kernel", metavar="RELEASE", default=None,
                         help="Judge under this kernel release's rules, e.g. 6.1.0-27-arm64 "
                              "(default: this machine's kernel when the arch matches, else "
                              "the arch's defaults)."),
            click.option("--kernel-file", "kernel_file", metavar="FILE", default=None,
                         help="Judge under a host's kernel as `layoutkit kernel --capture` "
                              "wrote it."),
            click.option("--aslr", "aslr", metavar="on|off", default=None,
                         help="Replay with the layout randomised or fixed (default: as the "
                              "kernel's randomize_va_space has it)."),
            click.option("--runs", "runs", type=int, default=None,
                         help="Replay runs, each with its own layout (default 300)."),
            click.option("--seed", "seed", type=int, default=None,
                         help="Seed of the replay (default 1; printed in every report)."),
            click.option("--retries", "retries", type=int, default=None,
                         help="Times a state asks again after a trace abort (default: the "
                              "replay's, stated in the report)."),
        ]
    keys = SCENARIO_KEYS + (KERNEL_KEYS + SAMPLING_KEYS if kernel else ())

    def decorate(func: F) -> F:
        @functools.wraps(func)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            given = {key: kwargs.pop(key, None) for key in keys}
            return func(*args, scenario_args=given, **kwargs)

        for option in reversed(options):
            wrapper = option(wrapper)
        return wrapper  # type: ignore[return-value]

    return decorate


def show(fmt: str, text: Callable[[], Iterable[str]], doc: Callable[[], dict[str, Any]],
          exit_code: int = 0) -> None:
    """Print the result in the chosen format, then exit with the result's own code."""
    if fmt == "json":
        from layoutkit.output.document import dumps

        click.echo(dumps(doc()))
    else:
        click.echo("\n".join(text()))
    if exit_code:
        sys.exit(exit_code)


def handled(func: F) -> F:
    """Turn :class:`LayoutkitError` into one line on stderr and its exit code (with
    ``--format json`` also an error document on stdout, unless it is a usage error);
    anything else is a bug in layoutkit (the internal boundary): one line, exit 5."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        ctx = click.get_current_context()
        try:
            with internal(f"layoutkit {ctx.info_name}"):
                return func(*args, **kwargs)
        except LayoutkitError as err:
            if ctx.find_root().params.get("debug"):
                raise
            if kwargs.get("fmt") == "json" and err.exit_code != EXIT_USAGE:
                # JSON on every exit but a usage error: the failure is a document too.
                from layoutkit.output.document import dumps, error_json

                click.echo(dumps(error_json(ctx.info_name or "layoutkit", err)))
            click.echo(f"layoutkit: {err}", err=True)
            ctx.exit(err.exit_code)

    return wrapper  # type: ignore[return-value]
