"""The ``qemu-system`` runner: programs run on a real foreign kernel.

qemu-user is quick but is not a kernel (``QEMU_USER_INFIDELITIES``). Here Debian's own
kernel for the arch boots under ``qemu-system-<arch>`` (TCG) with an initramfs written
from Python: ``/init`` (``init.c``, static), the programs to run (static, or dynamic
with their loader and libraries from the cross sysroot) and their arguments. ``/init``
prints the kernel facts, runs each program as uid/gid 65534 and prints its stdout, then
powers the guest off (facts.md §7).

- Kernels come from Debian (``apt-get download`` through a private apt state for the
  guest's Debian arch; the meta package names the versioned image package) and are
  cached under ``$XDG_CACHE_HOME/layoutkit/guest/kernels`` keyed by that version.
- Builds of ``init.c`` and of the static probe are cached beside them, keyed as the
  probe's builds are.
- A missing qemu, compiler, apt-get or kernel raises :class:`ProbeError` (exit 4); a
  guest that has not powered off by the timeout is killed and reported the same way.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import selectors
import shutil
import subprocess
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from layoutkit.core import arches
from layoutkit.core.arches import Arch
from layoutkit.core.spans import Span
from layoutkit.elf import ElfReader
from layoutkit.errors import LayoutkitError, ProbeError, UsageError
from layoutkit.native import (
    _MASK64,
    SOURCE,
    TARGETS,
    ScanCounts,
    ScanResult,
    _addr,
    _context,
    _jr,
    _json,
    _window,
    cache_dir,
    source_bytes,
)
from layoutkit.window.kernel import KernelConfig
from layoutkit.window.profiles import jit_window

INIT_SOURCE = Path(__file__).with_name("init.c")
MAPSWATCH_SOURCE = Path(__file__).with_name("mapswatch.c")
STATIC_CFLAGS = ("-std=c11", "-O2", "-Wall", "-Wextra", "-pthread", "-static")
NOBODY = 65534
APT_REFRESH = 24 * 3600.0  # seconds between `apt-get update`s of a private apt state
RUNNER = "qemu-system"


@dataclass(frozen=True)
class GuestSystem:
    """How to boot one arch: Debian's kernel package and the qemu-system command."""

    arch: str  # layoutkit arch name
    debian_arch: str
    kernel_package: str  # the meta package; it depends on the versioned image package
    kernel_glob: str  # the image inside that package
    qemu: str
    qemu_package: str
    machine: tuple[str, ...]
    console: str


SYSTEMS: dict[str, GuestSystem] = {
    "aarch64": GuestSystem("aarch64", "arm64", "linux-image-cloud-arm64", "boot/vmlinuz-*",
                           "qemu-system-aarch64", "qemu-system-arm",
                           ("-M", "virt", "-cpu", "cortex-a72"), "ttyAMA0"),
    "ppc64le": GuestSystem("ppc64le", "ppc64el", "linux-image-powerpc64le", "boot/vmlinux-*",
                           "qemu-system-ppc64", "qemu-system-ppc",
                           ("-M", "pseries", "-vga", "none"), "hvc0"),
}

_BLOCK = re.compile(r"@@LAYOUTKIT-(FACTS|RUN)@@\n(.*?)\n@@LAYOUTKIT-END@@", re.S)
_ERROR = re.compile(r"@@LAYOUTKIT-ERROR@@ (.*)")
_DONE = "@@LAYOUTKIT-DONE@@"
_MAPS = re.compile(r"@@LAYOUTKIT-MAPS@@\n(.*?)@@LAYOUTKIT-MAPS-END@@\n", re.S)


# --- results ----------------------------------------------------------------------------

@dataclass(frozen=True)
class KernelImage:
    """A Debian kernel image on disk and where it came from."""

    path: Path
    package: str  # the versioned image package, e.g. linux-image-6.1.0-56-cloud-arm64
    version: str  # its Debian version


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


# --- kernels ----------------------------------------------------------------------------

def guest_cache() -> Path:
    return cache_dir().parent / "guest"


def system_for(arch: Arch | str) -> GuestSystem:
    name = arch.name if isinstance(arch, Arch) else arches.by_name(arch).name
    system = SYSTEMS.get(name)
    if system is None:
        raise UsageError(f"no qemu-system guest is known for {name} "
                         f"(known: {', '.join(SYSTEMS)})")
    return system


