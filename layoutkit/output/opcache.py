"""PHP's opcache segment (``php-opcache``) as text lines and JSON."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from layoutkit.core.units import format_size
from layoutkit.window.opcache import Placement


def _hexa(value: int) -> str:
    return f"{value:#x}"


def opcache_lines(p: Placement | None) -> Iterator[str]:
    if p is None:
        return
    yield f"Opcache:     {p.size}"
    if p.segment is None:
        yield f"  segment:   {p.how}"
    else:
        offset = p.offset
        assert offset is not None
        rel = (f"{offset:#x} ({format_size(offset)}) below the image's first byte"
               if offset >= 0 else f"{-offset:#x} ({format_size(-offset)}) above it")
        yield (f"  segment:   [{p.segment.start:#x}, {p.segment.end:#x}) {p.how}; starts "
               f"{rel} at {p.image_start:#x}")
        buffer = p.jit_buffer
        if buffer is not None:
            yield (f"  JIT:       [{buffer.start:#x}, {buffer.end:#x}) must reach PHP's text "
                   f"[{p.text.start:#x}, {p.text.end:#x}) with direct calls: "
                   f"{'yes' if p.direct else 'no'}")
    if p.refused:
        yield "  refused:   PHP refuses a JIT buffer over 128 MiB on AArch64 (php-src #12582)"
    yield f"  cost:      {p.cost}"


def opcache_json(p: Placement | None) -> dict[str, Any] | None:
    if p is None:
        return None
    buffer = p.jit_buffer
    return {
        "memory_consumption": p.size.memory,
        "jit_buffer_size": p.size.jit_buffer,
        "jit": p.size.jit_on,
        "start": _hexa(p.segment.start) if p.segment else None,
        "end": _hexa(p.segment.end) if p.segment else None,
        "offset_below_image": p.offset,
        "image_start": _hexa(p.image_start),
        "text_start": _hexa(p.text.start),
        "text_end": _hexa(p.text.end),
        "jit_start": _hexa(buffer.start) if buffer else None,
        "how": p.how,
        "direct_calls": p.direct,
        "refused": p.refused,
        "cost": p.cost,
    }
