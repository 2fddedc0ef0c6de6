"""JIT allocator profiles: where each JIT generation may put its code, and how it probes.

Each profile is data plus the rule it implements, from LuaJIT's src/lj_mcode.c
(mcode_alloc), src/lj_arch.h (LJ_TARGET_JUMPRANGE) and src/lj_jit.h (JIT_P_sizemcode,
JIT_P_maxmcode defaults), per generation:

- ``luajit-2017``: before commits 4e308361/d62459fc (2017-03-08). Window target +- range
  with target = lj_vm_exit_handler & ~0xffff and range = 2^(JR-1) - 2 MiB, but the
  random hints were ``(0x78fb ^ prng15) << 16`` kept below range and placed at
  target - range/2: they cover only the middle half (LuaJIT issue #282). 32 attempts.
- ``luajit-2.1``: 2017-03-08 to 2025-11-06 (still LuaJIT master, v2.0, Debian's
  2.1.0-beta3, openresty before v2.1-20260311). Same window; hints
  ``target + (prng & (2^JR - 64K)) - range`` over the whole window; JR attempts; an area
  is kept only when ``p + sz - target < range || target - p < range`` (unsigned), i.e.
  strictly inside (target - range, target + range). Failure aborts the trace
  ("failed to allocate mcode memory", LJ_TRERR_MCODEAL).
- ``luajit-2025``: commit 68354f44 (2025-11-06, branch v2.1). Window [mcmin, mcmax) of
  width 2^JR - 64 KiB centred on the exact lj_vm_exit_handler, mcmin clamped to >= 0x10000;
  MIPS: the whole 256 MiB region (JR 28). Up to 16 attempts; when all fail the area goes
  anywhere and calls back to the VM go through a register: slower, not an abort.
- ``generic``: any other JIT: the mutual-reach window of one branch form (every
  instruction in it can branch to every other and to the anchor: the width is the
  one-way reach, centred on the anchor; MIPS j/jal: the anchor's 256 MiB region),
  first-fit placement.
"""

from __future__ import annotations

import abc
import re
from dataclasses import dataclass, replace
from typing import BinaryIO

from layoutkit.core.arches import Arch, Isa
from layoutkit.core.spans import Span, align_down
from layoutkit.errors import UsageError
from layoutkit.ranges import BranchForm, default_form, form_by_name
from layoutkit.read import bulk

KiB = 1024
SLOT = 64 * KiB  # LuaJIT's hint alignment (lj_mcode.c: "64K aligned")



@dataclass(frozen=True)
class Profile(abc.ABC):
    """One allocator: its window rule (:meth:`window`), probing rule and default sizes.

    A strategy: each generation is a subclass with its own :meth:`window`; nothing
    elsewhere branches on a profile's name.
    """

    name: str
    summary: str
    sizemcode: int  # bytes per area (JIT_P_sizemcode, 64-bit default)
    maxmcode: int  # bytes per JIT state (JIT_P_maxmcode)
    attempts: str  # how many probes, in words
    on_failure: str  # what happens when no probe hits
    # Whether a full window aborts traces (LuaJIT before 68354f44) rather than costing
    # speed (the 2025 allocator places the area anywhere; a generic JIT calls far).
    aborts: bool = True
    luajit: bool = True  # a LuaJIT generation (maxmcode and the 2025 upgrade apply)
    # The upstream allocator it runs, as a profile name (None: its own name). A fork
    # (OpenResty's luajit2) runs one of LuaJIT's allocators with its own defaults.
    allocator: str | None = None
    # Whether the allocator is picked from the release detected in the binary even when
    # the profile is named with --jit (OpenResty: before or since v2.1-20260311).
    by_release: bool = False
    # The release that turns a full window into slower calls instead of aborts.
    upgrade: str = "LuaJIT v2.1 at or after commit 68354f44 (2025-11-06)"

    @property
    def allocator_name(self) -> str:
        """The upstream allocator generation this profile runs."""
        return self.allocator or self.name

    @abc.abstractmethod
    def window(self, arch: Arch, anchor: int, limit: Span, *,
               form_name: str | None = None, slot: int = SLOT,
               jumprange: int | None = None) -> JitWindow:
        """The window around run-time ``anchor``, clipped to ``limit``. ``jumprange``
        replaces the arch's LJ_TARGET_JUMPRANGE (a narrower range for a replay that must
        fill its window; LuaJIT profiles only)."""

    def with_code_range(self, size: int) -> Profile:
        """This profile with a code range of ``size`` bytes (``--code-range``)."""
        raise UsageError(f"--code-range applies to --jit v8, not {self.name}")


