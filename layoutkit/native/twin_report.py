"""Running a static-PIE layout twin, which reports to a file.

A static PIE has no loader, so its twin (``twin.py``) carries the probe linked in:
``preload.c`` built with ``-DLK_TWIN``. Its constructor forks at the twin's start; the
single-threaded copy scans around the twin's code (``+-`` half the profile's window) with
``MAP_FIXED_NOREPLACE``, and writes the preload report to ``$LAYOUTKIT_PROBE_OUT``. There
is no handshake: the window is computed afterwards around where the kernel put the
twin's ``probe_anchor`` (its symbol plus the load bias read from the copy's own maps,
:func:`layoutkit.native.preload.report_result`), and the scan is clipped to it.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from layoutkit.core.scenario import KernelOverrides, Scenario
from layoutkit.errors import ProbeError
from layoutkit.native.guest.boot import GuestResult, GuestRun
from layoutkit.native.guest.initramfs import GUEST_TMP, GuestProgram
from layoutkit.native.preload import load_report, probe_environment, report_result
from layoutkit.native.protocol import ScanResult
from layoutkit.native.toolchain import Runner, run_command
from layoutkit.native.twin import Twin

TIMEOUT = 60.0  # seconds for the copy's report once the twin has exited
_POLL = 0.02


def _environment(twin: Twin, profile: str, out: str) -> dict[str, str]:
    return probe_environment(twin.spec.arch, profile, "start", out, None)


def _scan(doc_text: str, twin: Twin, profile: str, runner: Runner, *, pid: int,
          source: str, scenario: Scenario,
          path_map: tuple[tuple[str, str], ...] = ()) -> ScanResult:
    result = report_result(load_report(doc_text), command=(str(twin.path),), when="start",
                           program_pid=pid, scenario=scenario, anchor="probe_anchor",
                           runner=runner, source=source, path_map=path_map)
    return result.scan


def run_report_twin(twin: Twin, runner: Runner, profile: str) -> ScanResult:
    """One run of a static-PIE twin on this machine (natively or under qemu-user)."""
    command = run_command(twin.spec.arch, runner, twin.path)
    with tempfile.TemporaryDirectory(prefix="layoutkit-twin-") as folder:
        out = Path(folder) / "report.json"
        env = {**os.environ, **_environment(twin, profile, str(out))}
        try:
            done = subprocess.run(command, env=env, stdin=subprocess.DEVNULL,
                                  capture_output=True, text=True, timeout=TIMEOUT,
                                  check=False)
        except (OSError, subprocess.SubprocessError) as e:
            raise ProbeError(f"cannot run the twin {twin.path}: {e}") from e
        deadline = time.monotonic() + TIMEOUT
        while not out.exists():
            if time.monotonic() > deadline:
                raise ProbeError(f"the twin {twin.path} exited (status {done.returncode}) "
                                 f"and its copy wrote no report: {done.stderr.strip()[-300:]}")
            time.sleep(_POLL)
        text = out.read_text()
    # It ran on this machine's kernel (qemu-user passes /proc/sys through).
    low = Path("/proc/sys/vm/mmap_min_addr").read_text()
    return _scan(text, twin, profile, runner, pid=0, source=f"twin {twin.path}",
                 scenario=Scenario(jit=profile, kernel=KernelOverrides(mmap_min_addr=int(low))),
                 path_map=((str(twin.path), str(twin.path)),))


def guest_report_programs(twin: Twin, profile: str, runs: int) -> list[GuestProgram]:
    """``runs`` runs of a static-PIE twin in one boot, each with its own report file."""
    programs = []
    for seed in range(1, runs + 1):
        out = f"{GUEST_TMP}/layoutkit-twin-{seed}.json"
        env = _environment(twin, profile, out)
        programs.append(GuestProgram(twin.path, (), tuple(f"{k}={v}" for k, v in env.items()),
                                     report=out))
    return programs


def guest_report_scan(guest: GuestResult, run: GuestRun, twin: Twin,
                      profile: str) -> ScanResult:
    """A static-PIE twin's run in the guest, read against the guest kernel's values."""
    if run.report is None:
        raise ProbeError(f"the twin ran in the guest (status {run.status}, signal "
                         f"{run.signal}) but its copy wrote no report: "
                         f"{run.stderr.strip()[-300:]}")
    facts = guest.facts
    scenario = Scenario(jit=profile, kernel=KernelOverrides(
        va_bits=facts.va_bits, mmap_min_addr=facts.mmap_min_addr))
    return _scan(run.report, twin, profile, Runner.QEMU_SYSTEM, pid=run.pid or 0,
                 source=f"guest pid {run.pid}", scenario=scenario,
                 path_map=((run.argv[0], str(twin.path)),))


__all__: Sequence[str] = ("guest_report_programs", "guest_report_scan", "run_report_twin")
