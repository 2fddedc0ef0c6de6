"""``layoutkit advise --move``: how far some sections can move while the rest stays,
from the decoded PC-relative references (read/refs.py) as difference constraints
(advice/relocate.py)."""

from __future__ import annotations

from dataclasses import dataclass, replace

from layoutkit.advice import relocate
from layoutkit.core.arches import GiB
from layoutkit.core.model import LoadKind
from layoutkit.core.units import parse_address
from layoutkit.elf import ElfReader
from layoutkit.errors import NoFitError, UsageError
from layoutkit.read import refs


@dataclass(frozen=True)
class RelocationCheck:
    """Whether (and how far) some sections can move while the rest stays."""

    sections: tuple[str, ...]
    address: int  # where the first of them is now
    allowed: relocate.MoveRange
    requested: int | None  # the address asked for, if any
    references: int  # PC-relative references between the group and the rest

    @property
    def feasible(self) -> bool:
        return self.requested is None or self.allowed.allows(self.requested - self.address)


def parse_move(text: str) -> tuple[list[str], int | None]:
    """``--move SECTION[,SECTION...][=ADDR]``: the sections and the address, if any."""
    names, _, where = text.partition("=")
    sections = [n for n in names.split(",") if n]
    if not sections:
        raise UsageError(f"--move {text!r}: name a section, e.g. --move .text=0x7f000000")
    return sections, parse_address(where) if where else None


def check_move(binary: str, sections: list[str], address: int | None) -> RelocationCheck:
    """Decode the PC-relative references of ``binary`` and bound a move of ``sections``.

    With an ``address`` the move is what ``--section-start`` does with GNU ld (checked
    with real links here): the section and every allocated section after it move
    together, the sections before it stay. The references (refs.py) become difference
    constraints (relocate.py); an address outside the feasible range is a
    :class:`NoFitError` naming the reference that would break. x86-64 and riscv64
    non-PIE code must also stay below 2 GiB.
    """
    with ElfReader(binary) as reader:
        image = reader.image()
        present = {s.name: s for s in image.sections if s.alloc}
        missing = [name for name in sections if name not in present]
        if missing:
            raise UsageError(f"--move: no allocated section {', '.join(missing)} in {binary}")
        if address is not None and len(sections) == 1:
            start = present[sections[0]].addr
            sections = [s.name for s in image.sections if s.alloc and s.addr >= start]
        pairs = refs.scan(reader)
    try:
        allowed = relocate.move_range(pairs, sections)
    except relocate.Infeasible as e:
        raise NoFitError(str(e), path=binary) from None
    first = min(present[name].addr for name in sections)
    if image.arch.link.low_2g and image.load_kind is LoadKind.EXEC:
        end = max(present[name].addr + present[name].size for name in sections)
        allowed = replace(allowed, hi=min(allowed.hi, 2 * GiB - end))
    moved = set(sections)
    count = sum(p.count for p in pairs if (p.src in moved) != (p.dst in moved))
    check = RelocationCheck(tuple(sections), first, allowed, address, count)
    if not check.feasible and address is not None:
        offset = address - first
        limit = allowed.limit_hi if offset > allowed.hi else allowed.limit_lo
        who = (f"the {limit.form} at {limit.pc:#x} to {limit.target:#x}" if limit
               else "a reference")
        raise NoFitError(
            f"moving {', '.join(sections)} from {first:#x} to {address:#x} breaks {who}: "
            f"they can go from {max(0, first + allowed.lo):#x} to {first + allowed.hi:#x}",
            path=binary)
    return check
