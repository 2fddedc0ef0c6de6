"""JSON documents: a schema version, stable key order, addresses as "0x..." strings.

Addresses are strings because x86-64 maps hold 0xffffffffff600000, above 2**53, which
JSON numbers lose in JavaScript and older jq; sizes and counts stay integers.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from layoutkit.advice import linkers
from layoutkit.core.text import json_safe
from layoutkit.errors import LayoutkitError
from layoutkit.output.opcache import opcache_json
from layoutkit.output.replay import replay_json
from layoutkit.output.safety import safety_json
from layoutkit.output.v8 import v8_inspect_json, v8_maps_json

if TYPE_CHECKING:  # annotations only: writing a document loads no analysis module
    from layoutkit.advice.candidates import Advice, Recommendation
    from layoutkit.advice.move import RelocationCheck
    from layoutkit.commands.inspect import Inspection, ReachWindow
    from layoutkit.commands.maps import MapsAnalysis
    from layoutkit.core.model import ElfImage, Segment
    from layoutkit.core.scenario import KernelCapture
    from layoutkit.core.spans import Span
    from layoutkit.ranges import BranchForm
    from layoutkit.read.refs import Bound
    from layoutkit.window.accounting import Accounting
    from layoutkit.window.forecast import Forecast
    from layoutkit.window.kernel import KernelConfig
    from layoutkit.window.profiles import Generation

SCHEMA_VERSION = 1
# Commands whose document left version 1 (the old schema files stay beside the new one):
# advise 2 added recommendations[i].safety; the allocator replay (issue 11) added
# ``replay``, ``replay_reason`` and ``replay_verdict`` (inspect, maps, check 2; advise 3).
VERSIONS = {"inspect": 2, "maps": 2, "advise": 3, "check": 2}


def schema_id(command: str) -> str:
    """``layoutkit/<command>/<version>``: the schema a command's document follows."""
    return f"layoutkit/{command}/{VERSIONS.get(command, SCHEMA_VERSION)}"


def hexa(value: int | None) -> str | None:
    return None if value is None else f"{value:#x}"


def document(command: str, body: dict[str, Any]) -> dict[str, Any]:
    return {"schema": schema_id(command), "command": command, **body}


def error_json(command: str, err: LayoutkitError) -> dict[str, Any]:
    """The document a command writes with ``--format json`` when it fails (any exit but
    a usage error): the failure is a field, never an empty stdout."""
    return {"schema": f"layoutkit/error/{SCHEMA_VERSION}", "command": command,
            "exit_code": err.exit_code, "error": err.to_json()}


def dumps(doc: dict[str, Any]) -> str:
    """The document as indented JSON, valid for strict parsers whatever bytes a path
    holds (:func:`layoutkit.core.text.json_safe`). An object or list that holds no
    container is written on one line by the C encoder (a maps listing's 65,530
    occupants are 65,530 lines, in a fraction of a second)."""
    return _dump(json_safe(doc), "")


def _is_leaf(value: dict[str, Any] | list[Any]) -> bool:
    items = value.values() if isinstance(value, dict) else value
    return not any(type(v) in (dict, list) for v in items)


def _dump(value: object, pad: str) -> str:
    if not isinstance(value, (dict, list)) or _is_leaf(value):
        return json.dumps(value)
    inner = pad + "  "
    if isinstance(value, dict):
        items = (f"{inner}{json.dumps(k)}: {_dump(v, inner)}" for k, v in value.items())
        return "{\n" + ",\n".join(items) + "\n" + pad + "}"
    return "[\n" + ",\n".join(inner + _dump(v, inner) for v in value) + "\n" + pad + "]"


def kernel_json(kernel: KernelConfig) -> dict[str, Any]:
    """The one kernel block of every document."""
    return {
        "release": kernel.release,
        "va_bits": kernel.va_bits,
        "user_top": hexa(kernel.user_top),
        "mmap_min_addr": hexa(kernel.mmap_min_addr),
        "source": kernel.source,
    }


def span_json(span: Span | None) -> dict[str, Any] | None:
    if span is None:
        return None
    return {"start": hexa(span.start), "end": hexa(span.end), "size": span.size}


def segment_json(seg: Segment) -> dict[str, Any]:
    return {
        "type": seg.type,
        "vaddr": hexa(seg.vaddr),
        "memsz": seg.memsz,
        "offset": hexa(seg.offset),
        "filesz": seg.filesz,
        "flags": flags_text(seg),
        "raw_flags": seg.raw_flags,
        "align": seg.align,
    }


def flags_text(seg: Segment) -> str:
    """readelf's Flg column: R, W, E in three places."""
    return "".join(
        char if seg.raw_flags & bit else " " for char, bit in (("R", 4), ("W", 2), ("E", 1))
    )