def _run(command: list[str], what: str, *, cwd: Path | None = None,
         timeout: float = 300) -> str:
    try:
        done = subprocess.run(command, capture_output=True, text=True, cwd=cwd,
                              timeout=timeout, check=False)
    except (OSError, subprocess.SubprocessError) as e:
        raise ProbeError(f"{what}: {' '.join(command[:2])} failed: {e}") from e
    if done.returncode != 0:
        tail = " / ".join(done.stderr.strip().splitlines()[-3:])
        raise ProbeError(f"{what}: `{' '.join(command)}` exited {done.returncode}: {tail}")
    return done.stdout


def _cached_kernels(root: Path) -> list[KernelImage]:
    found = []
    for meta in sorted(root.glob("*/kernel.json"), key=lambda p: p.stat().st_mtime):
        doc = json.loads(meta.read_text())
        image = meta.with_name(doc["image"])
        if image.is_file():
            found.append(KernelImage(image, doc["package"], doc["version"]))
    return found


def fetch_kernel(arch: Arch | str) -> KernelImage:
    """Debian's kernel image for ``arch`` (downloaded once per package version)."""
    system = system_for(arch)
    for tool in ("apt-get", "apt-cache", "dpkg-deb"):
        if shutil.which(tool) is None:
            raise ProbeError(f"{tool} not found: the guest kernel comes from Debian's archive")
    root = guest_cache() / "kernels" / system.debian_arch
    apt = guest_cache() / "apt" / system.debian_arch
    for folder in (apt / "state" / "lists" / "partial", apt / "cache" / "archives" / "partial"):
        folder.mkdir(parents=True, exist_ok=True)
    opts = [f"-oDir::State={apt / 'state'}", f"-oDir::Cache={apt / 'cache'}",
            f"-oAPT::Architecture={system.debian_arch}",
            f"-oAPT::Architectures::={system.debian_arch}",
            "-oDir::State::status=/dev/null", "-oAPT::Sandbox::User=root"]
    stamp = apt / "updated"
    failed: ProbeError | None = None
    if not stamp.exists() or time.time() - stamp.stat().st_mtime > APT_REFRESH:
        try:
            _run(["apt-get", *opts, "-qq", "update"], "refreshing the private apt state")
            stamp.touch()
        except ProbeError as e:  # often one index of a mirror mid-sync: the rest is usable
            failed = e
    try:
        record = _run(["apt-cache", *opts, "show", "--no-all-versions", system.kernel_package],
                      f"looking up {system.kernel_package}")
    except ProbeError as e:
        cached = _cached_kernels(root)
        if cached:  # offline: the newest kernel already downloaded will do
            return cached[-1]
        raise (failed or e) from None
    depends = re.search(r"^Depends: (.*)$", record, re.M)
    image = depends and re.search(r"\b(linux-image-[\w.+-]+)\s*\(=\s*([^)\s]+)\)",
                                  depends.group(1))
    if image is None:
        raise ProbeError(f"{system.kernel_package} names no versioned linux-image package")
    package, version = image.group(1), image.group(2)
    folder = root / f"{package}_{version}"
    meta = folder / "kernel.json"
    if meta.is_file():
        doc = json.loads(meta.read_text())
        return KernelImage(folder / doc["image"], package, version)
    root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".fetch-", dir=root) as tmp:
        work = Path(tmp)
        _run(["apt-get", *opts, "-qq", "download", f"{package}={version}"],
             f"downloading {package}", cwd=work)
        debs = sorted(work.glob(f"{package}_*.deb"))
        if not debs:
            raise ProbeError(f"apt-get download left no {package} .deb")
        _run(["dpkg-deb", "-x", str(debs[0]), str(work / "x")], f"unpacking {debs[0].name}")
        images = sorted((work / "x").glob(system.kernel_glob))
        if not images:
            raise ProbeError(f"{debs[0].name} holds no {system.kernel_glob}")
        done = work / "done"
        done.mkdir()
        os.replace(images[0], done / images[0].name)
        (done / "kernel.json").write_text(json.dumps({"package": package, "version": version,
                                                       "image": images[0].name}))
        try:
            os.rename(done, folder)  # atomic: a concurrent fetch leaves one complete folder
        except OSError:
            if not meta.is_file():
                raise
    return KernelImage(folder / images[0].name, package, version)


