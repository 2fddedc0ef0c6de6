"""The allocator replay's compiled engine (``_replay.c``): the one place that imports it.

The C engine runs the rules of :mod:`layoutkit.window.replay_engine` (the numpy engine,
its twin and reference) one run at a time with one scalar step per request, where numpy
pays a few dozen calls per step across the runs. It is built when the package is
installed (``setup.py``); when it is missing (a source tree nobody built) the replay runs
the numpy engine instead, and the test suite fails under ``LAYOUTKIT_REQUIRE_ALL=1``.

Its random numbers are its own (one xoshiro256** stream per seed, run and state): on
the same seed it gives the numpy engine's statistics within sampling error, and exactly
its results with the zero-seeded LCG, where no randomness is left.
"""

from __future__ import annotations

from layoutkit.errors import UsageError
from layoutkit.window.replay_model import Generation, HeapTiming, Outcome, Setup

try:
    from layoutkit.window import _replay
except ImportError:  # not built: the numpy engine stands in
    _replay = None  # type: ignore[assignment]


def available() -> bool:
    """Whether the compiled engine was built with the package."""
    return _replay is not None


def run(s: Setup, out: Outcome) -> None:
    """Replay every run of ``s`` into ``out``'s zeroed arrays (C-contiguous int64;
    ``s.taken`` and ``s.heap_lo``/``heap_hi``/``lcg_table`` as :func:`replay._setup`
    makes them: C-contiguous, one byte and int64 per item)."""
    if _replay is None:
        raise UsageError("the compiled replay engine is not built (install layoutkit with "
                         "pip, which compiles it), and the numpy engine was not chosen")
    if s.m_taken is not None:
        # Only replay_fixed's captured layouts carry the far range's own mappings, and it
        # runs the numpy engine; the C engine has no input for them.
        raise ValueError("the compiled engine does not model captured far-range mappings "
                         "(Setup.m_taken): replay them with the numpy engine")
    _replay.run(
        taken=s.taken, heap_lo=s.heap_lo, heap_hi=s.heap_hi,
        lcg=s.lcg_table if s.lcg_table is not None else s.heap_lo[:0],
        aborts=out.aborts, syscalls=out.syscalls, placed=out.placed, far=out.far,
        held=out.held,
        generation=1 if s.generation is Generation.LJ2025 else 0,
        heap_timing=0 if s.heap_timing is HeapTiming.BEFORE else 1,
        runs=s.runs, states=s.states, areas=s.areas, k=s.k, retries=s.retries, seed=s.seed,
        iterations=s.iterations, draw_lo=s.draw_lo, draw_n=s.draw_n,
        accept_lo=s.accept_lo, accept_hi=s.accept_hi, jr=s.jr, n_w=s.taken.shape[1],
        m_cols=s.m_cols, m_top=s.m_top,
        fallback_top=-1 if s.fallback_top is None else s.fallback_top,
        m_arenas=s.m_arenas, m_hole=s.m_hole if s.m_hole is not None else s.heap_lo[:0])