def image_json(image: ElfImage) -> dict[str, Any]:
    return {
        "path": image.path,
        "arch": image.arch.name,
        "bits": image.bits,
        "endian": "little" if image.little_endian else "big",
        "e_machine": image.e_machine,
        "elf_type": image.e_type,
        "load_kind": image.load_kind.value,
        "pie": image.pie,
        "entry": hexa(image.entry),
        "interpreter": image.interpreter,
        "build_id": image.build_id,
        "needed": list(image.needed),
        "soname": image.soname,
        "has_symtab": image.has_symtab,
        "has_dynsym": image.has_dynsym,
        "comment": list(image.comment),
        "segments": [segment_json(seg) for seg in image.segments],
        "sections": [
            {"name": s.name, "type": s.type, "addr": hexa(s.addr), "size": s.size,
             "flags": s.flags}
            for s in image.sections
        ],
    }


def form_json(form: BranchForm) -> dict[str, Any]:
    return {
        "arch": form.arch,
        "form": form.name,
        "kind": form.kind.value,
        "disp_min": form.disp_min,
        "disp_max": form.disp_max,
        "granule": form.granule,
        "page": form.page,
        "region": form.region,
        "wraps": form.wraps,
        "note": form.note,
    }


def reach_json(reach: ReachWindow) -> dict[str, Any]:
    window = reach.window
    return {
        "form": reach.form.name,
        "kind": reach.form.kind.value,
        "below": reach.below,
        "above": reach.above,
        "start": hexa(window.start) if window else None,
        "end": hexa(window.end) if window else None,
        "size": window.size if window else 0,
        "clipped_below": reach.clipped_below,
        "clipped_above": reach.clipped_above,
    }


def inspection_json(result: Inspection, *, bundled: bool = False) -> dict[str, Any]:
    anchor = result.anchor
    doc = document("inspect", {
        **image_json(result.image),
        "load": {"bias": hexa(result.bias), "how": result.bias_how,
                 "model": result.image.load_kind.describe()},
        "kernel": kernel_json(result.kernel),
        "anchor": {
            "name": anchor.name,
            "address": hexa(anchor.address),
            "end": hexa(anchor.span.end),
            "runtime_address": hexa(result.runtime_anchor.start),
            "how_found": anchor.how_found.value,
            "detail": anchor.detail,
        },
        "reach": [reach_json(r) for r in result.reach],
        **prediction_json(result),
        "opcache": opcache_json(result.opcache),
        "v8": v8_inspect_json(result.v8),
        **replay_json(result.forecast),
    })
    doc["bundled_default"] = bundled
    return doc


def ranges_json(rows: tuple[BranchForm, ...]) -> dict[str, Any]:
    return document("ranges", {"forms": [form_json(f) for f in rows]})


def window_json(acc: Accounting) -> dict[str, Any]:
    jit = acc.jit
    big = acc.largest_free
    return {
        "profile": jit.profile.name,
        "form": jit.form.name,
        "target": hexa(jit.target),
        "start": hexa(jit.window.start),
        "end": hexa(jit.window.end),
        "usable_start": hexa(jit.usable.start),
        "usable_end": hexa(jit.usable.end),
        "free_bytes": acc.free_bytes,
        "slot_size": jit.slot,
        "slots": acc.slots,
        "free_slots": acc.free_slots,
        "free_percent": round(100 * acc.free_share, 2),
        "largest_free": span_json(big),
        "random_probes": jit.random_probes,
        "miss_probability": acc.miss_probability,
    }


def occupants_json(acc: Accounting) -> list[dict[str, Any]]:
    return [
        {"kind": o.kind.value, "start": hexa(o.span.start), "end": hexa(o.span.end),
         "overlap": o.overlap(acc.jit.window), "path": o.path}
        for o in acc.occupants
    ]


def capacity_json(acc: Accounting) -> dict[str, Any]:
    cap = acc.capacity
    return {
        "states_requested": cap.states_requested,
        "mcode_per_state": cap.mcode_per_state,
        "area_size": cap.area_size,
        "areas_free": cap.areas_free,
        "states_fit": cap.states_fit,
        "demand": cap.demand,
        "verdict": cap.verdict.value,
    }


def generation_json(profile: str, generation: Generation | None) -> dict[str, Any]:
    return {
        "profile": profile,
        "detected": generation.profile if generation else None,
        "evidence": generation.evidence if generation else None,
        "confidence": generation.confidence if generation else None,
    }


