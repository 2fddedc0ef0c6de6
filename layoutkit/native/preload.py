"""The probe inside a running program: ``preload.c`` as an LD_PRELOAD library.

``start_program`` runs CMD with the library preloaded. At the chosen moment (``start``,
``ms:N`` after start, or ``signal:NAME`` sent to CMD) the library forks; the forked copy
(single-threaded, the program's address space as it was) scans slot by slot with
MAP_FIXED_NOREPLACE, as the probe does, and writes a JSON report to a file of its own.
The program itself goes on undisturbed: the copy never writes into its memory.

The anchor is known only once the program has mapped its objects, so the copy scans
``[holder's lowest code - R, highest code + R)`` (R: half the profile's window; the
holder is the main program or ``object``), and Python then finds the anchor in the
copy's maps with :func:`layoutkit.commands.maps.analyse_maps` (symbols with the load bias;
a stripped LuaJIT: ``lj_vm_exit_handler`` recovered from the exit stubs in the JIT
code, which the copy reports from its own memory) and clips the scan to the window.

Dynamically linked programs only: a static program never runs the dynamic loader, so
preloading cannot work; its layout twin (``layoutkit verify``) measures it instead.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import IO, Any

from layoutkit.commands.maps import MapsAnalysis, analyse_maps
from layoutkit.core.arches import Arch
from layoutkit.core.scenario import Scenario
from layoutkit.core.spans import Span, align_up, largest
from layoutkit.elf import ElfReader
from layoutkit.errors import EXIT_FINDINGS, EXIT_OK, LayoutkitError, ProbeError, UsageError
from layoutkit.native.build import NATIVE_DIR, compile_c
from layoutkit.native.compare import Difference, differences
from layoutkit.native.protocol import ProbeContext, ScanResult, addr
from layoutkit.native.toolchain import Runner, host_arch
from layoutkit.read.maps import parse_maps
from layoutkit.window.kernel import KernelConfig
from layoutkit.window.profiles import jit_window

SOURCE = NATIVE_DIR / "preload.c"
CFLAGS = ("-std=c11", "-O2", "-Wall", "-Wextra", "-shared", "-fPIC")
TIMEOUT = 30.0  # seconds to wait for the report once the moment has come
_POLL = 0.02


def build_preload() -> Path:
    """The preload library for this machine, built once with ``cc -shared -fPIC``."""
    return compile_c(host_arch(), SOURCE, CFLAGS, "liblayoutkit-probe.so", kind="probe",
                     what="the preload probe")


def probe_environment(arch: Arch, jit: str, when: str, out: str,
                      object_name: str | None) -> dict[str, str]:
    """The library's settings (``preload.c``): the report file, the moment, and the scan
    radius around the holder's code (half ``jit``'s window, in whole slots)."""
    limit = Span(0, KernelConfig.for_arch(arch).user_top)
    guess = jit_window(jit, arch, limit.end // 2, limit)
    radius = align_up(max(guess.target - guess.window.start, guess.window.end - guess.target),
                      guess.slot)
    env = {"LAYOUTKIT_PROBE_OUT": out, "LAYOUTKIT_PROBE_WHEN": when,
           "LAYOUTKIT_PROBE_RADIUS": str(radius), "LAYOUTKIT_PROBE_SLOT": str(guess.slot)}
    if object_name:
        env["LAYOUTKIT_PROBE_OBJECT"] = object_name
    return env


def check_when(when: str) -> str:
    if when == "start":
        return when
    if when.startswith("ms:") and when[3:].isdigit():
        return when
    if when.startswith("signal:"):
        name = when[7:].upper().removeprefix("SIG")
        if name in ("USR1", "USR2"):
            return f"signal:{name}"
    raise UsageError(f"--when {when!r}: start, ms:N or signal:USR1|USR2")


def _check_dynamic(program: str) -> str:
    """The program's path; a static one raises :class:`ProbeError` with the twin hint."""
    path = program if os.sep in program else shutil.which(program)
    if path is None or not os.path.isfile(path):
        raise UsageError(f"{program}: no such program")
    try:
        with ElfReader(path) as reader:
            interpreter = reader.image().interpreter
    except LayoutkitError:
        return path  # a script or another format: its interpreter is what runs
    if interpreter is None:
        raise ProbeError(f"{path} is statically linked (no PT_INTERP): the dynamic loader "
                         "never runs, so a preloaded probe cannot work. Measure its layout "
                         f"twin instead: layoutkit verify {path}")
    return path


