"""Half-open address spans and the arithmetic the window accounting needs.

Convention, kept everywhere in layoutkit: a span is ``[start, end)``. ``start`` is the
first address inside, ``end`` the first address after it; ``size == end - start``; an
empty span has ``start == end``. Addresses are plain non-negative ints (never hex
strings) until they are rendered.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass


def align_down(value: int, alignment: int) -> int:
    """Largest multiple of ``alignment`` that is <= ``value``."""
    if alignment <= 0:
        raise ValueError(f"alignment must be positive, not {alignment}")
    return value - value % alignment


def align_up(value: int, alignment: int) -> int:
    """Smallest multiple of ``alignment`` that is >= ``value``."""
    return -align_down(-value, alignment)


@dataclass(frozen=True, order=True)
class Span:
    """The addresses ``[start, end)``."""

    start: int
    end: int

    def __post_init__(self) -> None:
        if self.start < 0 or self.end < self.start:
            raise ValueError(f"not a span: [{self.start:#x}, {self.end:#x})")

    @property
    def size(self) -> int:
        return self.end - self.start

    @property
    def empty(self) -> bool:
        return self.start == self.end

    def __contains__(self, address: object) -> bool:
        return isinstance(address, int) and self.start <= address < self.end

    def contains(self, other: Span) -> bool:
        """True when ``other`` lies entirely inside this span."""
        return self.start <= other.start and other.end <= self.end

    def overlaps(self, other: Span) -> bool:
        """True when the spans share an address (an empty span shares none)."""
        return max(self.start, other.start) < min(self.end, other.end)

    def intersect(self, other: Span) -> Span | None:
        """The common part, or None when the spans do not overlap."""
        start, end = max(self.start, other.start), min(self.end, other.end)
        return Span(start, end) if start < end else None

    def overlap(self, other: Span) -> int:
        """How many addresses the two spans share."""
        part = self.intersect(other)
        return part.size if part else 0

    def shifted(self, delta: int) -> Span:
        """The span moved by ``delta`` (a load bias, from link-time to run-time)."""
        return Span(self.start + delta, self.end + delta)

    def aligned_inward(self, alignment: int) -> Span | None:
        """The largest ``alignment``-aligned span inside this one, or None."""
        start, end = align_up(self.start, alignment), align_down(self.end, alignment)
        return Span(start, end) if start < end else None

    def __repr__(self) -> str:
        return f"Span({self.start:#x}, {self.end:#x})"

    def __str__(self) -> str:
        return f"[{self.start:#x}, {self.end:#x})"


def clamp(start: int, end: int, limit: Span) -> Span | None:
    """``[start, end)`` cut to ``limit``; ``start`` may be negative. None when nothing is left."""
    lo, hi = max(start, limit.start), min(end, limit.end)
    return Span(lo, hi) if lo < hi else None


def normalize(spans: Iterable[Span]) -> list[Span]:
    """Sorted, non-empty spans with overlapping and touching ones merged."""
    merged: list[Span] = []
    for span in sorted(s for s in spans if not s.empty):
        if merged and span.start <= merged[-1].end:
            if span.end > merged[-1].end:
                merged[-1] = Span(merged[-1].start, span.end)
        else:
            merged.append(span)
    return merged


def subtract(base: Span, holes: Iterable[Span]) -> list[Span]:
    """The parts of ``base`` not covered by any of ``holes``, in address order."""
    free: list[Span] = []
    cursor = base.start
    for hole in normalize(holes):
        if hole.end <= cursor:
            continue
        if hole.start >= base.end:
            break
        if hole.start > cursor:
            free.append(Span(cursor, hole.start))
        cursor = max(cursor, hole.end)
    if cursor < base.end:
        free.append(Span(cursor, base.end))
    return free


def free_gaps(window: Span, occupied: Iterable[Span], alignment: int = 1) -> list[Span]:
    """Free parts of ``window``, each shrunk to ``alignment`` boundaries; empty ones dropped."""
    gaps = []
    for gap in subtract(window, occupied):
        aligned = gap.aligned_inward(alignment)
        if aligned is not None:
            gaps.append(aligned)
    return gaps


def largest(spans: Iterable[Span]) -> Span | None:
    """The biggest span (the lowest one among equals), or None for no spans."""
    best: Span | None = None
    for span in spans:
        if best is None or (span.size, -span.start) > (best.size, -best.start):
            best = span
    return best


def total(spans: Iterable[Span]) -> int:
    """Sum of sizes (the spans must not overlap: normalize first otherwise)."""
    return sum(span.size for span in spans)


def slots(gaps: Iterable[Span], slot_size: int) -> Iterator[int]:
    """Start address of every ``slot_size``-aligned slot of ``slot_size`` inside ``gaps``."""
    for gap in gaps:
        start = align_up(gap.start, slot_size)
        while start + slot_size <= gap.end:
            yield start
            start += slot_size


def count_slots(gaps: Iterable[Span], slot_size: int) -> int:
    """How many aligned ``slot_size`` slots fit in ``gaps`` (computed, not enumerated)."""
    count = 0
    for gap in gaps:
        first = align_up(gap.start, slot_size)
        last = align_down(gap.end, slot_size)
        if last > first:
            count += (last - first) // slot_size
    return count
