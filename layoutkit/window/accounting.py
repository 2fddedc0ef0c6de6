"""Window accounting: who occupies a JIT window, what is free, and whether it is enough.

Input: a :class:`~layoutkit.window.profiles.JitWindow` and the occupied spans (from a real maps
snapshot or from the kernel model). Output: every occupant with its overlap in bytes,
free bytes, free slots (count and share), the largest free run, the chance that the
profile's random probing misses every free slot, and the capacity verdict.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from layoutkit.core.kinds import OccupantKind, Verdict
from layoutkit.core.spans import Span, align_up, count_slots, free_gaps, largest, normalize
from layoutkit.read.maps import MappingKind
from layoutkit.window.profiles import JitWindow

# mm/mmap.c: stack_guard_gap = 256 pages; mmap refuses a hint that ends inside the gap
# below a VM_GROWSDOWN stack (and the hint is then moved elsewhere).
STACK_GUARD_GAP = 256 * 4096


@dataclass(frozen=True)
class Occupant:
    """Something in (or next to) the window that a JIT area cannot overlap."""

    kind: OccupantKind
    span: Span
    path: str = ""

    def overlap(self, window: Span) -> int:
        return self.span.overlap(window)


_MAPPING_KINDS = {
    MappingKind.EXECUTABLE: OccupantKind.IMAGE,
    MappingKind.LIBRARY: OccupantKind.LIBRARY,
    MappingKind.HEAP: OccupantKind.HEAP,
    MappingKind.STACK: OccupantKind.STACK,
    MappingKind.VDSO: OccupantKind.VDSO,
    MappingKind.ANONYMOUS: OccupantKind.ANONYMOUS,
    MappingKind.FILE: OccupantKind.FILE,
    MappingKind.DELETED: OccupantKind.DELETED,
}


def occupant_kind(kind: MappingKind) -> OccupantKind:
    """What a mapping of ``kind`` is as an occupant (the main program is an image)."""
    return _MAPPING_KINDS[kind]


@dataclass(frozen=True)
class Capacity:
    states_requested: int
    mcode_per_state: int
    area_size: int
    areas_free: int  # disjoint areas of area_size that fit in the free runs
    states_fit: int

    @property
    def verdict(self) -> Verdict:
        return Verdict.OK if self.states_fit >= self.states_requested else Verdict.INSUFFICIENT

    @property
    def demand(self) -> int:
        return self.states_requested * self.mcode_per_state


@dataclass(frozen=True)
class Accounting:
    jit: JitWindow
    occupants: tuple[Occupant, ...]  # those that overlap the window, in address order
    free: tuple[Span, ...]  # free runs inside the usable span, slot-aligned
    slots: int  # slots in the usable span
    free_slots: int
    capacity: Capacity
    miss_probability: float | None  # None for first-fit profiles

    @property
    def free_bytes(self) -> int:
        return sum(span.size for span in self.free)

    @property
    def largest_free(self) -> Span | None:
        return largest(self.free)

    @property
    def free_share(self) -> float:
        return self.free_slots / self.slots if self.slots else 0.0


def areas_in(runs: Iterable[Span], area: int) -> int:
    """Disjoint ``area``-byte areas that fit in the free ``runs``."""
    return sum(run.size // area for run in runs)


def states_fit(runs: Iterable[Span], area: int, per_state: int) -> int:
    """JIT states of ``per_state`` bytes (in whole areas) that fit in the free ``runs``:
    the one capacity formula, for the model's accounting and the probe's measurement."""
    return areas_in(runs, area) // max(1, -(-per_state // area))


def fit_count(gaps: Iterable[Span], size: int, step: int) -> int:
    """Start positions (``step``-aligned) where a ``size``-byte area fits in ``gaps``."""
    total = 0
    for gap in gaps:
        first = align_up(gap.start, step)
        if first + size <= gap.end:
            total += (gap.end - size - first) // step + 1
    return total


def miss_probability(jit: JitWindow, free: Sequence[Span], size: int) -> float | None:
    """Chance that every one of the profile's random hints lands on a taken spot.

    Hints are drawn uniformly from the profile's hint span in slot steps (lj_mcode.c);
    a hint succeeds when the area it asks for is free and inside the usable span (the
    kernel honours a hint only for a free range). Draws are independent, so the miss
    chance of ``n`` probes is ``(1 - hits/candidates) ** n``.
    """
    if jit.random_probes == 0:
        return None
    candidates = jit.hint_count(size)
    if candidates <= 0:
        return 1.0
    # Hits: hint positions whose whole area is free (p + size < hint_hi).
    reach = Span(max(0, jit.hint_lo), max(0, jit.hint_hi - 1))
    usable_free = [part for gap in free if (part := gap.intersect(reach)) is not None]
    hits = fit_count(usable_free, size, jit.slot)
    return float((1 - hits / candidates) ** jit.random_probes)


def account(jit: JitWindow, occupied: Iterable[Occupant], *, states: int = 1,
            mcode: int | None = None) -> Accounting:
    """Account for ``jit``'s window given what occupies the address space."""
    occupants = tuple(sorted((o for o in occupied if o.span.overlaps(jit.window)),
                             key=lambda o: (o.span.start, o.span.end, o.kind.value)))
    taken = normalize(o.span for o in occupants)
    free = tuple(free_gaps(jit.usable, taken, jit.slot))
    slots = count_slots([jit.usable], jit.slot)
    free_slots = count_slots(free, jit.slot)
    per_state = mcode if mcode is not None else jit.profile.maxmcode
    area = jit.profile.sizemcode
    capacity = Capacity(states, per_state, area, areas_in(free, area),
                        states_fit(free, area, per_state))
    return Accounting(jit, occupants, free, slots, free_slots, capacity,
                      miss_probability(jit, free, area))
