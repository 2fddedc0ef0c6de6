"""Sizes and addresses as people write them, and back."""

from __future__ import annotations

import re
from fractions import Fraction

from layoutkit.core.text import shown
from layoutkit.errors import UsageError

_UNITS = {"": 1, "b": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
# No size layoutkit judges exceeds a 64-bit address space.
SIZE_LIMIT = 1 << 64
MAX_DIGITS = 64  # longer numbers are refused before any conversion (Python caps int())
_SIZE = re.compile(r"\s*(0x[0-9a-f]+|[0-9]+(?:\.[0-9]+)?)\s*([kmgt]?)(?:i?b)?\s*", re.I)


def parse_size(text: str) -> int:
    """``64K``, ``64KiB``, ``128M``, ``1.5G``, ``0x10000`` or plain bytes (binary units)."""
    match = _SIZE.fullmatch(text)
    if match is None:
        raise UsageError(f"not a size: {shown(repr(text), 60)} (try 64K, 128M, 2G or 0x10000)")
    number, unit = match.groups()
    if len(number) > MAX_DIGITS:
        raise UsageError(f"not a size: {shown(repr(text), 60)} has more than {MAX_DIGITS} "
                         "digits")
    # Exact arithmetic: a float would round 9007199254740993 and overflow on 400 digits.
    value = Fraction(int(number, 16) if number.lower().startswith("0x") else Fraction(number))
    exact = value * _UNITS[unit.lower()]
    if exact.denominator != 1:
        raise UsageError(f"not a whole number of bytes: {shown(repr(text), 60)}")
    if exact >= SIZE_LIMIT:
        raise UsageError(f"not a size: {shown(repr(text), 60)} is 16 EiB or more, beyond any "
                         "64-bit address space")
    return int(exact)


def parse_address(text: str) -> int:
    """``0x400000`` or decimal; never negative."""
    cut = shown(repr(text), 60)
    try:
        value = int(text, 0) if len(text) <= MAX_DIGITS else None
    except ValueError:
        value = None
    if value is None:
        raise UsageError(f"not an address: {cut} (write 0x400000 or 4194304)")
    if value < 0:
        raise UsageError(f"not an address: {cut} is negative")
    if value >= SIZE_LIMIT:
        raise UsageError(f"not an address: {cut} is beyond any 64-bit address space")
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
