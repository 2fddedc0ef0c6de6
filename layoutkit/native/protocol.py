"""The probe's protocol: what it is asked (the window) and what it reports, as values.

``probe.c`` takes the window as six unsigned numbers (``--start --end --target --range
--hint-lo --hint-hi``, or one handshake line) and prints one JSON object; ``preload.c``
writes the scan part of the same object to a file. :meth:`ScanResult.from_report` and
:meth:`ReplayResult.from_report` are the only readers of those objects: everything
downstream sees typed values. A report that does not parse, or whose counts and free
runs disagree with its own outcome letters, raises :class:`ProbeError`.

The outcome letters are defined once, in ``lk_scan.h``; :class:`Outcome` mirrors them
(tests/native/test_protocol.py reads the header and checks that it does).
"""

from __future__ import annotations

import enum
import json
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Any

from layoutkit.core.arches import Arch
from layoutkit.core.spans import Span, align_down
from layoutkit.errors import EXIT_FINDINGS, EXIT_OK, ProbeError
from layoutkit.native.toolchain import Runner
from layoutkit.read.maps import ProcessMaps, parse_maps
from layoutkit.window.kernel import KernelConfig
from layoutkit.window.profiles import JitWindow, jit_window

_MASK64 = (1 << 64) - 1


class Outcome(enum.Enum):
    """What the kernel answered for one slot (``lk_scan.h`` LK_OUTCOMES)."""

    FREE = "."  # granted at the address asked for, unmapped at once
    EEXIST = "X"  # occupied: the kernel said so
    EPERM = "P"  # below vm.mmap_min_addr
    ENOMEM = "M"  # RLIMIT_AS, vm.max_map_count, or above user space
    MOVED = "m"  # the flag was ignored and the mapping went elsewhere (qemu-user)
    OTHER = "?"  # any other errno

    @property
    def key(self) -> str:
        """The name in the report's ``counts`` (and in :class:`ScanCounts`)."""
        return self.name.lower()

    @classmethod
    def parse(cls, letters: str) -> tuple[Outcome, ...]:
        """One outcome per letter; :class:`ProbeError` on a letter that is none."""
        try:
            return tuple(_BY_LETTER[c] for c in letters)
        except KeyError as e:
            raise ProbeError(f"the probe reported an unknown slot outcome {e}") from None


_BY_LETTER = {o.value: o for o in Outcome}


class ProbeMode(enum.Enum):
    SCAN = "scan"  # ask for every slot with MAP_FIXED_NOREPLACE
    REPLAY = "replay"  # N threads allocate areas with the profile's probe sequence


class ScanVerdict(enum.Enum):
    """The one-line reading of a scan."""

    OK = "ok"  # free slots, as the kernel said
    FULL = "full"  # no free slot
    RLIMIT_AS = "rlimit_as"  # the window may be free: RLIMIT_AS forbids the mappings
    HINTS_ONLY = "hints_only"  # the runner cannot tell occupied from free exactly


@dataclass(frozen=True)
class ScanCounts:
    """Slots per outcome, in :class:`Outcome` order."""

    free: int
    eexist: int
    eperm: int
    enomem: int
    moved: int
    other: int

    @classmethod
    def of(cls, outcomes: Iterable[Outcome]) -> ScanCounts:
        found = dict.fromkeys((o.key for o in Outcome), 0)
        for o in outcomes:
            found[o.key] += 1
        return cls(**found)

    def count(self, outcome: Outcome) -> int:
        return int(getattr(self, outcome.key))

    def as_dict(self) -> dict[str, int]:
        return {o.key: self.count(o) for o in Outcome}


def free_runs(start: int, slot: int, outcomes: Sequence[Outcome]) -> tuple[Span, ...]:
    """The maximal runs of free slots, as half-open spans."""
    runs: list[Span] = []
    for i, o in enumerate(outcomes):
        if o is not Outcome.FREE:
            continue
        s = start + i * slot
        if runs and runs[-1].end == s:
            runs[-1] = Span(runs[-1].start, s + slot)
        else:
            runs.append(Span(s, s + slot))
    return tuple(runs)


