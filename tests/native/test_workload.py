"""The real-LuaJIT workload (issue 11, point 5): natively on x86-64 and in the arm64 guest.

Every count the workload reports is checked against its own final /proc/self/maps,
parsed here by layoutkit's maps reader: the mcode areas its states hold are exactly the
anonymous r-x mappings, in 64 KiB areas, all inside LuaJIT's window around the anchor
(``lj_vm_exit_handler``, read from the workload's ELF, not from its report).

The guest points use Debian's libluajit-5.1.a (the 2017-2025 allocator) in the static
non-PIE workload at 0x400000 with ASLR off (``personality(ADDR_NO_RANDOMIZE)``, a fixed
layout): with the heap left alone, 4 states find their 32 areas (no abort); with the
heap grown by 64 MiB right after .bss, the window keeps only the 63 slots below the
image (the kernel's vm.mmap_min_addr and LuaJIT's 64 KiB corner below them), so 16
states wanting 128 areas abort.
"""

from __future__ import annotations

import platform
import shutil

import pytest

from layoutkit.core import arches
from layoutkit.core.model import Perm
from layoutkit.core.spans import Span
from layoutkit.elf import ElfReader
from layoutkit.errors import ProbeError, UsageError
from layoutkit.native import workload as wl
from layoutkit.native.toolchain import Runner
from layoutkit.read.maps import MappingKind, parse_maps
from layoutkit.window.kernel import KernelConfig
from layoutkit.window.profiles import jit_window
from tests.support import require

KiB = 1024
AREA = 64 * KiB


def _anchor(workload: wl.Workload) -> int:
    with ElfReader(workload.executable) as reader:
        sym = reader.symbol("lj_vm_exit_handler")
    assert sym is not None
    return sym.value


def _window(run: wl.WorkloadRun, workload: wl.Workload) -> Span:
    arch = arches.by_name(run.arch)
    return jit_window(workload.luajit.generation.value, arch, run.anchor,
                      Span(0, KernelConfig.for_arch(arch).user_top)).window