# --- static builds ----------------------------------------------------------------------

def build_static(source: Path, arch: Arch | str, name: str) -> Path:
    """``source`` built as a static executable for ``arch`` (once, cached)."""
    arch = arch if isinstance(arch, Arch) else arches.by_name(arch)
    target = TARGETS.get(arch.name)
    if target is None:
        raise ProbeError(f"no cross toolchain is known for {arch}")
    command = f"{target.triplet}-gcc"
    compiler = shutil.which(command)
    if compiler is None:
        raise ProbeError(f"no C compiler for {arch} ({command} not found): "
                         f"apt-get install {target.compiler_package}")
    version = _run([compiler, "--version"], f"{compiler} --version", timeout=30)
    key = hashlib.sha256(b"\0".join([source_bytes(source), compiler.encode(), version.encode(),
                                     " ".join(STATIC_CFLAGS).encode()])).hexdigest()[:20]
    folder = guest_cache() / "build" / f"{arch.name}-{name}-{key}"
    exe = folder / name
    if exe.is_file():
        return exe
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f".{name}-{os.getpid()}"
    try:
        _run([compiler, *STATIC_CFLAGS, "-o", str(tmp), str(source)],
             f"building {source.name} static for {arch} (is {target.compiler_package} "
             "installed?)", timeout=120)
        os.replace(tmp, exe)
    finally:
        tmp.unlink(missing_ok=True)
    return exe


# --- initramfs --------------------------------------------------------------------------

def _newc(name: str, mode: int, data: bytes = b"", ino: int = 0,
          rdev: tuple[int, int] = (0, 0)) -> bytes:
    """One newc (SVR4, no CRC) cpio entry, padded to 4 bytes."""
    encoded = name.encode() + b"\0"
    fields = (ino, mode, 0, 0, 1, 0, len(data), 0, 0, rdev[0], rdev[1], len(encoded), 0)
    head = b"070701" + b"".join(b"%08x" % f for f in fields) + encoded
    head += b"\0" * (-len(head) % 4)
    return head + data + b"\0" * (-len(data) % 4)


def initramfs(init: Path, programs: Sequence[tuple[Path, Sequence[str]]],
              files: Mapping[str, Path] | None = None) -> bytes:
    """A newc initramfs: /init, /dev/console, each program under /bin, /layoutkit.conf,
    and ``files`` (guest path -> host file: a dynamic program's loader and libraries)."""
    entries = [("dev", 0o040755, b"", (0, 0)), ("dev/console", 0o020600, b"", (5, 1)),
               ("dev/null", 0o020666, b"", (1, 3)), ("proc", 0o040555, b"", (0, 0)),
               ("tmp", 0o041777, b"", (0, 0)), ("bin", 0o040755, b"", (0, 0)),
               ("init", 0o100755, init.read_bytes(), (0, 0))]
    folders = {"dev", "proc", "tmp", "bin"}
    extra = files or {}
    for guest in sorted(extra):
        parts = guest.strip("/").split("/")
        for i in range(1, len(parts)):
            folder = "/".join(parts[:i])
            if folder not in folders:
                folders.add(folder)
                entries.append((folder, 0o040755, b"", (0, 0)))
        entries.append(("/".join(parts), 0o100755, extra[guest].read_bytes(), (0, 0)))
    conf = [b"layoutkit-guest-1"]
    placed: dict[Path, str] = {}
    for path, args in programs:
        key = path.resolve()
        if key not in placed:
            placed[key] = f"bin/{len(placed)}-{path.name}"
            entries.append((placed[key], 0o100755, path.read_bytes(), (0, 0)))
        conf += [str(1 + len(args)).encode(), f"/{placed[key]}".encode(),
                 *(a.encode() for a in args)]
    entries.append(("layoutkit.conf", 0o100644, b"\0".join(conf) + b"\0", (0, 0)))
    out = b"".join(_newc(name, mode, data, ino, rdev)
                   for ino, (name, mode, data, rdev) in enumerate(entries, start=1))
    return out + _newc("TRAILER!!!", 0)


def _elf(path: Path) -> tuple[str | None, tuple[str, ...]]:
    """``path``'s PT_INTERP and DT_NEEDED."""
    try:
        with ElfReader(path) as reader:
            image = reader.image()
    except LayoutkitError as e:
        raise UsageError(f"{path}: not a program the guest can run: {e}") from e
    return image.interpreter, image.needed


