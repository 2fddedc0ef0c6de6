"""The README's example outputs, produced by the real CLI.

README.md calls these from its cog blocks; ``cog -r README.md`` (from the repository root)
rewrites every block, and tests/test_docs.py fails when the committed README differs from
what they produce now. Each command runs in process from the repository root, so relative
paths (``layoutkit/samples/aarch64-nopie``, ``fixtures/elf/...``) name the committed files,
and its output is what a terminal shows: stdout and stderr as they interleave.

What would vary is pinned or elided in plain sight: help text is wrapped at 80 columns; the
kernel values of a foreign architecture are that architecture's defaults (no command shown
here reads this machine's kernel); the repository's absolute path, which ``layoutkit
inspect`` without BINARY prints for the bundled sample, is shown as ``...``.
"""

from __future__ import annotations

import os
import shlex
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import click
from click.testing import CliRunner

import layoutkit
from layoutkit.cli import cli

ROOT = Path(__file__).resolve().parent.parent
WIDTH = 80
# Variables that would change what the commands print.
ENVIRONMENT: dict[str, str | None] = {"GITHUB_ACTIONS": None, "LAYOUTKIT_DEBUG": None,
                                      "COLUMNS": None}


class ExampleError(Exception):
    """An example did not run as the README says it does."""


def _check_package() -> None:
    package = Path(layoutkit.__file__).resolve().parent
    if package != ROOT / "layoutkit":
        raise ExampleError(f"the examples must run this checkout's package ({ROOT / 'layoutkit'})"
                           f", not {package}: another layoutkit was imported first")


@contextmanager
def _in_root() -> Iterator[None]:
    before = os.getcwd()
    os.chdir(ROOT)
    try:
        yield
    finally:
        os.chdir(before)


def _invoke(args: list[str]) -> tuple[int, str]:
    _check_package()
    with _in_root():
        result = CliRunner(env=ENVIRONMENT).invoke(cli, args, prog_name="layoutkit",
                                                   terminal_width=WIDTH)
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise ExampleError(f"layoutkit {shlex.join(args)} raised {result.exception!r}")
    return result.exit_code, result.output


def _pipe(text: str, stage: str) -> str:
    """``head -n N`` or ``tail -n N`` applied to ``text``."""
    words = stage.split()
    if len(words) != 3 or words[0] not in ("head", "tail") or words[1] != "-n":
        raise ExampleError(f"unsupported pipe stage {stage!r}: use head -n N or tail -n N")
    lines = text.splitlines(keepends=True)
    count = int(words[2])
    return "".join(lines[:count] if words[0] == "head" else lines[-count:])


def terminal(command: str, exit_code: int = 0) -> str:
    """What a terminal shows for ``command`` (``layoutkit ...``, optionally piped into
    ``head -n N`` or ``tail -n N``), checked to exit with ``exit_code``."""
    first, *stages = command.split("|")
    words = shlex.split(first)
    if words[:1] != ["layoutkit"]:
        raise ExampleError(f"{command!r}: an example starts with 'layoutkit'")
    code, text = _invoke(words[1:])
    if code != exit_code:
        raise ExampleError(f"{first.strip()} exited {code}, the README says {exit_code}:\n"
                           f"{text}")
    for stage in stages:
        text = _pipe(text, stage.strip())
    return text.replace(str(ROOT), "...")


def console(command: str, exit_code: int = 0) -> str:
    """A Markdown console block: the prompt, the command and what it prints."""
    return f"```console\n$ {command}\n{terminal(command, exit_code)}```\n"


def commands() -> list[str]:
    """Every command of the CLI, in the order ``layoutkit --help`` lists them."""
    assert isinstance(cli, click.Group)
    with click.Context(cli) as ctx:
        return cli.list_commands(ctx)


def help_pages() -> str:
    """``layoutkit --help`` and ``layoutkit COMMAND --help`` for every command, as
    Markdown sections."""
    pages = []
    for name in ["", *commands()]:
        command = f"layoutkit {name} --help" if name else "layoutkit --help"
        pages.append(f"### `{command}`\n\n{console(command)}")
    return "\n".join(pages)
