"""The native probe: build ``probe.c`` for an arch, run it, parse its report.

The probe asks the kernel itself which 64 KiB slots of a JIT window are free, in its own
process: ``mmap(addr, slot, PROT_NONE, MAP_FIXED_NOREPLACE)`` per slot (bisected over
free runs: same per-slot result, far fewer system calls), unmapping at once what it was
given; or it replays a JIT allocator's probe sequence with N threads. Everything here is
typed values: the JSON the C program prints stays inside this module.

Runners:

- ``native``: the host kernel, host arch, built with ``cc``.
- ``qemu-user``: ``qemu-<arch> -L /usr/<triplet>``, built with ``<triplet>-gcc``. Quick,
  but not a kernel: its infidelities (facts.md §7) are stated in every result.

Builds are cached under ``$XDG_CACHE_HOME/layoutkit/probe`` (default ``~/.cache``), keyed
by a hash of the source, the compiler's path and ``--version`` text, and the flags.
A missing compiler or qemu raises :class:`ProbeError` (exit 4) naming the Debian package.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import shutil
import subprocess
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from layoutkit.core import arches
from layoutkit.core.arches import Arch
from layoutkit.core.kinds import OccupantKind
from layoutkit.core.spans import Span, align_down
from layoutkit.core.units import format_size
from layoutkit.errors import ProbeError, UsageError
from layoutkit.output import document as report
from layoutkit.read.maps import MappingKind, ProcessMaps, parse_maps
from layoutkit.window.accounting import (
    STACK_GUARD_GAP,
    Accounting,
    Occupant,
    account,
    occupant_kind,
)
from layoutkit.window.kernel import KernelConfig
from layoutkit.window.profiles import JitWindow, jit_window

SOURCE = Path(__file__).with_name("probe.c")
HEADER = Path(__file__).with_name("lk_io.h")  # included by probe.c, preload.c and init.c


def source_bytes(source: Path) -> bytes:
    """What a build of ``source`` depends on, for cache keys: it and the shared header."""
    return source.read_bytes() + b"\0" + HEADER.read_bytes()
CFLAGS = ("-std=c11", "-O2", "-Wall", "-Wextra", "-pthread")
RUNNERS = ("native", "qemu-user")
MODES = ("scan", "replay")
TIMEOUT = 120.0  # seconds for one probe run (a +-2 GiB linear scan takes ~0.3 s)
_MASK64 = (1 << 64) - 1


@dataclass(frozen=True)
class Target:
    """How to build for and run on one arch: Debian's cross toolchain names."""

    triplet: str
    compiler_package: str  # gcc-<triplet> plus the libc6-dev-<debarch>-cross it links
    qemu: str  # qemu-user binary


# Debian 12 package names (gcc-<triplet>, libc6-dev-<debian arch>-cross, qemu-user).
TARGETS: dict[str, Target] = {
    "x86_64": Target("x86_64-linux-gnu", "gcc-x86-64-linux-gnu libc6-dev-amd64-cross",
                     "qemu-x86_64"),
    "i386": Target("i686-linux-gnu", "gcc-i686-linux-gnu libc6-dev-i386-cross", "qemu-i386"),
    "aarch64": Target("aarch64-linux-gnu", "gcc-aarch64-linux-gnu libc6-dev-arm64-cross",
                      "qemu-aarch64"),
    "arm": Target("arm-linux-gnueabihf", "gcc-arm-linux-gnueabihf libc6-dev-armhf-cross",
                  "qemu-arm"),
    "ppc64le": Target("powerpc64le-linux-gnu",
                      "gcc-powerpc64le-linux-gnu libc6-dev-ppc64el-cross", "qemu-ppc64le"),
    "riscv64": Target("riscv64-linux-gnu", "gcc-riscv64-linux-gnu libc6-dev-riscv64-cross",
                      "qemu-riscv64"),
    "s390x": Target("s390x-linux-gnu", "gcc-s390x-linux-gnu libc6-dev-s390x-cross",
                    "qemu-s390x"),
    "mips64el": Target("mips64el-linux-gnuabi64",
                       "gcc-mips64el-linux-gnuabi64 libc6-dev-mips64el-cross", "qemu-mips64el"),
}

