"""The native probe on this (x86-64) kernel and under qemu-user.

Ground truth is the probe's own /proc/self/maps, captured in the same process right
before it probes: layoutkit's accounting of those maps must agree with the kernel's
answers slot for slot, except where a documented difference applies.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from layoutkit.cli import cli
from layoutkit.core import arches
from layoutkit.core.spans import Span
from layoutkit.errors import EXIT_PROBE, ProbeError
from layoutkit.native.compare import Cause, differences, model_accounting
from layoutkit.native.probe import build_probe, run_probe
from layoutkit.native.protocol import Outcome, ProbeMode, ReplayResult, ScanResult, ScanVerdict
from layoutkit.native.toolchain import Runner, host_arch
from layoutkit.read.maps import parse_maps
from tests.support import require

MiB = 1 << 20
DOCUMENTED = {Cause.STACK_GUARD_GAP, Cause.BELOW_MMAP_MIN_ADDR}

pytestmark = pytest.mark.skipif(host_arch().name != "x86_64",
                                reason="the native expectations are for an x86-64 host")


@pytest.fixture(autouse=True)
def _private_cache(tmp_path_factory: pytest.TempPathFactory,
                   monkeypatch: pytest.MonkeyPatch) -> None:
    """Build products go to a cache of this test session, not the user's."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path_factory.getbasetemp() / "cache"))


def _scan(**kwargs: object) -> ScanResult:
    result = run_probe(**kwargs)  # type: ignore[arg-type]
    assert isinstance(result, ScanResult)
    return result


@pytest.mark.toolchain
def test_scan_agrees_with_accounting_slot_for_slot() -> None:
    require("cc")
    result = _scan()  # luajit-2.1's +-1022 MiB window around the probe's own code
    ctx = result.context
    assert ctx.anchor == ctx.self_anchor
    assert result.window == ctx.jit.usable
    assert len(result.outcomes) == ctx.jit.usable.size // result.slot
    assert not ctx.leaked
    acc = model_accounting(result)
    model_free = {s for gap in acc.free for s in range(gap.start, gap.end, result.slot)}
    diffs = differences(result)
    assert {d.cause for d in diffs} <= DOCUMENTED
    documented = {d.slot for d in diffs}
    assert result.free_slots() == model_free ^ documented
    assert acc.free_slots == result.counts.free + sum(d.model_free for d in diffs) - sum(
        not d.model_free for d in diffs)
    # Natively nothing is moved and every non-free slot is a real EEXIST.
    assert result.counts.moved == result.counts.enomem == result.counts.other == 0
    assert result.counts.eexist == len(result.outcomes) - result.counts.free
    assert result.verdict is ScanVerdict.OK


@pytest.mark.toolchain
def test_mapped_memory_reports_eexist() -> None:
    require("cc")
    result = _scan(radius=128 * MiB)
    assert result.window.size == 256 * MiB
    maps = parse_maps(result.context.maps_before)
    inside = [m for m in maps.mappings if m.span.overlaps(result.window)]
    # The probe's own image (and its bss) is in the window around its own code.
    assert any(m.start <= result.context.self_anchor < m.end for m in inside)
    for m in inside:
        first = (max(m.start, result.window.start) - result.window.start) // result.slot
        last = (min(m.end, result.window.end) - 1 - result.window.start) // result.slot
        assert set(result.outcomes[first:last + 1]) == {Outcome.EEXIST}, m
    # Free runs are exactly the '.' slots, as half-open spans.
    assert sum(r.size for r in result.free_runs) == result.counts.free * result.slot


@pytest.mark.toolchain
def test_bisect_and_linear_scans_agree() -> None:
    require("cc")
    anchor = _scan(radius=MiB).context.self_anchor  # any address: both ask the same slots
    bisect = _scan(radius=32 * MiB, anchor=anchor)
    linear = _scan(radius=32 * MiB, anchor=anchor, linear=True)
    assert (bisect.strategy, linear.strategy) == ("bisect", "linear")
    assert linear.mmap_calls == len(linear.outcomes) == 1024
    assert bisect.mmap_calls < linear.mmap_calls
    # Different processes (ASLR): compare the shapes around each one's own image.
    assert bisect.counts.free + bisect.counts.eexist == 1024
    assert linear.counts.free + linear.counts.eexist == 1024


