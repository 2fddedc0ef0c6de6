"""The picture's legend, shared by the SVG and the terminal view: a colour and an
ASCII symbol for every occupant kind, and sizes written for a picture."""

from __future__ import annotations

from layoutkit.core.kinds import OccupantKind
from layoutkit.core.kinds import OccupantKind as K

# --- kinds: colours, terminal symbols, legend names ---------------------------------------

# Fill colours (Tableau 10 and its light companions), one per occupant kind.
KIND_COLOURS: dict[OccupantKind, str] = {
    K.IMAGE: "#4e79a7",
    K.LIBRARY: "#76b7b2",
    K.HEAP: "#f28e2b",
    K.HEAP_RESERVE: "#ffbe7d",
    K.STACK: "#e15759",
    K.STACK_GUARD: "#ff9d9a",
    K.JIT: "#b07aa1",
    K.ANONYMOUS: "#9c755f",
    K.FILE: "#edc948",
    K.DELETED: "#d4a6c8",
    K.VDSO: "#bab0ac",
    K.MAPPED_BEFORE: "#79706e",
}
FREE_COLOUR = "#b5dfa6"
FREE_EDGE = "#59a14f"
JIT_AREA_COLOUR = "#d62790"
ANCHOR_COLOUR = "#c00000"

# Terminal symbols: one ASCII character per occupant kind.
KIND_SYMBOLS: dict[OccupantKind, str] = {
    K.IMAGE: "#",
    K.LIBRARY: "#",
    K.HEAP: "h",
    K.HEAP_RESERVE: "H",
    K.STACK: "s",
    K.STACK_GUARD: "g",
    K.JIT: "J",
    K.ANONYMOUS: "a",
    K.FILE: "f",
    K.DELETED: "d",
    K.VDSO: "v",
    K.MAPPED_BEFORE: "m",
}
FREE_SYMBOL = "."
UNUSABLE_SYMBOL = "-"
# Narrowest terminal view: two 64-bit addresses ("0x" and 16 digits) and a blank.
MIN_COLUMNS = 40
SYMBOL_NAMES: dict[str, str] = {
    FREE_SYMBOL: "free",
    "#": "image/library",
    "h": "heap",
    "H": "heap-reserve",
    "s": "stack",
    "g": "stack-guard",
    "J": "jit",
    "a": "anonymous",
    "f": "file",
    "d": "deleted",
    "v": "vdso",
    "m": "mapped-before",
    UNUSABLE_SYMBOL: "unusable",
}


def colour(kind: OccupantKind) -> str:
    """Fill colour of an occupant kind (every kind has one: a test says so)."""
    return KIND_COLOURS[kind]


def symbol(kind: OccupantKind) -> str:
    """Terminal symbol of an occupant kind."""
    return KIND_SYMBOLS[kind]


def approx_size(size: int) -> str:
    """About three significant digits in the largest binary unit that gives at least 1:
    ``1 GiB`` (for 1 GiB - 64 KiB), ``61.8 MiB``, ``3.69 MiB``, ``1000 MiB``."""
    for unit, scale in (("TiB", 1 << 40), ("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        value = size / scale
        if value >= 0.9995:
            decimals = 0 if value >= 99.95 else 1 if value >= 9.995 else 2
            text = f"{value:.{decimals}f}"
            if "." in text:
                text = text.rstrip("0").rstrip(".")
            return f"{text} {unit}"
    return f"{size} B"


def percent(share: float) -> str:
    """One decimal, never rounded to a misleading 0.0% or 100.0%."""
    text = f"{share * 100:.1f}%"
    if text == "100.0%" and share < 1:
        return ">99.9%"
    if text == "0.0%" and share > 0:
        return "<0.1%"
    return text
