"""The SVG picture of a JIT window: a standalone document, to scale, piecewise.

It draws one :class:`~layoutkit.window.accounting.Accounting`: the window around the
anchor, the usable span, every occupant by kind, the free runs, optional JIT areas and
the anchor. It is pure (text in, text out) and deterministic: the same input gives the
same bytes.

The window is cut at every edge (occupant, free run, JIT area, usable span) into
stretches, and each stretch is uniform (one thing, or nothing). A stretch that would
dominate the drawing while small items are squeezed, or that is more than
:data:`BREAK_RATIO` times the smallest item, is drawn *broken*: a fixed width with a
zig-zag cut and an "≈ size" label. Every other stretch is linear at one scale, except
that none is narrower than :data:`MIN_WIDTH` pixels, so a 16 KiB image in a 4 GiB
window stays visible.
"""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from xml.sax.saxutils import escape, quoteattr

from layoutkit.core.kinds import OccupantKind
from layoutkit.core.spans import Span
from layoutkit.core.units import format_size
from layoutkit.errors import UsageError
from layoutkit.output.geometry import (
    BAR_HEIGHT,
    CANVAS_WIDTH,
    CHAR_WIDTH,
    FONT,
    LABEL_ROWS,
    MARGIN,
    MIN_WIDTH,
    ROW_HEIGHT,
    TICK_ROWS,
    Rows,
    piecewise_scale,
    text_span,
)
from layoutkit.output.legend import (
    ANCHOR_COLOUR,
    FREE_COLOUR,
    JIT_AREA_COLOUR,
    KIND_COLOURS,
    approx_size,
    colour,
    percent,
)
from layoutkit.window.accounting import Accounting, Occupant

_XML_BAD = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")


def _clean(text: str) -> str:
    """Text safe for XML 1.0: control characters and lone surrogates (maps paths read
    with surrogateescape) become ``?``."""
    return _XML_BAD.sub("?", text)


def _t(text: str) -> str:
    return escape(_clean(text))


def _a(text: str) -> str:
    return quoteattr(_clean(text))


def _f(value: float) -> str:
    return f"{value:.1f}"



# --- SVG -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Group:
    """Touching occupants of one kind and path in one lane: one label for all."""

    kind: OccupantKind
    path: str
    span: Span  # the whole extent, unclipped
    lane: int
    count: int


def _lanes(occupants: Sequence[Occupant]) -> list[tuple[int, int]]:
    """(lane, lanes) per occupant: overlapping occupants are drawn one above another,
    each cluster of overlapping ones sharing the bar's height between its lanes."""
    placed: list[tuple[int, int]] = []  # (cluster, lane)
    cluster_lanes: list[int] = []
    ends: list[int] = []  # per lane of the current cluster: where it becomes free
    reach = -1
    for occ in occupants:
        if occ.span.start >= reach:  # a new cluster
            cluster_lanes.append(0)
            ends = []
        reach = max(reach, occ.span.end)
        lane = next((i for i, end in enumerate(ends) if end <= occ.span.start), len(ends))
        if lane == len(ends):
            ends.append(occ.span.end)
        else:
            ends[lane] = occ.span.end
        cluster_lanes[-1] = max(cluster_lanes[-1], lane + 1)
        placed.append((len(cluster_lanes) - 1, lane))
    return [(lane, cluster_lanes[cluster]) for cluster, lane in placed]


def _groups(occupants: Sequence[Occupant], lanes: Sequence[tuple[int, int]]) -> list[_Group]:
    groups: list[_Group] = []
    for occ, (lane, _) in zip(occupants, lanes, strict=True):
        last = groups[-1] if groups else None
        if (last is not None and last.kind == occ.kind and last.path == occ.path
                and last.lane == lane and last.span.end == occ.span.start):
            groups[-1] = _Group(last.kind, last.path, Span(last.span.start, occ.span.end), lane,
                                last.count + 1)
        else:
            groups.append(_Group(occ.kind, occ.path, occ.span, lane, 1))
    return groups