# --- the request: which window --------------------------------------------------------

def probe_window(jit: str, arch: Arch, anchor: int, radius: int | None = None,
                 jumprange: int | None = None) -> JitWindow:
    """``jit``'s window around run-time ``anchor`` (clipped to the arch's user space), or
    a plain +-``radius`` window of whole slots around it; ``jumprange`` replaces the
    arch's LJ_TARGET_JUMPRANGE."""
    limit = Span(0, KernelConfig.for_arch(arch).user_top)
    window = jit_window(jit, arch, anchor, limit, jumprange=jumprange)
    if radius is None:
        return window
    lo = max(0, align_down(anchor, window.slot) - radius)
    span = Span(lo, align_down(anchor, window.slot) + radius)
    return replace(window, window=span, usable=span)


def _classic_jr(window: JitWindow) -> int:
    return window.random_probes + 1  # JR iterations, the first one "below the last area"


def _half_hints_jr(window: JitWindow) -> int:
    # Hints cover target +- range/2 with range = 2^(JR-1) - 2 MiB.
    return (window.hint_hi - window.hint_lo + (1 << 21)).bit_length()


def _mcode_setrange_jr(window: JitWindow) -> int:
    return (window.hint_hi - 1 - window.hint_lo + window.slot).bit_length() - 1  # 2^JR - 64K


def _first_fit_jr(window: JitWindow) -> int:
    return 27  # draws no random hints: any value probe.c accepts (17..40)


# The allocators probe.c replays, by the name it knows them by (``--profile``, its
# worker_main), and how each one's LJ_TARGET_JUMPRANGE (``--jr``) follows from its window.
REPLAYS: dict[str, Callable[[JitWindow], int]] = {
    "luajit-2017": _half_hints_jr, "luajit-2.1": _classic_jr,
    "luajit-2025": _mcode_setrange_jr, "generic": _first_fit_jr,
}


def jump_range(window: JitWindow) -> int:
    """LJ_TARGET_JUMPRANGE of the window's allocator, recovered from the window (the
    replay's ``--jr``; a scan does not use it)."""
    return REPLAYS.get(window.profile.allocator_name, _first_fit_jr)(window)


def profile_args(window: JitWindow) -> list[str]:
    """The probe's arguments for the window's profile (slot, area size, jump range)."""
    return ["--profile", window.profile.allocator_name, "--slot", str(window.slot),
            "--area", str(window.profile.sizemcode), "--jr", str(jump_range(window))]


WINDOW_KEYS = ("--start", "--end", "--target", "--range", "--hint-lo", "--hint-hi")


def window_words(window: JitWindow) -> list[str]:
    """The six numbers the probe reads, in :data:`WINDOW_KEYS` order: unsigned, as the
    probe reads them (a hint below 0 wraps, as in LuaJIT's C)."""
    rng = (window.hint_hi - window.hint_lo) // 2
    values = (window.usable.start, window.usable.end, window.target, rng,
              window.hint_lo, window.hint_hi)
    return [f"{v & _MASK64:#x}" for v in values]


def window_args(window: JitWindow) -> list[str]:
    """``window`` as the probe's command-line arguments (no handshake)."""
    return [x for k, v in zip(WINDOW_KEYS, window_words(window), strict=True)
            for x in (k, v)]


# --- the report -----------------------------------------------------------------------

def addr(text: str) -> int:
    """An address as the probe prints it ("0x...")."""
    return int(text, 16)


def parse_report(text: str, what: str) -> dict[str, Any]:
    """The JSON object the probe printed (``what``: which of its lines)."""
    try:
        doc = json.loads(text)
    except ValueError as e:
        raise ProbeError(f"the probe printed no valid JSON ({what}): {e}") from e
    if not isinstance(doc, dict):
        raise ProbeError(f"the probe printed no JSON object ({what})")
    return doc


