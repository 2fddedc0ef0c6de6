"""``layoutkit verify --workload luajit``: the real LuaJIT against the allocator replay.

The workload (:mod:`layoutkit.native.workload`: the real LuaJIT of the generation, static,
non-PIE, N threads each with its own ``lua_State`` compiling traces of about one area)
runs once on the runner and reports its mcode allocation aborts, the areas its states hold
and the mmap requests of one area. The replay (:mod:`layoutkit.window.replay`,
docs/allocator-replay.md) runs the same scenario on the same binary (its ELF, its
anchor) under the kernel the workload ran on: the runner's release and vm.mmap_min_addr,
brk grown by ``--heap`` before the threads start, each state asking again ``RETRIES``
times after an abort as the workload does. Each measured figure is judged against the
replay's p5..p95 band over ``runs`` seeded layouts; the verdict is ok when all three are
inside.
"""

from __future__ import annotations

import enum
import os
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from layoutkit.core.arches import Arch, by_name
from layoutkit.core.scenario import Sampling, Scenario
from layoutkit.elf import ElfReader
from layoutkit.errors import EXIT_FINDINGS, EXIT_OK, UsageError
from layoutkit.native import workload as wl
from layoutkit.native.toolchain import Runner, host_arch
from layoutkit.window.anchor import find_anchor
from layoutkit.window.kernel import KernelConfig
from layoutkit.window.profiles import window_for_span
from layoutkit.window.replay import ReplayParams, columns, kernel_label, simulate
from layoutkit.window.replay_model import HeapTiming

WORKLOADS = ("luajit",)
RETRIES = 3  # the workload's own default (workload_args): requests again after an abort
DEFAULT_RUNS = 300
GUEST_CORES = 1  # the qemu-system guest has one vCPU (native/guest/boot.py)
MiB = 1 << 20


class Figure(enum.Enum):
    """What the workload measures and the replay predicts, per run."""

    ABORTS = "aborts"  # LJ_TRERR_MCODEAL with room under maxmcode
    AREAS_HELD = "areas held"  # mcode areas the states hold at the end
    AREA_MMAPS = "area mmap calls"  # mmap requests of exactly one area


class WorkloadVerdict(enum.Enum):
    OK = "ok"  # every figure inside its band
    OUTSIDE = "outside"  # at least one is not


@dataclass(frozen=True)
class Band:
    """One measured figure against the replay's spread of it over the runs."""

    figure: Figure
    measured: int
    mean: float
    p5: float
    p50: float
    p95: float

    @classmethod
    def of(cls, figure: Figure, measured: int, values: Sequence[float]) -> Band:
        """The band of ``values``: percentiles as numpy's default (linear) computes them."""
        cuts = statistics.quantiles(values, n=20, method="inclusive") if len(values) > 1 \
            else [values[0]] * 19
        return cls(figure, measured, statistics.fmean(values), cuts[0], cuts[9], cuts[18])

    @property
    def inside(self) -> bool:
        return self.p5 <= self.measured <= self.p95


@dataclass(frozen=True)
class WorkloadVerification:
    generation: str
    arch: Arch
    runner: Runner
    states: int
    aslr: bool
    heap: int
    retries: int
    runs: int
    seed: int
    kernel: str  # the kernel the replay assumed, in words
    luajit: str  # the embedded LuaJIT's version string
    source: str  # which build of it
    executable: Path
    bands: tuple[Band, ...]
    notes: tuple[str, ...]

    @property
    def verdict(self) -> WorkloadVerdict:
        inside = all(b.inside for b in self.bands)
        return WorkloadVerdict.OK if inside else WorkloadVerdict.OUTSIDE

    @property
    def exit_code(self) -> int:
        return EXIT_OK if self.verdict is WorkloadVerdict.OK else EXIT_FINDINGS


def _generation(scenario: Scenario) -> wl.Generation:
    name = scenario.jit or wl.Generation.DEBIAN_2_1.value
    try:
        return wl.Generation(name)
    except ValueError:
        known = ", ".join(g.value for g in wl.Generation)
        raise UsageError(f"--jit {name}: the workload embeds {known}") from None


def _arch(runner: Runner, arch_name: str | None) -> Arch:
    if runner is Runner.NATIVE:
        host = host_arch()
        if arch_name is not None and by_name(arch_name) != host:
            raise UsageError(f"--arch {arch_name}: the native runner runs {host} only")
        return host
    if runner is Runner.QEMU_SYSTEM:
        return by_name(arch_name or "aarch64")
    raise UsageError(f"--runner {runner.value}: the workload runs natively or in the "
                     "qemu-system guest")