@dataclass
class ProgramRun:
    """CMD running with the preload probe; ``process`` is the program itself."""

    process: subprocess.Popen[bytes]
    command: tuple[str, ...]
    when: str
    jit: str
    anchor: str | None
    folder: tempfile.TemporaryDirectory[str]

    @property
    def out(self) -> Path:
        return Path(self.folder.name) / "report.json"

    def signal(self) -> None:
        """Send the ``signal:NAME`` trigger to the program."""
        if not self.when.startswith("signal:"):
            raise UsageError("the probe was not set to wait for a signal")
        self.process.send_signal(getattr(signal, "SIG" + self.when[7:]))

    def wait_report(self, timeout: float = TIMEOUT) -> ProgramResult:
        """Wait for the forked copy's report (the program may have exited meanwhile)."""
        deadline = time.monotonic() + timeout
        exited_at: float | None = None
        while not self.out.exists():
            now = time.monotonic()
            if self.process.poll() is not None:
                exited_at = exited_at or now
                claimed = (Path(self.folder.name) / "report.json.claim").exists()
                if not claimed or now - exited_at > 2.0:
                    raise ProbeError(
                        f"{self.command[0]} exited (status {self.process.returncode}) "
                        + ("before the probe's moment came" if claimed else
                           "without loading the probe (statically linked, or LD_PRELOAD "
                           "ignored: setuid?)"))
            if now > deadline:
                raise ProbeError(f"no probe report within {timeout:.0f} s "
                                 f"(--when {self.when})")
            time.sleep(_POLL)
        return _result(self, _load(self.out))

    def finish(self, kill: bool = False, timeout: float | None = None) -> int | None:
        """Let the program run to completion (or terminate it); its exit status."""
        if kill and self.process.poll() is None:
            self.process.terminate()
        try:
            status = self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None
        finally:
            self.folder.cleanup()
        return status


def start_program(command: Sequence[str], *, when: str = "start", jit: str = "luajit-2.1",
                  anchor: str | None = None, object_name: str | None = None,
                  stdin: int | IO[Any] | None = None, stdout: int | IO[Any] | None = None,
                  stderr: int | IO[Any] | None = None) -> ProgramRun:
    """Run ``command`` with the preload probe set to fire at ``when``."""
    if not command:
        raise UsageError("no command to run (layoutkit probe [options] -- CMD ARGS...)")
    when = check_when(when)
    path = _check_dynamic(command[0])
    lib = build_preload()
    folder = tempfile.TemporaryDirectory(prefix="layoutkit-preload-")
    env = dict(os.environ)
    env["LD_PRELOAD"] = " ".join(p for p in (str(lib), env.get("LD_PRELOAD", "")) if p)
    env.pop("LAYOUTKIT_PROBE_OBJECT", None)
    env.update(probe_environment(host_arch(), jit, when, str(Path(folder.name) / "report.json"),
                                 object_name))
    try:
        process = subprocess.Popen([path, *command[1:]], env=env, stdin=stdin, stdout=stdout,
                                   stderr=stderr)
    except OSError as e:
        folder.cleanup()
        raise ProbeError(f"cannot start {command[0]}: {e.strerror}") from e
    return ProgramRun(process, tuple(command), when, jit, anchor, folder)


