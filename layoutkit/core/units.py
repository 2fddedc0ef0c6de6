"""Sizes and addresses as people write them, and back."""

from __future__ import annotations

import re

from layoutkit.errors import UsageError

_UNITS = {"": 1, "b": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
_SIZE = re.compile(r"\s*(0x[0-9a-f]+|[0-9]+(?:\.[0-9]+)?)\s*([kmgt]?)(?:i?b)?\s*", re.I)


def parse_size(text: str) -> int:
    """``64K``, ``64KiB``, ``128M``, ``1.5G``, ``0x10000`` or plain bytes (binary units)."""
    match = _SIZE.fullmatch(text)
    if match is None:
        raise UsageError(f"not a size: {text!r} (try 64K, 128M, 2G or 0x10000)")
    number, unit = match.groups()
    value = int(number, 16) if number.lower().startswith("0x") else float(number)
    size = int(value * _UNITS[unit.lower()])
    if size != value * _UNITS[unit.lower()]:
        raise UsageError(f"not a whole number of bytes: {text!r}")
    return size


def parse_address(text: str) -> int:
    """``0x400000`` or decimal; never negative."""
    try:
        value = int(text, 0)
    except ValueError:
        raise UsageError(f"not an address: {text!r} (write 0x400000 or 4194304)") from None
    if value < 0:
        raise UsageError(f"not an address: {text!r} is negative")
    return value


def format_size(size: int) -> str:
    """Binary units, exact where the size is a whole number of them: ``124 MiB``, ``1.5 GiB``."""
    sign = "-" if size < 0 else ""
    size = abs(size)
    for unit, scale in (("TiB", 1 << 40), ("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if size >= scale:
            if size % scale == 0:
                return f"{sign}{size // scale} {unit}"
            return f"{sign}{size / scale:.1f} {unit}"
    return f"{sign}{size} B"
