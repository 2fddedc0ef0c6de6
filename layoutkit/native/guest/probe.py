"""The probe in the guest: built static (non-PIE, so its code sits at its link address),
told its window on the command line (the guest's programs read no stdin), its report
read as the :class:`ScanResult` the other runners give."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from layoutkit.core import arches
from layoutkit.core.arches import Arch
from layoutkit.elf import ElfReader
from layoutkit.errors import ProbeError
from layoutkit.native.guest.boot import GuestRun, build_static
from layoutkit.native.probe import SOURCE
from layoutkit.native.protocol import (
    ProbeContext,
    ProbeMode,
    ScanResult,
    addr,
    parse_report,
    probe_window,
    profile_args,
    window_args,
)
from layoutkit.native.toolchain import Runner


def build_guest_probe(arch: Arch | str) -> Path:
    """The native probe built static (non-PIE: its code sits at its link address)."""
    return build_static(SOURCE, arch, "probe")


def probe_scan_args(probe: Path, arch: Arch | str, *, jit: str = "luajit-2.1",
                    radius: int | None = None) -> list[str]:
    """Arguments that make ``probe`` scan ``jit``'s window (or +-``radius``) around its
    own code; valid for a static non-PIE probe, whose anchor is its link address."""
    arch = arch if isinstance(arch, Arch) else arches.by_name(arch)
    with ElfReader(probe) as reader:
        sym = reader.symbol("probe_anchor")
        pie = reader.image().pie
    if sym is None or pie:
        raise ProbeError(f"{probe}: not a static non-PIE probe (no fixed probe_anchor)")
    window = probe_window(jit, arch, sym.value, radius)
    return ["--mode", ProbeMode.SCAN.value, *profile_args(window), *window_args(window)]


def scan_result(run: GuestRun, arch: Arch | str, *, jit: str = "luajit-2.1",
                radius: int | None = None) -> ScanResult:
    """A guest probe run's report as the :class:`ScanResult` the native runners give."""
    arch = arch if isinstance(arch, Arch) else arches.by_name(arch)
    if not run.ok:
        raise ProbeError(f"the probe failed in the guest (status {run.status}, signal "
                         f"{run.signal}): {run.stderr.strip()[-300:]}")
    doc = parse_report(run.stdout, "report")
    try:
        anchor = addr(doc["anchor"])
    except (KeyError, TypeError, ValueError) as e:
        raise ProbeError(f"the probe's report names no anchor: {e}") from e
    window = probe_window(jit, arch, anchor, radius)
    context = ProbeContext.from_report(doc, arch, Runner.QEMU_SYSTEM, window, anchor,
                                       "the probe's own code")
    return ScanResult.from_report(doc, context)


__all__: Sequence[str] = ("build_guest_probe", "probe_scan_args", "scan_result")