def _load(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text()
    except OSError as e:
        raise ProbeError(f"the preload probe's report is unreadable: {e}") from e
    return load_report(text)


def load_report(text: str) -> dict[str, Any]:
    """The forked copy's report as a JSON object; its ``error`` as a :class:`ProbeError`."""
    try:
        doc = json.loads(text)
    except ValueError as e:
        raise ProbeError(f"the preload probe's report is unreadable: {e}") from e
    if not isinstance(doc, dict):
        raise ProbeError("the preload probe's report is not a JSON object")
    if "error" in doc:
        raise ProbeError(f"the preload probe failed: {doc['error']}")
    return doc


@dataclass(frozen=True)
class ProgramResult:
    """The forked copy's scan, clipped to the profile's window around the anchor."""

    command: tuple[str, ...]
    when: str
    program_pid: int
    child_pid: int
    scanned: Span  # what the copy scanned (holder's code +- R)
    scan: ScanResult  # the scan clipped to the window's usable span
    analysis: MapsAnalysis  # analyse_maps on the copy's maps (anchor, JIT areas, model)
    mmap_calls: int
    probe_ns: int
    notes: tuple[str, ...]  # analyse_maps' notes, and whether the scan covers the window
    differences: tuple[Difference, ...]  # the scan against the model, slot for slot
    program_status: int | None = None  # CMD's exit status once it ended (None: running)

    @property
    def measured(self) -> tuple[int, int, Span | None]:
        """free_bytes, free_slots, largest_free in the window, as the kernel said."""
        runs = self.scan.free_runs
        return (sum(r.size for r in runs), sum(r.size // self.scan.slot for r in runs),
                largest(runs))

    @property
    def jit_inside(self) -> bool:
        usable = self.analysis.accounting.jit.usable
        return all(usable.contains(a.span) for a in self.analysis.jit_areas)

    @property
    def exit_code(self) -> int:
        """1 when the window has no free slot or JIT code lies outside it."""
        return EXIT_OK if self.measured[1] and self.jit_inside else EXIT_FINDINGS


def _result(run: ProgramRun, doc: dict[str, Any]) -> ProgramResult:
    return report_result(doc, command=run.command, when=run.when, program_pid=run.process.pid,
                         scenario=Scenario(jit=run.jit), anchor=run.anchor,
                         runner=Runner.NATIVE, source=f"pid {run.process.pid}")


def report_result(doc: dict[str, Any], *, command: tuple[str, ...], when: str,
                  program_pid: int, scenario: Scenario, anchor: str | None, runner: Runner,
                  source: str, path_map: tuple[tuple[str, str], ...] = ()) -> ProgramResult:
    """The forked copy's report ``doc`` read against its own maps (``source`` names them:
    ``pid N`` for a process of this machine, whose files are read through /proc; else
    ``path_map`` says where each mapped file is here)."""
    try:
        scanned = Span(addr(doc["window"][0]), addr(doc["window"][1]))
        child = int(doc["pid"])
        page_size = int(doc["page_size"])
        maps_before, maps_after = str(doc["maps_before"]), str(doc["maps_after"])
        code = tuple((addr(c["start"]), bytes.fromhex(c["hex"])) for c in doc["jit_code"])
    except (KeyError, TypeError, ValueError, IndexError) as e:
        raise ProbeError(f"the preload probe's report is malformed ({e})") from e
    maps = parse_maps(maps_before, source=f"{source} (copy in preload child {child})")
    analysis = analyse_maps(maps, scenario, anchor=anchor, path_map=path_map, jit_code=code)
    window = analysis.accounting.jit
    ctx = ProbeContext(  # the copy runs on the runner's kernel
        arch=analysis.arch, runner=runner, jit=window,
        anchor=analysis.anchor.span.start, anchor_source=analysis.anchor.how_found.value,
        self_anchor=analysis.anchor.span.start, page_size=page_size,
        rlimit_as=None, vm_size=0, mmap_min_addr=analysis.kernel.mmap_min_addr,
        maps_before=maps_before, maps_after=maps_after, infidelities=runner.infidelities)
    scan = ScanResult.from_report(doc, ctx, within=window.usable)
    scan = replace(scan, context=replace(ctx, jit=replace(window, usable=scan.window)))
    notes = list(analysis.notes)
    if scan.window != window.usable:
        notes.append(f"the scan around the holder's code covers only {scan.window} of the "
                     f"usable window {window.usable}: give --object for the object holding "
                     "the anchor")
    return ProgramResult(command, when, program_pid, child, scanned, scan, analysis,
                         scan.mmap_calls, scan.probe_ns, tuple(notes),
                         tuple(differences(scan)))


def probe_program(command: Sequence[str], *, when: str = "start", jit: str = "luajit-2.1",
                  anchor: str | None = None, object_name: str | None = None,
                  kill_after: bool = False, stdout: int | IO[Any] | None = None
                  ) -> ProgramResult:
    """Run ``command`` with the preload probe, wait for its report, then let the program
    finish (or terminate it with ``kill_after``); the result carries its exit status."""
    run = start_program(command, when=when, jit=jit, anchor=anchor, object_name=object_name,
                        stdout=stdout)
    try:
        result = run.wait_report()
    except LayoutkitError:
        run.finish(kill=True)
        raise
    return replace(result, program_status=run.finish(kill=kill_after))


__all__: Sequence[str] = ("CFLAGS", "SOURCE", "ProgramResult", "ProgramRun", "build_preload",
                          "check_when", "load_report", "probe_environment", "probe_program",
                          "report_result", "start_program")
