"""PHP's opcache JIT (``php-opcache``): where the shared segment goes, and whether the JIT
then calls PHP directly.

opcache maps one shared anonymous segment of ``opcache.memory_consumption`` +
``opcache.jit_buffer_size`` bytes (``zend_shared_alloc_startup``); the JIT buffer is its
top ``jit_buffer_size`` bytes, made r-x, so a process shows a ``/dev/zero (deleted)`` pair,
rw-s then r-xs. On Linux x86-64 and AArch64 ``create_segments`` first asks
``find_prefered_mmap_base()`` (php-src ext/opcache/shared_alloc_mmap.c, read at commit
4e2c6b6f4a6e91e1d9a6a9673bff99557f462509) for an address near PHP's text and maps there
(MAP_FIXED; MAP_HUGETLB first). That function walks /proc/self/maps in address order
with ``last_free_addr`` (the end of the previous mapping rounded up to 2 MiB):

- a mapping at or below ``execute_ex``: if the gap before it holds the segment, the
  candidate is the highest 2 MiB-aligned start that ends at or below the mapping; at the
  mapping holding ``execute_ex`` the candidate is kept when ``text end - candidate`` is
  below UINT32_MAX (4 GiB), else dropped;
- a mapping above: stop when ``last_free_addr + size - text start`` exceeds 4 GiB, else
  take ``last_free_addr`` when the gap before the mapping holds the segment;
- ``[heap]`` is kept 2 MiB clear on both sides (php-src #14793, fixing the RSS growth of
  #13775): when the gap before it is too small ``last_free_addr`` skips to 2 MiB past it.

With no candidate the segment goes where mmap puts it (x86-64 with a 2 MiB multiple:
MAP_32BIT, the low 2 GiB), and the JIT calls PHP through a register: 2-3% slower (php-src
#8618, #8890). Debian's 8.2.36 asks for a hint only when ``jit_buffer_size`` is not 0
(measured: with 0 the segment went to MAP_32BIT's 0x40860000). On AArch64 PHP 8.2
refuses a JIT buffer over 128 MiB (php-src #12582: B/BL reach).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace

from layoutkit.core.arches import Arch, Isa
from layoutkit.core.model import Perm
from layoutkit.core.scenario import OpcacheSize, Scenario
from layoutkit.core.spans import Span, align_down, align_up, normalize
from layoutkit.core.units import format_size
from layoutkit.elf import ElfReader
from layoutkit.errors import UsageError
from layoutkit.ranges import default_form
from layoutkit.read import bulk
from layoutkit.read.maps import Mapping
from layoutkit.window.kernel import PAGE
from layoutkit.window.profiles import Generation

PROFILE = "php-opcache"
MiB = 1 << 20
HUGE = 2 * MiB  # huge_page_size in find_prefered_mmap_base
UINT32_MAX = (1 << 32) - 1
AARCH64_JIT_MAX = 128 * MiB  # php-src #12582


@dataclass(frozen=True)
class Region:
    """One line of a maps listing as find_prefered_mmap_base sees it."""

    span: Span
    heap: bool = False


def preferred_base(regions: Iterable[Region], execute_ex: int, size: int) -> int | None:
    """find_prefered_mmap_base() over ``regions`` (in address order): the start it
    returns for a ``size``-byte segment, or None (MAP_FAILED)."""
    last_free = 0
    candidate: int | None = None
    text_start = 0
    for region in regions:
        start, end = region.span.start, region.span.end
        if region.heap and last_free + size >= align_down(start, HUGE):
            last_free = align_up(end + HUGE, HUGE)
            continue
        if execute_ex >= start:
            if last_free + size <= start:
                candidate = align_up(start - size, HUGE)
                if candidate + size > start:
                    candidate -= HUGE
            if execute_ex < end:
                if candidate is not None:
                    if end - candidate < UINT32_MAX:
                        return candidate
                    candidate = None
                text_start = start
        else:
            if last_free + size - text_start > UINT32_MAX:
                return candidate
            if last_free + size <= start:
                return last_free
        last_free = align_up(end, HUGE) + (HUGE if region.heap else 0)
    return candidate


@dataclass(frozen=True)
class Placement:
    """Where the segment goes and what it costs."""

    size: OpcacheSize
    text: Span  # PHP's executable mapping (run-time)
    image_start: int  # the first byte of PHP's image (run-time)
    segment: Span | None  # None: wherever mmap puts it (no hint)
    how: str
    direct: bool  # the JIT's direct calls reach the whole text
    refused: bool  # the JIT buffer is refused outright (AArch64 over 128 MiB)
    cost: str

    @property
    def jit_buffer(self) -> Span | None:
        if self.segment is None or not self.size.jit_on:
            return None
        return Span(self.segment.end - self.size.jit_buffer, self.segment.end)

    @property
    def offset(self) -> int | None:
        """How far below the image's first byte the segment starts (negative: above)."""
        return None if self.segment is None else self.image_start - self.segment.start


