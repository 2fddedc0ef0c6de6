"""``probe --runner qemu-system -- PROGRAM ARGS``: a real program on the guest's kernel,
with the probe inside it.

- A dynamic PROGRAM runs in the guest with ``preload.c`` preloaded (built for the guest's
  arch with the cross compiler, put into the initramfs beside PROGRAM's loader and
  libraries). At ``--when`` (``start`` or ``ms:N``) the library forks; the copy scans
  around PROGRAM's code and writes its report to a file in the guest, which ``/init``
  waits for and prints on the console. PROGRAM is never written to. The report is read
  as natively (:func:`layoutkit.native.preload.report_result`): the guest's files are
  found here through the guest paths they were given, and the kernel values are the
  guest kernel's (vm.mmap_min_addr, the VA size).
- A static PROGRAM never runs the dynamic loader, so no preload can enter it: it runs
  (for its exit status and output), and its layout twin (``twin.py``, the probe linked
  with PROGRAM's PT_LOAD segments) is measured in the same boot instead. The result
  says so.
"""

from __future__ import annotations

import enum
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from layoutkit.commands.maps import analyse_maps
from layoutkit.core import arches
from layoutkit.core.arches import Arch
from layoutkit.core.model import ElfImage, LoadKind
from layoutkit.core.scenario import KernelOverrides, Scenario
from layoutkit.elf import ElfReader
from layoutkit.errors import LayoutkitError, ProbeError, UsageError
from layoutkit.native.build import compile_c
from layoutkit.native.compare import differences
from layoutkit.native.guest.boot import GuestResult, GuestRun, run_in_guest
from layoutkit.native.guest.initramfs import GUEST_TMP, GuestProgram, runtime_files
from layoutkit.native.guest.kernels import system_for
from layoutkit.native.guest.probe import (
    handshake_program,
    probe_scan_args,
    scan_result,
    window_answer,
)
from layoutkit.native.preload import (
    CFLAGS,
    SOURCE,
    ProgramResult,
    check_when,
    load_report,
    probe_environment,
    report_result,
)
from layoutkit.native.protocol import ScanResult, parse_report
from layoutkit.native.toolchain import Runner
from layoutkit.native.twin import Twin, TwinSpec, build_twin
from layoutkit.native.twin_report import guest_report_programs
from layoutkit.read.maps import parse_maps
from layoutkit.window.anchor import Anchor, PlacedAnchor, find_anchor, luajit_generation
from layoutkit.window.profiles import choose_profile

PRELOAD = "/lib/layoutkit/liblayoutkit-probe.so"  # the library's guest path
REPORT = f"{GUEST_TMP}/layoutkit-probe.json"  # where the forked copy writes its report
TIMEOUT = 300.0  # seconds for the whole boot (TCG: minutes on a loaded machine)


class Through(enum.Enum):
    """How PROGRAM was measured."""

    PRELOAD = "preload"  # the probe inside PROGRAM (a forked copy of it)
    TWIN = "twin"  # a static PROGRAM: its layout twin, run beside it


@dataclass(frozen=True)
class GuestProgramResult:
    """``probe -- PROGRAM`` on the qemu-system runner: the same result as natively, the
    guest kernel it ran on, and what PROGRAM printed."""

    result: ProgramResult
    guest: GuestResult
    through: Through
    twin: Twin | None  # the twin measured instead of a static PROGRAM
    stdout: str  # PROGRAM's output in the guest
    stderr: str

    @property
    def exit_code(self) -> int:
        return self.result.exit_code


def build_guest_preload(arch: Arch) -> Path:
    """``preload.c`` as a shared library for ``arch`` (the cross compiler; once, cached)."""
    return compile_c(arch, SOURCE, CFLAGS, "liblayoutkit-probe.so", kind="guest",
                     what="the preload probe for the guest", cross=True)