# What qemu-user gets wrong, measured with qemu-user 7.2 (facts.md §7).
QEMU_USER_INFIDELITIES = (
    "qemu-user is not a kernel: MAP_FIXED_NOREPLACE is passed on as a plain hint, so a "
    "taken slot shows as 'moved' (the mapping landed elsewhere), never as EEXIST",
    "a PIE loads at a fixed base without ASLR (0x5500000000 on aarch64, 0x4000000000 on "
    "riscv64 and ppc64le), not at ELF_ET_DYN_BASE plus randomisation",
    "the p_vaddr of an ET_DYN is honoured (a real kernel ignores it)",
    "qemu adds a one-page anonymous r-x mapping (its signal trampoline) that looks like "
    "JIT code",
    "RLIMIT_AS and vm.mmap_min_addr apply to qemu's own host process, not to the guest",
)


def host_arch() -> Arch:
    """The arch this Python runs on."""
    return arches.by_name(platform.machine())


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "layoutkit" / "probe"


def _compiler(arch: Arch, runner: str) -> tuple[str, str]:
    """The compiler command for ``arch`` and the package that provides it."""
    if arch == host_arch():
        return os.environ.get("CC") or "cc", "gcc"
    target = TARGETS.get(arch.name)
    if target is None:
        raise ProbeError(f"no cross toolchain is known for {arch} (Debian 12 has none)")
    return f"{target.triplet}-gcc", target.compiler_package


def cached_build(arch: Arch, source: Path, flags: tuple[str, ...] | list[str], name: str,
                 *, tag: str, what: str, runner: str = "native") -> Path:
    """Compile ``source`` for ``arch`` once: cached under cache_dir(), keyed by the
    source, the compiler and its version, and the flags; written atomically."""
    command, package = _compiler(arch, runner)
    compiler = shutil.which(command)
    if compiler is None:
        raise ProbeError(f"no C compiler for {arch} ({command} not found): "
                         f"apt-get install {package}")
    try:
        version = subprocess.run([compiler, "--version"], capture_output=True, text=True,
                                 check=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError) as e:
        raise ProbeError(f"{compiler} --version failed: {e}") from e
    key = hashlib.sha256(b"\0".join([source_bytes(source), compiler.encode(), version.encode(),
                                     " ".join(flags).encode()])).hexdigest()[:20]
    folder = cache_dir() / f"{arch.name}-{tag}{key}"
    product = folder / name
    if product.is_file() and os.access(product, os.R_OK):
        return product
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{name}-", dir=folder)
        os.close(fd)
    except OSError as e:
        raise ProbeError(f"cannot write the build cache {folder}: {e.strerror}") from e
    try:
        done = subprocess.run([compiler, *flags, "-o", tmp, str(source)],
                              capture_output=True, text=True, timeout=120, check=False)
        if done.returncode != 0:
            tail = done.stderr.strip().splitlines()[-3:]
            raise ProbeError(f"building {what} for {arch} with {compiler} failed "
                             f"(is {package} installed?): {' / '.join(tail)}")
        os.replace(tmp, product)  # atomic: a concurrent build leaves one complete file
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return product


def build_probe(arch: Arch, runner: str = "native") -> Path:
    """The probe executable for ``arch``, built (once, cached) with the right compiler."""
    return cached_build(arch, SOURCE, CFLAGS, "probe", tag="", what="the probe",
                        runner=runner)


