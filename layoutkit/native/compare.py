"""The probe against the model: layoutkit's accounting of the probe's own maps, slot for
slot, with the documented cause of every difference."""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass

from layoutkit.core.kinds import OccupantKind
from layoutkit.core.spans import Span
from layoutkit.native.protocol import Outcome, ScanResult
from layoutkit.read.maps import MappingKind, ProcessMaps
from layoutkit.window.accounting import (
    STACK_GUARD_GAP,
    Accounting,
    Occupant,
    account,
    occupant_kind,
)


class Cause(enum.Enum):
    """Why the probe and the model disagree on a slot."""

    STACK_GUARD_GAP = "stack guard gap"
    BELOW_MMAP_MIN_ADDR = "below mmap_min_addr"
    MOVED = "moved (runner ignores MAP_FIXED_NOREPLACE)"
    ENOMEM = "ENOMEM (RLIMIT_AS or map count)"
    UNEXPLAINED = "unexplained"

    def __str__(self) -> str:
        return self.value


def occupants(maps: ProcessMaps) -> list[Occupant]:
    """Every mapping as an occupant, plus the guard gap below each stack (the kernel's
    stack_guard_gap, mm/mmap.c)."""
    found = [Occupant(occupant_kind(m.kind), m.span, m.path) for m in maps.mappings]
    for m in maps.by_kind(MappingKind.STACK):
        found.append(Occupant(OccupantKind.STACK_GUARD,
                              Span(max(0, m.start - STACK_GUARD_GAP), m.start)))
    return found


def model_accounting(result: ScanResult, *, states: int = 1,
                     mcode: int | None = None) -> Accounting:
    """layoutkit's own accounting of the scanned window, from the probe's maps."""
    return account(result.context.jit, occupants(result.context.maps()), states=states,
                   mcode=mcode)


@dataclass(frozen=True)
class Difference:
    slot: int
    probe: Outcome
    model_free: bool
    cause: Cause


def differences(result: ScanResult) -> list[Difference]:
    """Slots where the probe and the model disagree, each with its documented cause.

    Documented: the stack guard gap (the model keeps hints out of it, as the kernel's
    search does, but MAP_FIXED_NOREPLACE may map inside it); below vm.mmap_min_addr
    (EPERM for a normal user, mappable by root, not modelled here); 'moved' under
    qemu-user (the slot may well be free).
    """
    acc = model_accounting(result)
    model_free = {s for gap in acc.free for s in range(gap.start, gap.end, result.slot)}
    guards = [o.span for o in acc.occupants if o.kind is OccupantKind.STACK_GUARD]
    low = result.context.mmap_min_addr or 0
    found = []
    for i, outcome in enumerate(result.outcomes):
        slot = result.window.start + i * result.slot
        free = slot in model_free
        if (outcome is Outcome.FREE) == free:
            continue
        span = Span(slot, slot + result.slot)
        if any(g.overlaps(span) for g in guards):
            cause = Cause.STACK_GUARD_GAP
        elif slot < low or outcome is Outcome.EPERM:
            cause = Cause.BELOW_MMAP_MIN_ADDR
        elif outcome is Outcome.MOVED:
            cause = Cause.MOVED
        elif outcome is Outcome.ENOMEM:
            cause = Cause.ENOMEM
        else:
            cause = Cause.UNEXPLAINED
        found.append(Difference(slot, outcome, free, cause))
    return found


__all__: Sequence[str] = ("Cause", "Difference", "differences", "model_accounting",
                          "occupants")
