"""The probe's protocol: the one definition of the outcome letters (lk_scan.h) against
:class:`Outcome`, the runner names the CLI offers against :class:`Runner`, and the one
report reader against reports the real probe printed."""

from __future__ import annotations

import json
import re
import subprocess

import click
import pytest

from layoutkit.cli import cli
from layoutkit.core.arches import by_name
from layoutkit.core.spans import Span
from layoutkit.errors import ProbeError, UsageError
from layoutkit.native.build import NATIVE_DIR
from layoutkit.native.probe import build_probe, run_probe
from layoutkit.native.protocol import (
    Outcome,
    ProbeContext,
    ProbeMode,
    ScanCounts,
    ScanResult,
    free_runs,
    jump_range,
    probe_window,
    profile_args,
    window_args,
)
from layoutkit.native.toolchain import PROBE_RUNNERS, Runner, host_arch
from tests.support import require

MiB = 1 << 20


@pytest.fixture(autouse=True)
def _private_cache(tmp_path_factory: pytest.TempPathFactory,
                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path_factory.getbasetemp() / "cache"))


def test_outcome_enum_is_the_header_x_macro() -> None:
    header = (NATIVE_DIR / "lk_scan.h").read_text()
    rows = re.findall(r"X\(LK_(\w+), '(.)', \"(\w+)\"\)", header)
    assert [(o.name, o.value, o.key) for o in Outcome] == rows
    assert len(rows) == 6


def test_no_c_source_spells_an_outcome_letter_itself() -> None:
    """probe.c and preload.c take the letters from lk_scan.h, never as literals."""
    for source in ("probe.c", "preload.c"):
        text = (NATIVE_DIR / source).read_text()
        assert '#include "lk_scan.h"' in text
        literals = {m for m in re.findall(r"'(.)'", text) if m in {o.value for o in Outcome}}
        assert literals == set(), (source, literals)
        assert "MAP_FIXED_NOREPLACE, -1" not in text  # the one scan is the header's


def _runner_choices(command: str) -> list[str]:
    group = cli
    assert isinstance(group, click.Group)
    found = group.commands[command]
    option = next(p for p in found.params if p.name == "runner")
    assert isinstance(option.type, click.Choice)
    return list(option.type.choices)


def test_cli_runner_choices_are_the_runner_enum() -> None:
    assert _runner_choices("verify") == [r.value for r in Runner]
    assert _runner_choices("probe") == [r.value for r in PROBE_RUNNERS]
    assert Runner.QEMU_SYSTEM in PROBE_RUNNERS  # the guest's /init relays the handshake


def test_unknown_runner_names_the_known_ones() -> None:
    with pytest.raises(Exception, match="known: native, qemu-user, qemu-system"):
        Runner.named("docker")


def _report(radius: int) -> tuple[dict[str, object], ProbeContext]:
    """A scan report printed by the real probe (window given on the command line, as in
    the guest), and its context."""
    require("cc")
    arch = host_arch()
    probe = build_probe(arch)
    # Any anchor will do for the protocol; the middle of the lower half of user space.
    window = probe_window("luajit-2.1", arch, 0x3000_0000_0000, radius)
    out = subprocess.run([str(probe), "--mode", "scan", *profile_args(window),
                          *window_args(window)], capture_output=True, text=True, check=True,
                         timeout=60).stdout
    doc = json.loads(out)
    ctx = ProbeContext.from_report(doc, arch, Runner.NATIVE, window, 0x3000_0000_0000, "given")
    return doc, ctx


@pytest.mark.toolchain
def test_from_report_agrees_with_the_probes_own_counts() -> None:
    doc, ctx = _report(16 * MiB)
    scan = ScanResult.from_report(doc, ctx)
    assert scan.window == ctx.jit.usable == Span(0x3000_0000_0000 - 16 * MiB,
                                                 0x3000_0000_0000 + 16 * MiB)
    assert len(scan.outcomes) == 512
    counts = doc["counts"]
    assert isinstance(counts, dict)
    assert scan.counts.as_dict() == counts  # C counted them, Python parsed the letters
    assert [(hex(r.start), hex(r.end)) for r in scan.free_runs] == [
        tuple(r) for r in doc["free_runs"]]  # type: ignore[attr-defined]
    assert not ctx.leaked


@pytest.mark.toolchain
def test_from_report_clips_to_the_window() -> None:
    doc, ctx = _report(16 * MiB)
    within = Span(0x3000_0000_0000 - 4 * MiB, 0x3000_0000_0000 + 8 * MiB)
    whole = ScanResult.from_report(doc, ctx)
    clipped = ScanResult.from_report(doc, ctx, within=within)
    assert clipped.window == within
    assert clipped.outcomes == whole.outcomes[192:384]
    assert clipped.counts == ScanCounts.of(whole.outcomes[192:384])
    assert clipped.free_runs == free_runs(within.start, clipped.slot, clipped.outcomes)


@pytest.mark.toolchain
def test_a_tampered_report_is_refused() -> None:
    doc, ctx = _report(MiB)
    counts = dict(doc["counts"])  # type: ignore[call-overload]
    counts["free"] += 1
    with pytest.raises(ProbeError, match="disagree with its outcomes"):
        ScanResult.from_report({**doc, "counts": counts}, ctx)
    with pytest.raises(ProbeError, match="unknown slot outcome 'Z'"):
        ScanResult.from_report({**doc, "outcomes": "Z" * 32}, ctx)
    with pytest.raises(ProbeError, match="32 outcomes"):
        ScanResult.from_report({**doc, "slot": 0x20000}, ctx)
    with pytest.raises(ProbeError, match="malformed"):
        ScanResult.from_report({k: v for k, v in doc.items() if k != "window"}, ctx)
    with pytest.raises(ProbeError, match="malformed"):
        ProbeContext.from_report({**doc, "rlimit_as": None}, ctx.arch, Runner.NATIVE,
                                 ctx.jit, ctx.anchor, "given")


@pytest.mark.parametrize("arch_name", ["x86_64", "aarch64", "arm"])
@pytest.mark.parametrize("jit", ["luajit-2017", "luajit-2.1", "luajit-2025"])
def test_replay_jump_range_is_luajits(arch_name: str, jit: str) -> None:
    """--jr recovered from the window is LJ_TARGET_JUMPRANGE (src/lj_arch.h), as the arch
    states it."""
    arch = by_name(arch_name)
    window = probe_window(jit, arch, 0x4000_0000)
    assert jump_range(window) == arch.luajit_jumprange
    assert profile_args(window)[-2:] == ["--jr", str(arch.luajit_jumprange)]


def test_replay_refuses_an_allocator_the_probe_does_not_replay() -> None:
    with pytest.raises(UsageError, match=r"^replay knows luajit-2017, luajit-2\.1, luajit-2025, "
                       r"generic \(generic: first fit; luajit-openresty runs luajit-2\.1 or "
                       r"luajit-2025\), not php-opcache$"):
        run_probe(mode=ProbeMode.REPLAY, jit="php-opcache")
