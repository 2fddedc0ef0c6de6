"""V8's regions in a live process: the embedded builtins, their remapped copy, the code range.

``CodeRange::RemapEmbeddedBuiltins`` (V8 src/heap/code-range.cc) maps the builtins of a
far code range *from the binary's own file* (``OS::RemapPages``) at
``min(R, size) - RoundUp(blob, 256 KiB)`` from the range's start: in /proc/PID/maps an
r-x mapping of the executable (or libnode) whose file offset is the blob's, outside the
object's own image. Its place gives the code range back. Without it (the range within
reach, or short builtin calls off: a heap limit under 2 GiB) the range is found as
reserved: ``CodeRange::InitReservation`` maps the whole range PROT_NONE (``---p``) and
V8 commits pages of it as it needs them, so the listing shows a run of contiguous
anonymous mappings exactly the code range's size, starting on V8's 256 KiB page
(``OS::Allocate`` trims the reservation to that alignment), holding the JIT's
executable pages. Node 20.20.2 here (``--trace-code-range-allocation`` beside its own
/proc/self/maps, tests/window/test_v8_native.py): ``rw-p`` 8 KiB, ``---p`` 4 KiB,
``rwxp`` 240 KiB, then ``---p`` to the range's end.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass

from layoutkit.core.arches import Arch
from layoutkit.core.kinds import CodeRangeSource, CodeRangeVerdict
from layoutkit.core.model import Perm
from layoutkit.core.spans import Span, align_up
from layoutkit.core.text import shown
from layoutkit.core.units import format_size
from layoutkit.errors import MapsError
from layoutkit.read.maps import Mapping, MappingKind, ProcessMaps
from layoutkit.window.v8 import V8_PAGE, V8Build, radius, short_call_region


@dataclass(frozen=True)
class V8Regions:
    """What a process's maps say about its V8 (run-time addresses)."""

    holder: str
    blob: Span  # the embedded builtins where the holder has them
    region: Span  # GetShortBuiltinsCallRegion
    copy: Mapping | None  # the remapped builtins
    code_range: Span | None  # given back by the copy, or found as reserved
    build: V8Build | None = None
    size: int = 0  # the code range's size looked for
    how: CodeRangeSource | None = None  # how code_range was found

    @property
    def verdict(self) -> CodeRangeVerdict:
        if self.code_range is None:
            return CodeRangeVerdict.UNKNOWN
        near = self.copy is None and self.region.contains(self.code_range)
        return CodeRangeVerdict.NEAR if near else CodeRangeVerdict.FAR

    @property
    def cost(self) -> str:
        if self.copy is not None:
            return ("the builtins are remapped into the code range (a copy of the embedded "
                    "blob at its end)")
        if self.verdict is CodeRangeVerdict.FAR:
            return ("no remapped builtins: short builtin calls are off (--max-old-space-size"
                    " under 2048, --no-short-builtin-calls); generated code calls the "
                    "builtins through a register")
        return "none: generated code calls the builtins directly"

    def notes(self) -> tuple[str, ...]:
        head = (f"v8: embedded builtins [{self.blob.start:#x}, {self.blob.end:#x}) in "
                f"{self.holder}; short-call window [{self.region.start:#x}, "
                f"{self.region.end:#x})")
        if self.copy is None and self.code_range is None:
            return (head, f"v8: no remapped builtins and no {format_size(self.size)} code "
                          "range reservation in the maps (not reserved yet, or a "
                          "--code-range other than the process's)")
        assert self.code_range is not None
        if self.copy is None:
            where = ("within" if self.verdict is CodeRangeVerdict.NEAR else "outside")
            return (head, f"v8: code range [{self.code_range.start:#x}, "
                          f"{self.code_range.end:#x}) as reserved in the maps, {where} the "
                          f"window; {self.cost}")
        distance = self.code_range.start - self.blob.start
        return (head,
                f"v8: remapped builtins at [{self.copy.start:#x}, {self.copy.end:#x}) "
                f"(file offset {self.copy.offset:#x}): the code range [{self.code_range.start:#x}, "
                f"{self.code_range.end:#x}) lies {format_size(abs(distance))} "
                f"{'above' if distance > 0 else 'below'} the builtins, outside the window: "
                "V8 copied its builtins next to it")


def blob_file_offset(segments: tuple[tuple[int, int, int], ...], blob: Span) -> int | None:
    """The file offset of link-time ``blob`` from (vaddr, offset, filesz) of each PT_LOAD."""
    for vaddr, offset, filesz in segments:
        if vaddr <= blob.start < vaddr + filesz:
            return offset + blob.start - vaddr
    return None


def find_v8_regions(maps: ProcessMaps, arch: Arch, holder: str, bias: int, build: V8Build,
                    file_offset: int, size: int) -> V8Regions | None:
    """The V8 regions of the process (None without a blob: a stripped build)."""
    if build.blob is None:
        return None
    blob = build.blob.shifted(bias)
    region = short_call_region(arch, blob)
    copy = next((m for m in maps.objects().get(holder, ()) if m.executable
                 and m.offset == file_offset and m.start != blob.start), None)
    code_range, how = None, None
    if copy is not None:
        start = copy.start - (min(radius(arch), size) - align_up(build.blob.size, V8_PAGE))
        if start < 0:
            raise MapsError(
                f"{shown(holder)} is mapped r-x at {copy.start:#x} from the builtins' file "
                f"offset {copy.offset:#x}, as V8 remaps its builtins, but a code range of "
                f"{format_size(size)} holding them there would start at {start:#x}: the "
                "listing is inconsistent", path=maps.source)
        code_range, how = Span(start, start + size), CodeRangeSource.REMAPPED
    else:
        code_range = reservation(maps.mappings, size)
        how = CodeRangeSource.RESERVED if code_range is not None else None
    return V8Regions(holder, blob, region, copy, code_range, build, size, how)


def reservation(mappings: tuple[Mapping, ...], size: int) -> Span | None:
    """V8's code range as reserved: ``size`` bytes from a 256 KiB boundary, covered by
    contiguous anonymous mappings with a mapping boundary at one end (the kernel merges
    neighbours of like protection, so one end may be lost) and holding anonymous
    executable pages (V8's generated code). The lowest such range; None without one."""
    starts = [m.start for m in mappings]
    begins = set(starts)
    found: list[tuple[int, Span]] = []
    ends = {m.end for m in mappings}
    candidates = {m.start for m in mappings if m.start % V8_PAGE == 0}
    candidates |= {m.end - size for m in mappings
                   if m.end >= size and (m.end - size) % V8_PAGE == 0}
    for start in sorted(candidates):
        span = Span(start, start + size)
        i = max(0, bisect.bisect_right(starts, start) - 1)
        cursor, code = start, False
        while i < len(mappings) and cursor < span.end:
            m = mappings[i]
            if m.end <= cursor:
                i += 1
                continue
            if m.start > cursor or m.kind is not MappingKind.ANONYMOUS:
                break
            code = code or Perm.X in m.perms
            cursor = m.end
            i += 1
        if cursor >= span.end and code:
            bounded = (start in begins) + (span.end in ends)
            found.append((-bounded, span))
    return min(found, key=lambda f: (f[0], f[1].start))[1] if found else None
