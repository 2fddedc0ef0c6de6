"""Frozen value types shared by every module.

Naming convention (kept everywhere): intervals are half-open ``[start, end)`` (see
:mod:`layoutkit.core.spans`); ``vaddr`` is a virtual address as the ELF file states it
(link-time, before any load bias); ``offset`` is a file offset; addresses and sizes are
ints, rendered as hex only on output. Nothing downstream of :mod:`layoutkit.elf` sees a
pyelftools object: it converts into these values at the boundary.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from layoutkit.core.arches import Arch
from layoutkit.core.spans import Span, align_down, align_up


class Perm(enum.Flag):
    """Access permissions, with ELF's p_flags bit values (PF_X 1, PF_W 2, PF_R 4)."""

    NONE = 0
    X = 1
    W = 2
    R = 4

    @classmethod
    def from_p_flags(cls, p_flags: int) -> Perm:
        return cls(p_flags & 7)

    @classmethod
    def from_rwx(cls, text: str) -> Perm:
        """From the first three characters of a maps permission field (``r-x``)."""
        perm = cls.NONE
        for char, flag in zip(text[:3], (cls.R, cls.W, cls.X), strict=False):
            if char != "-":
                perm |= flag
        return perm

    def rwx(self) -> str:
        pairs = (("r", Perm.R), ("w", Perm.W), ("x", Perm.X))
        return "".join(char if flag in self else "-" for char, flag in pairs)


class LoadKind(enum.Enum):
    """How the kernel (or the dynamic loader) places an ELF image."""

    EXEC = "exec"  # ET_EXEC: at its link address, never moved
    PIE = "pie"  # ET_DYN with PT_INTERP: ELF_ET_DYN_BASE + ASLR
    STATIC_PIE = "static-pie"  # ET_DYN, no PT_INTERP, DF_1_PIE: the top-down mmap area
    SHARED = "shared"  # ET_DYN library: wherever the loader's mmap puts it

    @property
    def fixed(self) -> bool:
        """True when the link addresses are the run-time addresses."""
        return self is LoadKind.EXEC

    def describe(self) -> str:
        return {
            LoadKind.EXEC: "non-PIE executable: loaded at its link address",
            LoadKind.PIE: "PIE: ELF_ET_DYN_BASE + ASLR (the link address is ignored)",
            LoadKind.STATIC_PIE: "static PIE: in the top-down mmap area + ASLR",
            LoadKind.SHARED: "shared library: in the mmap area, where the loader maps it",
        }[self]


@dataclass(frozen=True)
class Segment:
    """One program header."""

    type: str  # "PT_LOAD", ... or "0x6474e553" style for types without a name
    vaddr: int
    memsz: int
    offset: int
    filesz: int
    flags: Perm
    raw_flags: int  # p_flags as stored, unknown bits included
    align: int

    @property
    def span(self) -> Span:
        return Span(self.vaddr, self.vaddr + self.memsz)

    def page_span(self, page: int) -> Span:
        """The pages the segment occupies once mapped."""
        return Span(align_down(self.vaddr, page), align_up(self.vaddr + self.memsz, page))


@dataclass(frozen=True)
class Section:
    """One section header."""

    name: str
    type: str
    addr: int
    offset: int
    size: int
    flags: int  # sh_flags as stored

    SHF_WRITE = 0x1
    SHF_ALLOC = 0x2
    SHF_EXECINSTR = 0x4

    @property
    def alloc(self) -> bool:
        return bool(self.flags & self.SHF_ALLOC)

    @property
    def executable(self) -> bool:
        return bool(self.flags & self.SHF_EXECINSTR)

    @property
    def span(self) -> Span:
        return Span(self.addr, self.addr + self.size)


@dataclass(frozen=True)
class Symbol:
    """One symbol table entry."""

    name: str
    value: int
    size: int
    type: str  # "FUNC", "OBJECT", "NOTYPE", ...
    binding: str  # "LOCAL", "GLOBAL", "WEAK", ...
    visibility: str  # "DEFAULT", "HIDDEN", "PROTECTED", "INTERNAL"
    shndx: int  # 0 = undefined, 0xfff1 = absolute
    table: str  # ".symtab" or ".dynsym"

    @property
    def defined(self) -> bool:
        return self.shndx != 0


@dataclass(frozen=True)
class ElfImage:
    """What layoutkit knows about one ELF file, independent of any parser."""

    path: str
    file_size: int
    arch: Arch
    bits: int
    little_endian: bool
    e_machine: int
    e_type: str  # "ET_EXEC", "ET_DYN"
    load_kind: LoadKind
    entry: int
    interpreter: str | None
    segments: tuple[Segment, ...]
    sections: tuple[Section, ...]
    build_id: str | None
    needed: tuple[str, ...]
    soname: str | None
    has_symtab: bool
    has_dynsym: bool
    comment: tuple[str, ...]  # the strings in .comment (compiler and linker marks)
    dt_flags: int = 0  # DT_FLAGS from PT_DYNAMIC (DF_BIND_NOW 0x8), 0 without one
    dt_flags_1: int = 0  # DT_FLAGS_1 (DF_1_NOW 0x1, DF_1_PIE 0x08000000)

    @property
    def pie(self) -> bool:
        return self.load_kind in (LoadKind.PIE, LoadKind.STATIC_PIE)

    @property
    def loads(self) -> tuple[Segment, ...]:
        return tuple(seg for seg in self.segments if seg.type == "PT_LOAD")

    @property
    def code_segments(self) -> tuple[Segment, ...]:
        return tuple(seg for seg in self.loads if Perm.X in seg.flags)

    @property
    def max_align(self) -> int:
        """The largest PT_LOAD p_align (what the kernel aligns a PIE's load bias to)."""
        return max((seg.align for seg in self.loads), default=1)

    @property
    def image_span(self) -> Span | None:
        """Link-time span of the whole image, page-aligned (None without PT_LOAD)."""
        if not self.loads:
            return None
        page = 4096
        return Span(
            min(align_down(seg.vaddr, page) for seg in self.loads),
            max(align_up(seg.vaddr + seg.memsz, page) for seg in self.loads),
        )

    def section(self, name: str) -> Section | None:
        for section in self.sections:
            if section.name == name:
                return section
        return None
