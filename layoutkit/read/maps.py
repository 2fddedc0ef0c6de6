"""/proc/PID/maps text into :class:`Mapping` values.

Line format (Documentation/filesystems/proc.rst, "/proc/PID/maps"; fs/proc/task_mmu.c
show_map_vma): ``start-end perms offset major:minor inode`` then, after padding, an
optional path or pseudo-path. The path is everything after the padding and may hold
spaces; the kernel escapes a newline in it as ``\\012`` and appends `` (deleted)`` when
the file was unlinked.
"""

from __future__ import annotations

import enum
import errno
import itertools
import os
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import BinaryIO

from layoutkit.boundary import reading
from layoutkit.core.model import Perm
from layoutkit.core.spans import Span
from layoutkit.core.text import shown
from layoutkit.errors import MapsError

_READ_FAULTS = {errno.EIO: "the kernel reports an I/O error",
                errno.ESRCH: "the process exited while its maps were read",
                errno.EINVAL: "the kernel refuses to read it as a file (a special file?)"}


class MappingKind(enum.Enum):
    EXECUTABLE = "executable"  # the main program's image
    LIBRARY = "library"  # a shared object (including the dynamic loader)
    HEAP = "heap"  # [heap]: the brk area
    STACK = "stack"  # [stack] (and [stack:TID] of kernels before 4.5)
    VDSO = "vdso"  # [vdso], [vvar], [vsyscall], arm's [vectors]/[sigpage], [uprobes]
    ANONYMOUS = "anonymous"  # no path, or a named anonymous area ([anon:...])
    FILE = "file"  # any other mapped file (locale archive, data files, ...)
    DELETED = "deleted"  # a mapped file that has been unlinked


_KERNEL_AREAS = frozenset({"[vdso]", "[vvar]", "[vvar_vclock]", "[vsyscall]", "[vectors]",
                           "[sigpage]", "[uprobes]"})
# A shared object by name: "*.so", "*.so.N[.N...]" (sonames), or the loader "ld-*".
_LIBRARY = re.compile(r"(^|/)([^/]*\.so(\.[0-9]+)*|ld-[^/]*)$")
_LINE = re.compile(
    r"(?P<start>[0-9a-fA-F]{1,16})-(?P<end>[0-9a-fA-F]{1,16}) "
    r"(?P<perms>[r-][w-][x-][psPS]) "
    r"(?P<offset>[0-9a-fA-F]{1,16}) "
    r"(?P<major>[0-9a-fA-F]{1,8}):(?P<minor>[0-9a-fA-F]{1,8}) "
    r"(?P<inode>[0-9]{1,20})"
    r"(?: +(?P<path>.*))?"
)
_DELETED = " (deleted)"
# Limits, enforced while reading (memory stays bounded by them, time is linear):
# a listing has at most MAX_LINES lines, 16 times vm.max_map_count's default (65530) and
# 4 times the commonly raised 262144; a line has at most MAX_LINE bytes: a path is at
# most PATH_MAX (4096) bytes, and the kernel writes a newline in it as 4 (\\012).
MAX_LINES = 1 << 20
MAX_LINE = 4 * 4096 + 256


@dataclass(frozen=True, slots=True)
class Mapping:
    """One line of /proc/PID/maps."""

    start: int
    end: int
    perms: Perm
    shared: bool
    offset: int
    device: str  # "major:minor", as the kernel prints it
    inode: int
    path: str  # "" for anonymous memory; pseudo-paths like "[heap]" kept as is
    deleted: bool
    kind: MappingKind

    @property
    def span(self) -> Span:
        return Span(self.start, self.end)

    @property
    def size(self) -> int:
        return self.end - self.start

    @property
    def executable(self) -> bool:
        return Perm.X in self.perms

    def __str__(self) -> str:
        perms = self.perms.rwx() + ("s" if self.shared else "p")
        head = (f"{self.start:08x}-{self.end:08x} {perms} {self.offset:08x} "
                f"{self.device} {self.inode}")
        path = self.path + (_DELETED if self.deleted else "")
        return f"{head:<72} {path}" if path else head

    def __repr__(self) -> str:
        return f"Mapping({self.start:#x}-{self.end:#x} {self.perms.rwx()} {self.path!r})"