def reaches(arch: Arch, code: Span, text: Span) -> bool:
    """Whether every byte of ``code`` reaches every byte of ``text`` with the arch's
    direct call. x86-64: PHP's JIT calls directly when the target is within rel32 of
    both ends of its buffer (zend_jit_x86.dasc MAY_USE_32BIT_ADDR, from php-src #9579:
    ``IS_SIGNED_32BIT(addr - dasm_buf) && IS_SIGNED_32BIT(addr - dasm_end)``), else it
    loads the address into a register. AArch64: the same rule with B/BL's +-128 MiB is
    assumed (zend_jit_arm64.dasc, arm64_may_use_b; not read here)."""
    form = default_form(arch)
    far_up = text.end - 1 - code.start
    far_down = text.start - (code.end - 1)
    return form.disp_min <= far_down and far_up <= form.disp_max


def far_cost(arch: Arch, code: Span, text: Span) -> str:
    """What a buffer at ``code`` costs when it does not reach all of ``text``: the share of
    the text its direct calls miss (those calls go through a register)."""
    form = default_form(arch)
    lo, hi = max(text.start, code.end - 1 + form.disp_min), min(text.end,
                                                                 code.start + form.disp_max + 1)
    missed = text.size - max(0, hi - lo)
    return (f"the JIT calls {100 * missed / text.size:.0f}% of PHP's text ({missed:#x} "
            "bytes) through a register: 2-3% slower (php-src #8618)")


def judge(arch: Arch, size: OpcacheSize, regions: Sequence[Region], execute_ex: int,
          text: Span, image_start: int) -> Placement:
    """The placement find_prefered_mmap_base gives for ``regions`` and its cost."""
    refused = arch.isa is Isa.ARM64 and size.jit_buffer > AARCH64_JIT_MAX
    if not size.jit_on:
        return Placement(size, text, image_start, None, "no hint: Debian's 8.2 hints only "
                         "for a JIT buffer (jit_buffer_size 0: the JIT is off)", True, False,
                         "none: the JIT is off")
    base = preferred_base(regions, execute_ex, size.total)
    if base is None:
        cost = ("the JIT calls PHP through a register: 2-3% slower (php-src #8618)"
                if not refused else "the JIT buffer is refused (over 128 MiB on AArch64)")
        return Placement(size, text, image_start, None, "no gap within 4 GiB of the text: wherever "
                         "mmap puts it (x86-64: MAP_32BIT, the low 2 GiB)", False, refused,
                         cost)
    segment = Span(base, base + size.total)
    where = "below" if segment.end <= text.start else "above"
    how = f"2 MiB-aligned, {where} PHP's text (find_prefered_mmap_base)"
    direct = reaches(arch, Span(segment.end - size.jit_buffer, segment.end), text)
    if refused:
        cost = "the JIT buffer is refused (over 128 MiB on AArch64): keep it at 128M or less"
    elif direct:
        cost = "none: the JIT calls PHP directly"
    else:
        cost = far_cost(arch, Span(segment.end - size.jit_buffer, segment.end), text)
    return Placement(size, text, image_start, segment, how, direct, refused, cost)


