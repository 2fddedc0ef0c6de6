"""Geometry of the SVG picture: the piecewise scale (to scale where it can be, broken
where one stretch would squeeze the rest) and the rows that keep labels apart."""

from __future__ import annotations

import bisect
import itertools
from collections.abc import Sequence
from dataclasses import dataclass

from layoutkit.core.spans import Span

# --- SVG geometry (pixels) -----------------------------------------------------------------

PLOT_WIDTH = 1080.0
MARGIN = 60.0
CANVAS_WIDTH = PLOT_WIDTH + 2 * MARGIN
FONT = 11
CHAR_WIDTH = 0.61 * FONT  # DejaVu Sans Mono advance is 0.602 em; a little slack
BAR_HEIGHT = 56.0
MIN_WIDTH = 6.0  # narrowest drawn stretch
BREAK_WIDTH = 110.0  # width of a broken (not to scale) stretch
READABLE = 1.0  # an item narrower than this at linear scale is "squeezed"
BREAK_SHARE = 2 / 3  # ... and a stretch holding this share of the bytes dominates
BREAK_RATIO = 16384  # a stretch this many times the smallest item is always broken
MAX_BREAKS = 6
LABEL_ROWS = 3
ROW_HEIGHT = 15.0
TICK_ROWS = 2


# --- the piecewise scale -------------------------------------------------------------------


@dataclass(frozen=True)
class Stretch:
    span: Span
    x0: float
    x1: float
    broken: bool


@dataclass(frozen=True)
class Scale:
    view: Span
    stretches: tuple[Stretch, ...]
    starts: tuple[int, ...]
    left: float
    right: float

    def x(self, address: int) -> float:
        """Pixel position of ``address`` (clamped to the view)."""
        if not self.stretches:
            return self.left
        if address <= self.view.start:
            return self.left
        if address >= self.view.end:
            return self.right
        i = bisect.bisect_right(self.starts, address) - 1
        st = self.stretches[i]
        return st.x0 + (st.x1 - st.x0) * (address - st.span.start) / st.span.size


def _fill(sizes: Sequence[int], width: float) -> tuple[float, list[float]]:
    """The linear scale and widths that give every size at least MIN_WIDTH and sum to
    ``width`` (more when MIN_WIDTH alone needs more)."""
    order = sorted(range(len(sizes)), key=lambda i: (sizes[i], i))
    remaining = sum(sizes)
    room = width
    scale = 0.0
    pinned: set[int] = set()
    for i in order:
        scale = room / remaining if remaining and room > 0 else 0.0
        if sizes[i] * scale >= MIN_WIDTH:
            break
        pinned.add(i)
        remaining -= sizes[i]
        room -= MIN_WIDTH
    else:
        scale = 0.0
    return scale, [MIN_WIDTH if i in pinned else sizes[i] * scale for i in range(len(sizes))]


def piecewise_scale(view: Span, edges: Sequence[int], items: Sequence[int]) -> Scale:
    cuts = sorted({view.start, view.end, *(e for e in edges if view.start < e < view.end)})
    spans = [Span(a, b) for a, b in itertools.pairwise(cuts) if b > a]
    sizes = [s.size for s in spans]
    smallest = min((size for size in items if size > 0), default=view.size or 1)
    broken: set[int] = set()
    for _ in range(MAX_BREAKS):
        unbroken = [i for i in range(len(spans)) if i not in broken]
        total = sum(sizes[i] for i in unbroken)
        if len(unbroken) < 2 or total == 0:
            break
        scale = (PLOT_WIDTH - BREAK_WIDTH * len(broken)) / total
        candidate = max(unbroken, key=lambda i: (sizes[i], -i))
        if sizes[candidate] * scale < 2 * BREAK_WIDTH:
            break  # drawing it broken would not save room
        extreme = sizes[candidate] >= BREAK_RATIO * smallest
        squeezed = smallest * scale < READABLE
        dominant = sizes[candidate] >= BREAK_SHARE * total
        if not (extreme or (squeezed and dominant)):
            break
        broken.add(candidate)
    unbroken = [i for i in range(len(spans)) if i not in broken]
    _, widths = _fill([sizes[i] for i in unbroken], PLOT_WIDTH - BREAK_WIDTH * len(broken))
    width_of = dict(zip(unbroken, widths, strict=True))
    stretches = []
    x = MARGIN
    for i, span in enumerate(spans):
        w = BREAK_WIDTH if i in broken else width_of[i]
        stretches.append(Stretch(span, x, x + w, i in broken))
        x += w
    return Scale(view, tuple(stretches), tuple(s.span.start for s in stretches), MARGIN,
                  max(x, MARGIN))


# --- label placement -----------------------------------------------------------------------


class Rows:
    """Rows of text stacked away from the bar (row 0 nearest), each text tied to the bar
    by a vertical line at ``x`` that crosses the rows nearer the bar. Text may not
    overlap text, nor sit on a line that crosses its row."""

    def __init__(self, count: int, pad: float = 6.0) -> None:
        self.texts: list[list[tuple[float, float]]] = [[] for _ in range(count)]
        self.lines: list[tuple[float, int]] = []  # (x, rows crossed: 0 .. n-1)
        self.pad = pad

    def block(self, x: float) -> None:
        """A line across every row (the anchor's)."""
        self.lines.append((x, len(self.texts)))

    def fits(self, row: int, lo: float, hi: float, x: float) -> bool:
        if any(lo < b + self.pad and a < hi + self.pad for a, b in self.texts[row]):
            return False
        if any(crossed > row and lo - 3 < lx < hi + 3 for lx, crossed in self.lines):
            return False
        return all(not a - 3 < x < b + 3 for r in range(row) for a, b in self.texts[r])

    def place(self, w: float, xs: Sequence[float],
              width: float) -> tuple[int, float, float] | None:
        """Take the nearest row where a text ``w`` wide fits, tied by a line at one of
        ``xs`` (best first), centred on it or beside it: (row, left edge, line x); None
        when it fits nowhere."""
        for row in range(len(self.texts)):
            for x in xs:
                for wanted in (x - w / 2, x - w - 4, x + 4):
                    left = min(max(wanted, 4.0), width - 4.0 - w)
                    if self.fits(row, left, left + w, x):
                        self.texts[row].append((left, left + w))
                        self.lines.append((x, row))
                        return row, left, x
        return None


def text_span(text: str, centre: float, width: float) -> tuple[float, float]:
    """Left and right of ``text`` centred on ``centre``, kept inside the canvas."""
    w = len(text) * CHAR_WIDTH
    lo = min(max(centre - w / 2, 4.0), width - 4.0 - w)
    return lo, lo + w