@dataclass(frozen=True)
class ProcessMaps:
    """A whole maps listing, in address order, with where it came from."""

    source: str  # "pid 1234" or a file path
    mappings: tuple[Mapping, ...]
    executable: str | None  # path of the main program, when known

    def by_kind(self, kind: MappingKind) -> tuple[Mapping, ...]:
        return tuple(m for m in self.mappings if m.kind is kind)

    def objects(self) -> dict[str, tuple[Mapping, ...]]:
        """File-backed mappings grouped by path, in address order of first appearance."""
        grouped: dict[str, list[Mapping]] = {}
        for m in self.mappings:
            if m.path and not m.path.startswith("["):
                grouped.setdefault(m.path, []).append(m)
        return {path: tuple(ms) for path, ms in grouped.items()}


def _classify(path: str, deleted: bool, inode: int, executable: str | None) -> MappingKind:
    if not path or path.startswith(("[anon:", "[anon_shmem:")):
        return MappingKind.ANONYMOUS
    if path == "[heap]":
        return MappingKind.HEAP
    if path == "[stack]" or path.startswith("[stack:"):
        return MappingKind.STACK
    if path in _KERNEL_AREAS:
        return MappingKind.VDSO
    if path.startswith("["):
        return MappingKind.ANONYMOUS
    if deleted:
        return MappingKind.DELETED
    if executable is not None and path == executable:
        return MappingKind.EXECUTABLE
    if _LIBRARY.search(path):
        return MappingKind.LIBRARY
    return MappingKind.FILE


def _guess_executable(rows: list[tuple[str, bool, int]]) -> str | None:
    """The main program's path in a saved listing (no /proc/PID/exe to ask).

    The kernel maps the program before anything else and puts the brk heap right after
    it, so: the file mapped just before [heap]; else the first file-backed path that
    does not look like a shared object; else None.
    """
    last_file = None
    for path, _deleted, _inode in rows:
        if path == "[heap]" and last_file is not None:
            return last_file
        if path and not path.startswith("["):
            last_file = path
    for path, deleted, _inode in rows:
        if path and not path.startswith("[") and not deleted and not _LIBRARY.search(path):
            return path
    return None


def parse_maps(text: str, *, source: str = "maps", executable: str | None = None) -> ProcessMaps:
    """Parse a maps listing. Errors name ``source`` and the 1-based line number."""
    # Split on "\n" only: the kernel escapes a newline in a path as \012, but any other
    # control character (\r, \f, \x1c, U+2028, ...) appears as it is.
    return _parse(text.split("\n"), source, executable)


def _parse(lines: Iterable[str], source: str, executable: str | None) -> ProcessMaps:
    parsed: list[tuple[int, int, str, int, str, int, str, bool]] = []
    strings: dict[str, str] = {}
    last_start = last_end = -1
    for number, line in enumerate(lines, start=1):
        if number > MAX_LINES:
            raise MapsError(f"more than {MAX_LINES} lines: not a maps listing (a process has "
                            "at most vm.max_map_count mappings)", path=source)
        if not line.strip():
            continue
        match = _LINE.fullmatch(line)
        if match is None:
            raise MapsError(f"not a maps line: {shown(repr(line), 62)}", path=source,
                            line=number)
        start, end = int(match["start"], 16), int(match["end"], 16)
        if start >= end:
            raise MapsError(f"empty or inverted span {start:#x}-{end:#x}", path=source,
                            line=number)
        if start < last_end:
            what = "overlaps" if start >= last_start else "is below"
            raise MapsError(
                f"{start:#x}-{end:#x} {what} the previous mapping "
                f"(the kernel lists mappings sorted and disjoint)", path=source, line=number)
        last_start, last_end = start, end
        # The path keeps its trailing blanks; a "path" of blanks only is the padding
        # the kernel (and qemu-user) print after an anonymous mapping.
        path = match["path"] or ""
        if not path.strip(" "):
            path = ""
        deleted = path.endswith(_DELETED)
        if deleted:
            path = path[: -len(_DELETED)]
        device = f"{match['major']}:{match['minor']}"
        # One string per distinct path and device: a listing repeats them many times.
        path = strings.setdefault(path, path)
        device = strings.setdefault(device, device)
        parsed.append((start, end, match["perms"], int(match["offset"], 16), device,
                       int(match["inode"]), path, deleted))
    if not parsed:
        raise MapsError("no mappings in the listing", path=source)
    if executable is None:
        executable = _guess_executable([(p[6], p[7], p[5]) for p in parsed])
    perms_of = {text: Perm.from_rwx(text) for text in {p[2] for p in parsed}}
    mappings = tuple(
        Mapping(
            start=start,
            end=end,
            perms=perms_of[perms],
            shared=perms[3] in "sS",
            offset=offset,
            device=device,
            inode=inode,
            path=path,
            deleted=deleted,
            kind=_classify(path, deleted, inode, executable),
        )
        for start, end, perms, offset, device, inode, path, deleted in parsed
    )
    return ProcessMaps(source=source, mappings=mappings, executable=executable)


