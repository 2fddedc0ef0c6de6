"""The two boundaries: what a reader did not foresee is bad input (exit 3), what the
rest of layoutkit did not foresee is an internal error (exit 5).

These two context managers are the only places that catch every exception.

Every reader validates what it reads (header fields, offsets, sizes, addresses) and
raises :class:`~layoutkit.errors.InputError` naming the field, its value and the limit
it breaks. :func:`reading` wraps each entry point that reads input (ELF files, maps
listings, Debian packages, config files), so that the next parser bug nobody has met
yet still ends in one line naming the input, exit 3, instead of a traceback. The
failure keeps its cause (``__cause__``) for ``--debug``, and the fuzz harnesses in
``tests/fuzz/`` count every :class:`~layoutkit.errors.UnforeseenInputError` as a crash: the
boundary is a safety net, never the way an input is refused.
"""

from __future__ import annotations

import os
import sysconfig
import traceback
from collections.abc import Iterator
from contextlib import contextmanager

from layoutkit.errors import InputError, InternalError, LayoutkitError, UnforeseenInputError

REPORT_HINT = "please report it with the command line (--debug shows the traceback)"
UNFORESEEN = "is damaged in a way layoutkit does not recognise"


def _where(error: BaseException) -> str:
    """``file.py:LINE`` of the innermost frame outside Python's own library and the
    installed third-party packages (unless layoutkit itself is installed there)."""
    frames = traceback.extract_tb(error.__traceback__)
    if not frames:
        return "an unknown place"
    package = os.path.dirname(os.path.abspath(__file__))
    library = tuple(os.path.abspath(p) for p in {sysconfig.get_path("stdlib"),
                                                  sysconfig.get_path("purelib"),
                                                  sysconfig.get_path("platlib")} if p)
    ours = [f for f in frames if os.path.abspath(f.filename).startswith(package)
            or not os.path.abspath(f.filename).startswith(library)]
    frame = (ours or frames)[-1]
    return f"{os.path.basename(frame.filename)}:{frame.lineno}"


@contextmanager
def reading(what: str, path: str | None) -> Iterator[None]:
    """Run a reader of ``what`` (e.g. "ELF file") on ``path`` behind the boundary."""
    try:
        yield
    except LayoutkitError:
        raise
    except MemoryError:
        raise InputError(f"{what} needs more memory than this process may use: a size "
                         "field in it is absurd", path=path) from None
    except RecursionError as e:
        raise InputError(f"{what} nests too deeply to be read", path=path) from e
    except Exception as e:  # the one input boundary (see the module docstring)
        raise UnforeseenInputError(
            f"{what} {UNFORESEEN} (reader stopped at "
            f"{_where(e)}); please report it with the file", path=path) from e


@contextmanager
def internal(what: str) -> Iterator[None]:
    """Run ``what`` (a command, or judging one file); an exception that is not a
    :class:`LayoutkitError` is a bug in layoutkit: :class:`InternalError`, exit 5.
    A closed output pipe passes through (the CLI ends quietly on it)."""
    try:
        yield
    except (LayoutkitError, BrokenPipeError):
        raise
    except MemoryError:
        raise InternalError(f"{what} ran out of memory; {REPORT_HINT}") from None
    except Exception as e:  # the internal boundary (see the module docstring)
        raise InternalError(f"internal error in {what} ({type(e).__name__} at "
                            f"{_where(e)}); {REPORT_HINT}") from e