def _command(arch: Arch, runner: str, exe: Path) -> list[str]:
    if runner == "native":
        host = host_arch()
        if arch != host:
            raise UsageError(f"cannot run a {arch} probe natively on {host}: "
                             "use --runner qemu-user")
        return [str(exe)]
    if runner != "qemu-user":
        raise UsageError(f"unknown runner {runner!r} (known: {', '.join(RUNNERS)})")
    target = TARGETS.get(arch.name)
    if target is None:
        raise ProbeError(f"no qemu-user target is known for {arch}")
    qemu = shutil.which(target.qemu)
    if qemu is None:
        raise ProbeError(f"{target.qemu} not found: apt-get install qemu-user")
    sysroot = f"/usr/{target.triplet}"
    return [qemu, "-L", sysroot, str(exe)] if arch != host_arch() else [qemu, str(exe)]


# --- results ----------------------------------------------------------------------------

@dataclass(frozen=True)
class ProbeContext:
    """What every probe run reports about its own process."""

    arch: Arch
    runner: str
    jit: JitWindow  # the window probed (computed around ``anchor``)
    anchor: int  # what the window is around
    anchor_source: str  # "the probe's own code", "the probe's main stack" or "given"
    self_anchor: int  # the address of a function in the probe's own code
    page_size: int
    rlimit_as: int | None  # soft RLIMIT_AS, None when unlimited
    vm_size: int  # the probe's VmSize before probing
    mmap_min_addr: int | None
    maps_before: str  # /proc/self/maps captured before the probing
    maps_after: str  # ... and after everything was unmapped
    infidelities: tuple[str, ...]  # what this runner gets wrong (empty natively)

    @property
    def leaked(self) -> bool:
        """True when the probe left a mapping behind (it must never)."""
        return self.maps_before != self.maps_after

    @property
    def as_headroom(self) -> int | None:
        """Bytes RLIMIT_AS still allows beyond what the probe had mapped."""
        return None if self.rlimit_as is None else max(0, self.rlimit_as - self.vm_size)

    def maps(self) -> ProcessMaps:
        return parse_maps(self.maps_before, source=f"probe ({self.runner}, {self.arch})")


@dataclass(frozen=True)
class ScanCounts:
    free: int
    eexist: int  # occupied: the kernel said so
    eperm: int  # below vm.mmap_min_addr
    enomem: int  # RLIMIT_AS, vm.max_map_count, or above user space
    moved: int  # the flag was ignored and the mapping went elsewhere (qemu-user)
    other: int


@dataclass(frozen=True)
class ScanResult:
    context: ProbeContext
    window: Span  # the scanned span (slot-aligned)
    slot: int
    outcomes: str  # one character per slot: . X P M m ?
    counts: ScanCounts
    free_runs: tuple[Span, ...]
    probe_ns: int
    mmap_calls: int
    strategy: str  # "bisect" or "linear"

    def free_slots(self) -> frozenset[int]:
        return frozenset(self.window.start + i * self.slot
                         for i, o in enumerate(self.outcomes) if o == ".")

    @property
    def verdict(self) -> str:
        """The one-line reading: rlimit, full, or how much is free."""
        ctx = self.context
        if self.counts.enomem and ctx.rlimit_as is not None:
            return "rlimit_as"  # the window may be free: RLIMIT_AS forbids the mappings
        headroom = ctx.as_headroom
        if headroom is not None and headroom < sum(r.size for r in self.free_runs):
            return "rlimit_as"
        if self.counts.moved and not self.counts.eexist:
            return "hints_only"  # the runner cannot tell occupied from free exactly
        return "ok" if self.counts.free else "full"


@dataclass(frozen=True)
class ThreadReplay:
    attempts: int
    failed_attempts: int
    failed_allocations: int
    ns: int
    areas: tuple[int, ...]


@dataclass(frozen=True)
class ReplayResult:
    context: ProbeContext
    threads: int
    threads_started: int
    areas_per_thread: int
    area_size: int
    allocations: int
    failed_allocations: int
    fallbacks: int  # luajit-2025: areas put anywhere after every probe missed
    attempts: int
    failed_attempts: int
    ns_per_allocation: float
    ns_max: int
    wall_ns: int
    per_thread: tuple[ThreadReplay, ...]
    maps_during: str  # /proc/self/maps with every area still mapped

    def areas(self) -> tuple[Span, ...]:
        return tuple(Span(a, a + self.area_size) for t in self.per_thread for a in t.areas)


