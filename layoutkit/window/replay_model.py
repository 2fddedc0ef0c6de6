"""The values the allocator replay runs on: generations, PRNG models, the engine's input
(:class:`Setup`, already in slot columns) and output (:class:`Outcome`), and the LCG hint
sequence of the older LuaJIT versions. The engine itself is
:mod:`layoutkit.window.replay_engine`.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

Ints = npt.NDArray[np.int64]
Bools = npt.NDArray[np.bool_]

SLOT = 64 << 10


class Generation(enum.Enum):
    """Which ``mcode_alloc`` a replay runs."""

    LJ2017 = "luajit-2017"
    LJ21 = "luajit-2.1"
    LJ2025 = "luajit-2025"


class HeapTiming(enum.Enum):
    """When the brk heap grows relative to the JIT's requests."""

    BEFORE = "before"  # grown to its full reserve before the first request
    DURING = "during"  # grows by 1/areas of it at the start of each of the first rounds


class PrngModel(enum.Enum):
    """Where ``mcode_alloc`` takes its random hints from, per LuaJIT version.

    ``SECURE_PER_STATE``: ``lj_prng_u64(&J2G(J)->prng)``, a Tausworthe generator in each
    global_State seeded from getrandom() by ``lj_prng_seed_secure`` in ``lua_newstate``
    (src/lj_prng.c, src/lj_state.c; LuaJIT 2.1 since 2020): independent streams per state.
    ``LCG_ZERO_SEED``: ``LJ_PRNG_BITS(J, bits)`` (src/lj_jit.h before 2020):
    ``prngstate = prngstate * 1103515245 + 12345`` in each jit_State, which starts zeroed
    with its GG_State: every state draws the same hint sequence (apart from the draws
    ``penalty_pc`` takes, which this model does not replay).
    """

    SECURE_PER_STATE = "secure-per-state"
    LCG_ZERO_SEED = "lcg-zero-seed"


class EngineKind(enum.Enum):
    """Which engine runs the replay: the same rules, two implementations."""

    COMPILED = "compiled"  # layoutkit/window/_replay.c, built with the package
    NUMPY = "numpy"  # layoutkit/window/replay_engine.py, vectorised over runs


@dataclass(frozen=True, eq=False)
class Setup:
    """Everything the engine needs, already in slot columns."""

    generation: Generation
    prng: PrngModel
    runs: int
    states: int
    areas: int  # areas each state wants
    k: int  # slots per area
    retries: int
    seed: int
    heap_timing: HeapTiming
    closed_form: bool
    taken: Bools  # (runs, n_w) initial occupancy of the window
    heap_lo: Ints  # (runs,) heap's first column in W (clipped to [0, n_w])
    heap_hi: Ints  # (runs,) heap's last column + 1 when grown fully (clipped)
    # luajit-2017 / 2.1
    iterations: int  # loop iterations of mcode_alloc (JR; 32 for 2017)
    draw_lo: int  # column of the first drawable hint
    draw_n: int  # how many consecutive hint columns the draws cover
    accept_lo: int  # first column whose area LuaJIT accepts
    accept_hi: int  # one past the last column an area may end in
    lcg_table: Ints | None  # hint columns in draw order (LCG_ZERO_SEED)
    # luajit-2025
    jr: int
    m_cols: int  # columns of M
    m_top: int  # first column of M (relative) above which everything is taken
    # A window inside the top-down mmap area (library anchor): the window column below
    # which mmap(NULL), and a hint the kernel cannot honour, land. None: far away.
    fallback_top: int | None = None
    # luajit-2025 on a captured layout: (runs, m_cols) occupancy of M as the process had
    # it (above m_top too: the gap below the stack is free for hints). None: M is free
    # below m_top and taken from m_top up.
    m_taken: Bools | None = None
    # luajit-2025, a window far from the mmap area: above M's free columns [0, m_top),
    # glibc's thread arenas (m_arenas columns, taken), then the hole their 64 MiB
    # alignment leaves below the thread stacks (m_hole[run] columns, free), then the
    # stacks (taken). None: no arenas and no hole (everything above m_top taken).
    m_arenas: int = 0
    m_hole: Ints | None = None


@dataclass(frozen=True, eq=False)
class Outcome:
    """Per-run, per-state totals of one replay."""

    aborts: Ints  # (runs, states)
    syscalls: Ints  # (runs,) mmap + munmap calls
    placed: Ints  # (runs,) areas handed out (including those flushed later)
    far: Ints  # (runs,) areas placed outside the first range (2025)
    held: Ints  # (runs,) areas held at the end


def lcg_columns(generation: Generation, jr: int, k: int, count: int) -> Ints:
    """Hint columns of the zero-seeded LCG, in draw order, after LuaJIT's redraw loop.

    LJ_PRNG_BITS (src/lj_jit.h before 2020): ``prngstate = prngstate * 1103515245 + 12345``
    (mod 2^32), result ``prngstate >> (32 - bits)``. luajit-2.1 (commit 4e308361):
    ``hint = LJ_PRNG_BITS(J, JR-16) << 16`` redrawn while ``hint + sz >= 2 * range``.
    luajit-2017: ``hint = (0x78fb ^ LJ_PRNG_BITS(J, 15)) << 16`` redrawn while
    ``hint + sz >= range``. Columns count slots from the first hint (target - range, or
    target - range/2 for 2017).
    """
    rng = (1 << (jr - 1)) - (1 << 21)
    limit = (2 * rng if generation is Generation.LJ21 else rng) // SLOT  # hint_col + k <= limit
    state, out = 0, list[int]()
    while len(out) < count:
        state = (state * 1103515245 + 12345) & 0xFFFFFFFF
        lj21 = generation is Generation.LJ21
        col = state >> (32 - (jr - 16)) if lj21 else 0x78FB ^ (state >> 17)
        if col + k < limit:
            out.append(col)
    return np.asarray(out, dtype=np.int64)
