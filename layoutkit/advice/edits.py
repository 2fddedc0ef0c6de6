"""What a recommendation does to an image, as values: each edit lays out the advised
image from the current one (``apply``) and says where a link-time address of the current
image lands (``address``). ``advise`` predicts the edited image; ``verify`` builds its
layout twin from the same value, so the two cannot disagree about the advised layout.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from layoutkit.core.kinds import AdviceKind
from layoutkit.core.model import ElfImage, LoadKind, Perm, Segment


def _first(image: ElfImage) -> int:
    span = image.image_span
    if span is None:
        raise ValueError(f"{image.path}: no PT_LOAD to move")  # images always have one here
    return span.start


def shift(image: ElfImage, delta: int, kind: LoadKind | None = None) -> ElfImage:
    """Every PT_LOAD moved by ``delta`` (and, with ``kind``, loaded that way)."""
    segments = tuple(replace(seg, vaddr=seg.vaddr + delta) if seg.type == "PT_LOAD" else seg
                     for seg in image.segments)
    return replace(image, segments=segments, load_kind=kind or image.load_kind,
                   e_type="ET_DYN" if kind is LoadKind.PIE else image.e_type)


def split_bss(image: ElfImage, bss_at: int) -> ElfImage:
    """The image as GNU ld lays it out with -Tbss: the RW PT_LOAD keeps its file part,
    the zero-fill part moves into a PT_LOAD of its own at ``bss_at``."""
    segments: list[Segment] = []
    for seg in image.segments:
        if seg.type == "PT_LOAD" and seg.memsz > seg.filesz and Perm.W in seg.flags:
            segments.append(replace(seg, memsz=max(seg.filesz, 1)))
            segments.append(replace(seg, vaddr=bss_at, offset=0, filesz=0,
                                    memsz=seg.memsz - seg.filesz))
        else:
            segments.append(seg)
    return replace(image, segments=tuple(segments))


@dataclass(frozen=True)
class Rebase:
    """Move the whole non-PIE image so it starts at ``base`` (-Ttext-segment,
    --image-base)."""

    base: int
    kind = AdviceKind.REBASE

    def apply(self, image: ElfImage) -> ElfImage:
        return shift(image, self.base - _first(image))

    def address(self, image: ElfImage, vaddr: int) -> int:
        return vaddr + self.base - _first(image)


@dataclass(frozen=True)
class RelocateText:
    """Rebase to ``base`` and give the zero-fill part of the RW segment (.bss, and so the
    brk heap after it) its own PT_LOAD at ``bss`` (-Tbss, GNU ld and gold)."""

    base: int
    bss: int
    kind = AdviceKind.RELOCATE_TEXT

    def apply(self, image: ElfImage) -> ElfImage:
        return split_bss(Rebase(self.base).apply(image), self.bss)

    def address(self, image: ElfImage, vaddr: int) -> int:
        return Rebase(self.base).address(image, vaddr)


@dataclass(frozen=True)
class MakePie:
    """Link as a PIE: the image starts at 0 and the kernel places it (-fPIE -pie)."""

    kind = AdviceKind.PIE

    def apply(self, image: ElfImage) -> ElfImage:
        pie = shift(image, -_first(image), LoadKind.PIE)
        return replace(pie, interpreter=pie.interpreter or "(interpreter)")

    def address(self, image: ElfImage, vaddr: int) -> int:
        return vaddr - _first(image)


Edit = Rebase | RelocateText | MakePie