# --- detection ------------------------------------------------------------------------

_PHP_VERSION = re.compile(rb"PHP/([0-9]+\.[0-9]+\.[0-9]+)")
_ZEND_API = re.compile(rb"API4?[0-9]{8},(?:NTS|TS)")


def _find(reader: ElfReader, needle: bytes, pattern: re.Pattern[bytes]) -> str | None:
    stream = reader.raw_stream()
    for hit in bulk.find_all(stream, 0, reader.image().file_size, needle):
        stream.seek(hit)
        match = pattern.match(stream.read(32))
        if match:
            return match.group(0).decode()
    return None


def php_generation(reader: ElfReader) -> Generation | None:
    """``php-opcache`` for a PHP binary (it defines ``execute_ex``, the VM's executor,
    which find_prefered_mmap_base locates the text by) or for opcache.so (it exports
    ``zend_extension_entry`` and carries the Zend extension API string); None otherwise."""
    executor = reader.symbol("execute_ex")
    if executor is not None and executor.type == "FUNC":
        version = _find(reader, b"PHP/", _PHP_VERSION)
        said = f"; version string {version!r}" if version else ""
        return Generation(PROFILE, f"PHP: defines execute_ex ({executor.binding} "
                          f"{executor.type} in {executor.table}){said}", "high")
    if reader.symbol("zend_extension_entry") is not None:
        api = _find(reader, b"API4", _ZEND_API)
        if api is not None:
            return Generation(PROFILE, f"opcache.so: exports zend_extension_entry, Zend "
                              f"extension API {api!r}; the JIT calls PHP's own text: "
                              "inspect the php binary for its window", "high")
    return None


# --- a binary (inspect) and a live process (maps) -------------------------------------


def text_of(reader: ElfReader, bias: int) -> tuple[int, Span] | None:
    """(run-time execute_ex, the run-time span of the PT_LOAD holding it), or None."""
    executor = reader.symbol("execute_ex")
    if executor is None:
        return None
    for seg in reader.image().loads:
        if executor.value in seg.span:
            page = seg.page_span(PAGE)
            return executor.value + bias, Span(page.start + bias, page.end + bias)
    return None


def predict(reader: ElfReader, profile: str, bias: int, size: OpcacheSize,
            heap_start: int | None) -> Placement | None:
    """For ``php-opcache`` on a PHP binary: the placement find_prefered_mmap_base gives
    at load bias ``bias``, from the image's own pages and the start of the brk heap
    (what /proc/self/maps holds near the text when opcache starts; the shared libraries
    lie far above a PIE and do not decide). None for another profile or no PHP."""
    if profile != PROFILE:
        return None
    found = text_of(reader, bias)
    if found is None:
        return None
    image = reader.image()
    spans = normalize(Span(seg.page_span(PAGE).start + bias, seg.page_span(PAGE).end + bias)
                      for seg in image.loads if seg.memsz)
    regions = [Region(s) for s in spans]
    if heap_start is not None:
        regions.append(Region(Span(heap_start, heap_start + PAGE), heap=True))
    regions.sort(key=lambda r: r.span.start)
    execute_ex, text = found
    return judge(image.arch, size, regions, execute_ex, text, spans[0].start)


def opcache_pair(mappings: Sequence[Mapping]) -> tuple[Mapping, Mapping | None] | None:
    """The opcache segment in a listing: a shared ``/dev/zero (deleted)`` rw-s mapping
    and, with the JIT on, the r-xs mapping of the same object right after it."""
    for i, m in enumerate(mappings):
        if m.path == "/dev/zero" and m.deleted and m.shared and Perm.W in m.perms:
            after = mappings[i + 1] if i + 1 < len(mappings) else None
            if after is not None and after.inode == m.inode and after.start == m.end and \
                    after.executable:
                return m, after
            return m, None
    return None


