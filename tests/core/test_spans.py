"""Half-open span arithmetic: exact examples, then properties against a set-of-ints model.

The model is the plainest one there is: a span ``[s, e)`` is ``set(range(s, e))`` and
a list of spans is the union of those sets. Properties run on small integer ranges so
every address can be enumerated.
"""

from __future__ import annotations

from collections.abc import Iterable

import pytest
from hypothesis import given
from hypothesis import strategies as st

from layoutkit.core.spans import (
    Span,
    align_down,
    align_up,
    clamp,
    count_slots,
    free_gaps,
    largest,
    normalize,
    slots,
    subtract,
    total,
)

# --- the model ------------------------------------------------------------------------


def addresses(spans: Iterable[Span]) -> set[int]:
    return {a for span in spans for a in range(span.start, span.end)}


def runs(points: set[int]) -> list[Span]:
    """The maximal runs of consecutive ints in ``points``, in order."""
    out: list[Span] = []
    for a in sorted(points):
        if out and out[-1].end == a:
            out[-1] = Span(out[-1].start, a + 1)
        else:
            out.append(Span(a, a + 1))
    return out


def aligned_blocks(points: set[int], size: int) -> list[int]:
    """Starts of the ``size``-aligned blocks of ``size`` lying wholly inside ``points``."""
    starts = {a - a % size for a in points}
    return sorted(s for s in starts if all(s + i in points for i in range(size)))


LIMIT = 64
small_spans = st.tuples(st.integers(0, LIMIT), st.integers(0, LIMIT)).map(
    lambda t: Span(min(t), max(t))
)
span_lists = st.lists(small_spans, max_size=8)


# --- Span itself ----------------------------------------------------------------------


def test_span_basics() -> None:
    span = Span(0x1000, 0x2000)
    assert span.size == 0x1000
    assert not span.empty
    assert Span(0x1000, 0x1000).empty and Span(0x1000, 0x1000).size == 0
    assert 0x1000 in span and 0x1FFF in span
    assert 0x2000 not in span and 0xFFF not in span
    assert "0x1000" not in span  # addresses are ints, never hex strings
    assert repr(span) == "Span(0x1000, 0x2000)"
    assert str(span) == "[0x1000, 0x2000)"
    assert sorted([Span(5, 9), Span(1, 9), Span(1, 3)]) == [Span(1, 3), Span(1, 9), Span(5, 9)]


@pytest.mark.parametrize(("start", "end"), [(5, 4), (-1, 3), (-2, -1), (-1, -1), (1, 0)])
def test_invalid_spans_raise(start: int, end: int) -> None:
    with pytest.raises(ValueError, match="not a span"):
        Span(start, end)


def test_zero_is_a_valid_start() -> None:
    assert Span(0, 0).empty
    assert Span(0, 1).size == 1


@pytest.mark.parametrize("alignment", [0, -1, -4096])
def test_alignment_must_be_positive(alignment: int) -> None:
    with pytest.raises(ValueError, match="alignment"):
        align_down(0x1234, alignment)
    with pytest.raises(ValueError, match="alignment"):
        align_up(0x1234, alignment)


def test_align() -> None:
    assert align_down(0x1234, 0x1000) == 0x1000
    assert align_up(0x1234, 0x1000) == 0x2000
    assert align_down(0x2000, 0x1000) == align_up(0x2000, 0x1000) == 0x2000
    assert align_down(-1, 0x1000) == -0x1000  # negative values floor, like clamp expects
    assert align_up(-1, 0x1000) == 0
    assert align_down(10, 3) == 9 and align_up(10, 3) == 12  # any positive alignment


def test_intersect_and_overlap() -> None:
    a = Span(0x1000, 0x3000)
    assert a.intersect(Span(0x2000, 0x4000)) == Span(0x2000, 0x3000)
    assert a.overlap(Span(0x2000, 0x4000)) == 0x1000
    assert a.intersect(Span(0x1800, 0x1900)) == Span(0x1800, 0x1900)  # inside
    assert a.intersect(Span(0, 0x8000)) == a  # around
    # Touching spans share no address.
    assert a.intersect(Span(0x3000, 0x4000)) is None
    assert a.intersect(Span(0, 0x1000)) is None
    assert a.overlap(Span(0x3000, 0x4000)) == 0
    assert not a.overlaps(Span(0x3000, 0x4000))
    assert a.overlaps(Span(0x2FFF, 0x4000))
    assert a.intersect(Span(0x5000, 0x6000)) is None


def test_contains() -> None:
    a = Span(0x1000, 0x3000)
    assert a.contains(a)
    assert a.contains(Span(0x1000, 0x1001))
    assert a.contains(Span(0x2FFF, 0x3000))
    assert not a.contains(Span(0x2FFF, 0x3001))
    assert not a.contains(Span(0xFFF, 0x1001))


