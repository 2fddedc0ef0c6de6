"""Fuzz harness: the instruction decoders and the reference scans built on them.

One input is ``[arch byte][8-byte address][code]``: capstone through
:func:`layoutkit.read.decode.decode` (every architecture layoutkit decodes, and Thumb),
:func:`~layoutkit.read.decode.x86_pcrel`, the numpy A64 pre-scan
(:func:`layoutkit.read.bulk.a64_pcrel`) and the exit-stub recovery
(:func:`layoutkit.read.stubs.recover`). Seeds: the ``.text`` of every fixture ELF.
"""

from __future__ import annotations

import io

from layoutkit.core import arches
from layoutkit.core.spans import Span
from layoutkit.elf import ElfReader
from layoutkit.errors import ElfError
from layoutkit.read import bulk, stubs
from layoutkit.read.decode import decode, supported, x86_pcrel
from tests.fuzz.harness import FIXTURES, CrashError, check

NAME = "decode"
MAX_CODE = 1 << 10  # bytes decoded per execution (seeds: the start of .text)
A64_VA_BITS = 52  # the widest arm64 user address space (facts.md §4)
ARCHES = tuple(a for a in (arches.by_name(n) for n in arches.arch_names()) if supported(a))
CHOICES = (*((a, False) for a in ARCHES), (arches.by_name("arm"), True))


def seeds() -> dict[str, bytes]:
    found = {}
    for path in sorted((FIXTURES / "elf").glob("*/*")):
        if path.suffix == ".txt" or not path.is_file():
            continue
        try:
            with ElfReader(path) as reader:
                image = reader.image()
        except ElfError:
            continue
        text = next((s for s in image.sections if s.name == ".text"), None)
        choice = next((i for i, (a, thumb) in enumerate(CHOICES)
                       if a is image.arch and not thumb), None)
        if text is None or choice is None:
            continue
        with open(path, "rb") as stream:
            stream.seek(text.offset)
            code = stream.read(min(text.size, MAX_CODE))
        found[f"{path.parent.name}-{path.name}"] = (
            bytes([choice]) + text.addr.to_bytes(8, "little") + code)
    return found


def exercise(data: bytes) -> None:
    if len(data) < 9:
        return
    arch, thumb = CHOICES[data[0] % len(CHOICES)]
    address = int.from_bytes(data[1:9], "little") % (1 << arch.bits)
    code = data[9:9 + MAX_CODE]
    decoded = list(decode(arch, code, address, thumb=thumb))
    if any(d.size <= 0 or not 0 <= d.address < 1 << 64 for d in decoded):
        raise CrashError(f"{arch}: an instruction of no size or at no address: {decoded[0]}")
    if arch.name in ("x86_64", "i386"):
        _found, end = x86_pcrel(code, address, bits=arch.bits)
        if not 0 <= end <= len(code):
            raise CrashError(f"x86_pcrel decoded {end} of {len(code)} bytes")
    if arch.name == "aarch64":
        size = len(code) - len(code) % 4
        base = address % ((1 << A64_VA_BITS) - MAX_CODE)
        for pcs, targets, _form in bulk.a64_pcrel(io.BytesIO(code), 0, size, base):
            if len(pcs) != len(targets):
                raise CrashError("a64_pcrel: pcs and targets differ in length")
    if stubs.supported(arch):
        stubs.recover(arch, [(address, code)], Span(address, address + max(1, len(code))))


def one_input(data: bytes) -> None:
    check(lambda: exercise(data))
