"""V8's own link advice for a non-PIE node: end the image's last page on V8's 256 KiB
boundary, so that V8 11.3's hint (the gap above the bss, rounded *down* to 256 KiB:
layoutkit/window/v8.py) is that gap's start itself and the kernel honours it whenever
the brk heap lies far above.

The flag is ``-Tbss=ADDR`` (GNU ld, gold): .bss gets a PT_LOAD of its own at ADDR, so
its end is ``ADDR + size``; ADDR is chosen for that end to fall on the last page below
the boundary. Relinked here (gcc 12, a 123457-byte .bss, non-PIE x86-64): GNU ld 2.40 and
gold put .bss last at ADDR, ending 24 and 31 bytes below the boundary (readelf -lW);
lld 14 places the later sections after .bss; mold 1.10 ends the image there too, but by
stretching the RW PT_LOAD over the gap, a layout RelocateText does not model, so the
advice is given for GNU ld and gold (tests/advice/test_v8_pad.py).
"""

from __future__ import annotations

from dataclasses import dataclass

from layoutkit.advice import linkers
from layoutkit.advice.edits import RelocateText
from layoutkit.core.model import ElfImage, LoadKind, Perm
from layoutkit.core.scenario import Scenario
from layoutkit.core.spans import Span, align_down, align_up
from layoutkit.core.units import format_size
from layoutkit.elf import ElfReader
from layoutkit.window.kernel import PAGE, KernelConfig
from layoutkit.window.profiles import window_for_span
from layoutkit.window.v8 import V8_PAGE
from layoutkit.window.v8_outlook import V8Choice, V8Outlook, choose_v8, outlook


@dataclass(frozen=True)
class Padding:
    """The -Tbss that pads the image to V8's boundary, with V8's outlook before and after."""

    edit: RelocateText
    flags: tuple[str, ...]
    boundary: int  # where the image's last page now ends
    end: int  # the end of the image as it is (its last page)
    before: V8Outlook
    after: V8Outlook
    reasons: tuple[str, ...]


def _outlook(image: ElfImage, kernel: KernelConfig, choice: V8Choice,
             shift: int = 0) -> V8Outlook | None:
    blob = choice.build.blob
    if blob is None:
        return None
    bias, _ = kernel.nominal_bias(image)
    placed = blob.shifted(bias + shift)
    jit = window_for_span(choice.profile, image.arch, placed, kernel.user_space)
    return outlook(image, kernel, bias, jit, choice, placed)


def _far_case(seen: V8Outlook) -> tuple[int, bool, Span | None] | None:
    """The heap-far case (the first): its hint, whether honoured, the gap it comes from."""
    if not seen.cases or seen.cases[0].placement is None:
        return None
    placed = seen.cases[0].placement
    return placed.hint, placed.honoured, placed.gap


def bss_address(image: ElfImage, boundary: int) -> int | None:
    """The -Tbss address that ends .bss (and the image) on the last page below
    ``boundary``: the zero fill's size below it (the larger of the model's, memsz -
    filesz of the RW PT_LOAD, and .bss's own), aligned down to a multiple of .bss's
    alignment (the largest power of two its present address has, at most a page)."""
    rw = next((s for s in reversed(image.loads)
               if Perm.W in s.flags and s.memsz > s.filesz), None)
    bss = image.section(".bss")
    if rw is None or bss is None:
        return None
    zero = max(rw.memsz - rw.filesz, bss.size)
    align = min(bss.addr & -bss.addr, PAGE) if bss.addr else PAGE
    return align_down(boundary - zero, align)


def padding(reader: ElfReader, scenario: Scenario, image: ElfImage, kernel: KernelConfig,
            anchor: str | None, linker: str,
            keep: tuple[str, ...] = ()) -> Padding | str | None:
    """The padding for a non-PIE V8 whose hint is refused when the heap is far; a reason
    when no flag of ``linker`` gives it; None when V8's rule does not need it."""
    choice = choose_v8(reader, scenario, luajit_found=False) if anchor is None else None
    if choice is None or image.load_kind is not LoadKind.EXEC:
        return None
    rule = choice.profile.rule
    if rule.hint_align <= 1 or image.arch.isa not in rule.near_isas:
        return None
    before = _outlook(image, kernel, choice)
    far = _far_case(before) if before is not None else None
    if before is None or far is None or far[1] or far[2] is None:
        return None
    hint, _, gap = far
    if gap is None:
        return None
    boundary = align_up(gap.start, V8_PAGE)
    if not linkers.separate_bss_supported(linker):
        return (f"no -Tbss padding advised with {linker}: lld places the later sections "
                "after .bss; mold stretches the RW segment over the gap, a layout not "
                "modelled here (both relinked); link with GNU ld or gold")
    bss_at = bss_address(image, boundary)
    if bss_at is None:
        return None
    edit = RelocateText(image.loads[0].vaddr, bss_at, separate_code=bool(keep))
    padded = edit.apply(image)
    after = _outlook(padded, kernel, choice, edit.code_shift(image))
    after_far = _far_case(after) if after is not None else None
    if after is None or after_far is None or not after_far[1]:
        return None  # the model does not get the hint honoured: no advice
    assert before.near_probability is not None and after.near_probability is not None
    now_p, then_p = before.near_probability, after.near_probability
    placed = after.cases[0].placement
    assert placed is not None and placed.placed is not None
    flags = (*linkers.fuse_ld(linker), f"-Wl,-Tbss={edit.bss:#x}", *keep)
    reasons = (
        f"V8 {rule.label} rounds its hint down to 256 KiB: the gap above the image starts "
        f"at {gap.start:#x}, the hint {hint:#x} lands on the image's last page and is "
        f"refused (code range within reach in {now_p:.1%} of runs over ASLR now)",
        f".bss in a PT_LOAD of its own at {edit.bss:#x} ends the image's last page on "
        f"{boundary:#x} ({format_size(boundary - gap.start)} of address space): the hint "
        f"{after_far[0]:#x} is honoured whenever the brk heap is far, code range "
        f"[{placed.placed.start:#x}, {placed.placed.end:#x}) within reach of the builtins "
        f"(within reach in {then_p:.1%} of runs, from {now_p:.1%})",
        "GNU ld and gold only (relinked: -Tbss at such an address ends the image on the "
        "boundary): lld moves the later sections after .bss, mold stretches the RW "
        "segment over the gap",
    )
    return Padding(edit, flags, boundary, gap.start, before, after, reasons)