def test_aligned_inward() -> None:
    assert Span(0x1001, 0x3FFF).aligned_inward(0x1000) == Span(0x2000, 0x3000)
    assert Span(0x1000, 0x3000).aligned_inward(0x1000) == Span(0x1000, 0x3000)
    assert Span(0x1001, 0x2FFF).aligned_inward(0x1000) is None  # no whole page
    assert Span(0x1001, 0x2000).aligned_inward(0x1000) is None  # start rounds up to end
    assert Span(0x1001, 0x1003).aligned_inward(1) == Span(0x1001, 0x1003)


def test_clamp() -> None:
    limit = Span(0x1_0000, 1 << 47)
    assert clamp(-(2**31), 0x40_1000, limit) == Span(0x1_0000, 0x40_1000)
    assert clamp(0x7FFF_0000_0000, 2**48, limit) == Span(0x7FFF_0000_0000, 1 << 47)
    assert clamp(0x2_0000, 0x3_0000, limit) == Span(0x2_0000, 0x3_0000)
    assert clamp(0, 0x1_0000, limit) is None  # ends where the limit starts
    assert clamp(1 << 47, 1 << 48, limit) is None  # starts where the limit ends
    assert clamp(0x3_0000, 0x2_0000, limit) is None  # reversed


# --- normalize / subtract / free_gaps -------------------------------------------------


def test_normalize() -> None:
    spans = [Span(5, 7), Span(0, 2), Span(2, 3), Span(6, 9), Span(4, 4), Span(20, 30)]
    assert normalize(spans) == [Span(0, 3), Span(5, 9), Span(20, 30)]
    assert normalize([Span(0, 10), Span(2, 3)]) == [Span(0, 10)]  # contained
    assert normalize([Span(4, 4)]) == []
    assert normalize([]) == []


BASE = Span(0x1000, 0x2000)


@pytest.mark.parametrize(
    ("holes", "free"),
    [
        ([], [BASE]),
        # Touching holes merge: nothing free between them.
        ([Span(0x1100, 0x1200), Span(0x1200, 0x1300)],
         [Span(0x1000, 0x1100), Span(0x1300, 0x2000)]),
        # Overlapping holes, given out of order.
        ([Span(0x1280, 0x1300), Span(0x1100, 0x12FF)],
         [Span(0x1000, 0x1100), Span(0x1300, 0x2000)]),
        # A hole that touches the base from outside takes nothing.
        ([Span(0x800, 0x1000), Span(0x2000, 0x2100)], [BASE]),
        # Holes straddling either end.
        ([Span(0x800, 0x1001), Span(0x1FFF, 0x3000)], [Span(0x1001, 0x1FFF)]),
        # A hole flush with each end.
        ([Span(0x1000, 0x1100), Span(0x1F00, 0x2000)], [Span(0x1100, 0x1F00)]),
        # One byte left between two holes.
        ([Span(0x1000, 0x1800), Span(0x1801, 0x2000)], [Span(0x1800, 0x1801)]),
        # Covered whole, by one hole or by several.
        ([Span(0, 0x10000)], []),
        ([Span(0x1000, 0x1800), Span(0x1800, 0x2000)], []),
        # Empty holes take nothing.
        ([Span(0x1500, 0x1500)], [BASE]),
        # Holes entirely outside.
        ([Span(0, 0x10), Span(0x5000, 0x6000)], [BASE]),
    ],
)  # fmt: skip
def test_subtract(holes: list[Span], free: list[Span]) -> None:
    assert subtract(BASE, holes) == free


def test_subtract_from_an_empty_base() -> None:
    assert subtract(Span(0x1000, 0x1000), []) == []
    assert subtract(Span(0x1000, 0x1000), [Span(0, 0x800)]) == []


def test_free_gaps_with_alignment() -> None:
    window = Span(0x1_0000, 0x10_0000)
    occupied = [Span(0x1_8000, 0x2_8000), Span(0x5_0000, 0x6_0000), Span(0x8_0001, 0x9_FFFF)]
    # Unaligned: the plain subtraction.
    assert free_gaps(window, occupied) == [
        Span(0x1_0000, 0x1_8000),
        Span(0x2_8000, 0x5_0000),
        Span(0x6_0000, 0x8_0001),
        Span(0x9_FFFF, 0x10_0000),
    ]
    # 64 KiB-aligned: [0x10000, 0x18000) holds no aligned 64 KiB and goes; the others
    # shrink to 64 KiB boundaries.
    assert free_gaps(window, occupied, 0x1_0000) == [
        Span(0x3_0000, 0x5_0000),
        Span(0x6_0000, 0x8_0000),
        Span(0xA_0000, 0x10_0000),
    ]
    assert free_gaps(window, [window], 0x1000) == []
    with pytest.raises(ValueError, match="alignment"):
        free_gaps(window, [], 0)