def prediction_json(result: Inspection) -> dict[str, Any]:
    pred = result.prediction
    return {
        "window": window_json(pred.worst),
        "window_best": window_json(pred.best),
        "occupants": occupants_json(pred.worst),
        "capacity": capacity_json(pred.worst),
        "generation": generation_json(result.profile, result.generation),
        "aslr": {
            "bias_min": hexa(pred.bias_range[0]),
            "bias_max": hexa(pred.bias_range[1]),
            "heap_start_min": hexa(pred.heap_start[0]) if pred.heap_start else None,
            "heap_start_max": hexa(pred.heap_start[1]) if pred.heap_start else None,
            "heap_reserve": pred.heap_reserve,
        },
        "notes": list(result.notes),
    }


def maps_json(result: MapsAnalysis) -> dict[str, Any]:
    acc = result.accounting
    return document("maps", {
        "source": result.maps.source,
        "arch": result.arch.name,
        "executable": result.maps.executable,
        "kernel": kernel_json(result.kernel),
        "anchor": {
            "name": result.anchor.name,
            "address": hexa(result.anchor.span.start),
            "end": hexa(result.anchor.span.end),
            "how_found": result.anchor.how_found.value,
            "detail": result.anchor.detail,
            "object": result.anchor_object,
            "bias": hexa(result.bias),
        },
        "window": window_json(acc),
        "occupants": occupants_json(acc),
        "jit_areas": [
            {"start": hexa(a.span.start), "end": hexa(a.span.end), "size": a.span.size,
             "distance": a.distance}
            for a in result.jit_areas
        ],
        "jit_bytes": sum(a.span.size for a in result.jit_areas),
        "capacity": capacity_json(acc),
        "generation": generation_json(result.profile, result.generation),
        "opcache": opcache_json(result.opcache),
        "v8": v8_maps_json(result.v8),
        "notes": list(result.notes),
        **replay_json(result.forecast),
    })


def advice_json(advice: Advice) -> dict[str, Any]:
    def rec_json(rec: Recommendation) -> dict[str, Any]:
        worst = rec.worst
        return {
            "kind": rec.kind.value,
            "linker": rec.linker,
            "flags": list(rec.flags),
            "base": hexa(rec.base),
            "bss": hexa(rec.bss),
            "window": window_json(worst) if worst else None,
            "capacity": capacity_json(worst) if worst else None,
            "reasons": list(rec.reasons),
            "snippets": linkers.snippets(list(rec.flags)) if rec.flags else {},
            "safety": safety_json(rec.safety),
            **advice_replay_json(rec.forecast, "a runtime change: nothing to lay out"),
        }

    return document("advise", {
        "arch": advice.arch.name,
        "binary": None if advice.synthetic else advice.image.path,
        "linker": advice.linker,
        "linker_evidence": advice.linker_evidence,
        "profile": advice.profile,
        "kernel": kernel_json(advice.kernel),
        "current": {"window": window_json(advice.current.worst),
                    "capacity": capacity_json(advice.current.worst),
                    **advice_replay_json(advice.forecast, "not replayed")},
        "recommendations": [rec_json(r) for r in advice.recommendations],
        "notes": list(advice.notes),
    })


def advice_replay_json(fc: Forecast | None, why: str) -> dict[str, Any]:
    """``replay`` of the current image or of one recommendation (issue 11)."""
    if fc is None:
        return {"replay": None, "replay_reason": why, "replay_verdict": None}
    return replay_json(fc)


def capture_json(capture: KernelCapture) -> dict[str, Any]:
    """``layoutkit kernel --capture``: a host's kernel facts, for ``--kernel-file``."""
    return document("kernel", {
        "release": capture.release,
        "machine": capture.machine,
        "sysctl": {
            "randomize_va_space": capture.randomize_va_space,
            "mmap_min_addr": capture.mmap_min_addr,
            "mmap_rnd_bits": capture.mmap_rnd_bits,
            "legacy_va_layout": int(capture.legacy_va_layout),
        },
        "source": capture.source,
    })


def move_json(check: RelocationCheck) -> dict[str, Any]:
    def bound(b: Bound | None) -> dict[str, Any] | None:
        if b is None:
            return None
        return {"form": b.form, "pc": hexa(b.pc), "target": hexa(b.target), "slack": b.slack}

    allowed = check.allowed
    return document("advise-move", {
        "sections": list(check.sections),
        "address": hexa(check.address),
        "references": check.references,
        "offset_min": allowed.lo,
        "offset_max": allowed.hi,
        "address_min": hexa(max(0, check.address + allowed.lo)),
        "address_max": hexa(check.address + allowed.hi),
        "limit_low": bound(allowed.limit_lo),
        "limit_high": bound(allowed.limit_hi),
        "requested": hexa(check.requested),
        "feasible": check.feasible,
    })
