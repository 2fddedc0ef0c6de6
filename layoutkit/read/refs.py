"""PC-relative references between sections, and how far each section may move.

A reference from code at ``pc`` in section S to ``target`` in section T has
displacement ``d = target - pc`` and must stay inside its encoding's limits
``[fmin, fmax]`` (the reach table, with the instruction's own pc bias). Moving S by
``x_S`` and T by ``x_T`` changes it to ``d + x_T - x_S``, so every reference gives two
difference constraints: ``x_T - x_S <= fmax - d`` and ``x_S - x_T <= d - fmin``. Per
section pair only the tightest bound of each kind matters (kept with the reference that
sets it, to name what would break). :mod:`layoutkit.advice.relocate` solves them.

AArch64 code is pre-scanned as fixed-width words with numpy (:func:`bulk.a64_pcrel`)
and a sample is confirmed with capstone; other architectures are decoded with
capstone in chunks, so memory stays bounded on a 100 MB text.
"""

from __future__ import annotations

import bisect
import os
import random
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from typing import BinaryIO

from layoutkit.boundary import reading
from layoutkit.core.arches import Arch, Isa
from layoutkit.core.model import Section
from layoutkit.core.text import shown
from layoutkit.elf import ElfReader
from layoutkit.errors import ElfError, InternalError
from layoutkit.ranges import form_by_name, forms
from layoutkit.read import bulk
from layoutkit.read.decode import decode, decode_one, x86_pcrel

CONFIRM = 2000  # prescanned references re-decoded with capstone
PARALLEL_MIN = 4 << 20  # x86 text bytes per worker process before splitting pays
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

    def add_pair(self, src: str, dst: str, count: int, up: Bound, down: Bound) -> None:
        self.add_bound(src, dst, up, True)
        self.add_bound(src, dst, down, False)
        entry = self.pairs[(src, dst)]
        entry[0] = int(entry[0]) + count - 2  # type: ignore[call-overload]

    def merge(self, pairs: dict[tuple[str, str], list[object]]) -> None:
        for (src, dst), (count, up, down) in pairs.items():
            assert isinstance(up, Bound) and isinstance(down, Bound)
            for bound in (up, down):
                self.add_bound(src, dst, bound, up is bound)
            entry = self.pairs[(src, dst)]
            entry[0] = int(entry[0]) + int(count) - 2  # type: ignore[call-overload]

    def add_bound(self, src: str, dst: str, bound: Bound, upper: bool) -> None:
        entry = self.pairs.setdefault((src, dst), [0, Bound(1 << 62, 0, 0, ""),
                                                   Bound(1 << 62, 0, 0, "")])
        entry[0] = int(entry[0]) + 1  # type: ignore[call-overload]
        slot = 1 if upper else 2
        if bound.slack < entry[slot].slack:  # type: ignore[attr-defined]
            entry[slot] = bound

    def result(self) -> list[PairRefs]:
        return [PairRefs(s, d, int(e[0]), e[1], e[2])  # type: ignore[arg-type,call-overload]
                for (s, d), e in sorted(self.pairs.items())]


def scan(reader: ElfReader) -> list[PairRefs]:
    """PC-relative references from every executable section into every allocated one."""
    image = reader.image()
    index = _Index(list(image.sections))
    collector = _Collector()
    # Only allocated code is loaded (and indexed): SHF_EXECINSTR without SHF_ALLOC is
    # never mapped, so nothing branches from it at run time.
    code = [s for s in image.sections
            if s.executable and s.alloc and s.type != "SHT_NOBITS" and s.size]
    with reading("ELF file", image.path), open(reader.path, "rb") as stream:
        for section in code:
            if section.offset + section.size > image.file_size:
                raise ElfError(f"{shown(section.name, 60)} [{section.offset:#x}, "
                               f"{section.offset + section.size:#x}) lies outside the file "
                               f"({image.file_size} bytes)", path=image.path)
            if image.arch.isa is Isa.ARM64:
                if section.addr + section.size > bulk.A64_USER_TOP:
                    raise ElfError(f"{shown(section.name, 60)} at {section.addr:#x} lies above "
                                   "any AArch64 user address space (2^52)", path=image.path)
                _scan_a64(stream, section, index, collector, image.arch)
            elif image.arch.isa is Isa.X86:
                _scan_x86(stream, section, index, collector, image.arch)
            else:
                _scan_capstone(stream, section, index, collector, image.arch)
    return collector.result()


