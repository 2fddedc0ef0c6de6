"""JSON documents: a schema version, stable key order, addresses as "0x..." strings.

Addresses are strings because x86-64 maps hold 0xffffffffff600000, above 2**53, which
JSON numbers lose in JavaScript and older jq; sizes and counts stay integers.
"""

from __future__ import annotations

import json
from typing import Any

from .inspection import Inspection, ReachWindow
from .model import ElfImage, Segment
from .ranges import BranchForm
from .spans import Span

SCHEMA_VERSION = 1


def hexa(value: int | None) -> str | None:
    return None if value is None else f"{value:#x}"


def document(command: str, body: dict[str, Any]) -> dict[str, Any]:
    return {"schema": f"layoutkit/{command}/{SCHEMA_VERSION}", "command": command, **body}


def dumps(doc: dict[str, Any]) -> str:
    return json.dumps(doc, indent=2)


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


def inspection_json(result: Inspection) -> dict[str, Any]:
    anchor = result.anchor
    return document("inspect", {
        **image_json(result.image),
        "load": {"bias": hexa(result.bias), "how": result.bias_how,
                 "model": result.image.load_kind.describe()},
        "kernel": {
            "va_bits": result.kernel.va_bits,
            "user_top": hexa(result.kernel.user_top),
            "mmap_min_addr": hexa(result.kernel.mmap_min_addr),
        },
        "anchor": {
            "name": anchor.name,
            "address": hexa(anchor.address),
            "end": hexa(anchor.span.end),
            "runtime_address": hexa(result.runtime_anchor.start),
            "how_found": anchor.how_found,
            "detail": anchor.detail,
        },
        "reach": [reach_json(r) for r in result.reach],
    })
