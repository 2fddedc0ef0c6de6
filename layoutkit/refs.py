"""PC-relative references between sections, and how far each section may move.

A reference from code at ``pc`` in section S to ``target`` in section T has
displacement ``d = target - pc`` and must stay inside its encoding's limits
``[fmin, fmax]`` (the reach table, with the instruction's own pc bias). Moving S by
``x_S`` and T by ``x_T`` changes it to ``d + x_T - x_S``, so every reference gives two
difference constraints: ``x_T - x_S <= fmax - d`` and ``x_S - x_T <= d - fmin``. Per
section pair only the tightest bound of each kind matters (kept with the reference that
sets it, to name what would break). :mod:`layoutkit.relocate` solves them.

AArch64 code is pre-scanned as fixed-width words with numpy (:func:`bulk.a64_pcrel`)
and a sample is confirmed with capstone; other architectures are decoded with
capstone in chunks, so memory stays bounded on a 100 MB text.
"""

from __future__ import annotations

import bisect
import random
from dataclasses import dataclass
from typing import BinaryIO

from . import bulk
from .arches import Arch
from .decode import decode, decode_one
from .elf import ElfReader
from .errors import ElfError
from .model import Section
from .ranges import form_by_name, forms

CONFIRM = 2000  # prescanned references re-decoded with capstone
_DECODE_CHUNK = 1 << 16


@dataclass(frozen=True)
class Bound:
    """The tightest bound one section pair puts on a move, and who sets it."""

    slack: int  # bytes of room left in that direction
    pc: int
    target: int
    form: str


@dataclass(frozen=True)
class PairRefs:
    """All references from section ``src`` into section ``dst``."""

    src: str
    dst: str
    count: int
    up: Bound  # x_dst - x_src <= up.slack
    down: Bound  # x_src - x_dst <= down.slack


class _Index:
    def __init__(self, sections: list[Section]) -> None:
        self.sections = sorted((s for s in sections if s.alloc and s.size), key=lambda s: s.addr)
        self.starts = [s.addr for s in self.sections]

    def overlapping(self, start: int, end: int) -> list[str]:
        i = max(0, bisect.bisect_right(self.starts, start) - 1)
        names = []
        while i < len(self.sections) and self.sections[i].addr < end:
            s = self.sections[i]
            if s.addr + s.size > start:
                names.append(s.name)
            i += 1
        return names

    def find(self, address: int) -> str | None:
        i = bisect.bisect_right(self.starts, address) - 1
        if i >= 0 and address < self.sections[i].addr + self.sections[i].size:
            return self.sections[i].name
        return None


class _Collector:
    def __init__(self) -> None:
        self.pairs: dict[tuple[str, str], list[object]] = {}

    def add(self, src: str, dst: str, pc: int, target: int, fmin: int, fmax: int,
            form: str) -> None:
        d = target - pc
        up, down = fmax - d, d - fmin
        entry = self.pairs.get((src, dst))
        if entry is None:
            self.pairs[(src, dst)] = [1, Bound(up, pc, target, form), Bound(down, pc, target, form)]
            return
        entry[0] = int(entry[0]) + 1  # type: ignore[call-overload]
        if up < entry[1].slack:  # type: ignore[attr-defined]
            entry[1] = Bound(up, pc, target, form)
        if down < entry[2].slack:  # type: ignore[attr-defined]
            entry[2] = Bound(down, pc, target, form)

    def result(self) -> list[PairRefs]:
        return [PairRefs(s, d, int(e[0]), e[1], e[2])  # type: ignore[arg-type,call-overload]
                for (s, d), e in sorted(self.pairs.items())]


def scan(reader: ElfReader) -> list[PairRefs]:
    """PC-relative references from every executable section into every allocated one."""
    image = reader.image()
    index = _Index(list(image.sections))
    collector = _Collector()
    code = [s for s in image.sections if s.executable and s.type != "SHT_NOBITS" and s.size]
    with open(reader.path, "rb") as stream:
        for section in code:
            if section.offset + section.size > image.file_size:
                raise ElfError(f"{section.name} lies outside the file", path=image.path)
            if image.arch.name == "aarch64":
                _scan_a64(stream, section, index, collector, image.arch)
            else:
                _scan_capstone(stream, section, index, collector, image.arch)
    return collector.result()


def _scan_a64(stream: BinaryIO, section: Section, index: _Index, out: _Collector,
              arch: Arch) -> None:
    found = bulk.a64_pcrel(stream, section.offset, section.size, section.addr)
    sample: list[tuple[int, int]] = []
    for pcs, targets, kind in found:
        form = form_by_name(arch, bulk.A64_FORMS[kind])
        assert form is not None  # A64_FORMS names rows of the reach table
        # ADRP names a page: whatever section the page overlaps may be the real target.
        span = 4096 if form.page > 1 else 1
        for pc, target in zip(pcs.tolist(), targets.tolist(), strict=True):
            sample.append((pc, target))
            for dst in index.overlapping(target, target + span):
                if dst != section.name:
                    out.add(section.name, dst, pc, target, form.disp_min, form.disp_max,
                            form.name)
    # Confirm the vectorised decoding against capstone on a sample.
    rng = random.Random(0)
    for pc, target in rng.sample(sample, min(CONFIRM, len(sample))):
        stream.seek(section.offset + pc - section.addr)
        insn = decode_one(arch, stream.read(4), pc)
        if insn is None or insn.target != target:
            raise ElfError(f"pre-scan and capstone disagree at {pc:#x}: "
                           f"{target:#x} vs {insn}", path=stream.name)


def _limits(arch: Arch, mnemonic: str, size: int, rip: bool) -> tuple[int, int, str] | None:
    """Displacement limits of one decoded reference, relative to its own address."""
    if arch.name in ("x86_64", "i386"):
        if rip or size >= 5:
            return size - 2**31, size + 2**31 - 1, "rel32/disp32"
        return size - 128, size + 127, "rel8"
    name = mnemonic.removeprefix("c.")
    rows = [r for r in forms(arch) if not r.region and not r.wraps]
    for row in rows:
        tokens = row.name.replace("+", "/").replace(" ", "/").split("/")
        if name in tokens or (name[:1] == "b" and row.kind.value == "conditional"
                              and name not in ("b", "bl", "bras", "brasl", "bal")):
            return row.disp_min, row.disp_max, row.name
    # Unknown mnemonic: the narrowest form, so the move range errs on the safe side.
    row = min(rows, key=lambda r: r.disp_max - r.disp_min)
    return row.disp_min, row.disp_max, row.name


def _scan_capstone(stream: BinaryIO, section: Section, index: _Index, out: _Collector,
                   arch: Arch) -> None:
    pos = 0
    while pos < section.size:
        stream.seek(section.offset + pos)
        chunk = stream.read(min(_DECODE_CHUNK, section.size - pos))
        last_end = 0
        for insn in decode(arch, chunk, section.addr + pos):
            last_end = insn.address + insn.size - section.addr - pos
            if insn.target is None:
                continue
            dst = index.find(insn.target)
            if dst is None or dst == section.name:
                continue
            rip = "rip" in insn.op_str
            limits = _limits(arch, insn.mnemonic, insn.size, rip)
            if limits is not None:
                out.add(section.name, dst, insn.address, insn.target, *limits)
        if last_end == 0 or last_end < len(chunk) - 15:
            # capstone stopped at bytes it cannot decode (data in code): step over them.
            pos += last_end + arch.insn_align
        else:
            # Resume at the last whole instruction (one may straddle the chunk's end).
            pos += last_end
