"""``layoutkit probe``: the native probe in its own process, or inside a running program.

The probe's own scan or replay comes back with its differences from layoutkit's
accounting of the same maps (a :class:`ProbeReport`, which carries its own exit code);
``probe -- CMD`` is :func:`layoutkit.native.preload.probe_program`, and on the
qemu-system runner :func:`layoutkit.native.guest.program.probe_in_guest` (re-exported
here).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from layoutkit.errors import UsageError
from layoutkit.native.compare import Difference, differences
from layoutkit.native.guest.probe import run_guest_probe
from layoutkit.native.guest.program import probe_in_guest
from layoutkit.native.probe import run_probe
from layoutkit.native.protocol import ProbeMode, ProbeResult, ScanResult
from layoutkit.native.toolchain import Runner, host_arch


@dataclass(frozen=True)
class ProbeReport:
    """A probe run and, for a scan, where it differs from the model of its own maps."""

    result: ProbeResult
    differences: tuple[Difference, ...]  # empty for a replay

    @property
    def exit_code(self) -> int:
        return self.result.exit_code


def probe(*, arch_name: str | None = None, runner: Runner | str = Runner.NATIVE,
          jit: str = "luajit-2.1", anchor: int | str | None = None, radius: int | None = None,
          threads: int = 0, areas: int = 8, seed: int = 1,
          retries: int | None = None) -> ProbeReport:
    """Scan ``jit``'s window (or +-``radius``) around ``anchor`` (an address, ``stack``,
    default the probe's own code), or with ``threads`` replay the allocator."""
    # probe.c reads --seed as a uint64_t and --retries into an unsigned (32 bits): a
    # larger value was refused by the probe itself (exit 4) or, for --retries, cut.
    if seed < 0:
        raise UsageError(f"--seed {seed}: cannot be negative")
    if seed >= 1 << 64:
        raise UsageError(f"--seed {seed}: at most 2^64 - 1")
    if retries is not None and not 0 <= retries < 1 << 32:
        raise UsageError(f"--retries {retries}: at most {(1 << 32) - 1}")
    where = Runner.named(runner)
    mode = ProbeMode.REPLAY if threads else ProbeMode.SCAN
    if where is Runner.QEMU_SYSTEM:
        result = run_guest_probe(arch_name or host_arch(), mode=mode, jit=jit, anchor=anchor,
                                 radius=radius, threads=max(threads, 1), areas=areas,
                                 seed=seed, retries=retries)
    else:
        result = run_probe(arch_name, runner=where, mode=mode, jit=jit, anchor=anchor,
                           radius=radius, threads=max(threads, 1), areas=areas, seed=seed,
                           retries=retries)
    found = tuple(differences(result)) if isinstance(result, ScanResult) else ()
    return ProbeReport(result, found)


__all__: Sequence[str] = ("ProbeReport", "probe", "probe_in_guest")
