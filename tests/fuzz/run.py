"""Run one fuzz harness: ``python -m tests.fuzz.run NAME [CORPUS_DIR] [libFuzzer flags]``.

NAME is elf, maps, deb, decode, jit or options. The harness (and with it layoutkit, pyelftools and
capstone's Python side) is imported under ``atheris.instrument_imports`` so coverage
guides the mutations.
"""

from __future__ import annotations

import importlib
import sys

HARNESSES = ("elf", "maps", "deb", "decode", "jit", "options")


def main(argv: list[str]) -> None:
    import atheris

    if len(argv) < 2 or argv[1] not in HARNESSES:
        sys.exit(f"usage: python -m tests.fuzz.run {{{','.join(HARNESSES)}}} [CORPUS] [flags]")
    name = argv[1]
    with atheris.instrument_imports(include=["layoutkit", "elftools", "tests.fuzz"]):
        module = importlib.import_module(f"tests.fuzz.fuzz_{name}")
    from tests.fuzz.harness import fuzz

    fuzz(name, module.one_input, module.seeds, [argv[0], *argv[2:]])


if __name__ == "__main__":
    main(sys.argv)