def _malformed(e: Exception) -> ProbeError:
    return ProbeError(f"the probe's report is malformed ({type(e).__name__}: {e})")


@dataclass(frozen=True)
class ProbeContext:
    """What every probe run reports about its own process."""

    arch: Arch
    runner: Runner
    jit: JitWindow  # the window probed (computed around ``anchor``)
    anchor: int  # what the window is around
    anchor_source: str  # "the probe's own code", "the probe's main stack", "given", ...
    self_anchor: int  # the address of a function in the probe's own code
    page_size: int
    rlimit_as: int | None  # soft RLIMIT_AS, None when unlimited
    vm_size: int  # the probe's VmSize before probing
    mmap_min_addr: int | None
    maps_before: str  # /proc/self/maps captured before the probing
    maps_after: str  # ... and after everything was unmapped
    infidelities: tuple[str, ...]  # what this runner gets wrong (empty on a kernel)

    @classmethod
    def from_report(cls, doc: dict[str, Any], arch: Arch, runner: Runner, jit: JitWindow,
                    anchor: int, source: str) -> ProbeContext:
        """The context of a ``probe.c`` report; the window and anchor are the caller's."""
        try:
            soft = doc["rlimit_as"]["soft"]
            low = doc["mmap_min_addr"]
            return cls(arch=arch, runner=runner, jit=jit, anchor=anchor, anchor_source=source,
                       self_anchor=addr(doc["anchor"]), page_size=int(doc["page_size"]),
                       rlimit_as=None if soft is None else int(soft),
                       vm_size=int(doc["vm_size"]),
                       mmap_min_addr=None if low is None else int(low),
                       maps_before=str(doc["maps_before"]), maps_after=str(doc["maps_after"]),
                       infidelities=runner.infidelities)
        except (KeyError, TypeError, ValueError) as e:
            raise _malformed(e) from e

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
class ScanResult:
    context: ProbeContext
    window: Span  # the scanned span (slot-aligned)
    slot: int
    outcomes: tuple[Outcome, ...]  # one per slot
    counts: ScanCounts
    free_runs: tuple[Span, ...]
    probe_ns: int
    mmap_calls: int
    strategy: str  # "bisect" or "linear"

    @classmethod
    def from_report(cls, doc: dict[str, Any], context: ProbeContext, *,
                    within: Span | None = None) -> ScanResult:
        """The scan of a report, clipped to the slots of ``within`` when given."""
        try:
            window = Span(addr(doc["window"][0]), addr(doc["window"][1]))
            slot = int(doc["slot"])
            outcomes = Outcome.parse(str(doc["outcomes"]))
            probe_ns, calls = int(doc["probe_ns"]), int(doc["mmap_calls"])
            strategy = str(doc["strategy"])
            said = None if "counts" not in doc else {k: int(v)
                                                     for k, v in doc["counts"].items()}
            runs = None if "free_runs" not in doc else tuple(
                Span(addr(a), addr(b)) for a, b in doc["free_runs"])
        except (KeyError, TypeError, ValueError, IndexError) as e:
            raise _malformed(e) from e
        if slot <= 0 or len(outcomes) * slot != window.size:
            raise ProbeError(f"the probe reported {len(outcomes)} outcomes of {slot} bytes "
                             f"for the window {window}")
        counts = ScanCounts.of(outcomes)
        found = free_runs(window.start, slot, outcomes)
        if (said is not None and said != counts.as_dict()) or (runs is not None
                                                               and runs != found):
            raise ProbeError("the probe's counts or free runs disagree with its outcomes")
        if within is not None:
            lo, hi = max(within.start, window.start), min(within.end, window.end)
            i = min(len(outcomes), (lo - window.start) // slot)
            j = max(i, (hi - window.start) // slot)
            window = Span(window.start + i * slot, window.start + j * slot)
            outcomes = outcomes[i:j]
            counts = ScanCounts.of(outcomes)
            found = free_runs(window.start, slot, outcomes)
        return cls(context, window, slot, outcomes, counts, found, probe_ns, calls, strategy)

    def free_slots(self) -> frozenset[int]:
        return frozenset(self.window.start + i * self.slot
                         for i, o in enumerate(self.outcomes) if o is Outcome.FREE)

    @property
    def free_bytes(self) -> int:
        return sum(r.size for r in self.free_runs)

    @property
    def verdict(self) -> ScanVerdict:
        """The one-line reading: rlimit, full, or how much is free."""
        ctx = self.context
        if self.counts.enomem and ctx.rlimit_as is not None:
            return ScanVerdict.RLIMIT_AS
        headroom = ctx.as_headroom
        if headroom is not None and headroom < self.free_bytes:
            return ScanVerdict.RLIMIT_AS
        if self.counts.moved and not self.counts.eexist:
            return ScanVerdict.HINTS_ONLY
        return ScanVerdict.OK if self.counts.free else ScanVerdict.FULL

    @property
    def exit_code(self) -> int:
        """1 when the window has no free slot, or RLIMIT_AS forbids the mappings."""
        failed = self.verdict in (ScanVerdict.FULL, ScanVerdict.RLIMIT_AS)
        return EXIT_FINDINGS if failed else EXIT_OK


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
    retries: int  # requests again after an abort, per state
    placed: int  # areas handed out, flushed ones included
    syscalls: int  # mmap and munmap calls of the allocator and of the flushes
    far_areas: int  # luajit-2025: areas placed in a range that came from mmap(NULL)
    maps_start: str  # /proc/self/maps with the threads' stacks, before any area

    @property
    def aborts(self) -> int:
        """Failed allocations: each one LJ_TRERR_MCODEAL and a flush of the state."""
        return self.failed_allocations

    @classmethod
    def from_report(cls, doc: dict[str, Any], context: ProbeContext) -> ReplayResult:
        try:
            return cls(
                context=context, threads=int(doc["threads"]),
                threads_started=int(doc["threads_started"]),
                areas_per_thread=int(doc["areas_per_thread"]), area_size=int(doc["area"]),
                allocations=int(doc["allocations"]),
                failed_allocations=int(doc["failed_allocations"]),
                fallbacks=int(doc["fallbacks"]), attempts=int(doc["attempts"]),
                failed_attempts=int(doc["failed_attempts"]),
                ns_per_allocation=float(doc["ns_per_allocation"]), ns_max=int(doc["ns_max"]),
                wall_ns=int(doc["wall_ns"]),
                per_thread=tuple(ThreadReplay(int(t["attempts"]), int(t["failed_attempts"]),
                                              int(t["failed_allocations"]), int(t["ns"]),
                                              tuple(addr(a) for a in t["areas"]))
                                 for t in doc["per_thread"]),
                maps_during=str(doc["maps_during"]), retries=int(doc["retries"]),
                placed=int(doc["placed"]), syscalls=int(doc["syscalls"]),
                far_areas=int(doc["far_areas"]), maps_start=str(doc["maps_start"]))
        except (KeyError, TypeError, ValueError) as e:
            raise _malformed(e) from e

    def areas(self) -> tuple[Span, ...]:
        return tuple(Span(a, a + self.area_size) for t in self.per_thread for a in t.areas)

    @property
    def all_started(self) -> bool:
        return self.threads_started >= self.threads

    @property
    def exit_code(self) -> int:
        """1 when an allocation failed or a thread could not start."""
        ok = self.all_started and not self.failed_allocations
        return EXIT_OK if ok else EXIT_FINDINGS


ProbeResult = ScanResult | ReplayResult


__all__: Sequence[str] = (
    "REPLAYS", "WINDOW_KEYS", "Outcome", "ProbeContext", "ProbeMode", "ProbeResult", "ReplayResult",
    "ScanCounts", "ScanResult", "ScanVerdict", "ThreadReplay", "addr", "free_runs",
    "jump_range", "parse_report", "probe_window", "profile_args", "window_args",
    "window_words",
)