@pytest.mark.toolchain
def test_tiny_rlimit_as_is_reported_as_rlimit_not_occupied() -> None:
    require("cc")
    free = _scan(radius=64 * MiB)
    limited = _scan(radius=64 * MiB, as_headroom=0)  # RLIMIT_AS = VmSize: nothing fits
    assert limited.context.rlimit_as == limited.context.vm_size
    assert limited.counts.free == 0
    assert limited.counts.enomem > 0
    # Occupied slots still say EEXIST: the kernel checks overlap before the limit. The
    # two runs are different processes (ASLR moves their heaps), so compare totals.
    assert limited.counts.eexist > 0
    assert limited.counts.eexist + limited.counts.enomem == \
        free.counts.eexist + free.counts.free
    assert limited.verdict is ScanVerdict.RLIMIT_AS
    assert not limited.context.leaked


@pytest.mark.toolchain
def test_small_rlimit_as_is_reported() -> None:
    require("cc")
    result = _scan(radius=128 * MiB, rlimit_as=64 * MiB)  # ulimit -v 65536
    assert result.context.rlimit_as == 64 * MiB
    # Each 64 KiB slot fits under the limit, but the window's free space does not.
    assert result.counts.free > 0
    headroom = result.context.as_headroom
    assert headroom is not None
    assert headroom < sum(r.size for r in result.free_runs)
    assert result.verdict is ScanVerdict.RLIMIT_AS


@pytest.mark.toolchain
def test_replay_four_threads_eight_areas_inside_the_window() -> None:
    require("cc")
    result = run_probe(mode=ProbeMode.REPLAY, threads=4, areas=8, seed=7)
    assert isinstance(result, ReplayResult)
    assert (result.threads_started, result.allocations, result.failed_allocations) == (4, 32, 0)
    areas = result.areas()
    assert len(areas) == len(set(areas)) == 32
    usable = result.context.jit.usable
    assert all(usable.contains(a) for a in areas)
    # Each area was really mapped while the threads ran, and is gone afterwards.
    during = parse_maps(result.maps_during)
    for area in areas:
        assert any(m.span.contains(area) for m in during.mappings), area
    assert not result.context.leaked
    assert result.attempts >= 32
    assert result.ns_per_allocation > 0


@pytest.mark.toolchain
@pytest.mark.parametrize("jit", ["luajit-2025", "generic"])
def test_replay_other_profiles(jit: str) -> None:
    require("cc")
    result = run_probe(mode=ProbeMode.REPLAY, jit=jit, threads=2, areas=4)
    assert isinstance(result, ReplayResult)
    assert (result.allocations, result.failed_allocations, result.fallbacks) == (8, 0, 0)
    assert all(result.context.jit.usable.contains(a) for a in result.areas())
    assert not result.context.leaked


@pytest.mark.qemu_user
def test_qemu_user_moves_mappings_and_says_so() -> None:
    require("qemu-aarch64")
    require("aarch64-linux-gnu-gcc")
    result = _scan(arch="aarch64", runner=Runner.QEMU_USER, radius=128 * MiB)
    ctx = result.context
    assert ctx.arch.name == "aarch64"
    # qemu-user 7.2 passes MAP_FIXED_NOREPLACE on as a hint: taken slots are "moved".
    assert result.counts.moved > 0
    assert result.counts.eexist == 0
    assert any("MAP_FIXED_NOREPLACE" in note for note in ctx.infidelities)
    assert result.verdict is ScanVerdict.HINTS_ONLY
    assert not ctx.leaked
    # The probe's own image is in the window, and every slot of it moved.
    maps = parse_maps(ctx.maps_before)
    image = [m for m in maps.mappings if m.start <= ctx.self_anchor < m.end]
    assert image
    first = (image[0].start - result.window.start) // result.slot
    assert result.outcomes[first] is Outcome.MOVED
    assert {d.cause for d in differences(result)} <= DOCUMENTED | {Cause.MOVED}


