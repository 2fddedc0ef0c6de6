"""The compiled replay engine (window/_replay.c) against the numpy engine (window/replay_engine.py).

Both run the same rules; the numpy engine is the reference the closed forms and the
scalar LuaJIT reference of test_replay.py pin. Where no randomness is left (the
zero-seeded LCG of luajit-2017, and of luajit-2.1 on request) the two must give
identical results, run by run and state by state. With per-state random streams they
draw different samples of the same laws: every per-run statistic must agree within
sampling error (5 standard errors of the difference; the seeds are fixed, so the test
is deterministic). Cases sit where aborts begin (p_abort strictly between 0 and 1) and
where the 2025 allocator moves to far ranges, on real fixtures: the AArch64 non-PIE
executable at 0x400000, one linked at 0x7f00000000, a PIE and a shared library anchor.
"""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from layoutkit.errors import UsageError
from layoutkit.window import replay_compiled
from layoutkit.window.replay import (
    EngineKind,
    HeapTiming,
    Outcome,
    PrngModel,
    ReplayParams,
    engine_kind,
    simulate,
)
from tests.support import ELF_DIR
from tests.window.test_replay import NOPIE, TEXTSEG, engine, load

PIE = ELF_DIR / "aarch64" / "pie"
LIB = ELF_DIR / "aarch64" / "libanchor.so"
MiB = 1 << 20


@pytest.fixture
def compiled() -> None:
    engine(EngineKind.COMPILED)


def both(path: Path, profile: str, params: ReplayParams) -> tuple[Outcome, Outcome]:
    image, kernel, jit, bias = load(path, profile)
    fast = simulate(image, kernel, jit, bias, replace(params, engine=EngineKind.COMPILED))
    ref = simulate(image, kernel, jit, bias, replace(params, engine=EngineKind.NUMPY))
    return fast, ref


def per_run(out: Outcome) -> dict[str, np.ndarray]:
    aborts = out.aborts.sum(axis=1)
    return {
        "aborts": aborts,
        "p_abort": (aborts > 0).astype(np.float64),
        "states_aborted": (out.aborts > 0).sum(axis=1),
        "syscalls_per_area": out.syscalls / np.maximum(out.placed, 1),
        "placed": out.placed,
        "far": out.far,
        "held": out.held,
    }


@pytest.mark.usefixtures("compiled")
def test_the_default_engine_is_the_compiled_one() -> None:
    assert engine_kind(ReplayParams()) is EngineKind.COMPILED
    assert engine_kind(ReplayParams(engine=EngineKind.NUMPY)) is EngineKind.NUMPY


LCG_CASES = [
    (NOPIE, "luajit-2017", ReplayParams(states=100, runs=40)),
    (NOPIE, "luajit-2.1", ReplayParams(states=120, runs=40, prng=PrngModel.LCG_ZERO_SEED)),
    (PIE, "luajit-2017", ReplayParams(states=60, runs=40, retries=2)),
    (LIB, "luajit-2017", ReplayParams(states=80, runs=20)),
    (LIB, "luajit-2.1", ReplayParams(states=120, runs=20, prng=PrngModel.LCG_ZERO_SEED)),
    (TEXTSEG, "luajit-2.1", ReplayParams(states=40, runs=5, aslr=False, heap=200 * MiB,
                                         prng=PrngModel.LCG_ZERO_SEED)),
    (NOPIE, "luajit-2017", ReplayParams(states=30, runs=5, aslr=False, heap=64 * MiB,
                                        heap_timing=HeapTiming.BEFORE)),
]


@pytest.mark.usefixtures("compiled")
@pytest.mark.parametrize(("path", "profile", "params"), LCG_CASES,
                         ids=[f"{p.name}-{g}-{i}" for i, (p, g, _) in enumerate(LCG_CASES)])
def test_without_randomness_both_engines_give_identical_runs(
        path: Path, profile: str, params: ReplayParams) -> None:
    fast, ref = both(path, profile, params)
    assert fast.aborts.tolist() == ref.aborts.tolist()
    for name in ("syscalls", "placed", "far", "held"):
        assert getattr(fast, name).tolist() == getattr(ref, name).tolist(), name
    assert int(ref.aborts.sum()) > 0  # the cases do abort: the flush path is exercised


RANDOM_CASES = [
    # Where aborts begin under ASLR (p_abort about 0.25 for the compiled engine).
    (NOPIE, "luajit-2.1", ReplayParams(states=96, runs=400, seed=11)),
    (NOPIE, "luajit-2.1", ReplayParams(states=300, runs=60, seed=12)),
    # luajit-2025: the first far ranges, then most areas far.
    (NOPIE, "luajit-2025", ReplayParams(states=28, runs=300, seed=13)),
    (NOPIE, "luajit-2025", ReplayParams(states=80, runs=60, seed=14)),
    (PIE, "luajit-2025", ReplayParams(states=60, runs=100, seed=15)),
    # A library anchor: mmap(NULL) and refused hints land inside the window.
    (LIB, "luajit-2.1", ReplayParams(states=150, runs=100, seed=16)),
    (LIB, "luajit-2025", ReplayParams(states=20, runs=300, seed=17)),
    # Fixed layout, the heap growing through the window while the states compile.
    (NOPIE, "luajit-2.1", ReplayParams(states=1, runs=1000, seed=18, aslr=False)),
]


@pytest.mark.usefixtures("compiled")
@pytest.mark.parametrize(("path", "profile", "params"), RANDOM_CASES,
                         ids=[f"{p.name}-{g}-{i}" for i, (p, g, _) in enumerate(RANDOM_CASES)])
def test_with_random_streams_both_engines_agree_within_sampling_error(
        path: Path, profile: str, params: ReplayParams) -> None:
    fast, ref = both(path, profile, params)
    a, b = per_run(fast), per_run(ref)
    n = params.runs
    for name in a:
        x, y = a[name].astype(np.float64), b[name].astype(np.float64)
        se = math.sqrt(x.var() / n + y.var() / n)
        assert abs(x.mean() - y.mean()) <= 5 * se + 1e-12, (name, x.mean(), y.mean(), se)
    # Not a vacuous agreement: the number of aborts varies from run to run.
    assert b["aborts"].var() > 0


@pytest.mark.usefixtures("compiled")
def test_the_compiled_engine_is_reproducible() -> None:
    image, kernel, jit, bias = load(NOPIE, "luajit-2025")
    p = ReplayParams(states=30, runs=50, seed=3, engine=EngineKind.COMPILED)
    one = simulate(image, kernel, jit, bias, p)
    again = simulate(image, kernel, jit, bias, p)
    other = simulate(image, kernel, jit, bias, replace(p, seed=4))
    assert one.aborts.tolist() == again.aborts.tolist()
    assert one.syscalls.tolist() == again.syscalls.tolist()
    assert one.syscalls.tolist() != other.syscalls.tolist()


def test_without_the_build_the_numpy_engine_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    """A source tree nobody built: the default falls back to numpy; asking for the compiled
    engine is a usage error naming the fix."""
    monkeypatch.setattr(replay_compiled, "_replay", None)
    assert engine_kind(ReplayParams()) is EngineKind.NUMPY
    image, kernel, jit, bias = load(NOPIE, "luajit-2.1")
    out = simulate(image, kernel, jit, bias, ReplayParams(states=2, runs=3))
    assert out.placed.tolist() == [16, 16, 16]  # 2 states x 512 KiB / 64 KiB, no abort
    with pytest.raises(UsageError, match="compiled replay engine is not built"):
        simulate(image, kernel, jit, bias,
                 ReplayParams(states=2, runs=3, engine=EngineKind.COMPILED))
