"""How the process writes its output: a reader that leaves early ends it quietly.

``layoutkit ... | head`` closes the pipe after a few lines; a plain write would then
raise BrokenPipeError and the command would end with an error of its own (exit 1, which
a CI job reads as "a check failed"). :func:`install` rebuilds stdout over a writer that
drops the rest of the output once its reader has gone, so the command finishes its work
and ends with that work's exit code. Characters the locale cannot encode (and bytes that
are not UTF-8, kept as surrogates) are written as backslash escapes on stdout and
stderr, so no output fails whatever the locale; :mod:`layoutkit.core.text` has already
escaped paths and names by then.
"""

from __future__ import annotations

import io
import os
import sys
from typing import Any


class _PipeWriter(io.RawIOBase):
    """A file descriptor for output; once its reader has gone (EPIPE, e.g. piped into
    `head`), the rest of the output is dropped, so the command ends quietly with the exit
    code of its work rather than an error of its own."""

    def __init__(self, fd: int) -> None:
        super().__init__()
        self._fd = fd
        self.gone = False

    def writable(self) -> bool:
        return True

    def fileno(self) -> int:
        return self._fd

    def isatty(self) -> bool:
        return os.isatty(self._fd)

    def write(self, data: Any) -> int:
        size = len(memoryview(data).cast("B"))
        if self.gone:
            return size
        try:
            return os.write(self._fd, data)
        except BrokenPipeError:
            self.gone = True
            return size


def _quiet_output(stream: Any) -> Any:
    """``stream`` (stdout) rebuilt over a :class:`_PipeWriter`; undecodable bytes and
    characters the locale cannot encode are written as backslash escapes."""
    try:
        fd = stream.fileno()
    except (AttributeError, OSError, ValueError):
        return stream  # not a real file (a test harness): leave it
    stream.flush()
    return io.TextIOWrapper(io.BufferedWriter(_PipeWriter(fd)), encoding=stream.encoding,
                            errors="backslashreplace", line_buffering=True)


def install() -> None:
    """Use the quiet writer for stdout and backslash escapes on stderr (the CLI's start)."""
    sys.stdout = _quiet_output(sys.stdout)
    if isinstance(sys.stderr, io.TextIOWrapper):
        sys.stderr.reconfigure(errors="backslashreplace")
