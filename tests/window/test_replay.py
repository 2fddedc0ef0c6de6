"""The allocator replay against independent truths.

- closed forms: one state, one area, a fixed layout: the abort chance is the chance that
  all random hints miss (``accounting.miss_probability``, written independently), the
  mean number of mmap/munmap calls a geometric sum, the 2025 far fallback likewise;
- a scalar reference of LuaJIT 2.1's ``mcode_alloc`` with the zero-seeded LCG, written
  here from lj_mcode.c and lj_jit.h, run on the free slots that ``accounting.account``
  finds: the engine must give the same aborts and calls, state by state;
- reproducibility, and common random numbers across N.

The closed forms and the scalar reference hold both engines, the compiled one (the
default) and the numpy one; test_replay_engines.py compares the two directly.

Inputs are the real fixtures ``fixtures/elf/aarch64/nopie`` (GNU ld default base
0x400000) and ``nopie-bfd-textseg`` (linked with -Ttext-segment=0x7f00000000).
"""

from __future__ import annotations

import inspect
import math
import re
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from layoutkit.core.kinds import OccupantKind
from layoutkit.core.model import ElfImage
from layoutkit.core.scenario import Demand, Sampling
from layoutkit.core.spans import Span
from layoutkit.elf import ElfReader
from layoutkit.errors import UsageError
from layoutkit.native import workload as wl
from layoutkit.native.workload.build import SOURCE
from layoutkit.window.accounting import Occupant, account
from layoutkit.window.anchor import find_anchor
from layoutkit.window.kernel import PAGE, KernelConfig
from layoutkit.window.layout import image_occupants
from layoutkit.window.profiles import JitWindow, window_for_span
from layoutkit.window.replay import (
    EngineKind,
    HeapTiming,
    PrngModel,
    ReplayParams,
    engine_kind,
    replay,
    safe_states,
    simulate,
)
from tests.support import ELF_DIR

KiB, MiB = 1 << 10, 1 << 20
SLOT = 64 * KiB
NOPIE = ELF_DIR / "aarch64" / "nopie"
TEXTSEG = ELF_DIR / "aarch64" / "nopie-bfd-textseg"
HEAP = 64 * MiB


def load(path: Path, profile: str) -> tuple[ElfImage, KernelConfig, JitWindow, int]:
    with ElfReader(path) as reader:
        image = reader.image()
        anchor = find_anchor(reader)
    kernel = KernelConfig.for_arch(image.arch)
    bias, _ = kernel.nominal_bias(image)
    runtime = Span(anchor.span.start + bias, anchor.span.end + bias)
    return image, kernel, window_for_span(profile, image.arch, runtime, kernel.user_space), bias


