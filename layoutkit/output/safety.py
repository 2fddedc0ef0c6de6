"""A recommendation's safety (advice/safety.py) as JSON and as text lines."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from layoutkit.advice.safety import Protections, Safety


def protections_json(p: Protections) -> dict[str, Any]:
    return {"segments": list(p.segments), "w_xor_x": p.w_xor_x, "relro": p.relro,
            "bind_now": p.bind_now, "nx_stack": p.nx_stack, "separate_code": p.separate}


def safety_json(s: Safety | None) -> dict[str, Any] | None:
    if s is None:
        return None
    return {"before": protections_json(s.before), "after": protections_json(s.after),
            "weaker": s.weaker, "lost": [p.value for p in s.lost],
            "added_flags": list(s.added), "source": s.source.value, "notes": list(s.notes)}


def _summary(p: Protections) -> str:
    marks = (("W^X", p.w_xor_x), ("RELRO", p.relro), ("BIND_NOW", p.bind_now),
             ("NX stack", p.nx_stack), ("separate code", p.separate))
    held = ", ".join(name if on else f"no {name}" for name, on in marks)
    return f"[{' | '.join(s.strip() or '-' for s in p.segments)}] {held}"


def safety_lines(s: Safety | None) -> Iterator[str]:
    if s is None:
        return
    how = s.source.describe()
    if s.weaker is None:
        yield f"   safety: NOT MEASURED ({how})"
    elif s.weaker:
        lost = ", ".join(p.value for p in s.lost)
        yield f"   SAFETY: WEAKER, loses {lost} ({how}; shown for --allow-weaker)"
    else:
        added = f", with {' '.join(s.added)}" if s.added else ""
        yield f"   safety: keeps every protection ({how}{added})"
    yield f"           before {_summary(s.before)}"
    yield f"           after  {_summary(s.after)}"
    for note in s.notes:
        yield f"           note: {note}"