def _group_label(group: _Group) -> str:
    name = group.path.rsplit("/", 1)[-1] if group.path and not group.path.startswith("[") else ""
    times = f"({group.count} mappings)" if group.count > 1 else ""
    return " ".join(p for p in (group.kind.value, name, format_size(group.span.size), times) if p)


def _hatch_defs() -> str:
    return ('<defs><pattern id="lk-hatch" width="6" height="6" patternUnits="userSpaceOnUse" '
            'patternTransform="rotate(45)"><rect width="6" height="6" fill="#f4f4f4"/>'
            '<line x1="0" y1="0" x2="0" y2="6" stroke="#b0b0b0" stroke-width="2"/>'
            '</pattern></defs>')


def _zigzag(x: float, top: float, bottom: float, amp: float = 3.0, step: float = 6.0) -> str:
    points = []
    y, k = top, 0
    while y < bottom:
        points.append(f"{_f(x + (amp if k % 2 else -amp))},{_f(y)}")
        y += step
        k += 1
    points.append(f"{_f(x + (amp if k % 2 else -amp))},{_f(bottom)}")
    return " ".join(points)


def svg(acc: Accounting, anchor: Span, *, title: str, jit_areas: Sequence[Span] = ()) -> str:
    """A standalone SVG document picturing ``acc`` around ``anchor``."""
    jit = acc.jit
    view = jit.window
    clipped_jit = [a for a in (area.intersect(view) for area in jit_areas) if a is not None]
    occupants = [o for o in acc.occupants if o.span.overlaps(view)]
    edges = [jit.usable.start, jit.usable.end]
    items: list[int] = []
    for span in [*(o.span for o in occupants), *acc.free, *clipped_jit]:
        part = span.intersect(view)
        if part is not None:
            edges += [part.start, part.end]
            items.append(part.size)
    scale = piecewise_scale(view, edges, items)
    width = max(CANVAS_WIDTH, scale.right + MARGIN)
    out: list[str] = []

    # Header: title, summary, verdict, window facts.
    y = 26.0
    out.append(f'<text x="{_f(MARGIN / 3)}" y="{_f(y)}" font-size="16" font-weight="bold" '
               f'class="title">{_t(title)}</text>')
    largest = acc.largest_free
    summary = (f"free {format_size(acc.free_bytes)} in {len(acc.free)} "
               f"run{'' if len(acc.free) == 1 else 's'} · free slots {acc.free_slots} / "
               f"{acc.slots} ({percent(acc.free_share)}) · largest free run "
               + (f"{format_size(largest.size)} at {largest.start:#x}" if largest else "none"))
    cap = acc.capacity
    verdict = (f"capacity: {cap.states_fit} JIT state{'' if cap.states_fit == 1 else 's'} "
               f"fit, {cap.states_requested} requested ({format_size(cap.mcode_per_state)} "
               f"each, in areas of {format_size(cap.area_size)}): {cap.verdict}")
    if acc.miss_probability is not None:
        verdict = f"miss probability {acc.miss_probability:.3g} · " + verdict
    facts = (f"{jit.profile.name} · window {view} ({format_size(view.size)}) · usable "
             f"{jit.usable} · slot {format_size(jit.slot)} · anchor {anchor.start:#x}")
    for line, cls in ((summary, "summary"), (verdict, "verdict"), (facts, "facts")):
        y += 17.0
        out.append(f'<text x="{_f(MARGIN / 3)}" y="{_f(y)}" font-size="12" '
                   f'class={_a(cls)}>{_t(line)}</text>')

    # Vertical plan, top to bottom: anchor label, item label rows, usable bracket, bar,
    # JIT areas, tick labels, legend.
    anchor_y = y + 26.0
    label_base = anchor_y + 8.0 + LABEL_ROWS * ROW_HEIGHT  # baseline of row 0
    bracket_y = label_base + 8.0
    bar_top = bracket_y + 6.0
    bar_bottom = bar_top + BAR_HEIGHT
    lane_top = bar_bottom + 5.0
    lane_bottom = lane_top + (10.0 if jit_areas else 0.0)
    tick_base = lane_bottom + 17.0

    # The bar: hatched (no whole slot), then free runs, then occupants.
    out.append(f'<rect class="window" x="{_f(scale.left)}" y="{_f(bar_top)}" '
               f'width="{_f(scale.right - scale.left)}" height="{_f(BAR_HEIGHT)}" '
               'fill="url(#lk-hatch)" stroke="#404040" stroke-width="1"/>')
    for run in acc.free:
        part = run.intersect(view)
        if part is None:
            continue
        x0, x1 = scale.x(part.start), scale.x(part.end)
        out.append(f'<rect class="free" x="{_f(x0)}" y="{_f(bar_top)}" width="{_f(x1 - x0)}" '
                   f'height="{_f(BAR_HEIGHT)}" fill="{FREE_COLOUR}"><title>'
                   f'{_t(f"free {run} {format_size(run.size)}")}</title></rect>')
    lanes = _lanes(occupants)
    for occ, (lane, lane_count) in zip(occupants, lanes, strict=True):
        part = occ.span.intersect(view)
        assert part is not None
        x0, x1 = scale.x(part.start), scale.x(part.end)
        lane_h = BAR_HEIGHT / lane_count
        top = bar_top + lane * lane_h
        tip = f"{occ.kind} {occ.span} {format_size(occ.span.size)}" + (
            f" {occ.path}" if occ.path else "")
        out.append(f'<rect class="occupant" data-kind={_a(occ.kind.value)} x="{_f(x0)}" '
                   f'y="{_f(top)}" width="{_f(x1 - x0)}" height="{_f(lane_h)}" '
                   f'fill="{colour(occ.kind)}" stroke="#ffffff" stroke-width="0.5">'
                   f'<title>{_t(tip)}</title></rect>')
        mid = top + lane_h / 2
        if occ.span.start < view.start:  # continues below the window
            out.append(f'<polygon class="continues" points="{_f(x0 - 7)},{_f(mid)} '
                       f'{_f(x0 - 1)},{_f(mid - 5)} {_f(x0 - 1)},{_f(mid + 5)}" '
                       f'fill="{colour(occ.kind)}"/>')
        if occ.span.end > view.end:  # continues above the window
            out.append(f'<polygon class="continues" points="{_f(x1 + 7)},{_f(mid)} '
                       f'{_f(x1 + 1)},{_f(mid - 5)} {_f(x1 + 1)},{_f(mid + 5)}" '
                       f'fill="{colour(occ.kind)}"/>')

    # Breaks: a white zig-zag band across the bar and the "≈ size" it stands for.
    breaks = [st for st in scale.stretches if st.broken]
    for st in breaks:
        cx = (st.x0 + st.x1) / 2
        cut_lo = _zigzag(cx - 4, bar_top - 3, bar_bottom + 3)
        cut_hi = _zigzag(cx + 4, bar_top - 3, bar_bottom + 3)
        band = " ".join([cut_lo, *reversed(cut_hi.split(" "))])
        out.append(f'<polygon class="break" points="{band}" fill="#ffffff"/>')
        out.append(f'<polyline points="{cut_lo}" fill="none" stroke="#404040" stroke-width="1"/>')
        out.append(f'<polyline points="{cut_hi}" fill="none" stroke="#404040" '
                   'stroke-width="1"/>')
        text = f"≈ {approx_size(st.span.size)}"
        w = len(text) * CHAR_WIDTH + 6
        mid = (bar_top + bar_bottom) / 2
        out.append(f'<rect x="{_f(cx - w / 2)}" y="{_f(mid - 8)}" width="{_f(w)}" height="16" '
                   'rx="3" fill="#ffffff" stroke="#404040" stroke-width="0.5"/>')
        out.append(f'<text class="break-label" x="{_f(cx)}" y="{_f(mid + 4)}" '
                   f'text-anchor="middle">{_t(text)}</text>')

    # Usable span bracket above the bar.
    ux0, ux1 = scale.x(jit.usable.start), scale.x(jit.usable.end)
    if jit.usable.size:
        out.append(f'<path class="usable" d="M{_f(ux0)},{_f(bar_top - 1)} V{_f(bracket_y)} '
                   f'H{_f(ux1)} V{_f(bar_top - 1)}" fill="none" stroke="#202020" '
                   'stroke-width="1.5"/>')

    # JIT areas lane.
    for area in clipped_jit:
        x0, x1 = scale.x(area.start), scale.x(area.end)
        out.append(f'<rect class="jit-area" x="{_f(x0)}" y="{_f(lane_top)}" '
                   f'width="{_f(max(x1 - x0, MIN_WIDTH))}" height="10" '
                   f'fill="{JIT_AREA_COLOUR}" stroke="#ffffff" stroke-width="0.75">'
                   f'<title>{_t(f"JIT area {area}")}</title></rect>')

    # Anchor: a line through everything, its label on its own row.
    rows = Rows(LABEL_ROWS)
    inside = anchor.start in view
    ax = scale.x(anchor.start)
    rows.block(ax)
    out.append(f'<line class="anchor" x1="{_f(ax)}" y1="{_f(anchor_y + 3)}" x2="{_f(ax)}" '
               f'y2="{_f(lane_bottom + 3)}" stroke="{ANCHOR_COLOUR}" stroke-width="1.25"/>')
    if anchor.size > 1 and inside:
        ax1 = scale.x(min(anchor.end, view.end))
        out.append(f'<rect class="anchor-span" x="{_f(ax)}" y="{_f(bar_top)}" '
                   f'width="{_f(max(ax1 - ax, 1.0))}" height="{_f(BAR_HEIGHT)}" fill="none" '
                   f'stroke="{ANCHOR_COLOUR}" stroke-width="1"/>')
    where = "" if inside else (" (below the window)" if anchor.start < view.start
                               else " (above the window)")
    text = f"anchor {anchor.start:#x}{where}"
    lo, _ = text_span(text, ax, width)
    out.append(f'<text class="anchor-label" x="{_f(lo)}" y="{_f(anchor_y)}" '
               f'fill="{ANCHOR_COLOUR}" font-weight="bold">{_t(text)}</text>')

    # Item labels: occupants (the anchor's first, then by size), then free runs by size.
    groups = _groups(occupants, lanes)
    labelled: list[tuple[tuple[int, int, int], str, Span]] = []
    for g in groups:
        holds = 0 if anchor.start in g.span else 1
        labelled.append(((holds, -g.span.size, g.span.start), _group_label(g), g.span))
    for run in acc.free:
        labelled.append(((2, -run.size, run.start), f"free {format_size(run.size)}", run))
    for _key, text, span in sorted(labelled, key=lambda t: t[0]):
        part = span.intersect(view)
        if part is None:
            continue
        x0, x1 = scale.x(part.start), scale.x(part.end)
        # The leader starts in the middle of the item, or elsewhere in a wide one.
        xs = [(x0 + x1) / 2]
        if x1 - x0 > 24:
            xs += [x0 + (x1 - x0) * q for q in (0.25, 0.75, 0.1, 0.9)]
        placed = rows.place(len(text) * CHAR_WIDTH, xs, width)
        if placed is None:
            continue  # no room: the legend and the colour still tell
        row, left, cx = placed
        base = label_base - row * ROW_HEIGHT
        out.append(f'<line class="leader" x1="{_f(cx)}" y1="{_f(base + 3)}" '
                   f'x2="{_f(cx)}" y2="{_f(bar_top)}" stroke="#808080" stroke-width="0.75"/>')
        out.append(f'<text class="item-label" x="{_f(left)}" y="{_f(base)}">'
                   f'{_t(text)}</text>')

    # Address ticks: window and usable ends first, then the edges of the biggest items.
    ticks: list[int] = [view.start, view.end, jit.usable.start, jit.usable.end]
    for _key, _text, span in sorted(labelled, key=lambda t: t[0]):
        ticks += [max(span.start, view.start), min(span.end, view.end)]
    ticks += [a.start for a in clipped_jit]
    tick_rows = Rows(TICK_ROWS, pad=10.0)
    seen: set[int] = set()
    for address in ticks:
        if address in seen or not view.start <= address <= view.end:
            continue
        seen.add(address)
        x = scale.x(address)
        text = f"{address:#x}"
        placed = tick_rows.place(len(text) * CHAR_WIDTH, [x], width)
        if placed is None:
            continue
        row, left, _ = placed
        base = tick_base + row * 13.0
        out.append(f'<line class="tick" x1="{_f(x)}" y1="{_f(lane_bottom)}" x2="{_f(x)}" '
                   f'y2="{_f(base - 9)}" stroke="#606060" stroke-width="0.75"/>')
        out.append(f'<text class="tick-label" x="{_f(left)}" y="{_f(base)}" '
                   f'fill="#303030">{_t(text)}</text>')

    # Legend: kinds present (table order, then unknown ones by name), then the rest.
    y = tick_base + TICK_ROWS * 13.0 + 14.0
    kinds = sorted({o.kind for o in occupants},
                   key=lambda k: (list(KIND_COLOURS).index(k) if k in KIND_COLOURS
                                  else len(KIND_COLOURS), k.value))
    entries: list[tuple[str, str]] = [(f'fill="{colour(k)}"', k.value) for k in kinds]
    entries.append((f'fill="{FREE_COLOUR}"', "free (whole slots)"))
    entries.append(('fill="url(#lk-hatch)"', "not usable / no whole slot"))
    entries.append(("usable", "usable span"))
    if jit_areas:
        entries.append((f'fill="{JIT_AREA_COLOUR}"', "JIT area"))
    entries.append(("anchor", "anchor"))
    if breaks:
        entries.append(("break", "break: not to scale"))
    x = MARGIN / 3
    legend: list[str] = []
    for swatch, name in entries:
        w = 20 + len(name) * CHAR_WIDTH + 18
        if x + w > width - MARGIN / 3 and x > MARGIN / 3:
            x = MARGIN / 3
            y += 18.0
        if swatch == "usable":
            legend.append(f'<path d="M{_f(x)},{_f(y)} V{_f(y - 7)} H{_f(x + 14)} V{_f(y)}" '
                          'fill="none" stroke="#202020" stroke-width="1.5"/>')
        elif swatch == "anchor":
            legend.append(f'<line x1="{_f(x + 7)}" y1="{_f(y - 10)}" x2="{_f(x + 7)}" '
                          f'y2="{_f(y + 2)}" stroke="{ANCHOR_COLOUR}" stroke-width="1.5"/>')
        elif swatch == "break":
            legend.append(f'<polyline points="{_zigzag(x + 7, y - 10, y + 2, 2.5, 4.0)}" '
                          'fill="none" stroke="#404040" stroke-width="1"/>')
        else:
            legend.append(f'<rect x="{_f(x)}" y="{_f(y - 9)}" width="14" height="10" {swatch} '
                          'stroke="#404040" stroke-width="0.5"/>')
        legend.append(f'<text x="{_f(x + 20)}" y="{_f(y)}">{_t(name)}</text>')
        x += w
    out.append('<g class="legend">' + "".join(legend) + "</g>")
    height = y + 14.0

    head = ('<?xml version="1.0" encoding="UTF-8"?>\n'
            f'<svg xmlns="http://www.w3.org/2000/svg" width="{width:.0f}" '
            f'height="{height:.0f}" viewBox="0 0 {width:.0f} {height:.0f}" '
            f'font-family="DejaVu Sans Mono, Menlo, Consolas, monospace" font-size="{FONT}">')
    body = [head, f"<title>{_t(title)}</title>", _hatch_defs(),
            '<rect width="100%" height="100%" fill="#ffffff"/>', *out, "</svg>"]
    return "\n".join(body) + "\n"



def write_svg(path: str, acc: Accounting, anchor: Span, title: str,
              jit_areas: tuple[Span, ...] = ()) -> None:
    """Write the picture atomically: a temporary file in the same folder, then rename."""
    text = svg(acc, anchor, title=title, jit_areas=jit_areas)
    folder = os.path.dirname(os.path.abspath(path))
    try:
        fd, tmp = tempfile.mkstemp(prefix=".layoutkit-", suffix=".svg", dir=folder)
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(text)
        os.replace(tmp, path)
    except OSError as e:
        raise UsageError(f"--svg {path}: {e.strerror}") from None
