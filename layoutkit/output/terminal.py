"""The terminal view of a JIT window: one line of ASCII cells, linear.

One cell = ``window.size / width`` bytes: each cell shows what holds the most bytes in
it, and an occupant too small to win any cell takes the cell holding its middle (the
anchor's occupant first, then the larger ones), so that nothing in the window
disappears. Pure and deterministic, like the SVG.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence

from layoutkit.core.spans import Span, normalize
from layoutkit.output.legend import (
    FREE_SYMBOL,
    MIN_COLUMNS,
    SYMBOL_NAMES,
    UNUSABLE_SYMBOL,
    symbol,
)
from layoutkit.window.accounting import Accounting

# --- terminal view -------------------------------------------------------------------------


def _cells(window: Span, width: int) -> list[Span]:
    """``width`` cells covering ``window = [s, s + n)``: cell i is
    ``[s + ceil(n*i/width), s + ceil(n*(i+1)/width))``, so that address ``a`` lies in
    cell ``(a - s) * width // n`` (see :func:`_cell_of`)."""
    s, n = window.start, window.size
    return [Span(s - (-n * i // width), s - (-n * (i + 1) // width)) for i in range(width)]


def _union_overlap(merged: Sequence[Span], starts: Sequence[int], cell: Span) -> int:
    """Bytes of ``cell`` covered by ``merged`` (sorted, disjoint; ``starts`` their starts)."""
    total = 0
    i = max(0, bisect.bisect_right(starts, cell.start) - 1)
    while i < len(merged) and merged[i].start < cell.end:
        total += merged[i].overlap(cell)
        i += 1
    return total


def _bar(acc: Accounting, width: int, anchor: Span, jit_areas: Sequence[Span]) -> list[str]:
    """Linear in the occupants: each span votes only in the cells it touches."""
    window = acc.jit.window
    # A window narrower than ``width`` bytes has empty cells: look at one byte.
    cells = [Span(c.start, c.start + 1) if c.empty else c for c in _cells(window, width)]
    votes: list[dict[str, int]] = [{} for _ in cells]
    # Priority among equals: JIT areas, occupants (in address order), free, unusable.
    order: list[list[str]] = [[] for _ in cells]

    def vote(sym: str, span: Span) -> None:
        first = _cell_of(window, width, max(span.start, window.start))
        last = _cell_of(window, width, min(span.end, window.end) - 1)
        for i in range(first, last + 1):
            n = span.overlap(cells[i])
            if n:
                votes[i][sym] = votes[i].get(sym, 0) + n
                if sym not in order[i]:
                    order[i].append(sym)

    for area in jit_areas:
        vote("J", area)
    for occ in acc.occupants:
        vote(symbol(occ.kind), occ.span)
    for run in acc.free:
        vote(FREE_SYMBOL, run)
    merged = normalize([*(o.span for o in acc.occupants), *jit_areas, *acc.free])
    starts = [m.start for m in merged]
    bar: list[str] = []
    for i, cell in enumerate(cells):
        rest = cell.size - _union_overlap(merged, starts, cell)
        if rest > 0:
            votes[i][UNUSABLE_SYMBOL] = rest
            order[i].append(UNUSABLE_SYMBOL)
        if not votes[i]:
            bar.append(UNUSABLE_SYMBOL)
            continue
        v, o = votes[i], order[i]
        bar.append(max(o, key=lambda sym: (v[sym], -o.index(sym))))
    # Occupants too small to win a cell take the cell holding their middle.
    forced: set[int] = set()
    ranked = sorted(acc.occupants, key=lambda o: (anchor.start not in o.span, -o.span.size,
                                                  o.span.start))
    for occ in ranked:
        part = occ.span.intersect(window)
        if part is None:
            continue
        sym = symbol(occ.kind)
        first = _cell_of(window, width, part.start)
        last = _cell_of(window, width, part.end - 1)
        if any(bar[i] == sym for i in range(first, last + 1)):
            continue
        mid = _cell_of(window, width, part.start + part.size // 2)
        if mid not in forced:
            bar[mid] = sym
            forced.add(mid)
    return bar


def _cell_of(window: Span, width: int, address: int) -> int:
    """The cell holding ``address`` (clamped to the bar)."""
    if window.size == 0:
        return 0
    i = (address - window.start) * width // window.size
    return min(max(i, 0), width - 1)


def terminal_view(acc: Accounting, anchor: Span, *, width: int = 72,
                  jit_areas: Sequence[Span] = ()) -> list[str]:
    """A compact ASCII picture of ``acc``: the bar, the anchor marker, the window's
    start and end addresses, and a legend (wrapped to ``width``).

    Address ``a`` of the window ``[s, s + n)`` falls in cell ``(a - s) * width // n``;
    each cell shows the symbol with the most bytes in it (among equals: JIT areas, then
    occupants, then free, then unusable). An occupant that wins no cell takes the cell
    holding its middle, unless another such occupant took it first (the anchor's
    occupant first, then larger ones). ``-`` is any byte neither occupied nor free:
    outside the usable span (or user space), or too little for a whole slot. The anchor
    line puts ``^`` under the anchor's cell (``<``/``>`` when it is outside the window).
    ``width`` is at least :data:`MIN_COLUMNS`; every line fits in it.
    """
    if width < MIN_COLUMNS:
        raise ValueError(f"width must be at least {MIN_COLUMNS}, not {width}")
    window = acc.jit.window
    bar = _bar(acc, width, anchor, jit_areas)
    text = f"anchor {anchor.start:#x}"
    if anchor.start < window.start:
        marker = "< " + text
    elif anchor.start >= window.end:
        marker = (text + " >").rjust(width)
    else:
        i = _cell_of(window, width, anchor.start)
        if i + 2 + len(text) <= width:
            marker = " " * i + "^ " + text
        elif i - 1 - len(text) >= 0:
            marker = " " * (i - 1 - len(text)) + text + " ^"
        else:
            marker = " " * i + "^"
    lo, hi = f"{window.start:#x}", f"{window.end:#x}"
    addresses = lo + " " * max(1, width - len(lo) - len(hi)) + hi
    present = set(bar)
    entries = [f"{sym} {name}" for sym, name in SYMBOL_NAMES.items() if sym in present]
    legend: list[str] = []
    for entry in entries:
        if legend and len(legend[-1]) + 2 + len(entry) <= width:
            legend[-1] += "  " + entry
        else:
            legend.append(entry)
    return ["".join(bar), marker, addresses, *legend]
