"""The command line: parse arguments, call the library, hand the result to a renderer.

The only module that imports click.
"""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

import click

from . import arches, report
from .errors import EXIT_FINDINGS, EXIT_INPUT, EXIT_PROBE, EXIT_USAGE, LayoutkitError
from .inspection import inspect_binary
from .ranges import REACH, forms
from .render import forms_lines, inspection_lines
from .samples import default_binary
from .units import parse_address

F = TypeVar("F", bound=Callable[..., Any])

EXIT_CODES = f"""Exit codes: 0 ok; {EXIT_FINDINGS} a check failed or no advice is possible;
{EXIT_USAGE} usage error; {EXIT_INPUT} an input could not be analysed; {EXIT_PROBE} the
native probe is unavailable or failed."""


def output_options(func: F) -> F:
    """``--format``, shared by every command."""
    return click.option(
        "--format", "fmt", type=click.Choice(["text", "json"]), default="text",
        show_default=True, help="Output format (JSON carries a schema version).",
    )(func)


def kernel_options(func: F) -> F:
    """The kernel configuration a layout is judged under."""
    func = click.option(
        "--mmap-min-addr", "mmap_min_addr", metavar="ADDR", default=None,
        help="vm.mmap_min_addr (default per arch, e.g. 0x10000 on x86-64).",
    )(func)
    return click.option(
        "--va-bits", "va_bits", type=int, default=None,
        help="User VA size of the kernel (arm64: 39/42/47/48/52; x86-64: 47/57).",
    )(func)


def _emit(lines: Iterable[str]) -> None:
    click.echo("\n".join(lines))


def _handled(func: F) -> F:
    """Turn :class:`LayoutkitError` into one line on stderr and its exit code."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        ctx = click.get_current_context()
        try:
            return func(*args, **kwargs)
        except LayoutkitError as err:
            if ctx.find_root().params.get("debug"):
                raise
            click.echo(f"layoutkit: {err}", err=True)
            ctx.exit(err.exit_code)

    return wrapper  # type: ignore[return-value]


@click.group(epilog=EXIT_CODES)
@click.version_option(package_name="layoutkit")
@click.option("--debug", is_flag=True, envvar="LAYOUTKIT_DEBUG",
              help="Show a traceback on errors.")
def cli(debug: bool) -> None:
    """Where can a JIT put its code? Address-space layout analysis for programs that
    generate machine code at run time (LuaJIT and others)."""


@cli.command(epilog=EXIT_CODES)
@click.argument("binary", required=False)
@click.option("--anchor", metavar="SYMBOL|ADDR",
              help="What the JIT must reach (default: lj_vm_exit_handler, lj_vm_asm_begin, "
                   "else the executable segment).")
@kernel_options
@output_options
@_handled
def inspect(binary: str | None, anchor: str | None, va_bits: int | None,
            mmap_min_addr: str | None, fmt: str) -> None:
    """The ELF's layout, its JIT anchor and the reach window of every branch form.

    With no BINARY, inspects a bundled AArch64 non-PIE executable linked at 0x400000.
    """
    note = None
    if binary is None:
        binary = str(default_binary())
        note = (f"No BINARY given: inspecting the bundled sample {binary}\n"
                "(AArch64, non-PIE, GNU ld default base, LuaJIT-like anchor).")
    result = inspect_binary(
        binary, anchor=anchor, va_bits=va_bits,
        mmap_min_addr=None if mmap_min_addr is None else parse_address(mmap_min_addr),
    )
    if fmt == "json":
        doc = report.inspection_json(result)
        doc["bundled_default"] = note is not None
        click.echo(report.dumps(doc))
    else:
        _emit(inspection_lines(result, default_note=note))


@cli.command(epilog=EXIT_CODES)
@click.option("--arch", "arch_names", multiple=True, metavar="ARCH",
              help=f"Only these architectures ({', '.join(arches.arch_names())}; "
                   "aliases such as arm64 work).")
@output_options
@_handled
def ranges(arch_names: tuple[str, ...], fmt: str) -> None:
    """The reach table: every PC-relative branch form and its exact reach."""
    rows = REACH
    if arch_names:
        rows = tuple(f for name in arch_names for f in forms(arches.by_name(name)))
    if fmt == "json":
        click.echo(report.dumps(report.document("ranges", {
            "forms": [report.form_json(f) for f in rows]})))
    else:
        _emit(forms_lines(rows))


def main(argv: list[str] | None = None) -> None:
    try:
        cli.main(args=argv, prog_name="layoutkit")
    except BrokenPipeError:
        # Output piped into `head`: stop quietly (as pyelftools' readelf does).
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        sys.exit(EXIT_FINDINGS)
