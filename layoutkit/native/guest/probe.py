"""The probe in the guest, its report read as the :class:`ScanResult` the other runners
give. Where the probe's code sits decides its window:

- built static non-PIE (:func:`build_guest_probe`), its code is at its link address: the
  window goes on its command line (:func:`probe_scan_args`);
- a PIE (a twin of a PIE target) is placed by the guest kernel under ASLR: it does the
  handshake (:func:`handshake_program`), printing its own addresses first; ``/init``
  relays them and the window computed around them (:func:`window_answer`) comes back
  through the serial console, as ``run_probe`` answers the probe natively.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from layoutkit.core import arches
from layoutkit.core.arches import Arch
from layoutkit.elf import ElfReader
from layoutkit.errors import ProbeError, UsageError
from layoutkit.native.guest.boot import Answer, GuestRun, build_static, run_in_guest
from layoutkit.native.guest.initramfs import GuestProgram
from layoutkit.native.probe import SOURCE
from layoutkit.native.protocol import (
    REPLAYS,
    ProbeContext,
    ProbeMode,
    ProbeResult,
    ReplayResult,
    ScanResult,
    addr,
    parse_report,
    probe_window,
    profile_args,
    window_args,
    window_words,
)
from layoutkit.native.toolchain import Runner
from layoutkit.window.kernel import KernelConfig

GUEST_TIMEOUT = 300.0  # seconds for one boot with one probe run (TCG, a loaded machine)


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


def handshake_program(probe: Path, arch: Arch | str, *, jit: str = "luajit-2.1",
                      seed: int = 1) -> GuestProgram:
    """``probe`` (any build: a PIE twin too) as a guest program that scans ``jit``'s
    window around its own code through the handshake (:func:`window_answer`)."""
    arch = arch if isinstance(arch, Arch) else arches.by_name(arch)
    # Slot, area and jump range do not depend on where the window is: any anchor will do.
    guess = probe_window(jit, arch, KernelConfig.for_arch(arch).user_top // 2)
    return GuestProgram(probe, ("--handshake", "--mode", ProbeMode.SCAN.value,
                                *profile_args(guess), "--seed", str(seed)), handshake=True)


def _window_line(arch: Arch, jit: str, radius: int | None, hello: dict[str, Any]) -> str:
    try:
        anchor = addr(hello["anchor"])
    except (KeyError, TypeError, ValueError) as e:
        raise ProbeError(f"the probe's handshake in the guest names no anchor: {e}") from e
    return " ".join(window_words(probe_window(jit, arch, anchor, radius)))


def window_answer(arch: Arch | str, *, jit: str = "luajit-2.1",
                  radius: int | None = None) -> Answer:
    """The handshake's answer: ``jit``'s window (or +-``radius``) around the anchor the
    probe reported, where the guest kernel placed it."""
    arch = arch if isinstance(arch, Arch) else arches.by_name(arch)
    return lambda _index, hello: _window_line(arch, jit, radius, hello)


def _where(anchor: int | str | None, hello: dict[str, Any]) -> tuple[int, str]:
    """What the window is around: the probe's own code (default), its main stack, or a
    given address; and how to say so."""
    try:
        if anchor is None:
            return addr(hello["anchor"]), "the probe's own code"
        if anchor == "stack":
            return addr(hello["stack"]), "the probe's main stack"
    except (KeyError, TypeError, ValueError) as e:
        raise ProbeError(f"the probe's handshake in the guest is malformed: {e}") from e
    assert isinstance(anchor, int)
    return anchor, "given"


def run_guest_probe(arch: Arch | str, *, mode: ProbeMode = ProbeMode.SCAN,
                    jit: str = "luajit-2.1", anchor: int | str | None = None,
                    radius: int | None = None, threads: int = 1, areas: int = 8,
                    seed: int = 1, retries: int | None = None) -> ProbeResult:
    """``probe --runner qemu-system``: the static probe in one boot of the guest, doing
    the handshake as natively (the window is answered over the serial console around
    its code, its stack or ``anchor``); a scan or an allocator replay."""
    arch = arch if isinstance(arch, Arch) else arches.by_name(arch)
    if mode is ProbeMode.REPLAY and jit not in REPLAYS:
        raise UsageError("replay knows luajit-2.1, luajit-2025 and generic (first fit)")
    if not 1 <= threads <= 1024 or not 0 <= areas <= 4096:
        raise UsageError("--threads must be 1..1024 and --areas 0..4096")
    if isinstance(anchor, str) and anchor != "stack":
        raise UsageError(f"anchor {anchor!r}: an address, or 'stack'")
    if retries is None:
        from layoutkit.window.replay import DEFAULT_RETRIES  # numpy: only for a replay
        retries = DEFAULT_RETRIES
    if retries < 0:
        raise UsageError("--retries cannot be negative")
    probe = build_guest_probe(arch)
    guess = probe_window(jit, arch, KernelConfig.for_arch(arch).user_top // 2)
    program = GuestProgram(probe, ("--handshake", "--mode", mode.value, *profile_args(guess),
                                   "--threads", str(threads), "--areas", str(areas),
                                   "--seed", str(seed), "--retries", str(retries)),
                           handshake=True)
    asked: list[tuple[int, str]] = []

    def answer(_index: int, hello: dict[str, Any]) -> str:
        asked.append(_where(anchor, hello))
        return " ".join(window_words(probe_window(jit, arch, asked[-1][0], radius)))

    run = run_in_guest(arch.name, [program], timeout=GUEST_TIMEOUT, answer=answer).runs[0]
    if not run.ok or not asked:
        raise ProbeError(f"the probe failed in the guest (status {run.status}, signal "
                         f"{run.signal}): {run.stderr.strip()[-300:]}")
    where, source = asked[0]
    doc = parse_report(run.stdout, "report")
    context = ProbeContext.from_report(doc, arch, Runner.QEMU_SYSTEM,
                                       probe_window(jit, arch, where, radius), where, source)
    if mode is ProbeMode.SCAN:
        return ScanResult.from_report(doc, context)
    return ReplayResult.from_report(doc, context)


def scan_result(run: GuestRun, arch: Arch | str, *, jit: str = "luajit-2.1",
                radius: int | None = None) -> ScanResult:
    """A guest probe run's report as the :class:`ScanResult` the native runners give.
    After a handshake, the window it was answered with must be the one around the
    anchor its report names."""
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
    if run.hello is not None and run.answer != " ".join(window_words(window)):
        raise ProbeError(f"the probe in the guest was answered {run.answer!r}, not the "
                         f"window around its anchor {anchor:#x}")
    context = ProbeContext.from_report(doc, arch, Runner.QEMU_SYSTEM, window, anchor,
                                       "the probe's own code")
    return ScanResult.from_report(doc, context)


__all__: Sequence[str] = ("build_guest_probe", "handshake_program", "probe_scan_args",
                          "run_guest_probe", "scan_result", "window_answer")