# --- largest / total / slots ----------------------------------------------------------


def test_largest() -> None:
    assert largest([]) is None
    assert largest([Span(0, 4)]) == Span(0, 4)
    assert largest([Span(0, 4), Span(10, 20), Span(30, 40), Span(50, 52)]) == Span(10, 20)
    assert largest(iter([Span(0, 4), Span(5, 6)])) == Span(0, 4)  # any iterable


def test_largest_picks_the_lowest_among_equals_in_any_order() -> None:
    assert largest([Span(30, 40), Span(10, 20)]) == Span(10, 20)


def test_total() -> None:
    assert total([]) == 0
    assert total([Span(0, 4), Span(10, 20)]) == 14


def test_slots_and_count_slots() -> None:
    size = 0x1_0000
    gaps = [Span(0x1000, 0x5000), Span(0x1_8000, 0x3_FFFF), Span(0x10_0000, 0x14_0000)]
    # [0x1000, 0x5000) holds none; [0x18000, 0x3ffff) one (0x20000: 0x30000 + 64 KiB
    # would end past 0x3ffff); [0x100000, 0x140000) four.
    assert list(slots(gaps, size)) == [0x2_0000, 0x10_0000, 0x11_0000, 0x12_0000, 0x13_0000]
    assert count_slots(gaps, size) == 5
    # A slot never straddles two gaps, even touching ones: normalize first.
    touching = [Span(0, 0x8000), Span(0x8000, 0x1_0000)]
    assert count_slots(touching, size) == 0 == len(list(slots(touching, size)))
    assert count_slots(normalize(touching), size) == 1
    # Any positive slot size.
    assert list(slots([Span(1, 11)], 3)) == [3, 6]
    assert count_slots([Span(1, 11)], 3) == 2
    assert count_slots([], size) == 0
    with pytest.raises(ValueError, match="alignment"):
        count_slots(gaps, 0)


# --- properties against the model -----------------------------------------------------


@given(span_lists)
def test_normalize_matches_model(spans: list[Span]) -> None:
    assert normalize(spans) == runs(addresses(spans))


@given(small_spans, span_lists)
def test_subtract_matches_model(base: Span, holes: list[Span]) -> None:
    assert subtract(base, holes) == runs(addresses([base]) - addresses(holes))


@given(small_spans, span_lists, st.integers(1, 9))
def test_free_gaps_matches_model(window: Span, occupied: list[Span], alignment: int) -> None:
    free = addresses([window]) - addresses(occupied)
    kept = {b + i for b in aligned_blocks(free, alignment) for i in range(alignment)}
    gaps = free_gaps(window, occupied, alignment)
    assert gaps == runs(kept)
    for gap in gaps:
        assert gap.start % alignment == 0 and gap.end % alignment == 0


@given(span_lists, st.integers(1, 9))
def test_slots_match_model(spans: list[Span], size: int) -> None:
    gaps = normalize(spans)
    expected = aligned_blocks(addresses(gaps), size)
    assert list(slots(gaps, size)) == expected
    assert count_slots(gaps, size) == len(expected)


@given(small_spans, span_lists, st.integers(1, 9))
def test_count_slots_equals_slots(window: Span, occupied: list[Span], size: int) -> None:
    gaps = subtract(window, occupied)
    assert count_slots(gaps, size) == len(list(slots(gaps, size)))


@given(small_spans, small_spans)
def test_pairwise_operations_match_model(a: Span, b: Span) -> None:
    common = addresses([a]) & addresses([b])
    part = a.intersect(b)
    assert addresses([part] if part else []) == common
    assert part is None or not part.empty
    assert a.overlap(b) == len(common)
    assert a.overlaps(b) == bool(common)
    if not b.empty:
        assert a.contains(b) == (addresses([b]) <= addresses([a]))


@pytest.mark.parametrize(("a", "b"), [(Span(0, 2), Span(1, 1)), (Span(1, 1), Span(0, 2))])
def test_an_empty_span_overlaps_nothing(a: Span, b: Span) -> None:
    assert a.overlap(b) == 0 and a.intersect(b) is None
    assert not a.overlaps(b)


@given(span_lists)
def test_total_and_largest_of_normalized_spans(spans: list[Span]) -> None:
    merged = normalize(spans)
    assert total(merged) == len(addresses(spans))
    best = largest(merged)
    if not merged:
        assert best is None
        return
    assert best is not None
    biggest = max(span.size for span in merged)
    assert best == min(span for span in merged if span.size == biggest)