def in_process(arch: Arch, mappings: Sequence[Mapping], text: Span,
               image_start: int) -> Placement | None:
    """The opcache segment of a running PHP, as mapped, and what its place costs."""
    pair = opcache_pair(mappings)
    if pair is None:
        return None
    data, code = pair
    size = OpcacheSize(data.size, code.size if code else 0)
    segment = Span(data.start, code.end if code else data.end)
    if code is None:
        return Placement(size, text, image_start, segment, "as mapped (no r-xs part: the "
                         "JIT is off)", True, False, "none: the JIT is off")
    direct = reaches(arch, code.span, text)
    where = ("below" if segment.end <= text.start else
             "above" if segment.start >= text.end else "around")
    within = text.end - segment.start < UINT32_MAX if where == "below" else \
        segment.end - text.start <= UINT32_MAX
    how = (f"as mapped, {where} PHP's text" + ("" if within else ", not within 4 GiB of "
                                               "it: find_prefered_mmap_base found no gap"))
    refused = arch.isa is Isa.ARM64 and size.jit_buffer > AARCH64_JIT_MAX
    cost = ("none: the JIT calls PHP directly" if direct else
            far_cost(arch, code.span, text))
    return Placement(size, text, image_start, segment, how, direct, refused, cost)


# --- settings advice ------------------------------------------------------------------


def settings_advice(arch: Arch, profile: str, size: OpcacheSize,
                    text_extent: int | None) -> list[tuple[str, ...]]:
    """Runtime advice for PHP's opcache (each entry the reasons of one recommendation):
    what ``opcache.jit_buffer_size`` keeps the JIT's calls direct. ``text_extent`` is
    how far PHP's text ends above the image's first byte (None: unknown)."""
    if profile != PROFILE:
        return []
    out: list[tuple[str, ...]] = []
    if not size.jit_on:
        out.append(("opcache.jit_buffer_size is 0 (PHP 8.2's default): the JIT is off; with "
                    "a buffer (e.g. opcache.jit_buffer_size=64M) opcache places its segment "
                    "directly below PHP's image",))
    if arch.isa is Isa.ARM64:
        out.append((f"keep opcache.jit_buffer_size at 128M or less on {arch}: PHP refuses a "
                    "larger JIT buffer there (php-src #12582)",))
    if size.jit_on and text_extent is not None:
        form = default_form(arch)
        # Below the image (offset in [total, total + 2 MiB)): the buffer's first byte must
        # reach the text's last one.
        limit = align_down(form.disp_max + 1 - text_extent - HUGE, HUGE)
        most = limit - size.memory
        if size.total > limit:
            setting = (f"opcache.jit_buffer_size={most >> 20}M or less" if most > 0 else
                       f"opcache.memory_consumption + opcache.jit_buffer_size at most "
                       f"{limit >> 20}M")
            out.append((f"{setting}: then the whole JIT buffer lies within {form.name} "
                        f"reach of PHP's text (now {size.memory >> 20}M + "
                        f"{size.jit_buffer >> 20}M: calls through a register, 2-3% slower, "
                        "php-src #8618)",
                        f"the segment lies below the image with the buffer at its top: "
                        f"memory_consumption + jit_buffer_size at most {limit >> 20}M keeps "
                        "the buffer's first byte in reach of the text's last"))
    return out


def check_fits(profile: str, size: OpcacheSize, user_space: Span) -> None:
    """Refuse an ``--opcache-size`` whose segment cannot be mapped at all: opcache maps
    it in one piece (zend_shared_alloc_startup), so it must fit in user space."""
    if profile == PROFILE and size.total > user_space.size:
        raise UsageError(f"--opcache-size {size}: the segment does not fit in the "
                         f"{format_size(user_space.size)} of user address space")


def with_demand(profile: str, scenario: Scenario) -> Scenario:
    """For ``php-opcache`` without ``--mcode``: the code that must lie in reach is the JIT
    buffer (the whole segment when the JIT is off), one of it."""
    if profile != PROFILE or scenario.demand.mcode is not None:
        return scenario
    size = scenario.opcache
    wanted = size.jit_buffer if size.jit_on else size.total
    return replace(scenario, demand=replace(scenario.demand, mcode=wanted))