def _free_slots(run: wl.WorkloadRun, workload: wl.Workload) -> int:
    """64 KiB-aligned slots of the window that no mapping but a JIT area overlaps."""
    window = _window(run, workload)
    taken = [Span(m.start, m.end) for m in parse_maps(run.maps).mappings
             if Span(m.start, m.end) not in run.jit_mappings]
    first = -(-max(window.start, 0x10000) // AREA)
    return sum(1 for k in range(first, window.end // AREA)
               if not any(t.overlaps(Span(k * AREA, (k + 1) * AREA)) for t in taken))


def _check_against_maps(run: wl.WorkloadRun, workload: wl.Workload) -> None:
    """The report's counts agree with its own maps, and every area is in the window."""
    prof_areas = run.maxmcode // run.sizemcode
    assert run.sizemcode == AREA
    assert run.anchor == _anchor(workload)  # non-PIE: the run-time address is the link one
    maps = parse_maps(run.maps, source="workload maps")
    jit = [m for m in maps.mappings
           if m.kind is MappingKind.ANONYMOUS and m.perms == Perm.R | Perm.X and not m.path
           and not m.shared]
    assert tuple(Span(m.start, m.end) for m in jit) == run.jit_mappings
    jit_bytes = sum(m.end - m.start for m in jit)
    assert jit_bytes == run.jit_bytes == run.areas * AREA
    assert all(0 <= s.areas <= prof_areas for s in run.states)
    assert all(s.error == "" and s.other_aborts == 0 and s.limit_aborts == 0
               for s in run.states)
    window = _window(run, workload)
    assert all(window.contains(s) for s in run.jit_mappings), window
    # The areas held cannot outnumber the 64 KiB slots of the window that nothing else
    # (image, heap, stacks, the workload's buffers) occupies.
    assert run.areas <= _free_slots(run, workload)
    # Every area was asked for once with one mmap of exactly 64 KiB; badly placed ones
    # were unmapped again, so the requests are at least the areas held.
    assert all(s.area_mmaps >= s.areas and s.mmap >= s.area_mmaps for s in run.states)
    assert run.heap_mib * (1 << 20) == run.brk.size


@pytest.mark.toolchain
@pytest.mark.skipif(platform.machine() != "x86_64", reason="x86-64 host only")
@pytest.mark.parametrize("generation", list(wl.Generation), ids=lambda g: g.value)
def test_native_smoke(generation: wl.Generation) -> None:
    for tool in ("gcc", "make", "apt-get", "dpkg-deb"):
        require(tool)
    workload = wl.build_workload(generation, "x86_64")
    run = wl.run_native(workload, wl.workload_args(generation, 2, arch="x86_64"))
    expected = {wl.Generation.DEBIAN_2_1: "LuaJIT 2.1.0-beta3",
                wl.Generation.LUPA_2025: "LuaJIT 2.1.1774896198"}[generation]
    assert run.luajit == expected
    assert (run.threads, run.aslr, run.runner) == (2, wl.Aslr.ON, Runner.NATIVE)
    # +-1 GiB around a program at 0x400000 on x86-64 is empty: every state gets its
    # whole allotment (8 areas for 2.1's 512 KiB, 32 for 2025's 2 MiB) without an abort.
    assert run.alloc_aborts == 0
    assert [s.areas for s in run.states] == [run.maxmcode // AREA] * 2
    # One trace per call: the driver is never compiled, and no call records twice.
    assert [(s.traces, s.compiles) for s in run.states] == [(run.maxmcode // AREA,) * 2] * 2
    _check_against_maps(run, workload)


@pytest.fixture(scope="module")
def guest_runs() -> tuple[wl.Workload, list[wl.WorkloadRun | wl.MmapCost]]:
    for tool in ("qemu-system-aarch64", "aarch64-linux-gnu-gcc", "apt-get", "dpkg-deb"):
        require(tool)
    generation = wl.Generation.DEBIAN_2_1
    workload = wl.build_workload(generation, "aarch64")
    runs, kernel = wl.run_in_guest(workload, [
        wl.workload_args(generation, 4, arch="aarch64", aslr=wl.Aslr.OFF),
        wl.workload_args(generation, 16, arch="aarch64", aslr=wl.Aslr.OFF, heap_mib=64,
                         retries=0),
        ["--mmap-bench", "200"]], timeout=300)
    assert kernel.endswith("arm64")
    return workload, runs


@pytest.mark.qemu_system
def test_guest_no_aborts(guest_runs: tuple[wl.Workload, list[wl.WorkloadRun | wl.MmapCost]],
                         ) -> None:
    workload, runs = guest_runs
    run = runs[0]
    assert isinstance(run, wl.WorkloadRun)
    assert (run.luajit, run.aslr, run.runner) == ("LuaJIT 2.1.0-beta3", wl.Aslr.OFF,
                                                  Runner.QEMU_SYSTEM)
    assert run.source.startswith("Debian libluajit-5.1-dev 2.1.0~beta3+git20220320")
    assert run.alloc_aborts == 0
    assert [s.areas for s in run.states] == [8] * 4
    _check_against_maps(run, workload)


@pytest.mark.qemu_system
def test_guest_many_aborts(
        guest_runs: tuple[wl.Workload, list[wl.WorkloadRun | wl.MmapCost]]) -> None:
    workload, runs = guest_runs
    run = runs[1]
    assert isinstance(run, wl.WorkloadRun)
    _check_against_maps(run, workload)
    # ASLR off: the heap starts where the image's bss ends and now spans 64 MiB, past the
    # top of the window.
    assert run.brk.start < 0x400000 + (4 << 20)
    assert run.brk.end > _window(run, workload).end
    free = _free_slots(run, workload)
    assert free < 16 * 8  # the demand cannot be met
    # Each call of a new function is one trace and one area request (the driver is never
    # compiled, the hot counters are reset before each call): a call either compiled or
    # aborted. retries=0: a state stops after its first allocation abort, which freed
    # its areas (lj_trace_flushall); at most free // 8 states can hold all 8 of theirs.
    assert all(s.traces + s.alloc_aborts == s.compiles for s in run.states)
    assert sorted({(s.areas, s.alloc_aborts) for s in run.states}) in (
        [(0, 1), (8, 0)], [(0, 1)])
    assert run.alloc_aborts == run.states_aborted >= 16 - free // 8
    # Before giving up, LuaJIT's probe sequence (up to 27 hints on arm64) mapped at least
    # one badly placed area per failed allocation, and unmapped it.
    assert run.area_mmaps - run.areas >= run.alloc_aborts


@pytest.mark.qemu_system
def test_guest_mmap_cost(
        guest_runs: tuple[wl.Workload, list[wl.WorkloadRun | wl.MmapCost]]) -> None:
    cost = guest_runs[1][2]
    assert isinstance(cost, wl.MmapCost)
    assert (cost.pairs, cost.moved) == (200, 200)  # the hint (its own code) is taken
    assert 0 < cost.mmap_ns < 10e6 and 0 < cost.munmap_ns < 10e6


@pytest.mark.toolchain
def test_bad_arguments_are_one_line() -> None:
    require("gcc")
    if platform.machine() != "x86_64" or shutil.which("apt-get") is None:
        pytest.skip("x86-64 host with apt-get only")
    workload = wl.build_workload(wl.Generation.DEBIAN_2_1, "x86_64")
    with pytest.raises(ProbeError, match=r"exited 2: workload: bad argument --threads x$"):
        wl.run_native(workload, ["--threads", "x"])
    with pytest.raises(UsageError, match="builds for x86_64, aarch64, not ppc64le"):
        wl.build_workload(wl.Generation.DEBIAN_2_1, "ppc64le")


def test_garbled_reports_are_one_line() -> None:
    with pytest.raises(ProbeError, match=r"^the workload's report is not what it prints"):
        wl.parse_report("workload: out of memory\n", source="x", arch="aarch64",
                        runner=Runner.NATIVE)
    with pytest.raises(ProbeError, match=r"^the workload's mmap bench report is garbled"):
        wl.parse_mmap_bench('{"mmap_bench": {"pairs": 0}}')
