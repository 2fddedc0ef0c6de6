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
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass

from layoutkit.core.model import Perm
from layoutkit.core.spans import Span
from layoutkit.errors import MapsError


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
MAX_LINES = 1_000_000  # far above vm.max_map_count (65530 by default)


@dataclass(frozen=True)
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
    parsed: list[tuple[int, int, str, int, str, int, str, bool]] = []
    # Split on "\n" only: the kernel escapes a newline in a path as \012, but any other
    # control character (\r, \f, \x1c, U+2028, ...) appears as it is.
    for number, line in enumerate(text.split("\n"), start=1):
        if number > MAX_LINES:
            raise MapsError(f"more than {MAX_LINES} lines: not a maps listing", path=source)
        if not line.strip():
            continue
        match = _LINE.fullmatch(line)
        if match is None:
            shown = line if len(line) <= 60 else line[:57] + "..."
            raise MapsError(f"not a maps line: {shown!r}", path=source, line=number)
        start, end = int(match["start"], 16), int(match["end"], 16)
        if start >= end:
            raise MapsError(f"empty or inverted span {start:#x}-{end:#x}", path=source,
                            line=number)
        if parsed and start < parsed[-1][1]:
            what = "overlaps" if start >= parsed[-1][0] else "is below"
            raise MapsError(
                f"{start:#x}-{end:#x} {what} the previous mapping "
                f"(the kernel lists mappings sorted and disjoint)", path=source, line=number)
        # The path keeps its trailing blanks; a "path" of blanks only is the padding
        # the kernel (and qemu-user) print after an anonymous mapping.
        path = match["path"] or ""
        if not path.strip(" "):
            path = ""
        deleted = path.endswith(_DELETED)
        if deleted:
            path = path[: -len(_DELETED)]
        device = f"{match['major']}:{match['minor']}"
        parsed.append((start, end, match["perms"], int(match["offset"], 16), device,
                       int(match["inode"]), path, deleted))
    if not parsed:
        raise MapsError("no mappings in the listing", path=source)
    if executable is None:
        executable = _guess_executable([(p[6], p[7], p[5]) for p in parsed])
    mappings = tuple(
        Mapping(
            start=start,
            end=end,
            perms=Perm.from_rwx(perms),
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


def read_maps_file(path: str) -> ProcessMaps:
    """Parse a saved maps listing."""
    # stat before open: opening a FIFO could block forever.
    if os.path.exists(path) and not os.path.isdir(path) and not os.path.isfile(path):
        raise MapsError("not a regular file", path=path)
    try:
        with open(path, "rb") as stream:
            data = stream.read(256 << 20)  # ~2.5M lines: far beyond any real listing
            if stream.read(1):
                raise MapsError("larger than 256 MiB: not a maps listing", path=path)
    except FileNotFoundError:
        raise MapsError("no such file", path=path) from None
    except IsADirectoryError:
        raise MapsError("is a directory, not a maps file", path=path) from None
    except PermissionError:
        raise MapsError("permission denied", path=path) from None
    except OSError as e:
        raise MapsError(f"cannot read: {os.strerror(e.errno or errno.EIO)}", path=path) from e
    if b"\0" in data:
        raise MapsError("binary data (NUL bytes): not a maps listing", path=path)
    return parse_maps(data.decode("utf-8", "surrogateescape"), source=path)


def read_process_maps(pid: int) -> ProcessMaps:
    """Read ``/proc/PID/maps`` of a live process (same user, or root)."""
    source = f"pid {pid}"
    if pid <= 0:
        raise MapsError("not a process id", path=source)
    base = f"/proc/{pid}"
    try:
        with open(f"{base}/maps", "rb") as stream:
            data = stream.read()
    except FileNotFoundError:
        raise MapsError("no such process", path=source) from None
    except PermissionError:
        raise MapsError("permission denied: the process belongs to another user "
                        "(run as that user, or as root)", path=source) from None
    except ProcessLookupError:
        raise MapsError("the process exited while its maps were read", path=source) from None
    except OSError as e:
        raise MapsError(f"cannot read maps: {os.strerror(e.errno or errno.EIO)}",
                        path=source) from e
    if not data:
        # A zombie or a process that exited after open() reads as empty.
        raise MapsError("the process has no user address space (a kernel thread, a zombie, "
                        "or it exited)", path=source)
    try:
        executable: str | None = os.readlink(f"{base}/exe")
    except OSError:
        executable = None
    if executable and executable.endswith(_DELETED):
        executable = executable[: -len(_DELETED)]
    return parse_maps(data.decode("utf-8", "surrogateescape"), source=source,
                      executable=executable)


def mappings_in(maps: Iterable[Mapping], span: Span) -> list[Mapping]:
    """Mappings that overlap ``span``."""
    return [m for m in maps if m.span.overlaps(span)]
