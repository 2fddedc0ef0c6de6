"""Boot the guest: Debian's kernel for the arch under ``qemu-system-<arch>`` (TCG) with
an initramfs whose ``/init`` (``init.c``, static) prints the kernel facts, runs each
program as uid/gid 65534 and prints its stdout, then powers the guest off.

A program that does the probe's handshake (``GuestProgram.handshake``) prints its own
addresses first; ``/init`` relays that line to the console as a HELLO block, and the
caller's answer (``run_in_guest(answer=...)``, the window computed around where the guest
kernel placed the program) goes back through qemu's stdin, the guest's serial console.

A missing qemu, compiler, apt-get or kernel raises :class:`ProbeError` (exit 4); a guest
that has not powered off by the timeout is killed and reported the same way.
"""

from __future__ import annotations

import json
import os
import re
import selectors
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from layoutkit.core import arches
from layoutkit.core.arches import Arch
from layoutkit.errors import ProbeError
from layoutkit.native.build import NATIVE_DIR, compile_c
from layoutkit.native.guest.initramfs import GuestProgram, initramfs, runtime_files
from layoutkit.native.guest.kernels import KernelImage, fetch_kernel, system_for

INIT_SOURCE = NATIVE_DIR / "init.c"
STATIC_CFLAGS = ("-std=c11", "-O2", "-Wall", "-Wextra", "-pthread", "-static")
NOBODY = 65534  # init.c runs every program as this uid and gid

_BLOCK = re.compile(r"@@LAYOUTKIT-(FACTS|RUN)@@\n(.*?)\n@@LAYOUTKIT-END@@", re.S)
_HELLO = re.compile(rb"@@LAYOUTKIT-HELLO@@\r?\n(.*?)\r?\n@@LAYOUTKIT-END@@", re.S)
_ERROR = re.compile(r"@@LAYOUTKIT-ERROR@@ (.*)")
_DONE = "@@LAYOUTKIT-DONE@@"

# The handshake's other side: (program index, the program's hello line as JSON) -> the
# line to answer with (no newline).
Answer = Callable[[int, dict[str, Any]], str]


@dataclass(frozen=True)
class GuestKernel:
    """The kernel facts ``/init`` read inside the guest."""

    release: str  # uname -r
    version: str  # uname -v
    machine: str  # uname -m
    stack: int  # the address of a local on /init's stack
    page_size: int
    mmap_min_addr: int | None
    randomize_va_space: int | None
    mmap_rnd_bits: int | None

    @property
    def va_bits(self) -> int:
        """User VA bits, read from the stack address (the stack sits near the top)."""
        return self.stack.bit_length()


@dataclass(frozen=True)
class GuestRun:
    """One program's run in the guest (as uid/gid 65534)."""

    argv: tuple[str, ...]  # argv[0] is the program's path in the guest
    status: int | None  # exit status, None when killed by a signal
    signal: int | None
    wall_ns: int
    stdout: str
    stderr: str
    hello: str | None = None  # the handshake: the program's first line, relayed by /init
    answer: str | None = None  # ... and the line it was answered with
    report: str | None = None  # the report file the program left (GuestProgram.report)
    pid: int | None = None  # its process id in the guest

    @property
    def ok(self) -> bool:
        return self.status == 0


@dataclass(frozen=True)
class GuestResult:
    """What one boot produced: the kernel facts and each program's run, in order."""

    arch: Arch
    kernel: KernelImage
    facts: GuestKernel
    runs: tuple[GuestRun, ...]
    boot_s: float  # from starting qemu until /init had printed the facts
    total_s: float  # from starting qemu until it exited
    console: str  # the whole console output



def build_static(source: Path, arch: Arch | str, name: str) -> Path:
    """``source`` built as a static executable for ``arch`` with the cross compiler
    (once, cached)."""
    arch = arch if isinstance(arch, Arch) else arches.by_name(arch)
    return compile_c(arch, source, STATIC_CFLAGS, name, kind="guest",
                     what=f"{source.name} static", cross=True)


def _latin(s: str) -> str:
    """A string of bytes-as-code-points (init.c's escapes) decoded as UTF-8."""
    return s.encode("latin-1").decode("utf-8", "replace")


def parse_console(text: str) -> tuple[GuestKernel, tuple[GuestRun, ...]]:
    """The facts and runs printed by ``/init`` in ``text``, the guest's console output."""
    text = text.replace("\r", "")
    error = _ERROR.search(text)
    if error:
        raise ProbeError(f"the guest's /init failed: {error.group(1).strip()}")
    facts: GuestKernel | None = None
    runs = []
    for kind, body in _BLOCK.findall(text):
        try:
            doc = json.loads(body)
        except ValueError as e:
            raise ProbeError(f"garbled {kind.lower()} block on the guest console: {e}") from e
        if kind == "FACTS":
            facts = GuestKernel(release=_latin(doc["release"]), version=_latin(doc["version"]),
                                machine=doc["machine"], stack=int(doc["stack"], 16),
                                page_size=int(doc["page_size"]),
                                mmap_min_addr=doc["mmap_min_addr"],
                                randomize_va_space=doc["randomize_va_space"],
                                mmap_rnd_bits=doc["mmap_rnd_bits"])
            continue
        out, err, report = doc["stdout"], doc["stderr"], doc.get("report")
        if len(out) != doc["stdout_bytes"] or len(err) != doc["stderr_bytes"] or (
                report is not None and len(report) != doc["report_bytes"]):
            raise ProbeError(f"run {doc['index']}: output was cut short (over 4 MiB, or lost "
                             "on the guest console)")
        hello, answer = doc.get("hello"), doc.get("answer")
        runs.append(GuestRun(argv=tuple(_latin(a) for a in doc["argv"]), status=doc["status"],
                             signal=doc["signal"], wall_ns=int(doc["wall_ns"]),
                             stdout=_latin(out), stderr=_latin(err),
                             hello=None if hello is None else _latin(hello),
                             answer=None if answer is None else _latin(answer),
                             report=None if report is None else _latin(report),
                             pid=doc.get("pid")))
    if facts is None:
        tail = " / ".join(text.strip().splitlines()[-5:])
        raise ProbeError(f"the guest printed no kernel facts (console ends: {tail})")
    return facts, tuple(runs)