@dataclass(frozen=True)
class _LuaJitClassic(Profile):
    """LuaJIT's allocator before 68354f44: target +- range around
    ``lj_vm_exit_handler & ~0xffff`` (MIPS: the middle of its 256 MiB region),
    range = 2^(JR-1) - 2 MiB, areas strictly inside."""

    # The hints drawn, as a fraction of the range on each side of the target, and how
    # many random probes follow the first ("below the last area") one.
    half_hints: bool = False

    def window(self, arch: Arch, anchor: int, limit: Span, *,
               form_name: str | None = None, slot: int = SLOT,
               jumprange: int | None = None) -> JitWindow:
        jr = jumprange or _jumprange(arch)
        if arch.isa is Isa.MIPS:
            target = align_down(anchor, 1 << 28) + 0x08000000  # middle of the 256 MiB region
        else:
            target = anchor & ~0xFFFF
        rng = (1 << (jr - 1)) - (1 << 21)
        window = _clip(target - rng, target + rng, limit)
        # Accepted iff target - range < p and p + sz < target + range, p 64K-aligned.
        usable = _clip(target - rng + SLOT, target + rng - SLOT, limit)
        if self.half_hints:
            # hint = target + h - range/2 with h = (0x78fb ^ prng15) << 16, h + sz < range.
            hint_lo, hint_hi = target - rng // 2, target + rng // 2
            probes = 31  # 32 iterations; the first tries the area below the last one
        else:
            # hint = target + h - range with h = prng & (2^JR - 64K), h + sz < 2 * range.
            hint_lo, hint_hi = target - rng, target + rng
            probes = jr - 1  # JR iterations; the first tries the area below the last one
        return JitWindow(self, default_form(arch), target, window, usable, hint_lo, hint_hi,
                         slot, probes)


@dataclass(frozen=True)
class _LuaJit2025(Profile):
    """68354f44's allocator: [mcmin, mcmax) of width 2^JR - 64 KiB centred on the exact
    anchor (MIPS: its whole 256 MiB region, JR 28)."""

    def window(self, arch: Arch, anchor: int, limit: Span, *,
               form_name: str | None = None, slot: int = SLOT,
               jumprange: int | None = None) -> JitWindow:
        # 68354f44 widened MIPS to its whole 256 MiB region: JR 28 (src/lj_arch.h).
        jr = jumprange or arch.luajit_jumprange_2025
        if jr is None:
            raise UsageError(f"LuaJIT has no JIT for {arch}: use --jit generic")
        # mcode_setrange (68354f44), in uintptr_t arithmetic: mcmin rounded up to 64 KiB
        # and mcmax = mcmin + MCODE_RANGE64 computed before mcmin is clamped to 0x10000.
        mask = (1 << 64) - 1
        range64 = (1 << jr) - SLOT
        if arch.isa is Isa.MIPS:
            mcmin = anchor & ~((1 << jr) - 1)
            mcmax = mcmin + (1 << jr)
        else:
            mcmin = ((anchor - (range64 >> 1) + 0xFFFF) & mask) & ~0xFFFF
            mcmax = (mcmin + range64) & mask
        if anchor < mcmin or not mcmin:
            mcmin = 0x10000
        if anchor > mcmax:
            mcmax = (1 << 64) - SLOT
        window = _clip(mcmin, mcmax, limit)
        usable = window.aligned_inward(slot) or Span(window.start, window.start)
        # Hints mcmin + (prng & MCODE_RANGE64), redrawn until mcode_inrange: p + sz <= mcmax.
        return JitWindow(self, default_form(arch), anchor, window, usable, mcmin, mcmax + 1,
                         slot, 16)


