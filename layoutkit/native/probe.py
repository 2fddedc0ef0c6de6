"""Run the native probe (``probe.c``) on a runner and read its report.

The probe asks the kernel itself which 64 KiB slots of a JIT window are free, in its own
process: ``mmap(addr, slot, PROT_NONE, MAP_FIXED_NOREPLACE)`` per slot (bisected over
free runs: same per-slot result, far fewer system calls), unmapping at once what it was
given; or it replays a JIT allocator's probe sequence with N threads.

The window depends on the anchor, which is known only once the probe runs (ASLR): the
probe prints its own addresses first, layoutkit answers with the window (one line on
its stdin, the handshake), then the probe works and prints its report.
"""

from __future__ import annotations

import subprocess
from collections.abc import Sequence
from pathlib import Path

from layoutkit.core import arches
from layoutkit.core.arches import Arch
from layoutkit.errors import ProbeError, UsageError
from layoutkit.native.build import NATIVE_DIR, compile_c
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
    window_words,
)
from layoutkit.native.toolchain import Runner, host_arch, run_command
from layoutkit.window.kernel import KernelConfig
from layoutkit.window.profiles import profile

SOURCE = NATIVE_DIR / "probe.c"
CFLAGS = ("-std=c11", "-O2", "-Wall", "-Wextra", "-pthread")
TIMEOUT = 120.0  # seconds for one probe run (a +-2 GiB linear scan takes ~0.3 s)


def build_probe(arch: Arch) -> Path:
    """The probe executable for ``arch``, built (once, cached) with the right compiler:
    ``cc`` for the host arch, ``<triplet>-gcc`` otherwise."""
    return compile_c(arch, SOURCE, CFLAGS, "probe", kind="probe", what="the probe")


def _check(mode: ProbeMode, jit: str, anchor: int | str | None, threads: int,
           areas: int) -> None:
    if mode is ProbeMode.REPLAY and profile(jit).allocator_name not in REPLAYS:
        raise UsageError(f"replay knows {', '.join(REPLAYS)} (generic: first fit; "
                         f"luajit-openresty runs luajit-2.1 or luajit-2025), not {jit}")
    if not 1 <= threads <= 1024 or not 0 <= areas <= 4096:
        raise UsageError("--threads must be 1..1024 and --areas 0..4096")
    if isinstance(anchor, str) and anchor != "stack":
        raise UsageError(f"anchor {anchor!r}: an address, or 'stack'")


def _arguments(mode: ProbeMode, jit: str, arch: Arch, anchor: int | str | None,
               threads: int, areas: int, seed: int, linear: bool, rlimit_as: int | None,
               as_headroom: int | None, retries: int, jumprange: int | None) -> list[str]:
    """The probe's command line (the window itself comes through the handshake)."""
    # Slot, area and jump range do not depend on where the window is: any anchor will do.
    guess = anchor if isinstance(anchor, int) and anchor else (
        KernelConfig.for_arch(arch).user_top // 2)
    window = probe_window(jit, arch, guess, jumprange=jumprange)
    args = ["--handshake", "--mode", mode.value, *profile_args(window),
            "--threads", str(threads), "--areas", str(areas), "--seed", str(seed),
            "--retries", str(retries)]
    if linear:
        args.append("--linear")
    if rlimit_as is not None:
        args += ["--rlimit-as", str(rlimit_as)]
    if as_headroom is not None:
        args += ["--as-headroom", str(as_headroom)]
    return args


def run_probe(arch: Arch | str | None = None, *, runner: Runner | str = Runner.NATIVE,
              mode: ProbeMode = ProbeMode.SCAN, jit: str = "luajit-2.1",
              anchor: int | str | None = None, radius: int | None = None, threads: int = 1,
              areas: int = 8, seed: int = 1, linear: bool = False,
              rlimit_as: int | None = None, as_headroom: int | None = None,
              executable: Path | None = None, retries: int | None = None,
              jumprange: int | None = None) -> ProbeResult:
    """Build and run the probe; the window is ``jit``'s around ``anchor`` (default: the
    probe's own code; ``"stack"``: the probe's main stack), or +-``radius`` around it.

    ``rlimit_as`` sets the probe's soft RLIMIT_AS (bytes, as ``ulimit -v``);
    ``as_headroom`` lowers it to the probe's VmSize plus that many bytes (a process that
    has used up its limit). Both act before the "before" maps snapshot.
    ``executable`` runs that build of the probe instead (a layout twin, twin.py).
    A replay follows docs/allocator-replay.md, as the model does: ``retries`` bounds the
    requests again after an abort (default: the model's); ``jumprange`` replaces the
    arch's LJ_TARGET_JUMPRANGE (a narrower window that the states fill).
    """
    arch = host_arch() if arch is None else (arch if isinstance(arch, Arch)
                                             else arches.by_name(arch))
    runner = Runner.named(runner)
    if not runner.interactive:
        raise UsageError(f"the {runner} runner runs no interactive probe: use "
                         "layoutkit.native.guest (or layoutkit verify --runner qemu-system)")
    _check(mode, jit, anchor, threads, areas)
    command = run_command(arch, runner, executable or build_probe(arch))
    if retries is None:
        from layoutkit.window.replay import DEFAULT_RETRIES  # numpy: only for a replay
        retries = DEFAULT_RETRIES
    if retries < 0 or (jumprange is not None and not 17 <= jumprange <= 40):
        raise UsageError("--retries cannot be negative; a jump range is 17..40 bits")
    args = _arguments(mode, jit, arch, anchor, threads, areas, seed, linear, rlimit_as,
                      as_headroom, retries, jumprange)
    try:
        proc = subprocess.Popen([*command, *args], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    except OSError as e:
        raise ProbeError(f"cannot start the probe {command[0]}: {e.strerror}") from e
    with proc:
        assert proc.stdout is not None
        first = proc.stdout.readline()
        if not first:
            _, err = proc.communicate(timeout=TIMEOUT)
            raise ProbeError(f"the probe exited at once (status {proc.returncode}): "
                             f"{err.strip()[-300:]}")
        hello = parse_report(first, "handshake")
        try:
            self_anchor, stack = addr(hello["anchor"]), addr(hello["stack"])
        except (KeyError, TypeError, ValueError) as e:
            raise ProbeError(f"the probe's handshake is malformed: {e}") from e
        if anchor is None:
            where, source = self_anchor, "the probe's own code"
        elif anchor == "stack":
            where, source = stack, "the probe's main stack"
        else:
            assert isinstance(anchor, int)
            where, source = anchor, "given"
        window = probe_window(jit, arch, where, radius, jumprange)
        try:
            out, err = proc.communicate(" ".join(window_words(window)) + "\n",
                                        timeout=TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise ProbeError(f"the probe ran longer than {TIMEOUT:.0f} s") from None
    if proc.returncode != 0:
        raise ProbeError(f"the probe failed (status {proc.returncode}): {err.strip()[-300:]}")
    doc = parse_report(out, "report")
    context = ProbeContext.from_report(doc, arch, runner, window, where, source)
    if mode is ProbeMode.SCAN:
        return ScanResult.from_report(doc, context)
    return ReplayResult.from_report(doc, context)


__all__: Sequence[str] = ("CFLAGS", "SOURCE", "build_probe", "run_probe")