def _lines(stream: BinaryIO, source: str) -> Iterator[str]:
    """The lines of a listing, read one at a time: a line longer than MAX_LINE or a NUL
    byte is refused where it starts, before the rest is read."""
    for number in itertools.count(1):
        try:
            raw = stream.readline(MAX_LINE + 1)
        except OSError as e:
            why = _READ_FAULTS.get(e.errno or 0, "the kernel refuses to read it")
            raise MapsError(f"cannot read: {why}", path=source, line=number) from None
        if not raw:
            return
        if len(raw) > MAX_LINE:
            raise MapsError(f"line longer than {MAX_LINE} bytes: not a maps line (a path is "
                            "at most PATH_MAX, 4096 bytes)", path=source, line=number)
        if b"\0" in raw:
            raise MapsError("binary data (NUL bytes): not a maps listing", path=source,
                            line=number)
        yield raw.decode("utf-8", "surrogateescape").removesuffix("\n")


def _open(path: str, source: str) -> BinaryIO:
    try:
        return open(path, "rb")
    except FileNotFoundError:
        raise MapsError("no such process" if source.startswith("pid ") else "no such file",
                        path=source) from None
    except IsADirectoryError:
        raise MapsError("is a directory, not a maps file", path=source) from None
    except PermissionError:
        raise MapsError("permission denied" + (
            ": the process belongs to another user (run as that user, or as root)"
            if source.startswith("pid ") else ""), path=source) from None
    except OSError as e:
        why = _READ_FAULTS.get(e.errno or 0, "the kernel refuses to open it")
        raise MapsError(f"cannot open: {why}", path=source) from None


def read_maps_file(path: str) -> ProcessMaps:
    """Parse a saved maps listing, streamed (see :data:`MAX_LINES`, :data:`MAX_LINE`)."""
    # stat before open: opening a FIFO could block forever.
    if os.path.exists(path) and not os.path.isdir(path) and not os.path.isfile(path):
        raise MapsError("not a regular file", path=path)
    with _open(path, path) as stream, reading("maps listing", path):
        return _parse(_lines(stream, path), path, None)


def read_process_maps(pid: int) -> ProcessMaps:
    """Read ``/proc/PID/maps`` of a live process (same user, or root)."""
    source = f"pid {pid}"
    if pid <= 0:
        raise MapsError("not a process id", path=source)
    base = f"/proc/{pid}"
    try:
        executable: str | None = os.readlink(f"{base}/exe")
    except OSError:
        executable = None
    if executable and executable.endswith(_DELETED):
        executable = executable[: -len(_DELETED)]
    with _open(f"{base}/maps", source) as stream, reading("maps listing", source):
        lines = list(_lines(stream, source))
        if not lines:
            # A zombie or a process that exited after open() reads as empty.
            raise MapsError("the process has no user address space (a kernel thread, a "
                            "zombie, or it exited)", path=source)
        return _parse(lines, source, executable)