def _reply(data: bytes, at: int, answer: Answer | None, stdin: IO[bytes] | None) -> int:
    """Answer the complete HELLO blocks in ``data`` from offset ``at`` on; the offset past
    the last one answered."""
    for found in _HELLO.finditer(data, at):
        try:
            doc = json.loads(found.group(1).decode("latin-1"))
            hello = json.loads(doc["hello"])
        except (ValueError, KeyError, TypeError) as e:
            raise ProbeError(f"garbled handshake on the guest console: {e}") from e
        if answer is None or stdin is None or not isinstance(hello, dict):
            raise ProbeError(f"program {doc.get('index')} in the guest asked for a handshake "
                             "nobody answers")
        line = answer(int(doc["index"]), hello)
        stdin.write(line.encode("ascii") + b"\n")
        stdin.flush()
        at = found.end()
    return at


def _boot(command: list[str], timeout: float,
          answer: Answer | None = None) -> tuple[str, float, float]:
    """Run qemu until it exits, answering the handshakes on its serial console; the
    console text, seconds to the facts, seconds in all."""
    start = time.monotonic()
    try:
        proc = subprocess.Popen(command, stdin=subprocess.PIPE if answer else subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    except OSError as e:
        raise ProbeError(f"cannot start {command[0]}: {e.strerror}") from e
    seen = bytearray()
    booted = 0.0
    answered = 0  # console offset past the last HELLO block answered
    assert proc.stdout is not None
    with proc, selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        fd = proc.stdout.fileno()
        while True:
            left = timeout - (time.monotonic() - start)
            if left <= 0:
                proc.kill()
                proc.wait()
                last = seen.decode("utf-8", "replace").strip().splitlines()[-5:]
                raise ProbeError(f"the guest did not power off within {timeout:g} s and was "
                                 f"killed (console ends: {' / '.join(last)})")
            if not sel.select(min(left, 1.0)):
                continue
            data = os.read(fd, 1 << 16)
            if not data:
                break
            seen += data
            if not booted and b"@@LAYOUTKIT-END@@" in seen:
                booted = time.monotonic() - start
            if seen.find(b"@@LAYOUTKIT-HELLO@@", answered) >= 0:
                try:
                    answered = _reply(bytes(seen), answered, answer, proc.stdin)
                except (ProbeError, BrokenPipeError) as e:
                    proc.kill()
                    proc.wait()
                    raise ProbeError(str(e)) from e
        proc.wait()
    text = seen.decode("latin-1")
    if proc.returncode != 0:
        tail = " / ".join(text.strip().splitlines()[-5:])
        raise ProbeError(f"{command[0]} exited {proc.returncode}: {tail}")
    return text, booted, time.monotonic() - start


def run_in_guest(arch: str, programs: Sequence[GuestProgram | tuple[Path, Sequence[str]]],
                 *, timeout: float, files: Mapping[str, Path] | None = None,
                 answer: Answer | None = None) -> GuestResult:
    """Boot Debian's kernel for ``arch`` once and run each program in turn (as uid/gid
    65534) with its arguments; the kernel facts and each program's output. A dynamic
    program gets its loader and libraries (:func:`runtime_files`) in the initramfs.
    ``files`` (guest path -> host file) are put into the initramfs as well (an ELF among
    them with its loader and libraries): programs run by another program, their data.
    ``answer`` answers the handshake of the programs that do one.

    Raises :class:`ProbeError` when qemu, the cross compiler or the kernel is missing,
    and when the guest has not powered off after ``timeout`` seconds (it is killed).
    """
    system = system_for(arch)
    target = arches.by_name(system.arch)
    listed = [GuestProgram.of(p) for p in programs]
    needed: dict[str, Path] = {}
    for program in listed:
        needed.update(runtime_files(target, program.path))
    for guest, path in (files or {}).items():
        needed[guest] = path
        with path.open("rb") as f:
            if f.read(4) == b"\x7fELF":
                needed.update(runtime_files(target, path))
    qemu = shutil.which(system.qemu)
    if qemu is None:
        raise ProbeError(f"{system.qemu} not found: apt-get install {system.qemu_package}")
    init = build_static(INIT_SOURCE, target, "init")
    kernel = fetch_kernel(target)
    with tempfile.TemporaryDirectory(prefix="layoutkit-guest-") as tmp:
        ramfs = Path(tmp) / "initramfs.cpio"
        ramfs.write_bytes(initramfs(init, listed, needed))
        command = [qemu, *system.machine, "-m", "1024", "-nographic", "-no-reboot",
                   "-nic", "none",
                   "-kernel", str(kernel.path), "-initrd", str(ramfs),
                   "-append", f"console={system.console} rdinit=/init panic=-1"]
        console, booted, total = _boot(command, timeout, answer)
    facts, runs = parse_console(console)
    if _DONE not in console:
        raise ProbeError(f"the guest stopped after {len(runs)} of {len(programs)} runs")
    return GuestResult(arch=target, kernel=kernel, facts=facts, runs=runs, boot_s=booted,
                       total_s=total, console=console)



__all__: Sequence[str] = ("Answer", "GuestKernel", "GuestResult", "GuestRun", "build_static",
                          "parse_console", "run_in_guest")
