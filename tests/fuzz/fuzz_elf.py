"""Fuzz harness: the ELF reader and everything ``inspect`` reads.

One input is one file: :class:`~layoutkit.elf.ElfReader` (headers, sections, notes,
dynamic table, symbol look-ups), :func:`~layoutkit.commands.inspect.inspect_binary`
and its text and JSON renderings (the reference scan is the decoders harness's).
Seeds: every fixture ELF up to :data:`MAX_SEED` bytes.
"""

from __future__ import annotations

from layoutkit.commands.inspect import inspect_binary
from layoutkit.elf import ElfReader
from layoutkit.output import document
from layoutkit.output.text import inspection_lines
from tests.fuzz.harness import FEW_RUNS, FIXTURES, check, scratch_file

NAME = "elf"
MAX_SEED = 64 << 10
ANCHORS = ("lj_vm_exit_handler", "lj_vm_asm_begin")


def seeds() -> dict[str, bytes]:
    found = {}
    for path in sorted((FIXTURES / "elf").glob("*/*")):
        if path.suffix == ".txt" or not path.is_file() or path.stat().st_size > MAX_SEED:
            continue
        found[f"{path.parent.name}-{path.name}"] = path.read_bytes()
    return found


def exercise(path: str) -> None:
    with ElfReader(path) as reader:
        reader.image()
        for name in ANCHORS:
            reader.symbol(name)
    result = inspect_binary(path, FEW_RUNS)
    "\n".join(inspection_lines(result))
    document.dumps(document.inspection_json(result))


def one_input(data: bytes) -> None:
    path = scratch_file(NAME)
    path.write_bytes(data)
    check(lambda: exercise(str(path)))
