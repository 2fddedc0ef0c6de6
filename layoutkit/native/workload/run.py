"""Running the workload natively or in the qemu-system guest, and its report.

The workload prints one JSON object (``workload.c``): per state the traces compiled,
the mcode allocation aborts, the areas held and LuaJIT's mmap/munmap calls with their
time; the anonymous r-x mappings and the whole of its final /proc/self/maps.
"""

from __future__ import annotations

import enum
import json
import platform
import signal
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from layoutkit.core.spans import Span
from layoutkit.errors import ProbeError, UsageError
from layoutkit.native.guest import boot as guest_boot
from layoutkit.native.toolchain import Runner
from layoutkit.native.workload.build import Generation, Workload, machine
from layoutkit.window.profiles import profile

KiB = 1024
# Lines of arithmetic per generated function, so that its trace takes more than half
# and less than all of a 64 KiB area: one trace per area, a state's allotment in as few
# compilations as possible. Measured here: x86-64 (Debian's luajit, jit.util.tracemc)
# 47 KiB at 1300 lines, 51 KiB at 1400, 62 KiB at 1700, and at 1900 the trace no longer
# fits an area; arm64 (the workload under qemu-user, compilations per area held with
# --threads 1 --maxmcode 512) two traces per area up to 1700 lines, one from 1900 to
# 3000 at least.
STATEMENTS = {"x86_64": 1400, "aarch64": 2400}
THREADS_MAX = 4096  # workload.c's THREADS_MAX: it refuses --threads above it


class Aslr(enum.Enum):
    ON = "on"
    OFF = "off"  # personality(ADDR_NO_RANDOMIZE), as `setarch -R`


@dataclass(frozen=True)
class StateCounts:
    """What one ``lua_State`` (one thread) saw."""

    traces: int  # "stop" events: traces compiled
    compiles: int  # generated functions run (one trace attempt each)
    alloc_aborts: int  # LJ_TRERR_MCODEAL with room under maxmcode: no area found
    limit_aborts: int  # LJ_TRERR_MCODEAL because maxmcode was reached
    other_aborts: int
    flushes: int
    areas: int  # mcode areas held at the end
    mmap: int  # mmap calls (LuaJIT's: mcode and its own allocator)
    munmap: int
    mmap_ns: int
    munmap_ns: int
    area_mmaps: int  # requests of exactly one area
    area_hinted: int  # ... with a hint
    error: str
    other_reasons: str  # the other aborts' messages with their counts, "message: n; ..."


@dataclass(frozen=True)
class WorkloadRun:
    """One run of the workload: its JSON report, parsed."""

    luajit: str  # LUAJIT_VERSION of the embedded LuaJIT
    source: str  # which build (package, version)
    arch: str
    runner: Runner
    threads: int
    aslr: Aslr
    heap_mib: int
    statements: int
    sizemcode: int  # bytes
    maxmcode: int  # bytes
    anchor: int  # lj_vm_exit_handler
    brk: Span  # the brk heap grown before the threads started
    wall_ns: int
    peak_rss_kib: int  # VmHWM at the end
    jit_bytes: int  # anonymous r-x bytes in the final /proc/self/maps
    jit_mappings: tuple[Span, ...]
    states: tuple[StateCounts, ...]
    maps: str  # the final /proc/self/maps

    @property
    def alloc_aborts(self) -> int:
        return sum(s.alloc_aborts for s in self.states)

    @property
    def states_aborted(self) -> int:
        return sum(1 for s in self.states if s.alloc_aborts)

    @property
    def areas(self) -> int:
        return sum(s.areas for s in self.states)

    @property
    def mmap_calls(self) -> int:
        return sum(s.mmap for s in self.states)

    @property
    def area_mmaps(self) -> int:
        return sum(s.area_mmaps for s in self.states)

    @property
    def syscall_ns(self) -> float:
        """Mean nanoseconds per mmap or munmap call, over every state."""
        calls = sum(s.mmap + s.munmap for s in self.states)
        return sum(s.mmap_ns + s.munmap_ns for s in self.states) / calls if calls else 0.0


@dataclass(frozen=True)
class MmapCost:
    """What one mmap/munmap pair at a taken hint cost (the kernel moves the area)."""

    pairs: int
    moved: int
    mmap_ns: float  # per call
    munmap_ns: float


# --- running ----------------------------------------------------------------------------

