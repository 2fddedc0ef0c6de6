"""The C replay against the model replay on the same layouts (docs/allocator-replay.md).

The probe's C replay runs ``probe_runs`` times natively (real mmap in a real process, each
with its own layout); each run's /proc/self/maps, captured with its threads' stacks
before any area (``maps_start``), is the model's input with ASLR off
(:mod:`layoutkit.window.replay_fixed`). Both give per-run areas placed, aborts, calls per
area and far areas; they agree when their means differ by at most ``Z`` standard errors
of the difference (the two samples are independent).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from layoutkit.core.spans import Span
from layoutkit.native.probe import run_probe
from layoutkit.native.protocol import ProbeMode, ReplayResult
from layoutkit.read.maps import parse_maps
from layoutkit.window.kernel import KernelConfig
from layoutkit.window.replay_fixed import FixedDemand, FixedLayout, replay_fixed
from layoutkit.window.replay_model import Generation

Z = 4.0  # standard errors of the difference that still count as agreement
_MIN_ADDR = 0x10000  # vm.mmap_min_addr's default when the probe could not read it


@dataclass(frozen=True)
class Sample:
    """One statistic's per-run values on one side: mean and standard error of the mean."""

    mean: float
    stderr: float
    runs: int

    @classmethod
    def of(cls, values: Sequence[float]) -> Sample:
        n = len(values)
        mean = sum(values) / n
        var = sum((v - mean) ** 2 for v in values) / (n - 1) if n > 1 else 0.0
        return cls(mean, math.sqrt(var / n), n)


@dataclass(frozen=True)
class Statistic:
    name: str
    c: Sample
    model: Sample

    @property
    def allowed(self) -> float:
        """The largest difference of the means that counts as agreement."""
        return Z * math.hypot(self.c.stderr, self.model.stderr)

    @property
    def agrees(self) -> bool:
        return abs(self.c.mean - self.model.mean) <= self.allowed + 1e-9


@dataclass(frozen=True)
class Agreement:
    generation: Generation
    jumprange: int
    states: int
    areas: int
    retries: int
    statistics: tuple[Statistic, ...]

    @property
    def agrees(self) -> bool:
        return all(s.agrees for s in self.statistics)


def fixed_layout(result: ReplayResult) -> FixedLayout:
    """The model's input from one C replay: its maps before any area, its window."""
    maps = parse_maps(result.maps_start, source="the probe's maps_start")
    occupied = tuple(Span(m.start, m.end) for m in maps.mappings)
    stack = min((m.start for m in maps.mappings if m.path == "[stack]"),
                default=max(m.end for m in maps.mappings))
    # The top-down area starts where its highest mapping (the dynamic loader, mapped
    # first, fs/binfmt_elf.c) ends: the highest end below the main stack.
    base = max(m.end for m in maps.mappings if m.end <= stack)
    ctx = result.context
    return FixedLayout(occupied, ctx.jit, base,
                       ctx.mmap_min_addr if ctx.mmap_min_addr is not None else _MIN_ADDR,
                       KernelConfig.for_arch(ctx.arch).user_top)


def _per_area(syscalls: float, placed: float) -> float:
    return syscalls / max(placed, 1)


def c_replays(jit: str, *, states: int, areas: int, jumprange: int, retries: int,
              probe_runs: int, seed: int = 1) -> tuple[ReplayResult, ...]:
    """The C replay, ``probe_runs`` processes natively, seeds ``seed``, ``seed + 1``, ..."""
    results = (run_probe(mode=ProbeMode.REPLAY, jit=jit, threads=states, areas=areas,
                         seed=seed + i, retries=retries, jumprange=jumprange)
               for i in range(probe_runs))
    return tuple(r for r in results if isinstance(r, ReplayResult))


def agreement(reps: Sequence[ReplayResult], demand: FixedDemand) -> Agreement:
    """The model's ``demand`` on the layouts of the C replays ``reps``, against them."""
    out = replay_fixed([fixed_layout(r) for r in reps], demand)
    aborts = [float(a) for a in out.aborts.sum(axis=1).tolist()]
    placed = [float(p) for p in out.placed.tolist()]
    calls = [float(c) for c in out.syscalls.tolist()]
    far = [float(f) for f in out.far.tolist()]
    stats = [
        Statistic("areas placed", Sample.of([float(r.placed) for r in reps]),
                  Sample.of(placed)),
        Statistic("aborts", Sample.of([float(r.aborts) for r in reps]), Sample.of(aborts)),
        Statistic("syscalls per area",
                  Sample.of([_per_area(r.syscalls, r.placed) for r in reps]),
                  Sample.of([_per_area(c, p) for c, p in zip(calls, placed, strict=True)])),
    ]
    if demand.generation is Generation.LJ2025:
        stats.append(Statistic("far areas", Sample.of([float(r.far_areas) for r in reps]),
                               Sample.of(far)))
    return Agreement(demand.generation, demand.jumprange, demand.states, demand.areas,
                     demand.retries, tuple(stats))


def compare(jit: str, *, states: int, areas: int, jumprange: int, retries: int,
            probe_runs: int, runs_each: int, seed: int = 1) -> Agreement:
    """Run the C replay ``probe_runs`` times and the model ``runs_each`` times per layout."""
    reps = c_replays(jit, states=states, areas=areas, jumprange=jumprange, retries=retries,
                     probe_runs=probe_runs, seed=seed)
    demand = FixedDemand(Generation(jit), jumprange, states, areas, retries, runs_each, seed)
    return agreement(reps, demand)