def _program(name: str) -> Path:
    found = name if os.sep in name else shutil.which(name)
    if found is None or not os.path.isfile(found):
        raise UsageError(f"{name}: no such program")
    return Path(found)


def _image(path: Path, arch_name: str | None) -> ElfImage:
    try:
        with ElfReader(path) as reader:
            image = reader.image()
    except LayoutkitError as e:
        raise UsageError(f"{path}: not a program the guest can run: {e}") from e
    if arch_name is not None and arches.by_name(arch_name) is not image.arch:
        raise UsageError(f"--arch {arch_name}, but {path} is {image.arch}")
    system_for(image.arch)  # a UsageError for an arch no guest is known for
    return image


def _scenario(jit: str | None, guest: GuestResult) -> Scenario:
    facts = guest.facts
    return Scenario(jit=jit, kernel=KernelOverrides(va_bits=facts.va_bits,
                                                    mmap_min_addr=facts.mmap_min_addr))


def _path_map(arch: Arch, placed: dict[str, Path]) -> tuple[tuple[str, str], ...]:
    """Guest path -> host file for everything in the initramfs that a maps listing of
    the guest can name: the programs under /bin, the extra files, their libraries."""
    pairs = dict(placed)
    for path in list(placed.values()):
        pairs.update(runtime_files(arch, path))
    return tuple((guest, str(host)) for guest, host in sorted(pairs.items()))


def _status(run: GuestRun, what: str) -> list[str]:
    if run.signal is not None:
        return [f"{what} was killed by signal {run.signal} in the guest"]
    return []


def probe_in_guest(command: Sequence[str], *, arch_name: str | None = None,
                   when: str = "start", jit: str = "luajit-2.1", anchor: str | None = None,
                   object_name: str | None = None) -> GuestProgramResult:
    """Run ``command`` in the qemu-system guest of its arch with the probe inside it (a
    static program: beside its layout twin), once PROGRAM has run to its end."""
    if not command:
        raise UsageError("no command to run (layoutkit probe [options] -- CMD ARGS...)")
    when = check_when(when)
    if when.startswith("signal:"):
        raise UsageError(f"--when {when}: nobody sends a signal in the guest; use start or "
                         "ms:N")
    path = _program(command[0])
    image = _image(path, arch_name)
    if image.interpreter is None:
        return _through_twin(path, tuple(command), image, when, jit, anchor)
    arch = image.arch
    lib = build_guest_preload(arch)
    env = probe_environment(arch, jit, when, REPORT, object_name)
    program = GuestProgram(path, tuple(command[1:]),
                           (f"LD_PRELOAD={PRELOAD}", *(f"{k}={v}" for k, v in env.items())),
                           report=REPORT)
    guest = run_in_guest(arch.name, [program], timeout=TIMEOUT, files={PRELOAD: lib})
    run = guest.runs[0]
    if run.report is None:
        raise ProbeError(f"{path} ran in the guest (status {run.status}, signal {run.signal}) "
                         "but the preload probe left no report: "
                         f"{run.stderr.strip()[-300:]}")
    doc = load_report(run.report)
    pid = run.pid or 0
    result = report_result(doc, command=tuple(command), when=when, program_pid=pid,
                           scenario=_scenario(jit, guest), anchor=anchor,
                           runner=Runner.QEMU_SYSTEM, source=f"guest pid {pid}",
                           path_map=_path_map(arch, {f"/bin/0-{path.name}": path,
                                                     PRELOAD: lib}))
    notes = (*result.notes, *_status(run, str(path)))
    result = replace(result, notes=notes, program_status=run.status)
    return GuestProgramResult(result, guest, Through.PRELOAD, None, run.stdout, run.stderr)