def workload_args(generation: Generation | str, threads: int, *, arch: str,
                  aslr: Aslr = Aslr.ON, heap_mib: int = 0, retries: int = 3,
                  statements: int | None = None) -> list[str]:
    """The workload's arguments: ``threads`` states, the profile's default sizes."""
    prof = profile(Generation(generation).value)
    return ["--threads", str(threads), "--aslr", aslr.value, "--heap", str(heap_mib),
            "--retries", str(retries),
            "--statements", str(statements or STATEMENTS[machine(arch).name]),
            "--sizemcode", str(prof.sizemcode // KiB), "--maxmcode", str(prof.maxmcode // KiB)]


def _addr(text: str) -> int:
    return 0 if text in ("(nil)", "0") else int(text, 16)


def parse_report(stdout: str, *, source: str, arch: str, runner: Runner) -> WorkloadRun:
    """The workload's one-line JSON report."""
    try:
        doc: dict[str, Any] = json.loads(stdout.strip().splitlines()[-1])
        states = tuple(StateCounts(**s) for s in doc["states"])
        return WorkloadRun(
            luajit=doc["luajit"], source=source, arch=arch, runner=runner,
            threads=int(doc["threads"]), aslr=Aslr(doc["aslr"]), heap_mib=int(doc["heap_mib"]),
            statements=int(doc["statements"]), sizemcode=int(doc["sizemcode_kib"]) * KiB,
            maxmcode=int(doc["maxmcode_kib"]) * KiB, anchor=_addr(doc["anchor"]),
            brk=Span(_addr(doc["brk"][0]), _addr(doc["brk"][1])), wall_ns=int(doc["wall_ns"]),
            peak_rss_kib=int(doc["peak_rss_kib"]),
            jit_bytes=int(doc["jit_bytes"]),
            jit_mappings=tuple(Span(int(a, 16), int(b, 16)) for a, b in doc["jit_mappings"]),
            states=states, maps=doc["maps"])
    except (ValueError, KeyError, TypeError, IndexError) as e:
        raise ProbeError(f"the workload's report is not what it prints ({e}): "
                         f"{stdout.strip()[:200]!r}") from e


def _check(run: WorkloadRun) -> WorkloadRun:
    errors = {s.error for s in run.states if s.error}
    if errors:
        raise ProbeError(f"the workload's Lua failed: {'; '.join(sorted(errors))}")
    return run


def run_native(workload: Workload, args: Sequence[str], *, timeout: float = 600) -> WorkloadRun:
    """The workload run on this machine (its arch must be the host's)."""
    m = workload.luajit.machine
    if m.name != platform.machine():
        raise UsageError(f"a {m.name} workload cannot run natively on {platform.machine()}")
    try:
        done = subprocess.run([str(workload.executable), *args], capture_output=True,
                              text=True, timeout=timeout, check=False)
    except (OSError, subprocess.SubprocessError) as e:
        raise ProbeError(f"running the workload: {e}") from e
    if done.returncode != 0:
        raise ProbeError(f"the workload exited {done.returncode}: {done.stderr.strip()[-300:]}")
    return _check(parse_report(done.stdout, source=workload.luajit.source, arch=m.name,
                               runner=Runner.NATIVE))


def parse_mmap_bench(stdout: str) -> MmapCost:
    try:
        doc = json.loads(stdout.strip().splitlines()[-1])["mmap_bench"]
        pairs = int(doc["pairs"])
        return MmapCost(pairs, int(doc["moved"]), int(doc["mmap_ns"]) / pairs,
                        int(doc["munmap_ns"]) / pairs)
    except (ValueError, KeyError, TypeError, IndexError, ZeroDivisionError) as e:
        raise ProbeError(f"the workload's mmap bench report is garbled ({e})") from e


def run_in_guest(workload: Workload, arglists: Sequence[Sequence[str]], *,
                 timeout: float = 600) -> tuple[list[WorkloadRun | MmapCost], str]:
    """Each argument list run in turn in one boot of the arch's qemu-system guest (Debian's
    kernel, TCG, :func:`layoutkit.native.guest.boot.run_in_guest`); the runs and the guest
    kernel's release."""
    out, facts = run_in_guest_facts(workload, arglists, timeout=timeout)
    return out, facts.release


def run_in_guest_facts(workload: Workload, arglists: Sequence[Sequence[str]], *,
                       timeout: float = 600,
                       ) -> tuple[list[WorkloadRun | MmapCost], guest_boot.GuestKernel]:
    """:func:`run_in_guest` with every kernel fact the guest's ``/init`` read."""
    m = workload.luajit.machine
    result = guest_boot.run_in_guest(m.name, [(workload.executable, list(a))
                                               for a in arglists], timeout=timeout)
    out: list[WorkloadRun | MmapCost] = []
    for args, run in zip(arglists, result.runs, strict=True):
        if not run.ok:
            why = (" (SIGKILL: the guest's OOM killer, when its 1 GiB runs out)"
                   if run.signal == signal.SIGKILL else "")
            raise ProbeError(f"the workload failed in the guest (status {run.status}, signal "
                             f"{run.signal}){why}: {run.stderr.strip()[-300:]}")
        if "--mmap-bench" in args:
            out.append(parse_mmap_bench(run.stdout))
        else:
            out.append(_check(parse_report(run.stdout, source=workload.luajit.source,
                                           arch=m.name, runner=Runner.QEMU_SYSTEM)))
    return out, result.facts
