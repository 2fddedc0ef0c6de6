"""The model replay on a fixed layout against counts that follow from lj_mcode.c alone
(docs/allocator-replay.md): a window that is full leaves every hint taken, so each
request's calls are the algorithm's iteration counts."""

from __future__ import annotations

import pytest

from layoutkit.core.arches import by_name
from layoutkit.core.spans import Span
from layoutkit.errors import UsageError
from layoutkit.window.profiles import jit_window
from layoutkit.window.replay_fixed import FixedDemand, FixedLayout, replay_fixed
from layoutkit.window.replay_model import Generation

X86 = by_name("x86_64")
ANCHOR = 0x5555_5555_0000
TOP = 1 << 47
MMAP_BASE = 0x7F00_0000_0000


def _layout(gen: Generation, jumprange: int, *, full: bool) -> FixedLayout:
    jit = jit_window(gen.value, X86, ANCHOR, Span(0, TOP), jumprange=jumprange)
    image = Span(ANCHOR - 0x10000, ANCHOR + 0x10000)
    occupied = [image, Span(MMAP_BASE - (4 << 20), MMAP_BASE)]  # libraries, stacks
    if full:
        occupied.append(Span(jit.window.start - (8 << 20), jit.window.end + (8 << 20)))
    return FixedLayout(tuple(occupied), jit, MMAP_BASE, 0x10000, TOP)


@pytest.mark.parametrize(("gen", "jumprange", "iterations"), [
    (Generation.LJ21, 23, 23), (Generation.LJ2017, 24, 32)])
def test_full_window_before_2025_every_request_aborts(gen: Generation, jumprange: int,
                                                      iterations: int) -> None:
    # No area held: hint 0 is not tried, then JR - 1 (2017: 31) random hints, each
    # taken: an mmap the kernel puts elsewhere and its munmap. Then LJ_TRERR_MCODEAL;
    # the state asks again `retries` times.
    states, retries = 3, 2
    demand = FixedDemand(gen, jumprange, states, 8, retries, runs_each=5)
    out = replay_fixed([_layout(gen, jumprange, full=True)], demand)
    requests = states * (retries + 1)
    assert out.placed.tolist() == [0] * 5
    assert out.aborts.tolist() == [[retries + 1] * states] * 5
    assert out.syscalls.tolist() == [requests * 2 * (iterations - 1)] * 5


def test_full_window_2025_moves_to_a_new_range() -> None:
    # First request: 15 random tries (i = 1..15), each a pair, then, holding no area,
    # mmap(NULL) and mcode_setrange around it: 31 calls. Every later request takes the
    # slot below the last area in the new range: one call each. No abort; all far.
    areas, states = 4, 2
    demand = FixedDemand(Generation.LJ2025, 22, states, areas, 3, runs_each=5)
    out = replay_fixed([_layout(Generation.LJ2025, 22, full=True)], demand)
    assert out.placed.tolist() == [states * areas] * 5
    assert out.far.tolist() == [states * areas] * 5
    assert out.aborts.tolist() == [[0] * states] * 5
    assert out.syscalls.tolist() == [states * (31 + areas - 1)] * 5


def test_empty_window_one_call_per_area_after_the_first() -> None:
    # luajit-2.1 with an empty window: the first area comes from the first random hint
    # (one call), every later one from the slot below the last (one call) unless the
    # image is there; the demand is met with no abort.
    demand = FixedDemand(Generation.LJ21, 31, 2, 8, 3, runs_each=20)
    out = replay_fixed([_layout(Generation.LJ21, 31, full=False)], demand)
    assert out.placed.tolist() == [16] * 20
    assert out.aborts.sum() == 0
    assert all(16 <= calls <= 16 + 4 for calls in out.syscalls.tolist())


def test_a_window_over_the_mmap_area_is_refused() -> None:
    jit = jit_window("luajit-2.1", X86, MMAP_BASE, Span(0, TOP))
    layout = FixedLayout((), jit, MMAP_BASE, 0x10000, TOP)
    with pytest.raises(UsageError, match="the window reaches the mmap area"):
        replay_fixed([layout], FixedDemand(Generation.LJ21, 31, 1, 1, 0, 1))