@dataclass(frozen=True)
class _Generic(Profile):
    """Any JIT: the mutual-reach window of one branch form, first fit."""

    def window(self, arch: Arch, anchor: int, limit: Span, *,
               form_name: str | None = None, slot: int = SLOT,
               jumprange: int | None = None) -> JitWindow:
        form = default_form(arch)
        if form_name is not None:
            found = form_by_name(arch, form_name)
            if found is None:
                raise UsageError(f"no branch form {form_name!r} for {arch}")
            form = found
        if form.region:
            lo, hi = form.sources_to(anchor)  # MIPS j/jal: the anchor's 256 MiB region
        elif form.wraps:
            lo, hi = limit.start, limit.end
        else:
            # Mutual reach: any two instructions in the window (and the anchor) must reach
            # each other, so the width is the one-way reach, not the whole span of targets:
            # width - granule <= disp_max and -(width - granule) >= disp_min.
            width = min(form.disp_max + form.granule, form.granule - form.disp_min)
            lo = anchor - width // 2
            hi = lo + width
        window = _clip(lo, hi, limit)
        usable = window.aligned_inward(slot) or Span(window.start, window.start)
        return JitWindow(self, form, anchor, window, usable, 0, 0, slot, 0)


@dataclass(frozen=True)
class _CallsIn(Profile):
    """A JIT whose code must call into the anchor but whose own jumps stay inside one
    buffer of at most the branch range (PHP's opcache JIT; AArch64 refuses a larger
    buffer): the one-way reach of the direct form to the anchor, not the mutual window."""

    def window(self, arch: Arch, anchor: int, limit: Span, *,
               form_name: str | None = None, slot: int = SLOT,
               jumprange: int | None = None) -> JitWindow:
        form = default_form(arch)
        lo, hi = form.sources_to(anchor)
        window = _clip(lo, hi, limit)
        usable = window.aligned_inward(slot) or Span(window.start, window.start)
        return JitWindow(self, form, anchor, window, usable, 0, 0, slot, 0)


PROFILES: dict[str, Profile] = {
    "luajit-2017": _LuaJitClassic(
        "luajit-2017", "LuaJIT before 2017-03-08: random hints cover half the window",
        64 * KiB, 512 * KiB, "32 probes (below the last area, then random)",
        "the trace aborts: failed to allocate mcode memory", half_hints=True),
    "luajit-2.1": _LuaJitClassic(
        "luajit-2.1", "LuaJIT 2017-03 to 2025-11 (master, v2.0, 2.1.0-beta3, openresty)",
        64 * KiB, 512 * KiB, "JR probes per area (27 on arm64, 31 on x86-64)",
        "the trace aborts: failed to allocate mcode memory"),
    "luajit-2025": _LuaJit2025(
        "luajit-2025", "LuaJIT v2.1 since commit 68354f44 (2025-11-06)",
        64 * KiB, 2048 * KiB, "16 probes, each redrawn until in range",
        "the area goes anywhere; calls to the VM become indirect (slower)", aborts=False),
    "generic": _Generic(
        "generic", "any JIT: mutual-reach window of one branch form, first fit",
        64 * KiB, 512 * KiB, "first fit", "no room: the JIT must fall back to far calls",
        aborts=False, luajit=False),
    # OpenResty's luajit2 (src/lj_jit.h, JIT_PARAMDEF: maxmcode 40960 at openresty/luajit2
    # commit 0fcdf129): upstream's allocator with 80 times its maxmcode. Releases before
    # v2.1-20260311 run the 2017-2025 allocator; the variant below the 2025 one.
    "luajit-openresty": _LuaJitClassic(
        "luajit-openresty", "OpenResty's LuaJIT before v2.1-20260311: the 2017-2025 "
        "allocator, maxmcode 40960 KiB", 64 * KiB, 40960 * KiB,
        "JR probes per area (27 on arm64, 31 on x86-64)",
        "the trace aborts: failed to allocate mcode memory", allocator="luajit-2.1",
        by_release=True, upgrade="OpenResty's luajit2 v2.1-20260311 or later (LuaJIT's "
        "68354f44 allocator)"),
    # PHP's opcache JIT (layoutkit/window/opcache.py): its buffer must reach all of PHP's
    # text with the direct call; the segment is placed by find_prefered_mmap_base.
    "php-opcache": _CallsIn(
        "php-opcache", "PHP opcache JIT: the buffer must reach PHP's text with direct calls",
        2 << 20, 128 << 20, "one hint read from /proc/self/maps (find_prefered_mmap_base)",
        "no gap within 4 GiB: the JIT calls PHP through a register (2-3% slower)",
        aborts=False, luajit=False),
}