def fixed_free(path: Path, jit: JitWindow) -> list[Span]:
    """Free slots of the ASLR-off layout with the whole heap reserve grown (accounting)."""
    image, _, _, bias = load(path, jit.profile.name)
    end = max(seg.vaddr + seg.memsz for seg in image.loads)
    heap_start = -(-end // PAGE) * PAGE
    heap = Occupant(OccupantKind.HEAP_RESERVE, Span(heap_start, heap_start + HEAP))
    acc = account(jit, [*image_occupants(image, bias), heap])
    return list(acc.free)


def slots_of(spans: list[Span]) -> list[int]:
    return [a for span in spans for a in range(span.start, span.end, SLOT)]


def engine(kind: EngineKind) -> EngineKind:
    """``kind``, when it can run: the compiled engine missing is a failure in CI
    (LAYOUTKIT_REQUIRE_ALL=1, setup.py builds it at install), a skip elsewhere."""
    import os

    built = engine_kind(ReplayParams()) is EngineKind.COMPILED  # the default when built
    if kind is EngineKind.COMPILED and not built:
        if os.environ.get("LAYOUTKIT_REQUIRE_ALL"):
            pytest.fail("layoutkit.window._replay was not built (setup.py builds it)")
        pytest.skip("layoutkit.window._replay is not built")
    return kind


ENGINES = [EngineKind.COMPILED, EngineKind.NUMPY]


def params(**kw: Any) -> ReplayParams:
    """The fixed layout (ASLR off) with the whole heap reserve grown before the JIT starts."""
    return replace(ReplayParams(aslr=False, heap_timing=HeapTiming.BEFORE, heap=HEAP), **kw)


# --- one state, one area: closed forms ------------------------------------------------


@pytest.mark.parametrize("path", [NOPIE, TEXTSEG], ids=["nopie", "textseg"])
@pytest.mark.parametrize(("kind", "closed_form"), [(EngineKind.COMPILED, True),
                                                   (EngineKind.NUMPY, True),
                                                   (EngineKind.NUMPY, False)],
                         ids=["compiled", "numpy-geometric", "numpy-drawn"])
def test_single_area_abort_chance_is_the_miss_probability(path: Path, kind: EngineKind,
                                                          closed_form: bool) -> None:
    image, kernel, jit, bias = load(path, "luajit-2.1")
    free = fixed_free(path, jit)
    hits = len(slots_of(free))
    candidates = jit.hint_count(SLOT)  # 1983 hint columns on arm64
    p_miss = (1 - hits / candidates) ** 26  # JR - 1 random hints, no first hint yet
    runs = 10000
    out = simulate(image, kernel, jit, bias,
                   params(mcode=SLOT, runs=runs, retries=0, closed_form=closed_form,
                          engine=engine(kind)))
    observed = float((out.aborts.sum(axis=1) > 0).mean())
    sigma = math.sqrt(p_miss * (1 - p_miss) / runs) + 1e-9
    assert abs(observed - p_miss) < 4 * sigma + 1e-4
    # Calls: a hit costs one mmap, a miss mmap + munmap; at most 26 tries.
    p = hits / candidates
    q = 1 - p
    expected = sum(q**j * (p * 1 + q * 2) for j in range(26))
    sd = 2 * 26 / math.sqrt(runs)
    assert abs(float(out.syscalls.mean()) - expected) < sd
    if path == NOPIE:
        assert hits == 63 and candidates == 1983  # [0x10000, 0x400000) below the image
        assert p_miss == pytest.approx(0.4319, abs=1e-4)


@pytest.mark.parametrize("kind", ENGINES, ids=lambda k: k.value)
def test_single_area_2025_falls_back_far_without_abort(kind: EngineKind) -> None:
    image, kernel, jit, bias = load(NOPIE, "luajit-2025")
    # mcode_setrange around 0x403dd0 wraps below 0: mcmin 0x10000, mcmax 0x4400000.
    assert (jit.hint_lo, jit.hint_hi - 1) == (0x10000, 0x4400000)
    nin = (0x4400000 - 0x10000) // SLOT  # in-range starts: hint + sz <= mcmax
    free = [a for a in slots_of(fixed_free(NOPIE, jit)) if a + SLOT <= 0x4400000]
    hit = len(free) / nin
    exhaust = (1 - nin / 2048) ** 15  # 15 draws of prng & MCODE_RANGE64, none in range
    # No area yet: the loop is entered at `probe:`, so 15 tries (i = 1..15), each after
    # a probe that may give up.
    r = (1 - exhaust) * (1 - hit)
    p_far = 1 - (1 - exhaust) * hit * (1 - r**15) / (1 - r)
    runs = 20000
    res = replay(image, kernel, jit, bias, params(mcode=SLOT, runs=runs, engine=engine(kind)),
                 search=False)
    assert res.p_abort == 0.0  # the first allocation never aborts: mmap(NULL) instead
    sigma = math.sqrt(p_far * (1 - p_far) / runs)
    assert abs(res.far_areas - p_far) < 4 * sigma


# --- a scalar reference: LuaJIT 2.1 with the zero-seeded LCG -----------------------------


def lcg_hints(count: int, jr: int = 27) -> list[int]:
    """Hint offsets (slots from target - range) in draw order: lj_jit.h LJ_PRNG_BITS and
    lj_mcode.c's `do hint = LJ_PRNG_BITS(J, JR-16) << 16; while (!(hint + sz < 2*range))`."""
    rng = (1 << (jr - 1)) - (1 << 21)
    state, out = 0, list[int]()
    while len(out) < count:
        state = (state * 1103515245 + 12345) % (1 << 32)
        hint = (state >> (32 - (jr - 16))) << 16
        if hint + SLOT < 2 * rng:
            out.append(hint // SLOT)
    return out


def reference(free: set[int], n_w: int, states: int, areas: int,
              retries: int) -> tuple[list[int], int, int]:
    """Round-robin states, each running mcode_alloc until it holds ``areas`` areas."""
    hints = lcg_hints(10000)
    taken = {c for c in range(n_w) if c not in free}
    held: list[list[int]] = [[] for _ in range(states)]
    drawn = [0] * states
    aborts = [0] * states
    want = [True] * states
    calls = placed = 0

    def ok(c: int) -> bool:  # accepted strictly inside the window, and free
        return c >= 1 and c + 1 <= n_w - 1 and c not in taken

    while any(want):
        for s in range(states):
            if not want[s]:
                continue
            got = None
            hint = held[s][-1] - 1 if held[s] else None
            for _ in range(27):
                if hint is not None:
                    if ok(hint):
                        calls += 1
                        got = hint
                        break
                    calls += 2
                hint = hints[drawn[s]]
                drawn[s] += 1
            if got is not None:
                taken.add(got)
                held[s].append(got)
                placed += 1
                want[s] = len(held[s]) < areas
            else:
                aborts[s] += 1
                calls += len(held[s])
                taken.difference_update(held[s])
                held[s] = []
                want[s] = aborts[s] <= retries
    return aborts, calls, placed


@pytest.mark.parametrize("kind", ENGINES, ids=lambda k: k.value)
@pytest.mark.parametrize(("states", "retries"), [(1, 0), (6, 2), (12, 1)])
def test_lcg_replay_matches_the_scalar_reference(states: int, retries: int,
                                                 kind: EngineKind) -> None:
    image, kernel, jit, bias = load(NOPIE, "luajit-2.1")
    base = jit.target - ((1 << 26) - (1 << 21))
    n_w = 2 * (jit.target - base) // SLOT
    free = {(a - base) // SLOT for a in slots_of(fixed_free(NOPIE, jit))}
    want_aborts, want_calls, want_placed = reference(free, n_w, states, 8, retries)
    out = simulate(image, kernel, jit, bias,
                   params(states=states, runs=3, retries=retries,
                          prng=PrngModel.LCG_ZERO_SEED, engine=engine(kind)))
    for run in range(3):  # no randomness left: every run is the same
        assert out.aborts[run].tolist() == want_aborts
        assert int(out.syscalls[run]) == want_calls
        assert int(out.placed[run]) == want_placed
    assert sum(want_aborts) > 0 or states == 1


# --- reproducibility and common random numbers ----------------------------------------


def test_same_seed_same_result_other_seed_other_result() -> None:
    image, kernel, jit, bias = load(NOPIE, "luajit-2.1")
    p = ReplayParams(states=40, runs=200, seed=7)
    a = replay(image, kernel, jit, bias, p, search=False)
    b = replay(image, kernel, jit, bias, p, search=False)
    c = replay(image, kernel, jit, bias, ReplayParams(states=40, runs=200, seed=8),
               search=False)
    assert a == b
    assert a.syscalls_per_area != c.syscalls_per_area


def test_common_random_numbers_make_p_abort_monotone_in_n() -> None:
    image, kernel, jit, bias = load(NOPIE, "luajit-2.1")
    p = ReplayParams(runs=300, seed=3)
    ps = [float((simulate(image, kernel, jit, bias, p, n).aborts.sum(axis=1) > 0).mean())
          for n in (1, 2, 4, 8, 16, 32, 64, 128)]
    assert ps == sorted(ps)
    # The usable window holds 1054 slots (58 MiB of it lies below address 0): 64 states
    # of 8 areas fit nearly always, 128 of them do not.
    assert ps[:6] == [0.0] * 6
    assert ps[6] < 0.01
    assert ps[-1] > 0.9


def test_safe_states_is_the_edge_of_one_percent() -> None:
    image, kernel, jit, bias = load(NOPIE, "luajit-2.1")
    p = ReplayParams(runs=200, seed=5)
    n = safe_states(image, kernel, jit, bias, p)

    def p_abort(k: int) -> float:
        out = simulate(image, kernel, jit, bias, p, k)
        return float((out.aborts.sum(axis=1) > 0).mean())

    assert n >= 1
    assert p_abort(n) < 0.01 <= p_abort(n + 1)


def test_safe_states_looks_past_an_unsafe_single_state() -> None:
    """ASLR off, heap growing while the states compile: one state lets brk grow through
    the window and sometimes aborts; many states' areas stop brk early. The search still
    finds the largest N under 1%."""
    image, kernel, jit, bias = load(NOPIE, "luajit-2.1")
    p = ReplayParams(runs=300, seed=1, aslr=False)

    def p_abort(k: int) -> float:
        out = simulate(image, kernel, jit, bias, p, k)
        return float((out.aborts.sum(axis=1) > 0).mean())

    assert p_abort(1) >= 0.01
    n = safe_states(image, kernel, jit, bias, p)
    assert n >= 8
    assert p_abort(n) < 0.01 <= p_abort(n + 1)


# --- ASLR against the fixed layout ----------------------------------------------------


def test_aslr_moves_the_heap_out_of_the_window_most_of_the_time() -> None:
    """arm64 randomises brk over 1 GiB: the heap rarely meets the 124 MiB window
    (facts.md §4: 21 of 21 runs outside it on a real kernel), so 8 states of 512 KiB that
    abort in every run with the fixed layout mostly do not."""
    image, kernel, jit, bias = load(NOPIE, "luajit-2.1")
    fixed = replay(image, kernel, jit, bias, params(states=8, runs=400), search=False)
    spread = replay(image, kernel, jit, bias, ReplayParams(states=8, runs=400),
                    search=False)
    assert fixed.p_abort == 1.0
    assert spread.p_abort < 0.15
    assert spread.kernel.startswith("Linux (current rules) aarch64")


# --- bad input ------------------------------------------------------------------------


def test_bad_parameters_are_usage_errors() -> None:
    image, kernel, jit, bias = load(NOPIE, "luajit-2.1")
    with pytest.raises(UsageError, match="--states 0"):
        Demand(states=0)
    with pytest.raises(UsageError, match="--retries"):
        Sampling(retries=-1)
    with pytest.raises(UsageError, match="maxmcode"):
        simulate(image, kernel, jit, bias, ReplayParams(mcode=1 * MiB))
    with pytest.raises(UsageError, match="use fewer runs"):
        simulate(image, kernel, jit, bias, ReplayParams(states=10**6, runs=10**4))
    _, _, generic, _ = load(NOPIE, "generic")
    with pytest.raises(UsageError, match="not 'generic'"):
        simulate(image, kernel, generic, bias, ReplayParams())


def test_2017_says_no_binary_checks_it() -> None:
    image, kernel, jit, bias = load(NOPIE, "luajit-2017")
    res = replay(image, kernel, jit, bias, params(states=2, runs=5), search=False)
    assert res.prng is PrngModel.LCG_ZERO_SEED
    assert any("no real binary checks this model" in note for note in res.notes)
    assert np.isfinite(res.syscalls_per_area)


def test_default_retries_is_the_calibrated_workloads_bound() -> None:
    """The default bound is the one the replay was checked with against the real LuaJIT
    (bench/results/calibration-arm64.md): the workload's own default, in workload.c and
    in the Python that runs it, and the output says so."""
    assert inspect.signature(wl.workload_args).parameters["retries"].default == 3
    assert re.search(r"\.retries = 3,", SOURCE.read_text())
    assert ReplayParams().retries == 3
    image, kernel, jit, bias = load(NOPIE, "luajit-2.1")
    res = replay(image, kernel, jit, bias, params(states=2, runs=5), search=False)
    assert res.retries == 3
    assert any("asks again after each of its first 3 aborts" in note and
               "calibration-arm64.md" in note for note in res.notes)


def test_an_oversized_replay_is_refused_before_its_layouts_are_drawn(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """10^8 runs: the layouts alone (Python lists per run) would take gigabytes, so the
    memory bound must hold before they are drawn (``draw`` replaced to fail if reached)."""
    from layoutkit.window import replay as replay_module

    def no_draw(*_args: Any, **_kwargs: Any) -> Any:
        raise AssertionError("layouts drawn before the memory bound was checked")

    image, kernel, jit, bias = load(NOPIE, "luajit-2.1")
    monkeypatch.setattr(replay_module, "draw", no_draw)
    with pytest.raises(UsageError, match="use fewer runs"):
        simulate(image, kernel, jit, bias, ReplayParams(states=4000, runs=10**8))