def runtime_files(arch: Arch | str, program: Path) -> dict[str, Path]:
    """What ``program`` needs in the guest (guest path -> host file): for a dynamic one,
    its loader at its PT_INTERP path and its DT_NEEDED libraries, transitively, in
    ``/lib/<triplet>`` (on the loader's default search path). A library is taken from
    the program's own folder first (liblkprobe.so beside a twin), then from the cross
    sysroot ``/usr/<triplet>/lib``. Nothing for a static program."""
    arch = arch if isinstance(arch, Arch) else arches.by_name(arch)
    interp, needed = _elf(program)
    if interp is None:
        return {}
    target = TARGETS.get(arch.name)
    if target is None:
        raise ProbeError(f"no cross sysroot is known for {arch}")
    sysroot = Path("/usr") / target.triplet / "lib"
    folders = [program.resolve().parent, sysroot]

    def find(name: str) -> Path:
        for folder in folders:
            if (folder / name).is_file():
                return folder / name
        raise ProbeError(f"{program} needs {name}, found neither beside it nor in {sysroot} "
                         f"(apt-get install {target.compiler_package})")

    files = {interp: find(Path(interp).name)}
    todo = list(needed)
    while todo:
        name = todo.pop()
        guest = f"/lib/{target.triplet}/{name}"
        if guest not in files:
            files[guest] = find(name)
            todo += _elf(files[guest])[1]
    return files


# --- boot -------------------------------------------------------------------------------

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
        out, err = doc["stdout"], doc["stderr"]
        if len(out) != doc["stdout_bytes"] or len(err) != doc["stderr_bytes"]:
            raise ProbeError(f"run {doc['index']}: output was cut short (over 4 MiB, or lost "
                             "on the guest console)")
        runs.append(GuestRun(argv=tuple(_latin(a) for a in doc["argv"]), status=doc["status"],
                             signal=doc["signal"], wall_ns=int(doc["wall_ns"]),
                             stdout=_latin(out), stderr=_latin(err)))
    if facts is None:
        tail = " / ".join(text.strip().splitlines()[-5:])
        raise ProbeError(f"the guest printed no kernel facts (console ends: {tail})")
    return facts, tuple(runs)


def _boot(command: list[str], timeout: float) -> tuple[str, float, float]:
    """Run qemu until it exits; the console text, seconds to the facts, seconds in all."""
    start = time.monotonic()
    try:
        proc = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT)
    except OSError as e:
        raise ProbeError(f"cannot start {command[0]}: {e.strerror}") from e
    chunks: list[bytes] = []
    booted = 0.0
    assert proc.stdout is not None
    with proc, selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        fd = proc.stdout.fileno()
        while True:
            left = timeout - (time.monotonic() - start)
            if left <= 0:
                proc.kill()
                proc.wait()
                last = b"".join(chunks).decode("utf-8", "replace").strip().splitlines()[-5:]
                raise ProbeError(f"the guest did not power off within {timeout:g} s and was "
                                 f"killed (console ends: {' / '.join(last)})")
            if not sel.select(min(left, 1.0)):
                continue
            data = os.read(fd, 1 << 16)
            if not data:
                break
            chunks.append(data)
            if not booted and b"@@LAYOUTKIT-END@@" in b"".join(chunks):
                booted = time.monotonic() - start
        proc.wait()
    text = b"".join(chunks).decode("latin-1")
    if proc.returncode != 0:
        tail = " / ".join(text.strip().splitlines()[-5:])
        raise ProbeError(f"{command[0]} exited {proc.returncode}: {tail}")
    return text, booted, time.monotonic() - start


