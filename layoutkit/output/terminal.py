"""The terminal view of a JIT window: one line of ASCII cells, linear.

One cell = ``window.size / width`` bytes: each cell shows what holds the most bytes in
it, and an occupant too small to win any cell takes the cell holding its middle (the
anchor's occupant first, then the larger ones), so that nothing in the window
disappears. Pure and deterministic, like the SVG.
"""

from __future__ import annotations

from collections.abc import Sequence

from layoutkit.core.spans import Span
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


def _union_overlap(spans: Sequence[Span], cell: Span) -> int:
    total, cursor = 0, cell.start
    for span in sorted(spans):
        lo, hi = max(span.start, cursor), min(span.end, cell.end)
        if hi > lo:
            total += hi - lo
            cursor = hi
    return total


def _bar(acc: Accounting, width: int, anchor: Span, jit_areas: Sequence[Span]) -> list[str]:
    window = acc.jit.window
    cells = _cells(window, width)
    occupied = [o.span for o in acc.occupants]
    bar: list[str] = []
    for whole in cells:
        # A window narrower than ``width`` bytes has empty cells: look at one byte.
        cell = Span(whole.start, whole.start + 1) if whole.empty else whole
        votes: dict[str, int] = {}
        # Priority among equals: JIT areas, occupants (in address order), free, unusable.
        order: list[str] = []
        jit_bytes = sum(a.overlap(cell) for a in jit_areas)
        if jit_bytes:
            votes["J"] = jit_bytes
            order.append("J")
        for occ in acc.occupants:
            n = occ.span.overlap(cell)
            if n:
                sym = symbol(occ.kind)
                votes[sym] = votes.get(sym, 0) + n
                if sym not in order:
                    order.append(sym)
        free = sum(run.overlap(cell) for run in acc.free)
        if free:
            votes[FREE_SYMBOL] = free
            order.append(FREE_SYMBOL)
        rest = cell.size - _union_overlap([*occupied, *jit_areas, *acc.free], cell)
        if rest > 0:
            votes[UNUSABLE_SYMBOL] = rest
            order.append(UNUSABLE_SYMBOL)
        if not votes:
            bar.append(UNUSABLE_SYMBOL)
            continue
        bar.append(max(order, key=lambda sym: (votes[sym], -order.index(sym))))
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