ProbeResult = ScanResult | ReplayResult


def _addr(text: str) -> int:
    return int(text, 16)


def _json(out: str, what: str) -> dict[str, Any]:
    try:
        doc = json.loads(out)
    except ValueError as e:
        raise ProbeError(f"the probe printed no valid JSON ({what}): {e}") from e
    if not isinstance(doc, dict):
        raise ProbeError(f"the probe printed no JSON object ({what})")
    return doc


def _context(doc: dict[str, Any], arch: Arch, runner: str, jit: JitWindow,
             anchor: int, source: str) -> ProbeContext:
    soft = doc["rlimit_as"]["soft"]
    return ProbeContext(
        arch=arch, runner=runner, jit=jit, anchor=anchor, anchor_source=source,
        self_anchor=_addr(doc["anchor"]),
        page_size=int(doc["page_size"]), rlimit_as=None if soft is None else int(soft),
        vm_size=int(doc["vm_size"]), mmap_min_addr=doc["mmap_min_addr"],
        maps_before=doc["maps_before"], maps_after=doc["maps_after"],
        infidelities=QEMU_USER_INFIDELITIES if runner == "qemu-user" else (),
    )


def _window(jit: JitWindow, anchor: int, radius: int | None) -> JitWindow:
    """``jit`` itself, or a plain +-radius window of whole slots around ``anchor``."""
    if radius is None:
        return jit
    lo = max(0, align_down(anchor, jit.slot) - radius)
    span = Span(lo, align_down(anchor, jit.slot) + radius)
    return replace(jit, window=span, usable=span)


def _jr(jit: JitWindow) -> int:
    """LJ_TARGET_JUMPRANGE of the profile, recovered from its window."""
    name = jit.profile.name
    if name == "luajit-2.1":
        return jit.random_probes + 1
    if name == "luajit-2025":
        return (jit.hint_hi - 1 - jit.hint_lo + jit.slot).bit_length() - 1
    return 27


