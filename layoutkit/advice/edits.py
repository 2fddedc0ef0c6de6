"""What a recommendation does to an image, as values: each edit lays out the advised
image from the current one (``apply``) and says where a link-time address of the current
image lands (``address``). ``advise`` predicts the edited image; ``verify`` builds its
layout twin from the same value, so the two cannot disagree about the advised layout.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from layoutkit.core.kinds import AdviceKind
from layoutkit.core.model import ElfImage, LoadKind, Perm, Section, Segment
from layoutkit.core.spans import align_up

SHF_EXECINSTR = 0x4
SHF_WRITE_ALLOC = 0x3  # SHF_WRITE | SHF_ALLOC
SHF_TLS = 0x400


def _first(image: ElfImage) -> int:
    span = image.image_span
    if span is None:
        raise ValueError(f"{image.path}: no PT_LOAD to move")  # images always have one here
    return span.start


def shift(image: ElfImage, delta: int, kind: LoadKind | None = None) -> ElfImage:
    """Every PT_LOAD moved by ``delta`` (and, with ``kind``, loaded that way)."""
    segments = tuple(replace(seg, vaddr=seg.vaddr + delta) if seg.type == "PT_LOAD" else seg
                     for seg in image.segments)
    dyn = kind in (LoadKind.PIE, LoadKind.STATIC_PIE)
    return replace(image, segments=segments, load_kind=kind or image.load_kind,
                   e_type="ET_DYN" if dyn else image.e_type)


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


def merge_code_data(image: ElfImage) -> ElfImage:
    """The code PT_LOAD stretched over the file part of the writable one after it, RWE:
    what GNU ld 2.40 emits for a static program under -Tbss without -z separate-code
    (every arch where that is not its default; safety_table.py)."""
    code = next((s for s in image.loads if Perm.X in s.flags), None)
    data = next((s for s in image.loads if code is not None and s.vaddr > code.vaddr
                 and Perm.W in s.flags and s.filesz), None)
    if code is None or data is None:
        return image
    size = data.vaddr + data.filesz - code.vaddr
    rwx = replace(code, memsz=size, filesz=size, flags=code.flags | Perm.W | Perm.R,
                  raw_flags=code.raw_flags | 7)
    return replace(image, segments=tuple(rwx if s is code else s for s in image.segments
                                         if s is not data))


def _orphan_zero_fill(section: Section) -> bool:
    """A writable NOBITS section GNU ld's default script does not name (an orphan): its
    sections all start with a dot (.bss, .sbss, .tbss, PPC64's .plt and .iplt), while
    glibc's __libc_freeres_ptrs is a C identifier (ld/scripttempl/elf.sc)."""
    return (section.type == "SHT_NOBITS" and section.flags & SHF_WRITE_ALLOC == SHF_WRITE_ALLOC
            and not section.flags & SHF_TLS and not section.name.startswith("."))


def _code_parts(image: ElfImage) -> tuple[Segment, int, int] | None:
    """The first executable PT_LOAD and where its code starts and ends (by its
    SHF_EXECINSTR sections; the whole segment when the file has no section headers)."""
    code = next((s for s in image.loads if Perm.X in s.flags), None)
    if code is None:
        return None
    inside = [s for s in image.sections if s.flags & SHF_EXECINSTR and s.size
              and code.vaddr <= s.addr < code.vaddr + code.memsz]
    if not inside:
        return code, code.vaddr, code.vaddr + code.memsz
    return code, min(s.addr for s in inside), max(s.addr + s.size for s in inside)


def separate_code_shifts(image: ElfImage) -> tuple[int, int, int]:
    """How GNU ld's ``-z separate-code`` moves the code, the read-only data after it and
    the writable segments of ``image``: the code starts on the max-page boundary after
    the headers and read-only sections before it, the read-only data after it on the
    next one (ld/scripttempl/elf.sc SEPARATE_TEXT), and the writable segments keep their
    place relative to the page that follows the read-only data (DATA_SEGMENT_ALIGN)."""
    parts = _code_parts(image)
    if parts is None:
        return 0, 0, 0
    seg, start, end = parts
    page = image.arch.max_page_size
    text = align_up(start, page) if start != seg.vaddr else start
    text = max(text, align_up(seg.vaddr + 1, page))
    d_text = text - start
    seg_end = seg.vaddr + seg.memsz
    d_ro = align_up(end + d_text, page) - end if seg_end > end else d_text
    d_rw = align_up(seg_end + d_ro, page) - align_up(seg_end, page)
    return d_text, d_ro, d_rw


def separate_code(image: ElfImage) -> ElfImage:
    """``image`` as GNU ld lays it out with ``-z separate-code`` (see
    :func:`separate_code_shifts`): R (headers), R E (code), R (read-only data), then the
    writable segments moved with them."""
    parts = _code_parts(image)
    if parts is None:
        return image
    seg, start, end = parts
    d_text, d_ro, d_rw = separate_code_shifts(image)
    seg_end = seg.vaddr + seg.memsz
    out: list[Segment] = []
    for s in image.segments:
        if s is seg:
            if start > seg.vaddr:
                size = start - seg.vaddr
                out.append(replace(seg, memsz=size, filesz=size, flags=Perm.R, raw_flags=4))
            code = end - start
            out.append(replace(seg, vaddr=start + d_text, offset=seg.offset + start - seg.vaddr
                               + d_text, memsz=code, filesz=code))
            if seg_end > end:
                ro = seg_end - end
                out.append(replace(seg, vaddr=end + d_ro, offset=seg.offset + end - seg.vaddr
                                   + d_ro, memsz=ro, filesz=ro, flags=Perm.R, raw_flags=4))
        elif s.type == "PT_LOAD" and s.vaddr >= seg_end:
            out.append(replace(s, vaddr=s.vaddr + d_rw, offset=s.offset + d_rw))
        else:
            out.append(s)
    return replace(image, segments=tuple(out))


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
    separate_code: bool = False  # with -z separate-code (GNU ld), which moves the code
    merged: bool = False  # code and data in one RWE PT_LOAD, as GNU ld links it without
    kind = AdviceKind.RELOCATE_TEXT

    def apply(self, image: ElfImage) -> ElfImage:
        # Sections keep their link-time addresses: separate the code before the move
        # (the shifts are page multiples, the base is page-aligned: the order is free).
        split = separate_code(image) if self.separate_code else image
        moved = split_bss(Rebase(self.base).apply(split), self.bss)
        if self.merged:
            moved = merge_code_data(moved)
        if not any(_orphan_zero_fill(s) for s in image.sections):
            return moved
        # A writable NOBITS section other than .bss (static glibc's __libc_freeres_ptrs)
        # is an orphan once -Tbss takes .bss away: GNU ld 2.40 places it after the
        # headers, so the first PT_LOAD becomes writable (measured: safety_table.py).
        first = moved.loads[0]
        writable = replace(first, flags=first.flags | Perm.W, raw_flags=first.raw_flags | 2)
        return replace(moved, segments=tuple(writable if s is first else s
                                             for s in moved.segments))

    def address(self, image: ElfImage, vaddr: int) -> int:
        """Where ``vaddr`` (a code address: the anchor) lands."""
        return Rebase(self.base).address(image, vaddr) + self.code_shift(image)

    def code_shift(self, image: ElfImage) -> int:
        """How far -z separate-code moves the code of ``image`` (0 without it)."""
        return separate_code_shifts(image)[0] if self.separate_code else 0


@dataclass(frozen=True)
class MakePie:
    """Link as a PIE: the image starts at 0 and the kernel places it (-fPIE -pie). A
    static program is advised -static-pie (linkers.pie_flags): a static PIE, without
    an interpreter, which the kernel places in the mmap area, not at ELF_ET_DYN_BASE
    (fs/binfmt_elf.c, load_elf_binary)."""

    static: bool = False  # a static program: -static-pie
    kind = AdviceKind.PIE

    def apply(self, image: ElfImage) -> ElfImage:
        if self.static:
            return shift(image, -_first(image), LoadKind.STATIC_PIE)
        pie = shift(image, -_first(image), LoadKind.PIE)
        return replace(pie, interpreter=pie.interpreter or "(interpreter)")

    def address(self, image: ElfImage, vaddr: int) -> int:
        return vaddr - _first(image)


Edit = Rebase | RelocateText | MakePie
