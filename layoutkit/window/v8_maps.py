"""V8's regions in a live process: the embedded builtins, their remapped copy, the code range.

``CodeRange::RemapEmbeddedBuiltins`` (V8 src/heap/code-range.cc) maps the builtins of a
far code range *from the binary's own file* (``OS::RemapPages``) at
``min(R, size) - RoundUp(blob, 256 KiB)`` from the range's start: in /proc/PID/maps an
r-x mapping of the executable (or libnode) whose file offset is the blob's, outside the
object's own image. Its place gives the code range back; without it the code range is
near the builtins, or short builtin calls are off (a heap limit under 2 GiB).
"""

from __future__ import annotations

from dataclasses import dataclass

from layoutkit.core.arches import Arch
from layoutkit.core.spans import Span, align_up
from layoutkit.core.text import shown
from layoutkit.core.units import format_size
from layoutkit.errors import MapsError
from layoutkit.read.maps import Mapping, ProcessMaps
from layoutkit.window.v8 import V8_PAGE, V8Build, radius, short_call_region


@dataclass(frozen=True)
class V8Regions:
    """What a process's maps say about its V8 (run-time addresses)."""

    holder: str
    blob: Span  # the embedded builtins where the holder has them
    region: Span  # GetShortBuiltinsCallRegion
    copy: Mapping | None  # the remapped builtins
    code_range: Span | None  # given back by the copy: [start, start + size)

    def notes(self) -> tuple[str, ...]:
        head = (f"v8: embedded builtins [{self.blob.start:#x}, {self.blob.end:#x}) in "
                f"{self.holder}; short-call window [{self.region.start:#x}, "
                f"{self.region.end:#x})")
        if self.copy is None or self.code_range is None:
            return (head, "v8: no remapped builtins: the code range is within reach of the "
                          "builtins, or short builtin calls are off (--max-old-space-size "
                          "under 2048, --no-short-builtin-calls)")
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
    code_range = None
    if copy is not None:
        start = copy.start - (min(radius(arch), size) - align_up(build.blob.size, V8_PAGE))
        if start < 0:
            raise MapsError(
                f"{shown(holder)} is mapped r-x at {copy.start:#x} from the builtins' file "
                f"offset {copy.offset:#x}, as V8 remaps its builtins, but a code range of "
                f"{format_size(size)} holding them there would start at {start:#x}: the "
                "listing is inconsistent", path=maps.source)
        code_range = Span(start, start + size)
    return V8Regions(holder, blob, region, copy, code_range)
