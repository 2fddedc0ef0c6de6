"""Replay LuaJIT's mcode allocator for N concurrent states over the ASLR distribution.

Slot arithmetic says how many areas *could* fit; the replay says what the allocator
really does with the layout it gets: random hints that miss the last free slots, aborts
and flushes that free areas and ask again, the heap growing under the JIT, the 2025
allocator's far ranges. Input: what the rest of layoutkit computes (the image, the kernel
configuration, the profile's :class:`~layoutkit.window.profiles.JitWindow` at the
ASLR-off load bias, the run-time anchor) and a :class:`ReplayParams`. Output: a
:class:`ReplayResult` of statistics over ``runs`` seeded runs.

The model, rule by rule, with its sources, is in :mod:`layoutkit.window.replay_engine`
(the allocators and the interleaving) and :mod:`layoutkit.window.aslr` (the layouts).
What it leaves out: for a library anchor, the holes glibc's 64 MiB arena alignment leaves
(arenas and stacks are packed; far from the mmap area the hole above the first arena is
modelled, where the 2025 allocator's far ranges start), the program's own mappings made
before its threads start, shared libraries of a dynamic executable, PRNG draws made by
``penalty_pc``, the main stack's guard gap, and hints whose address is 0 (counted as a
wasted call pair).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from layoutkit.core.model import ElfImage, LoadKind
from layoutkit.core.scenario import DEFAULT_HEAP, DEFAULT_RUNS, DEFAULT_SEED
from layoutkit.core.spans import align_down
from layoutkit.errors import UsageError
from layoutkit.window import replay_compiled
from layoutkit.window.aslr import Layouts, draw
from layoutkit.window.kernel import PAGE, STACK_RLIMIT, KernelConfig
from layoutkit.window.profiles import JitWindow
from layoutkit.window.replay_engine import Engine
from layoutkit.window.replay_model import (
    SLOT,
    EngineKind,
    Generation,
    HeapTiming,
    Ints,
    Outcome,
    PrngModel,
    Setup,
    lcg_columns,
)

__all__ = ["EngineKind", "Generation", "HeapTiming", "Outcome", "PrngModel", "ReplayParams",
           "ReplayResult", "Spread", "engine_kind", "replay", "safe_states", "simulate"]

# What one mmap or munmap of a 64 KiB area costs, averaged over the two: the real
# workload's --mmap-bench (an mmap at a taken hint, which the kernel places elsewhere,
# and its munmap: a failed probe) natively on a 2-core x86-64 host (Linux 6.18), best of
# the runs: 1.4 us per mmap, 2.3 us per munmap; a one-state workload run measured
# 2.2-2.3 us per call, and the same host under load 3-9 us. (bench/bench_probe.py's
# scans, mmap at free hints, gave 1.2 us.) Under many threads the calls serialise on the
# mm lock, so the sum over all states is the warm-up cost.
DEFAULT_SYSCALL_SECONDS = 2.0e-6
# A state that aborts asks again for its areas after each of its first DEFAULT_RETRIES
# aborts and stops after one more (Engine.abort: want = aborts <= retries). 3 is the
# real workload's bound (layoutkit/native/workload/workload.lua: a call of a new
# function is one trace and one area request; it stops after more than 3 aborts), with
# which the replay was checked against LuaJIT in the arm64 guest:
# bench/results/calibration-arm64.md. A real program retries as long as its hot code
# runs: the bound sets the aborts and warm-up counted, never p_abort or safe_states
# (a run's first abort comes before any state asks again).
DEFAULT_RETRIES = 3
DEFAULT_CORES = 4
ARENA = 64 << 20  # glibc malloc/arena.c HEAP_MAX_SIZE on 64-bit
ABORT_LIMIT = 0.01
MEMORY_LIMIT = 4 << 30  # refuse a replay that would need more than this

_DEFAULT_PRNG = {
    Generation.LJ2017: PrngModel.LCG_ZERO_SEED,
    Generation.LJ21: PrngModel.SECURE_PER_STATE,  # Debian's 2.1.0~beta3+git20220320
    Generation.LJ2025: PrngModel.SECURE_PER_STATE,
}


@dataclass(frozen=True)
class ReplayParams:
    """What to replay: the demand, the heap, how many runs, and the randomness.

    The commands derive it from their :class:`~layoutkit.core.scenario.Scenario`
    (window/forecast.py ``replay_params``), which is validated where it is built; the
    values are not checked a second time here.
    """

    states: int = 1
    mcode: int | None = None  # bytes per state; None: the profile's maxmcode
    heap: int = DEFAULT_HEAP  # how far brk grows while the states compile
    heap_timing: HeapTiming = HeapTiming.DURING
    runs: int = DEFAULT_RUNS
    seed: int = DEFAULT_SEED
    retries: int = DEFAULT_RETRIES  # requests again after an abort, per state
    aslr: bool = True
    prng: PrngModel | None = None  # None: the generation's own (see _DEFAULT_PRNG)
    cores: int = DEFAULT_CORES  # glibc caps arenas at 8 x cores (malloc/arena.c)
    # Bytes the program maps top-down before its threads start (buffers above glibc's
    # mmap threshold, for example): they move the thread stacks, and so the hole above
    # the first arena (arena_hole), down by as much.
    premapped: int = 0
    syscall_seconds: float = DEFAULT_SYSCALL_SECONDS
    # numpy engine: with independent hints (per-state streams, one-slot areas) draw the
    # first hit from its geometric law instead of every miss. Same distribution; False
    # replays every hint. (The compiled engine draws every hint: it costs it little.)
    closed_form: bool = True
    # None: the compiled engine when it was built with the package, else numpy.
    engine: EngineKind | None = None


@dataclass(frozen=True)
class Spread:
    """A per-run quantity over the runs: mean, 5th/50th/95th percentile, maximum."""

    mean: float
    p5: float
    p50: float
    p95: float
    max: float


@dataclass(frozen=True)
class ReplayResult:
    """What ``runs`` replays of ``states`` states gave: the statistics issue 11 asks for,
    with everything needed to reproduce them (kernel, seed, parameters)."""

    profile: str
    kernel: str
    runs: int
    seed: int
    states: int
    aslr: bool
    retries: int
    heap: int
    heap_timing: HeapTiming
    prng: PrngModel
    p_abort: float  # share of runs with at least one trace abort
    aborts: Spread  # aborts per run
    states_aborted: float  # mean states per run that saw an abort
    syscalls_per_area: float  # mean mmap + munmap calls per area handed out
    warmup_seconds: float  # mean seconds per run spent in those calls
    syscall_seconds: float  # the cost per call used
    areas_placed: float  # mean areas handed out per run (flushed ones included)
    far_areas: float  # mean areas per run outside the first range (2025)
    safe_states: int | None  # largest N with p_abort < 1% (None: not searched)
    notes: tuple[str, ...]


def _generation(jit: JitWindow) -> Generation:
    """The allocator the profile runs (a fork such as OpenResty's runs an upstream one,
    with its own sizes)."""
    try:
        return Generation(jit.profile.allocator_name)
    except ValueError:
        raise UsageError(f"the replay models LuaJIT's allocators, not {jit.profile.name!r}: "
                         "use --jit luajit-2017|luajit-2.1|luajit-2025|luajit-openresty"
                         ) from None


def _jumprange(gen: Generation, kernel: KernelConfig) -> int:
    """LJ_TARGET_JUMPRANGE (src/lj_arch.h); 68354f44 raised MIPS to 28."""
    arch = kernel.arch
    jr = arch.luajit_jumprange_2025 if gen is Generation.LJ2025 else arch.luajit_jumprange
    if jr is None:
        raise UsageError(f"LuaJIT has no JIT for {kernel.arch}: nothing to replay")
    return jr


def kernel_label(kernel: KernelConfig) -> str:
    """Which kernel a replay assumed, in words (its release when known, and its source)."""
    rel = f"Linux {kernel.release}" if kernel.release else "Linux (current rules)"
    return (f"{rel} {kernel.arch}, {kernel.source}: VA {kernel.va_bits} bits, "
            f"mmap_min_addr {kernel.mmap_min_addr:#x}, brk randomised over "
            f"{kernel.brk_rnd >> 20} MiB")


def _paint(taken: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> None:
    """Mark columns ``[lo[r], hi[r])`` of every run ``r`` taken."""
    cols = np.arange(taken.shape[1], dtype=np.int64)[None, :]
    taken |= (cols >= lo[:, None]) & (cols < hi[:, None])


def _cols(addr: Ints, base: Ints | int, up: bool) -> Ints:
    """Window columns of addresses ``addr`` (rounded up or down to a slot)."""
    rel: Ints = addr - base
    return -(-rel // SLOT) if up else rel // SLOT


def columns(kernel: KernelConfig, jit: JitWindow, params: ReplayParams,
            states: int, extra_m: int = 0) -> tuple[int, int, int, int]:
    """(k, areas, n_w, m_cols) of a replay: slots per area, areas per state, window
    columns, far-range columns (``extra_m`` more for the 2025 allocator: the arenas and
    the hole below them); refused before anything is allocated when the window has no
    room for one slot or the replay would need more than :data:`MEMORY_LIMIT`."""
    gen = _generation(jit)
    jr = _jumprange(gen, kernel)
    area = jit.profile.sizemcode
    k = -(-area // SLOT)
    mcode = params.mcode if params.mcode is not None else jit.profile.maxmcode
    if mcode > jit.profile.maxmcode:
        raise UsageError(f"--mcode {mcode}: above {jit.profile.name}'s maxmcode "
                         f"({jit.profile.maxmcode} bytes): lj_mcode_limiterr would abort")
    areas = -(-mcode // area)
    if gen is Generation.LJ2025:
        n_w = (jit.hint_hi - 1 - jit.hint_lo) // SLOT
    else:
        n_w = 2 * ((1 << (jr - 1)) - (1 << 21)) // SLOT
    if n_w < 1:
        # A window too small for one 64 KiB slot has no column to replay on (a window of a
        # few slots is replayed: every request aborts).
        raise UsageError(f"{jit.profile.name}: the window [{jit.hint_lo:#x}, {jit.hint_hi:#x}) "
                         "holds no 64 KiB slot: nothing to replay")
    runs = params.runs
    m_cols = states * areas + 2 * (1 << (jr - 16)) + extra_m if gen is Generation.LJ2025 else 0
    if engine_kind(params) is EngineKind.COMPILED:
        # One run at a time: every run's window (bytes) in, aborts per run and state out.
        need = runs * (n_w + 5 * 8) + runs * states * 8 + (n_w + m_cols) * 10 + states * (
            areas * 4 + 100)
    else:
        # taken + free lists (bool, int32 x 2 per column) and held areas (int32 per area).
        need = runs * (n_w + m_cols) * 9 + states * runs * areas * 4
    if need > MEMORY_LIMIT:
        raise UsageError(f"{runs} replay runs with {states} states need about {need >> 20} "
                         f"MiB for this window, over {MEMORY_LIMIT >> 20} MiB: use fewer runs")
    return k, areas, n_w, m_cols


def _setup(image: ElfImage, kernel: KernelConfig, jit: JitWindow, bias: int,
           params: ReplayParams, states: int, lay: Layouts) -> Setup:
    """The engine's input: every run's window occupancy in slot columns, and the rules."""
    gen = _generation(jit)
    jr = _jumprange(gen, kernel)
    m_arenas, m_hole = 0, None
    if gen is Generation.LJ2025 and image.load_kind in (LoadKind.EXEC, LoadKind.PIE):
        m_arenas, m_hole = arena_hole(kernel, lay, states, params.cores, params.premapped)
    extra_m = m_arenas + int(m_hole.max()) if m_hole is not None else 0
    k, areas, n_w, m_cols = columns(kernel, jit, params, states, extra_m)
    run_bias = np.asarray(lay.bias, dtype=np.int64)
    delta = run_bias - bias
    shift = (delta // SLOT) * SLOT  # the window follows the anchor in 64 KiB steps
    if gen is Generation.LJ2025:
        base = jit.hint_lo + shift
    else:
        rng = (1 << (jr - 1)) - (1 << 21)
        base = jit.target - rng + shift
    runs = params.runs
    space = 1 << (jr - 16)
    taken = np.zeros((runs, n_w), dtype=np.bool_)
    zero = np.zeros(runs, dtype=np.int64)
    # Outside user space: the kernel never honours such a hint (mm/mmap.c).
    _paint(taken, zero - 1, _cols(zero + kernel.mmap_min_addr, base, up=True))
    _paint(taken, _cols(zero + kernel.user_top, base, up=False), zero + n_w + 1)
    for seg in image.loads:
        if seg.memsz:
            span = seg.page_span(PAGE)
            _paint(taken, _cols(span.start + run_bias, base, False),
                   _cols(span.end + run_bias, base, True))
    fallback_top = None
    if image.load_kind in (LoadKind.EXEC, LoadKind.PIE):
        heap = np.asarray(lay.heap_start, dtype=np.int64)
        heap_lo = np.clip(_cols(heap, base, False), 0, n_w)
        heap_hi = np.clip(_cols(heap + params.heap, base, True), 0, n_w)
    else:
        # The image is at the top of the mmap area (fs/binfmt_elf.c for a static PIE; the
        # loader's first mmap for a library): above it the gap below the stack, free for
        # hinted mappings; thread stacks and arenas go below it as the threads start.
        # Libraries mapped before it (above) are not modelled.
        heap_lo = heap_hi = zero
        start = min(seg.vaddr for seg in image.loads)
        img_lo = align_down(start, PAGE) + run_bias
        below = img_lo - params.premapped - _thread_bytes(kernel, states, params.cores)
        _paint(taken, _cols(below, base, False), _cols(img_lo, base, True))
        top = int(np.clip(_cols(below, base, False), 0, n_w)[0])
        fallback_top = top or None  # None: the threads' mappings reach below the window
    prng = params.prng or _DEFAULT_PRNG[gen]
    # mcode_alloc's loop: JR iterations; 32 before 2017-03-08 (facts.md §2).
    iterations = 32 if gen is Generation.LJ2017 else jr
    table = None
    if prng is PrngModel.LCG_ZERO_SEED and gen is not Generation.LJ2025:
        # At most `iterations` draws per request, (retries + 1) * areas requests.
        table = lcg_columns(gen, jr, k, (params.retries + 1) * areas * iterations + 1)
    rng = (1 << (jr - 1)) - (1 << 21)
    return Setup(
        generation=gen, prng=prng, runs=runs, states=states, areas=areas, k=k,
        retries=params.retries, seed=params.seed, heap_timing=params.heap_timing, taken=taken,
        heap_lo=heap_lo, heap_hi=heap_hi, closed_form=params.closed_form, iterations=iterations,
        draw_lo=rng // 2 // SLOT if gen is Generation.LJ2017 else 0,
        draw_n=(rng if gen is Generation.LJ2017 else 2 * rng) // SLOT - k,
        accept_lo=1, accept_hi=n_w - 1, lcg_table=table, jr=jr,
        m_cols=m_cols, m_top=states * areas + space,
        fallback_top=fallback_top, m_arenas=m_arenas, m_hole=m_hole)


def _thread_arenas(states: int, cores: int) -> int:
    """How many arenas glibc creates for ``states`` threads that malloc (malloc/arena.c
    arena_get2: no limit until narenas passes arena_test = NARENAS_FROM_NCORES(1) = 8,
    then NARENAS_FROM_NCORES(cores) = 8 x cores, the main arena among them; the arm64
    guest with one vCPU maps 8)."""
    return min(states, max(8, 8 * cores - 1))


def _thread_bytes(kernel: KernelConfig, states: int, cores: int) -> int:
    """Stacks of ``states`` threads and the arenas they create, packed."""
    stack = STACK_RLIMIT + kernel.arch.thread_guard
    return states * stack + _thread_arenas(states, cores) * ARENA


def arena_hole(kernel: KernelConfig, lay: Layouts, states: int, cores: int,
               premapped: int = 0) -> tuple[int, Ints]:
    """Columns of the threads' arenas, and per run of the hole their alignment leaves.

    Top-down from the mmap base (mm/util.c mmap_base, moved by ASLR) come the stacks of
    ``states`` threads (glibc allocate_stack: RLIMIT_STACK and the arch's guard). The
    first arena's new_heap (malloc/arena.c) maps 2 x HEAP_MAX_SIZE below them, keeps the
    64 MiB-aligned 64 MiB inside and unmaps the rest: between its top and the lowest
    stack ``((bottom - 1) mod 64 MiB) + 1`` bytes stay free; the other arenas pack below
    it. mmap(NULL) fills that hole first: the 2025 allocator's far ranges start there
    (the arm64 guest's maps of the workload, 64 threads, ASLR off: a 55.9 MiB hole above
    8 arenas, filled with mcode areas). ``premapped``: what lies between the mmap base
    and the first stack (the program's own early mappings, and the vDSO: 12 KiB with
    its data pages on Debian's arm64 6.1 kernel).
    """
    stack = STACK_RLIMIT + kernel.arch.thread_guard
    shift = np.asarray(lay.mmap_shift, dtype=np.int64)
    bottom = kernel.mmap_base + shift - premapped - states * stack
    hole: Ints = ((bottom - 1) % ARENA + 1) // SLOT
    return _thread_arenas(states, cores) * (ARENA // SLOT), hole


def simulate(image: ElfImage, kernel: KernelConfig, jit: JitWindow, bias: int,
             params: ReplayParams, states: int | None = None) -> Outcome:
    """Run the replay once for ``states`` (default ``params.states``); raw per-run totals."""
    n = params.states if states is None else states
    # Refuse an oversized replay before its layouts are drawn (they take memory per run
    # too); _setup checks again with the far range's arenas and hole counted.
    columns(kernel, jit, params, n)
    lay = draw(image, kernel, bias, runs=params.runs, seed=params.seed,
               randomize=params.aslr)
    setup = _setup(image, kernel, jit, bias, params, n, lay)
    if engine_kind(params) is EngineKind.COMPILED:
        runs, zeros = params.runs, np.zeros
        out = Outcome(zeros((runs, n), dtype=np.int64), *(zeros(runs, dtype=np.int64)
                                                          for _ in range(4)))
        replay_compiled.run(setup, out)
        return out
    return Engine(setup).run()


def engine_kind(params: ReplayParams) -> EngineKind:
    """The engine ``params`` asks for, or the fastest one built."""
    if params.engine is not None:
        return params.engine
    return EngineKind.COMPILED if replay_compiled.available() else EngineKind.NUMPY


def _p_abort(outcome: Outcome) -> float:
    return float((outcome.aborts.sum(axis=1) > 0).mean())


def safe_states(image: ElfImage, kernel: KernelConfig, jit: JitWindow, bias: int,
                params: ReplayParams, *, limit: int = 4096) -> int:
    """Largest N <= ``limit`` with p_abort < 1%, by search on the same seeded runs.

    Every N replays the same ``runs`` layouts and the same per-state random streams
    (common random numbers), so p_abort is compared across N on one sample. It need not
    be monotone for small N (with one state the heap grows unhindered; many states'
    areas stop brk early), so the search doubles N up to ``limit`` (stopping once every
    run aborts), takes the largest doubling point under 1% and bisects up to the next.
    0 when no N is under 1%.
    """
    def p_abort(n: int) -> float:
        return _p_abort(simulate(image, kernel, jit, bias, params, n))

    good, bad, n = 0, limit + 1, 1
    while n <= limit:
        p = p_abort(n)
        if p < ABORT_LIMIT:
            good, bad = n, limit + 1
        elif good and bad > limit:
            bad = n
        if p >= 1.0:
            break
        n *= 2
    if not good:
        return 0
    while bad - good > 1:
        mid = (good + bad) // 2
        if p_abort(mid) < ABORT_LIMIT:
            good = mid
        else:
            bad = mid
    return good


def _spread(values: np.ndarray) -> Spread:
    p5, p50, p95 = np.percentile(values, [5, 50, 95])
    return Spread(float(values.mean()), float(p5), float(p50), float(p95),
                  float(values.max()))


def replay(image: ElfImage, kernel: KernelConfig, jit: JitWindow, bias: int,
           params: ReplayParams, *, search: bool = True) -> ReplayResult:
    """Replay ``params.states`` states ``params.runs`` times; statistics over the runs.

    ``bias`` is the image's ASLR-off load bias and ``jit`` its window at that bias (as
    ``inspect`` computes them). With ``search`` the largest safe N is searched too.
    """
    gen = _generation(jit)
    out = simulate(image, kernel, jit, bias, params)
    aborts = out.aborts.sum(axis=1)
    per_area = out.syscalls / np.maximum(out.placed, 1)
    notes = []
    prng = params.prng or _DEFAULT_PRNG[gen]
    if gen is Generation.LJ2017:
        notes.append("luajit-2017: no real binary checks this model here (LuaJIT before "
                     "2017-03-08; its hints are replayed from the source alone)")
    if params.retries == DEFAULT_RETRIES:
        notes.append(f"a state asks again after each of its first {DEFAULT_RETRIES} aborts "
                     "(default: the bound of the real-LuaJIT workload the replay was "
                     "checked against, bench/results/calibration-arm64.md)")
    if params.syscall_seconds == DEFAULT_SYSCALL_SECONDS:
        notes.append(f"syscall cost {params.syscall_seconds * 1e6:.1f} us per mmap/munmap "
                     "(default: the real workload's failed-probe mmap/munmap pair natively "
                     "on an x86-64 host, best of runs)")
    else:
        notes.append(f"syscall cost {params.syscall_seconds * 1e6:.1f} us per mmap/munmap "
                     "(given)")
    return ReplayResult(
        profile=jit.profile.name, kernel=kernel_label(kernel),
        runs=params.runs, seed=params.seed, states=params.states, aslr=params.aslr,
        retries=params.retries, heap=params.heap, heap_timing=params.heap_timing, prng=prng,
        p_abort=_p_abort(out), aborts=_spread(aborts),
        states_aborted=float((out.aborts > 0).sum(axis=1).mean()),
        syscalls_per_area=float(per_area.mean()),
        warmup_seconds=float((out.syscalls * params.syscall_seconds).mean()),
        syscall_seconds=params.syscall_seconds, areas_placed=float(out.placed.mean()),
        far_areas=float(out.far.mean()),
        safe_states=safe_states(image, kernel, jit, bias, params) if search else None,
        notes=tuple(notes))
