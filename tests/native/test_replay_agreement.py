"""The C replay (probe.c, real mmap) and the model replay follow one algorithm
(docs/allocator-replay.md): run natively on x86-64, each C run's own /proc/self/maps is
the model's layout (ASLR off), and their statistics agree within sampling error.

A window of the real x86-64 jump range (31 bits, +-1 GiB around the probe's code) stays
nearly empty for a few states, so the statistics that tell the generations apart
(aborts, flushes, range switches) are exercised with a narrower LJ_TARGET_JUMPRANGE that
8 states of 16 areas overfill; both sides use the same one.
"""

from __future__ import annotations

from dataclasses import replace

import pytest

from layoutkit.core.arches import by_name
from layoutkit.native.replay_agreement import agreement, c_replays, fixed_layout
from layoutkit.native.toolchain import host_arch
from layoutkit.output.agreement import agreement_lines
from layoutkit.window.replay_fixed import FixedDemand, replay_fixed
from layoutkit.window.replay_model import Generation
from tests.support import require

pytestmark = pytest.mark.skipif(host_arch() != by_name("x86_64"),
                                reason="the native comparison runs on x86-64")

STATES, AREAS, RETRIES, PROBE_RUNS, RUNS_EACH = 8, 16, 4, 24, 20


@pytest.fixture(autouse=True)
def _private_cache(monkeypatch: pytest.MonkeyPatch,
                   tmp_path_factory: pytest.TempPathFactory) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path_factory.getbasetemp() / "cache"))


@pytest.mark.toolchain
@pytest.mark.parametrize(("generation", "jumprange"), [
    (Generation.LJ2017, 24),  # hints over the middle 6 MiB of +-6 MiB
    (Generation.LJ2017, 31),
    (Generation.LJ21, 23),  # range 2 MiB each side: 62 usable slots for 128 areas
    (Generation.LJ2025, 22),  # 4 MiB - 64 KiB: 63 slots, then ranges from mmap(NULL)
    (Generation.LJ21, 31),  # x86-64's own jump range
    (Generation.LJ2025, 31),
])
def test_c_replay_and_model_agree(generation: Generation, jumprange: int) -> None:
    require("cc")
    reps = c_replays(generation.value, states=STATES, areas=AREAS, jumprange=jumprange,
                     retries=RETRIES, probe_runs=PROBE_RUNS)
    assert len(reps) == PROBE_RUNS
    for r in reps:  # the C replay's own bookkeeping: every request counted once
        assert r.threads_started == STATES
        assert r.allocations == r.placed + r.aborts
        assert not r.context.leaked
    demand = FixedDemand(generation, jumprange, STATES, AREAS, RETRIES, RUNS_EACH)
    result = agreement(reps, demand)
    print("\n" + "\n".join(agreement_lines(result)))
    assert result.agrees, "\n".join(agreement_lines(result))
    if jumprange < 31:  # the window overfills: the comparison is not about empty space
        stats = {s.name: s for s in result.statistics}
        assert stats["aborts"].c.mean > 1.0
        if generation is Generation.LJ2025:  # states moved to ranges from mmap(NULL)
            assert stats["far areas"].c.mean > 1.0
        # The comparison can fail: the model with another retry bound is told apart.
        other = agreement(reps, replace(demand, retries=RETRIES - 3))
        print("\n".join(agreement_lines(other)))
        assert not other.agrees


@pytest.mark.toolchain
def test_luajit_2017_is_the_same_run_for_run() -> None:
    """luajit-2017's hints come from a zero-seeded LCG in every state: no randomness is
    left, so on each process's own layout the model gives that process's counts exactly."""
    require("cc")
    jumprange = 24
    reps = c_replays(Generation.LJ2017.value, states=STATES, areas=AREAS,
                     jumprange=jumprange, retries=RETRIES, probe_runs=4)
    out = replay_fixed([fixed_layout(r) for r in reps],
                       FixedDemand(Generation.LJ2017, jumprange, STATES, AREAS, RETRIES, 1))
    c_side = [(r.placed, r.aborts, r.syscalls) for r in reps]
    model = list(zip(out.placed.tolist(), out.aborts.sum(axis=1).tolist(),
                     out.syscalls.tolist(), strict=True))
    print(c_side, model)
    assert c_side == model
    assert all(aborts > 0 for _, aborts, _ in c_side)