def _scan_a64(stream: BinaryIO, section: Section, index: _Index, out: _Collector,
              arch: Arch) -> None:
    rows = []
    for name in bulk.A64_FORMS:
        row = form_by_name(arch, name)
        assert row is not None  # A64_FORMS names rows of the reach table
        rows.append(row)
    own = next(i for i, s in enumerate(index.sections) if s.name == section.name
               and s.addr == section.addr)
    found, sample = bulk.a64_section_refs(
        stream, section.offset, section.size, section.addr, index.starts,
        [s.addr + s.size for s in index.sections], [(r.disp_min, r.disp_max) for r in rows],
        own=own)
    for (form, dst), (count, up, up_pc, up_t, down, down_pc, down_t) in found.items():
        name, row = index.sections[dst].name, rows[form]
        out.add_pair(section.name, name, count, Bound(up, up_pc, up_t, row.name),
                     Bound(down, down_pc, down_t, row.name))
    # Confirm the vectorised decoding against capstone on a sample.
    rng = random.Random(0)
    checks = sorted(rng.sample(sample, min(CONFIRM, len(sample))))
    stream.seek(section.offset)
    for pc, target in checks:
        stream.seek(section.offset + pc - section.addr)
        insn = decode_one(arch, stream.read(4), pc)
        if insn is None or insn.target != target:
            # Both decode the same word: a disagreement is a bug here, not bad input.
            raise InternalError(f"A64 pre-scan and capstone disagree at {pc:#x}: "
                                f"{target:#x} vs {insn}", path=str(stream.name))


def _limits(arch: Arch, mnemonic: str, size: int, rip: bool) -> tuple[int, int, str] | None:
    """Displacement limits of one decoded reference, relative to its own address."""
    if arch.isa is Isa.X86:
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


def _scan_x86(stream: BinaryIO, section: Section, index: _Index, out: _Collector,
              arch: Arch) -> None:
    """Split a large text over the machine's cores; each part decodes on its own."""
    workers = min(os.cpu_count() or 1, max(1, section.size // PARALLEL_MIN))
    if workers == 1:
        _scan_x86_part(stream, section, index, out, arch, 0, section.size)
        return
    step = -(-section.size // workers)
    parts = [(str(stream.name), section, index, arch, lo, min(lo + step, section.size))
             for lo in range(0, section.size, step)]
    with ProcessPoolExecutor(max_workers=workers) as pool:
        for pairs in pool.map(_x86_worker, parts):
            out.merge(pairs)


def _x86_worker(args: tuple[str, Section, _Index, Arch, int, int]) -> dict[tuple[str, str],
                                                                           list[object]]:
    path, section, index, arch, lo, hi = args
    part = _Collector()
    with open(path, "rb") as stream:
        _scan_x86_part(stream, section, index, part, arch, lo, hi)
    return part.pairs


def _scan_x86_part(stream: BinaryIO, section: Section, index: _Index, out: _Collector,
                   arch: Arch, lo: int, hi: int) -> None:
    """References from instructions starting in [lo, hi) of ``section``.

    A part after the first starts decoding 64 bytes early: x86 decoding falls back into
    step with the real instruction boundaries within a few instructions.
    """
    pos = max(0, lo - 64)
    while pos < hi:
        stream.seek(section.offset + pos)
        chunk = stream.read(min(_DECODE_CHUNK, section.size - pos))
        found, last_end = x86_pcrel(chunk, section.addr + pos, bits=arch.bits)
        for pc, size, target in found:
            if not lo <= pc - section.addr < hi:
                continue
            dst = index.find(target)
            if dst is not None and dst != section.name:
                # rel32/disp32 count from the next instruction; rel8 only reaches 127.
                if size >= 5:
                    out.add(section.name, dst, pc, target, size - 2**31, size + 2**31 - 1,
                            "rel32/disp32")
                else:
                    out.add(section.name, dst, pc, target, size - 128, size + 127, "rel8")
        if last_end == 0 or last_end < len(chunk) - 15:
            pos += last_end + 1  # step over bytes capstone cannot decode
        else:
            pos += last_end


def _scan_capstone(stream: BinaryIO, section: Section, index: _Index, out: _Collector,
                   arch: Arch) -> None:
    pos = 0
    while pos < section.size:
        stream.seek(section.offset + pos)
        chunk = stream.read(min(_DECODE_CHUNK, section.size - pos))
        last_end = 0
        for insn in decode(arch, chunk, section.addr + pos):
            # Modulo the address size: capstone wraps an address past the top.
            last_end = (insn.address + insn.size - section.addr - pos) & ((1 << arch.bits) - 1)
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
