"""The allocator replay over captured layouts (ASLR off: each layout is what one process had).

Input: for each process, its mappings (from its /proc/self/maps), the JIT window at its
own anchor, where its top-down mmap area starts (mmap_base) and the kernel's bounds. The
model (:mod:`layoutkit.window.replay_engine`, algorithm in docs/allocator-replay.md) runs
``runs_each`` replays on every layout; the heap does not grow (the process that was
captured grows none while it allocates).

Columns: the window ``W`` as :mod:`layoutkit.window.replay` counts it; for the 2025
allocator also ``M``, a span of slots around the layout's mmap_base with the process's
own occupancy in it: from mmap_base up (the gap below the stack, free for hints) and down
far enough for every state's area and one range below that.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from layoutkit.core.spans import Span, align_down
from layoutkit.errors import UsageError
from layoutkit.window.profiles import JitWindow
from layoutkit.window.replay_engine import Engine
from layoutkit.window.replay_model import (
    SLOT,
    Bools,
    Generation,
    HeapTiming,
    Outcome,
    PrngModel,
    Setup,
    lcg_columns,
)

_DEEP = 1 << 30  # mappings this far below mmap_base count towards the depth of M


@dataclass(frozen=True)
class FixedLayout:
    """One process's address space as the replay sees it."""

    occupied: tuple[Span, ...]  # every mapping, half-open
    jit: JitWindow  # the window at the process's anchor
    mmap_base: int  # where mmap(NULL) starts its top-down search
    mmap_min_addr: int
    user_top: int


@dataclass(frozen=True)
class FixedDemand:
    """What the states ask for on a fixed layout."""

    generation: Generation
    jumprange: int  # LJ_TARGET_JUMPRANGE the window was computed with
    states: int
    areas: int  # areas each state wants
    retries: int
    runs_each: int  # replays per layout
    seed: int = 1


def _occupancy(lay: FixedLayout, base: int, cols: int) -> Bools:
    """Slots ``[base + i * SLOT, ...)`` for ``i < cols`` that are not free for a hint."""
    taken = np.zeros(cols, dtype=np.bool_)
    top = base + cols * SLOT
    forbidden = (Span(min(base, 0), lay.mmap_min_addr), Span(lay.user_top, max(top, lay.user_top)))
    for span in (*lay.occupied, *forbidden):
        lo, hi = max(span.start, base), min(span.end, top)
        if lo < hi:
            taken[(lo - base) // SLOT: -(-(hi - base) // SLOT)] = True
    return taken


def _mmap_depth(lay: FixedLayout) -> int:
    """Bytes mapped within ``_DEEP`` below mmap_base (libraries, thread stacks)."""
    floor = lay.mmap_base - _DEEP
    return sum(min(s.end, lay.mmap_base) - max(s.start, floor) for s in lay.occupied
               if s.end > floor and s.start < lay.mmap_base)


def fixed_setup(layouts: Sequence[FixedLayout], demand: FixedDemand) -> Setup:
    """The engine's input: ``demand.runs_each`` rows per layout, in layout order."""
    if not layouts:
        raise UsageError("a fixed-layout replay needs at least one layout")
    gen, jr, k = demand.generation, demand.jumprange, 1
    space = 1 << (jr - 16)
    rng = (1 << (jr - 1)) - (1 << 21)
    rows: list[Bools] = []
    m_rows: list[Bools] = []
    m_top = 0
    if gen is Generation.LJ2025:
        need = max(_mmap_depth(lay) for lay in layouts)
        m_top = -(-need // SLOT) + demand.states * demand.areas + space
    n_w = 0
    for lay in layouts:
        if lay.jit.window.start <= lay.mmap_base < lay.jit.window.end:
            raise UsageError("the window reaches the mmap area: a fixed-layout replay "
                             "models a window away from it")
        if gen is Generation.LJ2025:
            base = lay.jit.hint_lo
            n_w = (lay.jit.hint_hi - 1 - lay.jit.hint_lo) // SLOT
            m_base = align_down(lay.mmap_base, SLOT) - m_top * SLOT
            m_rows.append(_occupancy(lay, m_base, m_top + space))
        else:
            base = lay.jit.target - rng
            n_w = 2 * rng // SLOT
        rows.append(_occupancy(lay, base, n_w))
    each = demand.runs_each
    old = gen is Generation.LJ2017
    iterations = 32 if old else jr
    # luajit-2017: every state's zero-seeded LCG, at most `iterations` draws per request.
    table = lcg_columns(gen, jr, k, (demand.retries + 1) * demand.areas * iterations + 1) \
        if old else None
    taken = np.repeat(np.stack(rows), each, axis=0)
    runs = taken.shape[0]
    zero = np.zeros(runs, dtype=np.int64)
    m_taken = np.repeat(np.stack(m_rows), each, axis=0) if m_rows else None
    return Setup(
        generation=gen, prng=PrngModel.LCG_ZERO_SEED if old else PrngModel.SECURE_PER_STATE,
        runs=runs, states=demand.states,
        areas=demand.areas, k=k, retries=demand.retries, seed=demand.seed,
        heap_timing=HeapTiming.BEFORE, closed_form=True, taken=taken, heap_lo=zero,
        heap_hi=zero, iterations=iterations, draw_lo=rng // 2 // SLOT if old else 0,
        draw_n=(rng if old else 2 * rng) // SLOT - k, accept_lo=1, accept_hi=n_w - 1,
        lcg_table=table, jr=jr,
        m_cols=m_top + space if m_taken is not None else 0, m_top=m_top, m_taken=m_taken)


def replay_fixed(layouts: Sequence[FixedLayout], demand: FixedDemand) -> Outcome:
    """Per-run totals of ``demand.runs_each`` replays on every layout (rows in order)."""
    return Engine(fixed_setup(layouts, demand)).run()
