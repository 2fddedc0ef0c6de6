"""V8's code range (``v8``) as JSON: one object for ``inspect`` (predicted per case over
ASLR) and ``maps`` (as mapped), null unless the profile applies."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from layoutkit.core.kinds import CodeRangeVerdict

if TYPE_CHECKING:  # annotations only: writing a document loads no analysis module
    from layoutkit.core.spans import Span
    from layoutkit.window.v8 import V8Build, V8Rule
    from layoutkit.window.v8_maps import V8Regions
    from layoutkit.window.v8_outlook import V8Case, V8Outlook


def _hexa(value: int | None) -> str | None:
    return None if value is None else f"{value:#x}"


def _common(build: V8Build | None, rule: V8Rule, blob: Span, region: Span,
            size: int) -> dict[str, Any]:
    return {
        "version": build.version if build else None,
        "rule": rule.label,
        "evidence": build.evidence if build else None,
        "builtins_start": _hexa(blob.start),
        "builtins_end": _hexa(blob.end),
        "window_start": _hexa(region.start),
        "window_end": _hexa(region.end),
        "code_range_size": size,
    }


def _case(case: V8Case) -> dict[str, Any]:
    placed = case.placement
    return {
        "case": case.label,
        "hint_source": case.source,
        "hint": _hexa(placed.hint) if placed else None,
        "request_end": _hexa(placed.request.end) if placed else None,
        "honoured": placed.honoured if placed else False,
        "blocker_start": _hexa(placed.blocker.start) if placed and placed.blocker else None,
        "code_range_start": _hexa(placed.placed.start) if placed and placed.placed else None,
        "code_range_end": _hexa(placed.placed.end) if placed and placed.placed else None,
        "near": case.near,
    }


def v8_inspect_json(seen: V8Outlook | None) -> dict[str, Any] | None:
    if seen is None or seen.blob is None or seen.region is None:
        return None
    return {
        **_common(seen.build, seen.rule, seen.blob, seen.region, seen.size),
        "cases": [_case(c) for c in seen.cases],
        "near_probability": (round(seen.near_probability, 6)
                             if seen.near_probability is not None else None),
        "code_range_start": None,
        "code_range_end": None,
        "code_range_how": None,
        "remapped_builtins": None,
        "verdict": (CodeRangeVerdict.NEAR if seen.worst_near else CodeRangeVerdict.FAR).value,
        "cost": seen.cost,
    }


def v8_maps_json(found: V8Regions | None) -> dict[str, Any] | None:
    if found is None or found.build is None:
        return None
    copy = found.copy
    return {
        **_common(found.build, found.build.rule, found.blob, found.region, found.size),
        "cases": [],
        "near_probability": None,
        "code_range_start": _hexa(found.code_range.start) if found.code_range else None,
        "code_range_end": _hexa(found.code_range.end) if found.code_range else None,
        "code_range_how": found.how.value if found.how else None,
        "remapped_builtins": None if copy is None else {
            "start": _hexa(copy.start), "end": _hexa(copy.end), "file_offset": copy.offset},
        "verdict": found.verdict.value,
        "cost": found.cost,
    }
