"""The exception tree: every failure layoutkit reports is one of these.

Each class carries the process exit code the CLI uses for it (documented in the
README and in ``layoutkit --help``), and context as attributes so JSON output can
carry it.
"""

from __future__ import annotations

from layoutkit.core.text import escaped, shown

# Exit codes, shared by every command.
EXIT_OK = 0
EXIT_FINDINGS = 1  # a check failed, or no advice is possible
EXIT_USAGE = 2  # bad command line (click uses 2 as well)
EXIT_INPUT = 3  # an input could not be analysed
EXIT_PROBE = 4  # native probe unavailable or failed
EXIT_INTERNAL = 5  # a bug in layoutkit itself (not bad input): please report it


class LayoutkitError(Exception):
    """Base of every error layoutkit raises on purpose."""

    exit_code = EXIT_INPUT

    def __init__(self, message: str, *, path: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.path = path

    def __str__(self) -> str:
        """One line: the path escaped and cut (:mod:`layoutkit.core.text`), the message."""
        message = escaped(self.message)
        return f"{shown(self.path)}: {message}" if self.path else message

    def to_json(self) -> dict[str, object]:
        return {"error": type(self).__name__, "message": self.message, "path": self.path}


class InputError(LayoutkitError):
    """An input file or process could not be read or makes no sense."""


class ElfError(InputError):
    """The file is not an ELF file layoutkit can analyse (or is damaged)."""


class UnforeseenInputError(InputError):
    """A reader stopped on input it does not foresee (the input boundary's catch-all)."""


class UnsupportedArchError(ElfError):
    """The ELF machine or class is not one layoutkit has a reach table for."""


class MapsError(InputError):
    """A /proc/PID/maps text (or the process behind it) could not be read."""

    def __init__(self, message: str, *, path: str | None = None, line: int | None = None) -> None:
        super().__init__(message, path=path)
        self.line = line

    def __str__(self) -> str:
        where = shown(self.path or "maps")
        if self.line is not None:
            where = f"{where}:{self.line}"
        return f"{where}: {escaped(self.message)}"

    def to_json(self) -> dict[str, object]:
        data = super().to_json()
        data["line"] = self.line
        return data


class UsageError(LayoutkitError):
    """The request itself is malformed (an unknown arch, a bad address, ...)."""

    exit_code = EXIT_USAGE


class NoFitError(LayoutkitError):
    """No placement satisfies the constraints; the message names the one that failed."""

    exit_code = EXIT_FINDINGS


class ProbeError(LayoutkitError):
    """The native probe could not be built or run, or it failed."""

    exit_code = EXIT_PROBE


class InternalError(LayoutkitError):
    """A check of layoutkit's own logic failed: a bug to report, never bad input."""

    exit_code = EXIT_INTERNAL