def _through_twin(path: Path, command: tuple[str, ...], image: ElfImage, when: str,
                  jit: str, anchor: str | None) -> GuestProgramResult:
    """A static PROGRAM: it runs, then its layout twin scans the window in the same boot."""
    if when != "start":
        raise UsageError(f"--when {when}: {path} is static, so its layout twin is measured, "
                         "at its start")
    arch = image.arch
    with ElfReader(path) as reader:
        found = find_anchor(reader, anchor)
        generation = luajit_generation(reader, found)
    if found.span.size > 1:
        raise UsageError(f"{path} is static and has no anchor symbol (its twin needs one "
                         "address to stand at): give --anchor SYMBOL|ADDR inside its code")
    twin = build_twin(TwinSpec.of(image, found.span.start, str(path)))
    profile, _ = choose_profile(arch, jit, generation)
    twin_guest = f"/bin/1-{twin.path.name}"
    paths = _path_map(arch, {twin_guest: twin.path})
    if twin.reports_to_file:  # a static PIE's twin: the probe inside it, a report file
        guest = run_in_guest(arch.name, [GuestProgram(path, command[1:]),
                                         *guest_report_programs(twin, profile, 1)],
                             timeout=TIMEOUT)
        run, twin_run = guest.runs
        if twin_run.report is None:
            raise ProbeError(f"the twin of {path} ran in the guest (status {twin_run.status})"
                             f" but its copy wrote no report: {twin_run.stderr[-300:]}")
        measured = report_result(load_report(twin_run.report), command=command, when=when,
                                 program_pid=run.pid or 0, scenario=_scenario(profile, guest),
                                 anchor="probe_anchor", runner=Runner.QEMU_SYSTEM,
                                 source=f"guest pid {twin_run.pid}", path_map=paths)
        analysis, scanned, scan = measured.analysis, measured.scanned, measured.scan
    else:
        measure = (GuestProgram(twin.path, tuple(probe_scan_args(twin.path, arch, jit=profile)))
                   if twin.spec.kind is LoadKind.EXEC else
                   handshake_program(twin.path, arch, jit=profile))
        guest = run_in_guest(arch.name, [GuestProgram(path, command[1:]), measure],
                             timeout=TIMEOUT, answer=window_answer(arch, jit=profile))
        run, twin_run = guest.runs
        whole = scan_result(twin_run, arch, jit=profile)
        maps = parse_maps(whole.context.maps_before,
                          source=f"guest pid {twin_run.pid} (the layout twin of {path})")
        analysis = analyse_maps(maps, _scenario(profile, guest), anchor="probe_anchor",
                                path_map=paths)
        window = analysis.accounting.jit
        ctx = replace(whole.context, jit=window)
        scan = ScanResult.from_report(parse_report(twin_run.stdout, "report"), ctx,
                                      within=window.usable)
        scan = replace(scan, context=replace(ctx, jit=replace(window, usable=scan.window)))
        scanned = whole.window
    placed = PlacedAnchor(Anchor(found.name, found.span, found.how_found,
                                 f"{found.detail}; measured at probe_anchor of its layout "
                                 f"twin {twin_guest}"), analysis.anchor.bias)
    analysis = replace(analysis, anchor=placed)
    scan = replace(scan, context=replace(scan.context, anchor=placed.span.start,
                                         anchor_source=placed.how_found.value))
    notes = [*analysis.notes,
             f"{path} is statically linked: no preload can enter it, so its layout twin "
             f"{twin.path} (the probe linked with its PT_LOAD segments, {found.name} at "
             f"{found.span.start:#x}) was measured in the same boot; {path} itself ran "
             "first, unprobed", *_status(run, str(path))]
    result = ProgramResult(command, when, run.pid or 0, twin_run.pid or 0, scanned,
                           scan, analysis, scan.mmap_calls, scan.probe_ns, tuple(notes),
                           tuple(differences(scan)), program_status=run.status)
    return GuestProgramResult(result, guest, Through.TWIN, twin, run.stdout, run.stderr)


__all__: Sequence[str] = ("GuestProgramResult", "Through", "build_guest_preload",
                          "probe_in_guest")
