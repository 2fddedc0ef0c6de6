"""The files ``layoutkit check`` judges: directory walks and Debian packages.

Directories are walked without following symlinks (a symlink loop cannot trap the
walk; ELF files are picked by magic); Debian packages are unpacked with ``dpkg-deb -x``
into a directory the caller owns. What cannot be read becomes an :class:`Unreadable`
record with a reason in the input's terms, and the walk goes on.
"""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass

from layoutkit.boundary import reading
from layoutkit.core.text import shown

ELF_MAGIC = b"\x7fELF"
# dpkg-deb's first stderr line is shown; the rest (and any absurd length) is cut.
_MAX_TOOL_LINE = 200

# Why a path cannot be read, in the input's terms (not the C library's errno text).
_OS_REASONS = {
    errno.ENOENT: "no such file or directory",
    errno.ELOOP: "a symbolic link loop (or a link to itself)",
    errno.EACCES: "permission denied",
    errno.EPERM: "permission denied",
    errno.ENOTDIR: "a path component is not a directory",
    errno.ENAMETOOLONG: "the path is longer than the system allows (PATH_MAX)",
    errno.EIO: "the kernel reports an I/O error reading it",
    errno.EINVAL: "the kernel refuses to read it as a file (a special file?)",
}


@dataclass(frozen=True)
class Item:
    real: str  # where to read it
    shown: str  # how to report it


@dataclass(frozen=True)
class Unreadable:
    """A path the walk could not read, and why."""

    shown: str
    reason: str


def os_reason(error: OSError) -> str:
    """``error`` as a reason a person can act on."""
    code = error.errno or 0
    name = errno.errorcode.get(code)
    return _OS_REASONS.get(code, "the system refuses to read it"
                           + (f" ({name})" if name else ""))


def _is_elf(path: str) -> bool:
    with open(path, "rb") as stream:
        return stream.read(4) == ELF_MAGIC


def walk(top: str, shown_top: str | None = None) -> Iterator[Item | Unreadable]:
    """ELF files under directory ``top`` (streamed), and what cannot be read there.

    Symlinks are never followed (neither to directories nor to files: a symlinked file
    is checked where it lives), so loops are impossible; directories already seen
    (a bind mount of a parent) are skipped by device and inode as well.
    """
    seen: set[tuple[int, int]] = set()
    stack = [top]
    while stack:
        folder = stack.pop()
        try:
            info = os.stat(folder, follow_symlinks=False)
            key = (info.st_dev, info.st_ino)
            if key in seen:
                continue
            seen.add(key)
            entries = os.scandir(folder)
        except OSError as e:
            yield Unreadable(_show(folder, top, shown_top),
                             f"cannot list directory: {os_reason(e)}")
            continue
        subdirs: list[str] = []
        with entries:  # streamed: a directory of a million files is never one list
            yield from _files(entries, subdirs, top, shown_top)
        stack.extend(sorted(subdirs, reverse=True))


def _files(entries: Iterator[os.DirEntry[str]], subdirs: list[str], top: str,
           shown_top: str | None) -> Iterator[Item | Unreadable]:
    """The ELF files among one directory's ``entries``; subdirectories go to ``subdirs``."""
    for entry in entries:
        try:
            if entry.is_dir(follow_symlinks=False):
                subdirs.append(entry.path)
                continue
            if not entry.is_file(follow_symlinks=False) or not _is_elf(entry.path):
                continue
        except OSError as e:
            yield Unreadable(_show(entry.path, top, shown_top), f"cannot read: {os_reason(e)}")
            continue
        yield Item(entry.path, _show(entry.path, top, shown_top))


def _show(path: str, top: str, shown_top: str | None) -> str:
    if shown_top is None:
        return path
    return f"{shown_top}:/{os.path.relpath(path, top)}"


def is_deb(path: str) -> bool:
    return path.endswith(".deb")


def unpack_deb(path: str, into: str) -> str | None:
    """Unpack ``path`` with ``dpkg-deb -x``; the reason on failure, else None.

    dpkg-deb's messages are bytes in its locale (and may quote the package's own
    non-UTF-8 member names): decoded leniently, escaped and cut to one line.
    """
    tool = shutil.which("dpkg-deb")
    if tool is None:
        return "dpkg-deb is not installed: cannot unpack a Debian package"
    with reading("Debian package", path):
        done = subprocess.run([tool, "-x", path, into], capture_output=True, check=False)
        if done.returncode != 0:
            text = done.stderr.decode("utf-8", "surrogateescape").strip()
            lines = [line for line in text.splitlines() if line.strip()]
            why = lines[0] if lines else f"dpkg-deb exited with {done.returncode}"
            why = why.removeprefix("dpkg-deb: error: ").removeprefix("dpkg-deb: ")
            return f"not a Debian package: {shown(why, _MAX_TOOL_LINE)}"
    return None
