"""The protections an executable carries, and whether a recommendation keeps them.

Measured on an :class:`ElfImage` (read through elf.py, so pyelftools): the permissions
of every PT_LOAD, W^X (no PT_LOAD both writable and executable), PT_GNU_RELRO,
BIND_NOW (DT_FLAGS DF_BIND_NOW 0x8 or DT_FLAGS_1 DF_1_NOW 0x1, gABI "Dynamic Section"),
a non-executable PT_GNU_STACK (without one the kernel's default applies: an executable
stack on x86-64, arch/x86/include/asm/elf.h elf_read_implies_exec), and whether text
and data sit in separate segments.

What each flag set does to these per linker and program shape is the table in
advice/safety_table.py; ``advise --prove`` measures it on a real relink.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass

from layoutkit.core.model import ElfImage, LoadKind, Perm

DF_BIND_NOW = 0x8  # DT_FLAGS (gABI)
DF_1_NOW = 0x1  # DT_FLAGS_1 (binutils include/elf/common.h)
SHF_WRITE, SHF_ALLOC, SHF_EXECINSTR = 0x1, 0x2, 0x4


class Protection(enum.Enum):
    """One property a recommendation must not lose."""

    W_XOR_X = "w^x"
    RELRO = "relro"
    BIND_NOW = "bind-now"
    NX_STACK = "nx-stack"
    SEPARATE = "separate-code"

    def __str__(self) -> str:
        return self.value


class Shape(enum.Enum):
    """How the program is linked, as far as the flags' effect depends on it."""

    STATIC = "static"  # ET_EXEC without an interpreter
    DYNAMIC = "dynamic"  # ET_EXEC with PT_INTERP
    PIE = "pie"  # ET_DYN with PT_INTERP
    STATIC_PIE = "static-pie"

    def __str__(self) -> str:
        return self.value

    @classmethod
    def of(cls, image: ElfImage) -> Shape:
        return {LoadKind.PIE: cls.PIE, LoadKind.STATIC_PIE: cls.STATIC_PIE}.get(
            image.load_kind, cls.DYNAMIC if image.interpreter else cls.STATIC)


@dataclass(frozen=True)
class Protections:
    """What one image carries."""

    segments: tuple[str, ...]  # each PT_LOAD's permissions, in order ("R E", "RW ", ...)
    w_xor_x: bool
    relro: bool
    bind_now: bool
    nx_stack: bool
    separate: bool  # text and data in separate PT_LOADs

    @classmethod
    def measure(cls, image: ElfImage) -> Protections:
        loads = image.loads
        stack = next((s for s in image.segments if s.type == "PT_GNU_STACK"), None)
        return cls(
            segments=tuple(_rwx(seg.flags) for seg in loads),
            w_xor_x=not any(Perm.W in s.flags and Perm.X in s.flags for s in loads),
            relro=any(s.type == "PT_GNU_RELRO" for s in image.segments),
            bind_now=bool(image.dt_flags & DF_BIND_NOW or image.dt_flags_1 & DF_1_NOW),
            nx_stack=stack is not None and Perm.X not in stack.flags,
            separate=_separate(image),
        )

    @property
    def held(self) -> frozenset[Protection]:
        have = {Protection.W_XOR_X: self.w_xor_x, Protection.RELRO: self.relro,
                Protection.BIND_NOW: self.bind_now, Protection.NX_STACK: self.nx_stack,
                Protection.SEPARATE: self.separate}
        return frozenset(p for p, on in have.items() if on)

    def without(self, lost: frozenset[Protection]) -> Protections:
        """These protections with ``lost`` taken away (as a table row predicts)."""
        merged = Protection.W_XOR_X in lost or Protection.SEPARATE in lost
        return Protections(
            segments=_merge_code(self.segments) if merged else self.segments,
            w_xor_x=self.w_xor_x and Protection.W_XOR_X not in lost,
            relro=self.relro and Protection.RELRO not in lost,
            bind_now=self.bind_now and Protection.BIND_NOW not in lost,
            nx_stack=self.nx_stack and Protection.NX_STACK not in lost,
            separate=self.separate and Protection.SEPARATE not in lost)


def _rwx(flags: Perm) -> str:
    return "".join(c if p in flags else " " for c, p in
                   (("R", Perm.R), ("W", Perm.W), ("E", Perm.X)))


def _merge_code(segments: tuple[str, ...]) -> tuple[str, ...]:
    """The PT_LOADs once the code merges with the data before it (GNU ld without
    -z separate-code under -Tbss): one RWE segment, then the rest that stays writable."""
    writable = tuple(s for s in segments if "W" in s and "E" not in s)
    return ("RWE", *writable)


def _separate(image: ElfImage) -> bool:
    """No PT_LOAD holds both code and writable data: by sections where the file has
    them (the segment holding an SHF_EXECINSTR section holds no SHF_WRITE one), else by
    the segments' own flags."""
    alloc = [s for s in image.sections if s.flags & SHF_ALLOC and s.size > 0]
    if not alloc:
        return not any(Perm.W in s.flags and Perm.X in s.flags for s in image.loads)
    for seg in image.loads:
        inside = [s for s in alloc if seg.vaddr <= s.addr < seg.vaddr + seg.memsz]
        if (any(s.flags & SHF_EXECINSTR for s in inside)
                and any(s.flags & SHF_WRITE for s in inside)):
            return False
    return True


class Source(enum.Enum):
    """How a recommendation's safety is known."""

    TABLE = "table"  # advice/safety_table.py: real relinks, checked by the tests
    MEASURED = "measured"  # advise --prove relinked a program of the target's shape
    NOT_MEASURED = "not-measured"  # no relink for this arch and shape

    def __str__(self) -> str:
        return self.value

    def describe(self) -> str:
        return {Source.TABLE: "from the table of measured relinks",
                Source.MEASURED: "measured on a relink",
                Source.NOT_MEASURED: "no relink measured this arch and shape"}[self]


@dataclass(frozen=True)
class Safety:
    """What one recommendation does to the protections, and how that is known."""

    before: Protections
    after: Protections
    added: tuple[str, ...]  # flags added to keep the protections (-z separate-code)
    source: Source
    notes: tuple[str, ...]

    @property
    def lost(self) -> tuple[Protection, ...]:
        return tuple(p for p in Protection if p in self.before.held - self.after.held)

    @property
    def weaker(self) -> bool | None:
        """Whether a protection is lost; None when nothing was measured for the shape."""
        return None if self.source is Source.NOT_MEASURED else bool(self.lost)


__all__: Sequence[str] = ("DF_1_NOW", "DF_BIND_NOW", "Protection", "Protections", "Safety",
                          "Shape", "Source")