def test_missing_cross_compiler_names_the_package(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(ProbeError) as info:
        run_probe("aarch64", runner=Runner.QEMU_USER)
    assert info.value.exit_code == EXIT_PROBE == 4
    assert "gcc-aarch64-linux-gnu" in str(info.value)


def test_missing_native_compiler_names_the_package(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.delenv("CC", raising=False)
    with pytest.raises(ProbeError, match="apt-get install gcc"):
        run_probe()


@pytest.mark.toolchain
def test_missing_qemu_names_the_package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    gcc = require("aarch64-linux-gnu-gcc")
    build_probe(arches.by_name("aarch64"))  # cached: no build
    os.symlink(gcc, tmp_path / "aarch64-linux-gnu-gcc")
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(ProbeError, match="qemu-aarch64 not found: apt-get install qemu-user"):
        run_probe("aarch64", runner=Runner.QEMU_USER)


@pytest.mark.toolchain
def test_native_runner_refuses_a_foreign_arch() -> None:
    require("aarch64-linux-gnu-gcc")
    with pytest.raises(Exception, match="use --runner qemu-user"):
        run_probe("aarch64", runner=Runner.NATIVE)


@pytest.mark.toolchain
def test_build_is_cached_and_keyed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    require("cc")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    arch = host_arch()
    first = build_probe(arch)
    assert first.is_relative_to(tmp_path / "layoutkit" / "probe")
    mtime = first.stat().st_mtime_ns
    assert build_probe(arch) == first
    assert first.stat().st_mtime_ns == mtime
    if shutil.which("clang"):
        monkeypatch.setenv("CC", "clang")
        assert build_probe(arch) != first  # another compiler, another key


@pytest.mark.toolchain
def test_cli_probe_json_and_text() -> None:
    require("cc")
    runner = CliRunner()
    res = runner.invoke(cli, ["probe", "--radius", "16M", "--format", "json"])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert doc["schema"] == "layoutkit/probe/1"
    assert doc["mode"] == "scan"
    assert doc["anchor"] == doc["self_anchor"]
    assert doc["anchor_source"] == "the probe's own code"
    assert doc["slots"] == 512
    assert doc["leaked_mappings"] is False
    assert doc["infidelities"] == []
    documented = {c.value for c in DOCUMENTED}
    assert [d for d in doc["model_differences"] if d["reason"] not in documented] == []
    res = runner.invoke(cli, ["probe", "--threads", "2", "--areas", "3"])
    assert res.exit_code == 0, res.output
    assert res.stdout.splitlines()[-1] == (
        "Verdict:     ok: every area was placed inside the window")
    assert "Replay:      2/2 threads x 3 areas of 64 KiB" in res.stdout


def test_cli_probe_missing_compiler_exits_4(tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    res = CliRunner().invoke(cli, ["probe", "--arch", "riscv64", "--runner", "qemu-user"])
    assert res.exit_code == EXIT_PROBE
    assert "apt-get install gcc-riscv64-linux-gnu libc6-dev-riscv64-cross" in res.stderr


@pytest.mark.toolchain
def test_window_span_is_whole_slots() -> None:
    require("cc")
    result = _scan(radius=4 * MiB)
    assert result.window == Span(result.window.start, result.window.start + 8 * MiB)
    assert result.window.start % result.slot == 0


@pytest.mark.toolchain
def test_below_mmap_min_addr() -> None:
    """Slot 0 is below vm.mmap_min_addr: EPERM for a normal user; root may map it
    (Linux security/commoncap.c cap_mmap_addr: below dac_mmap_min_addr only with
    CAP_SYS_RAWIO), which the probe then reports as free."""
    require("cc")
    result = _scan(anchor=0x80000, radius=0x80000)  # [0, 1 MiB)
    assert result.window == Span(0, 0x100000)
    low = result.context.mmap_min_addr
    assert low is not None and 0 < low <= 0x10000
    assert result.outcomes[0] is (Outcome.FREE if os.geteuid() == 0 else Outcome.EPERM)
    assert {d.cause for d in differences(result)} <= {Cause.BELOW_MMAP_MIN_ADDR}
    assert not result.context.leaked


@pytest.mark.toolchain
def test_stack_guard_gap_is_the_documented_difference() -> None:
    """Around the probe's own stack: MAP_FIXED_NOREPLACE maps inside the 1 MiB guard gap
    below [stack] (measured on this kernel), where a plain hint (what LuaJIT uses) is
    moved elsewhere; the model keeps the gap occupied. Everything else agrees."""
    require("cc")
    result = _scan(anchor="stack", radius=8 * MiB)
    maps = parse_maps(result.context.maps_before)
    stack = next(m for m in maps.mappings if m.path == "[stack]")
    diffs = differences(result)
    assert diffs
    assert {d.cause for d in diffs} == {Cause.STACK_GUARD_GAP}
    assert all(d.probe is Outcome.FREE and not d.model_free for d in diffs)
    assert all(stack.start - 256 * 4096 - result.slot < d.slot < stack.start for d in diffs)
    assert not result.context.leaked