def _host_mmap_min_addr() -> int | None:
    try:
        return int(Path("/proc/sys/vm/mmap_min_addr").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def verify_workload(workload_name: str, scenario: Scenario, *, runner: Runner | str,
                    arch_name: str | None = None, aslr: bool = True,
                    runs: int = DEFAULT_RUNS, seed: int = 1) -> WorkloadVerification:
    """Run the workload once with ``scenario.demand.states`` threads; judge it."""
    if workload_name not in WORKLOADS:
        raise UsageError(f"--workload {workload_name}: known workloads: {', '.join(WORKLOADS)}")
    runner = Runner.named(runner)
    generation = _generation(scenario)
    arch = _arch(runner, arch_name)
    states = scenario.demand.states
    if scenario.demand.mcode is not None:
        raise UsageError("--mcode: the workload asks for the profile's maxmcode")
    # The replay's parameters are checked before the workload is built and run (minutes):
    # the seed here, the memory the runs need over the window once its binary is there.
    Sampling(runs=runs, seed=seed)
    if states > wl.THREADS_MAX:
        raise UsageError(f"--states {states}: the workload runs at most {wl.THREADS_MAX} "
                         "threads, one JIT state each")
    workload = wl.build_workload(generation, arch.name)
    with ElfReader(workload.executable) as reader:
        planned = reader.image()
        anchor = find_anchor(reader)
    plan_kernel = KernelConfig.for_arch(arch)
    plan_bias, _ = plan_kernel.nominal_bias(planned)
    columns(plan_kernel, window_for_span(generation.value, arch, anchor.span.shifted(plan_bias),
                                         plan_kernel.user_space),
            ReplayParams(states=states, runs=runs, seed=seed, retries=RETRIES), states)
    args = wl.workload_args(generation, states, arch=arch.name,
                            aslr=wl.Aslr.ON if aslr else wl.Aslr.OFF,
                            heap_mib=scenario.heap // MiB, retries=RETRIES)
    if runner is Runner.NATIVE:
        run = wl.run_native(workload, args)
        release, min_addr = os.uname().release, _host_mmap_min_addr()
        cores, where = os.cpu_count() or 1, "this machine's kernel"
    else:
        found, facts = wl.run_in_guest_facts(workload, [args])
        assert isinstance(found[0], wl.WorkloadRun)
        run = found[0]
        release, min_addr = facts.release, facts.mmap_min_addr
        cores, where = GUEST_CORES, "the qemu-system guest's kernel"
    kernel = replace(KernelConfig.for_arch(arch, mmap_min_addr=min_addr), release=release,
                     source=where)
    with ElfReader(workload.executable) as reader:
        image = reader.image()
        anchor = find_anchor(reader)
    bias, _ = kernel.nominal_bias(image)
    jit = window_for_span(generation.value, arch, anchor.span.shifted(bias), kernel.user_space)
    heap = run.brk.size
    params = ReplayParams(states=states, heap=heap, heap_timing=HeapTiming.BEFORE, runs=runs,
                          seed=seed, retries=RETRIES, aslr=aslr, cores=cores)
    out = simulate(image, kernel, jit, bias, params)
    held = [float(h) for h in out.held.tolist()]
    # Every miss is an mmap/munmap pair, every area placed one mmap, every area flushed
    # one munmap: mmap calls = (calls + areas held at the end) / 2.
    mmaps = [(c + h) / 2 for c, h in zip(out.syscalls.tolist(), held, strict=True)]
    aborts = [float(a) for a in out.aborts.sum(axis=1).tolist()]
    bands = (
        Band.of(Figure.ABORTS, run.alloc_aborts, aborts),
        Band.of(Figure.AREAS_HELD, run.areas, held),
        Band.of(Figure.AREA_MMAPS, run.area_mmaps, mmaps),
    )
    notes = (f"one run of the workload ({run.luajit}, {states} threads, ASLR "
             f"{'on' if aslr else 'off'}, brk grown {heap // MiB} MiB before the threads); "
             f"the replay's band is its 5th to 95th percentile over {runs} runs",
             f"each state asks again {RETRIES} times after an abort, as the workload does")
    return WorkloadVerification(
        generation=generation.value, arch=arch, runner=runner, states=states, aslr=aslr,
        heap=heap, retries=RETRIES, runs=runs, seed=seed, kernel=kernel_label(kernel),
        luajit=run.luajit, source=run.source, executable=workload.executable, bands=bands,
        notes=notes)