# Profiles reached only through detection: the same --jit name, another allocator.
VARIANTS: dict[str, Profile] = {
    "luajit-openresty-2025": _LuaJit2025(
        "luajit-openresty", "OpenResty's LuaJIT v2.1-20260311 or later: the 2025 allocator, "
        "maxmcode 40960 KiB", 64 * KiB, 40960 * KiB, "16 probes, each redrawn until in range",
        "the area goes anywhere; calls to the VM become indirect (slower)", aborts=False,
        allocator="luajit-2025", by_release=True),
}


def profile(name: str) -> Profile:
    found = PROFILES.get(name) or VARIANTS.get(name)
    if found is None:
        raise UsageError(f"unknown JIT profile {name!r} (known: {', '.join(PROFILES)})")
    return found


def wants_generation(requested: str | None) -> bool:
    """Whether the binary's generation must be detected: no --jit, or a profile whose
    allocator follows the detected release."""
    return requested is None or profile(requested).by_release


@dataclass(frozen=True)
class JitWindow:
    """Where a profile may put code for one anchor, at run-time addresses.

    ``window`` is the nominal window; ``usable`` the span that whole slots may occupy
    (for LuaJIT 2017/2.1 one slot narrower at each end, since the acceptance test is
    strict). Random probes ask for ``hint_lo + k * slot`` for every k with
    ``hint_lo + k * slot + size < hint_hi``, uniformly; these bounds are raw arithmetic
    (LuaJIT does not clip them, so hints below 0 or above user space are wasted draws).
    """

    profile: Profile
    form: BranchForm
    target: int
    window: Span
    usable: Span
    hint_lo: int
    hint_hi: int
    slot: int
    random_probes: int  # random hints per allocation (0: first fit, no randomness)

    def hint_count(self, size: int) -> int:
        """How many distinct hints a probe for a ``size``-byte area draws from."""
        room = self.hint_hi - self.hint_lo - size
        return max(0, -(-room // self.slot))


def _jumprange(arch: Arch) -> int:
    jr = arch.luajit_jumprange
    if jr is None:
        raise UsageError(f"LuaJIT has no JIT for {arch}: use --jit generic")
    return jr


def _clip(lo: int, hi: int, limit: Span) -> Span:
    lo, hi = max(lo, limit.start), min(hi, limit.end)
    return Span(lo, max(lo, hi))


def jit_window(name: str | Profile, arch: Arch, anchor: int, limit: Span, *,
               form_name: str | None = None, slot: int = SLOT,
               jumprange: int | None = None) -> JitWindow:
    """The window of profile ``name`` (or of a profile given as such) around run-time
    ``anchor``, clipped to ``limit``."""
    chosen = name if isinstance(name, Profile) else profile(name)
    return chosen.window(arch, anchor, limit, form_name=form_name, slot=slot,
                         jumprange=jumprange)


def has_luajit(arch: Arch) -> bool:
    """Whether upstream LuaJIT (or the s390x fork) has a JIT for ``arch``."""
    return arch.luajit_jumprange is not None


def choose_profile(arch: Arch, requested: str | None,
                   generation: Generation | None) -> tuple[str, str | None]:
    """The profile to use and, when it is not what the evidence said, why."""
    if requested is not None:
        chosen = profile(requested)  # validate the name
        if chosen.by_release:
            if generation is not None and profile(generation.profile).name == chosen.name:
                return generation.profile, None  # the allocator of the detected release
            return requested, (f"--jit {requested}: the binary does not show which release "
                               f"it is; assuming {chosen.summary}")
        return requested, None
    if generation is None:
        return "generic", "no LuaJIT found: the generic window of the direct branch (--jit)"
    if not has_luajit(arch):
        return "generic", (f"LuaJIT has no JIT for {arch}: using the generic window of the "
                           "direct branch")
    return generation.profile, None


def window_for_span(name: str | Profile, arch: Arch, anchor: Span, limit: Span, *,
                    form_name: str | None = None) -> JitWindow:
    """The window for an anchor span: code must reach its first and its last byte."""
    near = jit_window(name, arch, anchor.start, limit, form_name=form_name)
    if anchor.size <= 1:
        return near
    far = jit_window(name, arch, anchor.end - 1, limit, form_name=form_name)
    lo, hi = max(near.window.start, far.window.start), min(near.window.end, far.window.end)
    ulo, uhi = max(near.usable.start, far.usable.start), min(near.usable.end, far.usable.end)
    return replace(near, window=Span(lo, max(lo, hi)), usable=Span(ulo, max(ulo, uhi)),
                   hint_lo=max(near.hint_lo, far.hint_lo),
                   hint_hi=min(near.hint_hi, far.hint_hi))


# --- generation detection --------------------------------------------------------------

# "LuaJIT 2.1.0-beta3", "LuaJIT 2.0.5", rolling "LuaJIT 2.1.1762400000" (commit time).
_VERSION = re.compile(rb"LuaJIT (2\.[01])\.([0-9]+)(-beta[0-9]+)?")
ALLOC_FIX_2017 = 1488931200  # 2017-03-08 00:00 UTC: commits 4e308361, d62459fc
ALLOC_2025 = 1762387200  # 2025-11-06 00:00 UTC: commit 68354f44


@dataclass(frozen=True)
class Generation:
    profile: str
    evidence: str
    confidence: str  # "high", "medium", "low"


def classify_version(text: str) -> Generation:
    """The allocator generation of a LuaJIT version string."""
    match = _VERSION.search(text.encode())
    if match is None:
        raise UsageError(f"not a LuaJIT version string: {text!r}")
    major, minor, beta = match.group(1).decode(), int(match.group(2)), match.group(3)
    shown = match.group(0).decode()
    if minor > 1_000_000:  # rolling release: seconds since the epoch of the commit
        if minor >= ALLOC_2025:
            return Generation("luajit-2025", f"version string {shown!r} (rolling, after "
                              "68354f44)", "high")
        return Generation("luajit-2.1", f"version string {shown!r} (rolling, before "
                          "68354f44)", "high")
    if major == "2.1" and beta is not None:
        number = int(beta.decode().removeprefix("-beta"))
        gen = "luajit-2.1" if number >= 3 else "luajit-2017"
        return Generation(gen, f"version string {shown!r} (beta3 was released 2017-05-01, "
                          "after the allocator fix)", "high")
    if major == "2.0":
        gen = "luajit-2.1" if minor >= 5 else "luajit-2017"
        return Generation(gen, f"version string {shown!r}", "high")
    return Generation("luajit-2.1", f"version string {shown!r}", "medium")


def detect_generation(stream: BinaryIO, size: int, *, luajit_symbols: bool,
                      needs_libluajit: bool) -> Generation | None:
    """Find the LuaJIT version string in a file (streamed); None if nothing says LuaJIT."""
    hits = bulk.find_all(stream, 0, size, b"LuaJIT 2.")
    for hit in hits:
        stream.seek(hit)
        chunk = stream.read(40)
        if _VERSION.match(chunk):
            return classify_version(chunk.decode("latin-1"))
    if luajit_symbols:
        return Generation("luajit-2.1", "LuaJIT VM symbols but no version string: assuming "
                          "the most widespread allocator", "low")
    if needs_libluajit:
        return Generation("luajit-2.1", "DT_NEEDED names libluajit: the version is in that "
                          "library (inspect it)", "low")
    return None


# Profiles of other runtimes live in their own modules and add themselves to PROFILES
# (imported last: they build on the names above).
from layoutkit.window import v8 as _v8  # noqa: E402,F401