def run_in_guest(arch: str, programs: list[tuple[Path, list[str]]], *,
                 timeout: float, files: Mapping[str, Path] | None = None) -> GuestResult:
    """Boot Debian's kernel for ``arch`` once and run each program in turn (as uid/gid
    65534) with its arguments; the kernel facts and each program's output. A dynamic
    program gets its loader and libraries (:func:`runtime_files`) in the initramfs.
    ``files`` (guest path -> host file) are put into the initramfs as well (an ELF among
    them with its loader and libraries): programs run by another program, their data.

    Raises :class:`ProbeError` when qemu, the cross compiler or the kernel is missing,
    and when the guest has not powered off after ``timeout`` seconds (it is killed).
    """
    system = system_for(arch)
    target = arches.by_name(system.arch)
    needed: dict[str, Path] = {}
    for path, _ in programs:
        needed.update(runtime_files(target, path))
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
        ramfs.write_bytes(initramfs(init, programs, needed))
        command = [qemu, *system.machine, "-m", "1024", "-nographic", "-no-reboot",
                   "-nic", "none",
                   "-kernel", str(kernel.path), "-initrd", str(ramfs),
                   "-append", f"console={system.console} rdinit=/init panic=-1"]
        console, booted, total = _boot(command, timeout)
    facts, runs = parse_console(console)
    if _DONE not in console:
        raise ProbeError(f"the guest stopped after {len(runs)} of {len(programs)} runs")
    return GuestResult(arch=target, kernel=kernel, facts=facts, runs=runs, boot_s=booted,
                       total_s=total, console=console)


def build_mapswatch(arch: Arch | str) -> Path:
    """``mapswatch.c`` built static: ``mapswatch MARKER PROGRAM ARG...`` prints the
    program's /proc/PID/maps when it writes the line MARKER, while it waits on stdin."""
    return build_static(MAPSWATCH_SOURCE, arch, "mapswatch")


def watched_maps(run: GuestRun) -> tuple[str, str]:
    """A mapswatch run's output split in two: the program's own stdout, and the maps
    listing it printed at the marker."""
    found = _MAPS.search(run.stdout)
    if found is None:
        raise ProbeError(f"{' '.join(run.argv[2:3])} printed no maps in the guest (status "
                         f"{run.status}, signal {run.signal}): {run.stderr.strip()[-300:]}")
    return run.stdout[:found.start()] + run.stdout[found.end():], found.group(1)


# --- the probe in the guest -------------------------------------------------------------

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
    limit = Span(0, KernelConfig.for_arch(arch).user_top)
    window = _window(jit_window(jit, arch, sym.value, limit), sym.value, radius)
    rng = (window.hint_hi - window.hint_lo) // 2
    values = (window.usable.start, window.usable.end, window.target, rng, window.hint_lo,
              window.hint_hi)  # unsigned, as the probe reads them: a hint below 0 wraps
    keys = ("--start", "--end", "--target", "--range", "--hint-lo", "--hint-hi")
    return ["--mode", "scan", "--profile", jit, "--slot", str(window.slot),
            "--area", str(window.profile.sizemcode), "--jr", str(_jr(window)),
            *(x for k, v in zip(keys, values, strict=True) for x in (k, f"{v & _MASK64:#x}"))]


def scan_result(run: GuestRun, arch: Arch | str, *, jit: str = "luajit-2.1",
                radius: int | None = None) -> ScanResult:
    """A guest probe run's report as the :class:`ScanResult` the native runners give."""
    arch = arch if isinstance(arch, Arch) else arches.by_name(arch)
    if not run.ok:
        raise ProbeError(f"the probe failed in the guest (status {run.status}, signal "
                         f"{run.signal}): {run.stderr.strip()[-300:]}")
    doc: dict[str, Any] = _json(run.stdout, "report")
    anchor = _addr(doc["anchor"])
    limit = Span(0, KernelConfig.for_arch(arch).user_top)
    window = _window(jit_window(jit, arch, anchor, limit), anchor, radius)
    ctx = _context(doc, arch, RUNNER, window, anchor, "the probe's own code")
    return ScanResult(
        context=ctx, window=Span(_addr(doc["window"][0]), _addr(doc["window"][1])),
        slot=int(doc["slot"]), outcomes=doc["outcomes"],
        counts=ScanCounts(**{k: int(v) for k, v in doc["counts"].items()}),
        free_runs=tuple(Span(_addr(a), _addr(b)) for a, b in doc["free_runs"]),
        probe_ns=int(doc["probe_ns"]), mmap_calls=int(doc["mmap_calls"]),
        strategy=doc["strategy"])


__all__: Sequence[str] = (
    "SYSTEMS", "GuestKernel", "GuestResult", "GuestRun", "GuestSystem", "KernelImage",
    "build_guest_probe", "build_mapswatch", "build_static", "fetch_kernel", "initramfs",
    "parse_console", "probe_scan_args", "run_in_guest", "runtime_files", "scan_result",
    "system_for", "watched_maps",
)