def run_probe(arch: Arch | str | None = None, *, runner: str = "native", mode: str = "scan",
              jit: str = "luajit-2.1", anchor: int | str | None = None, radius: int | None = None,
              threads: int = 1, areas: int = 8, seed: int = 1, linear: bool = False,
              rlimit_as: int | None = None, as_headroom: int | None = None,
              executable: Path | None = None) -> ProbeResult:
    """Build and run the probe; the window is ``jit``'s around ``anchor`` (default: the
    probe's own code; ``"stack"``: the probe's main stack), or +-``radius`` around it.

    ``rlimit_as`` sets the probe's soft RLIMIT_AS (bytes, as ``ulimit -v``);
    ``as_headroom`` lowers it to the probe's VmSize plus that many bytes (a process that
    has used up its limit). Both act before the "before" maps snapshot.
    ``executable`` runs that build of the probe instead (a layout twin, twin.py).
    """
    arch = host_arch() if arch is None else (arch if isinstance(arch, Arch)
                                             else arches.by_name(arch))
    if mode not in MODES:
        raise UsageError(f"unknown probe mode {mode!r} (known: {', '.join(MODES)})")
    if mode == "replay" and jit == "luajit-2017":
        raise UsageError("replay knows luajit-2.1, luajit-2025 and generic (first fit)")
    if not 1 <= threads <= 1024 or not 0 <= areas <= 4096:
        raise UsageError("--threads must be 1..1024 and --areas 0..4096")
    command = _command(arch, runner, executable or build_probe(arch, runner))
    limit = Span(0, KernelConfig.for_arch(arch).user_top)
    # The window depends on the anchor, known only once the probe runs (ASLR): the probe
    # prints it, then reads the window from stdin.
    if isinstance(anchor, str) and anchor != "stack":
        raise UsageError(f"anchor {anchor!r}: an address, or 'stack'")
    guess = anchor if isinstance(anchor, int) and anchor else limit.end // 2
    jr_guess = jit_window(jit, arch, guess, limit)
    args = ["--handshake", "--mode", mode, "--profile", jit, "--slot", str(jr_guess.slot),
            "--area", str(jr_guess.profile.sizemcode), "--threads", str(threads),
            "--areas", str(areas), "--seed", str(seed), "--jr", str(_jr(jr_guess))]
    if linear:
        args.append("--linear")
    if rlimit_as is not None:
        args += ["--rlimit-as", str(rlimit_as)]
    if as_headroom is not None:
        args += ["--as-headroom", str(as_headroom)]
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
        hello = _json(first, "handshake")
        self_anchor = _addr(hello["anchor"])
        if anchor is None:
            where, source = self_anchor, "the probe's own code"
        elif anchor == "stack":
            where, source = _addr(hello["stack"]), "the probe's main stack"
        else:
            assert isinstance(anchor, int)
            where, source = anchor, "given"
        window = _window(jit_window(jit, arch, where, limit), where, radius)
        rng = (window.hint_hi - window.hint_lo) // 2
        line = " ".join(f"{v & _MASK64:#x}" for v in (
            window.usable.start, window.usable.end, window.target, rng,
            window.hint_lo, window.hint_hi))
        try:
            out, err = proc.communicate(line + "\n", timeout=TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise ProbeError(f"the probe ran longer than {TIMEOUT:.0f} s") from None
    if proc.returncode != 0:
        raise ProbeError(f"the probe failed (status {proc.returncode}): {err.strip()[-300:]}")
    doc = _json(out, "report")
    ctx = _context(doc, arch, runner, window, where, source)
    if mode == "scan":
        counts = doc["counts"]
        return ScanResult(
            context=ctx, window=Span(_addr(doc["window"][0]), _addr(doc["window"][1])),
            slot=int(doc["slot"]), outcomes=doc["outcomes"],
            counts=ScanCounts(**{k: int(v) for k, v in counts.items()}),
            free_runs=tuple(Span(_addr(a), _addr(b)) for a, b in doc["free_runs"]),
            probe_ns=int(doc["probe_ns"]), mmap_calls=int(doc["mmap_calls"]),
            strategy=doc["strategy"])
    return ReplayResult(
        context=ctx, threads=int(doc["threads"]), threads_started=int(doc["threads_started"]),
        areas_per_thread=int(doc["areas_per_thread"]), area_size=int(doc["area"]),
        allocations=int(doc["allocations"]), failed_allocations=int(doc["failed_allocations"]),
        fallbacks=int(doc["fallbacks"]), attempts=int(doc["attempts"]),
        failed_attempts=int(doc["failed_attempts"]),
        ns_per_allocation=float(doc["ns_per_allocation"]), ns_max=int(doc["ns_max"]),
        wall_ns=int(doc["wall_ns"]),
        per_thread=tuple(ThreadReplay(int(t["attempts"]), int(t["failed_attempts"]),
                                      int(t["failed_allocations"]), int(t["ns"]),
                                      tuple(_addr(a) for a in t["areas"]))
                         for t in doc["per_thread"]),
        maps_during=doc["maps_during"])


# --- comparison with the model ----------------------------------------------------------

def occupants(maps: ProcessMaps) -> list[Occupant]:
    """Every mapping as an occupant, plus the guard gap below each stack (mm/mmap.c)."""
    found = [Occupant(occupant_kind(m.kind), m.span, m.path) for m in maps.mappings]
    for m in maps.by_kind(MappingKind.STACK):
        found.append(Occupant(OccupantKind.STACK_GUARD,
                                  Span(max(0, m.start - STACK_GUARD_GAP), m.start)))
    return found


def model_accounting(result: ScanResult) -> Accounting:
    """layoutkit's own accounting of the scanned window, from the probe's maps."""
    return account(result.context.jit, occupants(result.context.maps()))


@dataclass(frozen=True)
class Difference:
    slot: int
    probe: str  # outcome character
    model_free: bool
    reason: str  # the documented cause, or "unexplained"


def differences(result: ScanResult) -> list[Difference]:
    """Slots where the probe and the model disagree, each with its documented cause.

    Documented: the stack guard gap (the model keeps hints out of it, as the kernel's
    search does, but MAP_FIXED_NOREPLACE may map inside it); below vm.mmap_min_addr
    (EPERM for a normal user, mappable by root, not modelled here); 'moved' under
    qemu-user (the slot may well be free).
    """
    acc = model_accounting(result)
    model_free = {s for gap in acc.free for s in range(gap.start, gap.end, result.slot)}
    guards = [o.span for o in acc.occupants if o.kind is OccupantKind.STACK_GUARD]
    low = result.context.mmap_min_addr or 0
    found = []
    for i, outcome in enumerate(result.outcomes):
        slot = result.window.start + i * result.slot
        free = slot in model_free
        if (outcome == ".") == free:
            continue
        span = Span(slot, slot + result.slot)
        if any(g.overlaps(span) for g in guards):
            reason = "stack guard gap"
        elif slot < low or outcome == "P":
            reason = "below mmap_min_addr"
        elif outcome == "m":
            reason = "moved (runner ignores MAP_FIXED_NOREPLACE)"
        elif outcome == "M":
            reason = "ENOMEM (RLIMIT_AS or map count)"
        else:
            reason = "unexplained"
        found.append(Difference(slot, outcome, free, reason))
    return found


# --- output -----------------------------------------------------------------------------

def _context_json(ctx: ProbeContext) -> dict[str, Any]:
    return {
        "arch": ctx.arch.name, "runner": ctx.runner, "profile": ctx.jit.profile.name,
        "anchor": report.hexa(ctx.anchor), "self_anchor": report.hexa(ctx.self_anchor),
        "anchor_source": ctx.anchor_source,
        "window": report.span_json(ctx.jit.window), "usable": report.span_json(ctx.jit.usable),
        "page_size": ctx.page_size, "rlimit_as": ctx.rlimit_as, "vm_size": ctx.vm_size,
        "as_headroom": ctx.as_headroom, "mmap_min_addr": ctx.mmap_min_addr,
        "leaked_mappings": ctx.leaked, "infidelities": list(ctx.infidelities),
    }


def result_json(result: ProbeResult) -> dict[str, Any]:
    """The ``probe`` command's JSON document."""
    body = _context_json(result.context)
    if isinstance(result, ScanResult):
        body.update({
            "mode": "scan", "verdict": result.verdict, "slot": result.slot,
            "slots": len(result.outcomes), "counts": vars(result.counts),
            "free_runs": [report.span_json(r) for r in result.free_runs],
            "strategy": result.strategy, "mmap_calls": result.mmap_calls,
            "probe_ns": result.probe_ns,
            "model_differences": [
                {"slot": report.hexa(d.slot), "probe": d.probe, "model_free": d.model_free,
                 "reason": d.reason} for d in differences(result)],
            "maps": result.context.maps_before,
        })
    else:
        body.update({
            "mode": "replay", "threads": result.threads,
            "threads_started": result.threads_started,
            "areas_per_thread": result.areas_per_thread, "area_size": result.area_size,
            "allocations": result.allocations,
            "failed_allocations": result.failed_allocations, "fallbacks": result.fallbacks,
            "attempts": result.attempts, "failed_attempts": result.failed_attempts,
            "ns_per_allocation": result.ns_per_allocation, "ns_max": result.ns_max,
            "wall_ns": result.wall_ns,
            "per_thread": [{"attempts": t.attempts, "failed_attempts": t.failed_attempts,
                            "failed_allocations": t.failed_allocations, "ns": t.ns}
                           for t in result.per_thread],
            "areas": [report.hexa(a.start) for a in result.areas()],
            "maps": result.context.maps_before,
        })
    return report.document("probe", body)


_OUTCOME_NAMES = (("free", "."), ("eexist", "X"), ("eperm", "P"), ("enomem", "M"),
                  ("moved", "m"), ("other", "?"))


def result_lines(result: ProbeResult) -> Iterator[str]:
    """The ``probe`` command's text output, readelf-like, verdict last."""
    ctx = result.context
    yield f"Probe:       {ctx.arch} on {ctx.runner}, profile {ctx.jit.profile.name}"
    yield f"Anchor:      {ctx.anchor:#x} ({ctx.anchor_source})"
    yield (f"Window:      {ctx.jit.window}  usable {ctx.jit.usable} "
           f"({format_size(ctx.jit.usable.size)})")
    limit = "unlimited" if ctx.rlimit_as is None else format_size(ctx.rlimit_as)
    low = "unknown" if ctx.mmap_min_addr is None else f"{ctx.mmap_min_addr:#x}"
    yield (f"Process:     VmSize {format_size(ctx.vm_size)}, RLIMIT_AS {limit}, "
           f"mmap_min_addr {low}")
    for note in ctx.infidelities:
        yield f"Runner note: {note}"
    if isinstance(result, ScanResult):
        counts = vars(result.counts)
        yield (f"Slots:       {len(result.outcomes)} of {format_size(result.slot)}: "
               + ", ".join(f"{name} {counts[name]}" for name, _ in _OUTCOME_NAMES
                           if counts[name] or name in ("free", "eexist")))
        yield (f"Probing:     {result.probe_ns / 1e6:.3f} ms, {result.mmap_calls} mmap calls "
               f"({result.strategy})")
        yield "Free runs:"
        for run in result.free_runs:
            yield f"  {run.start:#x}-{run.end:#x}  {format_size(run.size)}"
        diffs = differences(result)
        unexplained = [d for d in diffs if d.reason == "unexplained"]
        yield (f"Model:       {len(diffs)} slot(s) differ from layoutkit's accounting of the "
               f"same maps ({len(unexplained)} unexplained)")
        verdict = {
            "ok": f"ok: {format_size(sum(r.size for r in result.free_runs))} free",
            "full": "window full: no free slot",
            "rlimit_as": "RLIMIT_AS forbids the mappings (the window itself is not full)",
            "hints_only": "this runner ignores MAP_FIXED_NOREPLACE: taken and free slots "
                          "cannot be told apart exactly ('moved')",
        }[result.verdict]
    else:
        yield (f"Replay:      {result.threads_started}/{result.threads} threads x "
               f"{result.areas_per_thread} areas of {format_size(result.area_size)}")
        yield (f"Attempts:    {result.attempts} mmap calls, {result.failed_attempts} failed; "
               f"{result.failed_allocations} of {result.allocations} allocations failed"
               + (f", {result.fallbacks} placed anywhere" if result.fallbacks else ""))
        yield (f"Time:        {result.ns_per_allocation / 1e3:.1f} us per allocation, "
               f"max {result.ns_max / 1e3:.1f} us, wall {result.wall_ns / 1e6:.3f} ms")
        if result.threads_started < result.threads:
            verdict = "threads could not start (RLIMIT_AS or memory)"
        elif result.failed_allocations:
            verdict = f"{result.failed_allocations} allocation(s) failed"
        else:
            verdict = "ok: every area was placed inside the window"
    yield f"Leaks:       {'LEAKED MAPPINGS' if ctx.leaked else 'none (maps after == before)'}"
    yield f"Verdict:     {verdict}"


__all__: Sequence[str] = (
    "QEMU_USER_INFIDELITIES", "RUNNERS", "Difference", "ProbeContext", "ProbeResult",
    "ReplayResult", "ScanCounts", "ScanResult", "ThreadReplay", "build_probe", "cache_dir",
    "differences", "host_arch", "model_accounting", "occupants", "result_json",
    "result_lines", "run_probe",
)
