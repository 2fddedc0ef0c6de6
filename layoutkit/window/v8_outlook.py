"""What V8's code-range placement (:mod:`layoutkit.window.v8`) does for one binary.

For a binary (not a process) the occupants V8's /proc/self/maps scan sees are predicted
as in :mod:`layoutkit.window.layout`: the image's pages and, for an executable, the brk
heap that starts after the bss, moved up by ``arch_randomize_brk`` (fs/binfmt_elf.c).
V8 reserves its code range at start-up, when the heap holds a few MiB: two cases over
ASLR decide the outcome, a heap far above the bss (the gap above the bss is the first
that holds the range) and a heap near it (the first gap is the one above the heap).
"""

from __future__ import annotations

from dataclasses import dataclass

from layoutkit.core.model import ElfImage, LoadKind
from layoutkit.core.scenario import Scenario
from layoutkit.core.spans import Span, align_up
from layoutkit.core.units import format_size
from layoutkit.elf import ElfReader
from layoutkit.window.kernel import PAGE, KernelConfig
from layoutkit.window.layout import image_occupants
from layoutkit.window.profiles import JitWindow, window_for_span
from layoutkit.window.v8 import (
    NEWEST,
    SHORT_CALLS_HEAP,
    V8,
    V8_PAGE,
    CodeRangePlacement,
    MiB,
    V8Build,
    V8Profile,
    V8Rule,
    detect_v8,
    place_code_range,
    short_call_region,
)


@dataclass(frozen=True)
class V8Case:
    """One case over ASLR: the hint V8 computes and what the kernel gives it."""

    label: str  # the case, in words
    source: str  # where the hint comes from
    placement: CodeRangePlacement | None  # None: the hint's address is unknown (stripped)
    near: bool  # counted as within reach for the verdict (a 1-in-64 honour is not)


@dataclass(frozen=True)
class V8Outlook:
    """The placement of V8's code range for a binary, per case over ASLR."""

    notes: tuple[str, ...]
    worst_near: bool  # the code range within reach of the builtins in the worst case
    worst: str  # the worst case, in words
    build: V8Build | None = None
    rule: V8Rule = NEWEST
    blob: Span | None = None  # run-time embedded builtins
    region: Span | None = None  # GetShortBuiltinsCallRegion, run-time
    size: int = 0  # the code range's size
    cases: tuple[V8Case, ...] = ()
    near_probability: float | None = None  # over ASLR (None: not modelled)
    cost: str = ""  # what a code range out of reach costs

    @property
    def verdict(self) -> str:
        return "near" if self.worst_near else "far"


@dataclass(frozen=True)
class V8Choice:
    """The V8 found in a binary and the profile that models it."""

    build: V8Build
    profile: V8Profile


def choose_v8(reader: ElfReader, scenario: Scenario, *, luajit_found: bool) -> V8Choice | None:
    """The V8 profile when ``--jit v8`` asks for it, or when nothing was asked, no LuaJIT
    was found and the binary holds V8; None otherwise."""
    if scenario.jit not in (None, V8.name) or (scenario.jit is None and luajit_found):
        return None
    build = detect_v8(reader)
    if build is None:
        if scenario.jit is None:
            return None
        build = V8Build(None, None, NEWEST, f"--jit v8 without V8 evidence: {NEWEST.label}")
    chosen = V8.for_version(build.rule)
    if scenario.code_range is not None:
        chosen = chosen.with_code_range(scenario.code_range)
    return V8Choice(build, chosen)


REMAP = "the builtins are remapped into it"


def _describe(case: str, placed: CodeRangePlacement, far_cost: str = REMAP) -> str:
    return f"v8: {case}: hint {placed.hint:#x} ({_source(case, placed)}), " + \
        _outcome(placed, far_cost)


def _source(case: str, placed: CodeRangePlacement) -> str:
    if case.startswith("no maps scan"):
        return "FunctionInStaticBinaryForAddressHint"
    if placed.gap is not None:
        return f"the gap at {placed.gap.start:#x}"
    return "no gap holds it: the window's start"


def _outcome(placed: CodeRangePlacement, far_cost: str = REMAP) -> str:
    if placed.blocker is not None:
        why = (f"refused ({placed.blocker.start:#x}-{placed.blocker.end:#x} is taken): the "
               f"range goes far away and {far_cost}")
    elif placed.near and placed.placed is not None:
        why = (f"honoured: code range {placed.placed.start:#x}-{placed.placed.end:#x}"
               " reaches the builtins where they are")
    else:
        why = ("honoured, but the range sticks out of the window by "
               f"{format_size(placed.region.start - placed.hint)}: the builtins are "
               "remapped anyway")
    return why


def outlook(image: ElfImage, kernel: KernelConfig, bias: int, jit: JitWindow,
            choice: V8Choice, blob: Span) -> V8Outlook:
    """One line per case: the hint V8 computes for the builtins at run-time ``blob``,
    and whether it gets the code range; the worst case decides."""
    rule, size = choice.profile.rule, jit.profile.sizemcode
    pad = rule.pad
    # What lies above the window in every process (the stack at least): the maps scan
    # visits a gap only below a mapping.
    top = kernel.user_top
    taken = [*(o.span for o in image_occupants(image, bias)), Span(top - PAGE, top)]
    region = short_call_region(image.arch, blob)
    notes = [f"v8: {choice.build.evidence}; rule {rule.label} (checked: {rule.checked}); "
             f"code range {format_size(size)}, short-call window {region.start:#x}-"
             f"{region.end:#x}"]
    mmin = kernel.mmap_min_addr

    def done(worst: str, cases: tuple[V8Case, ...], p_near: float) -> V8Outlook:
        return V8Outlook(tuple(notes), all(case.near for case in cases), worst,
                         choice.build, rule, blob, region, size, cases, p_near,
                         _cost(image, rule))

    if image.arch.isa not in rule.near_isas:
        lines, scan_case = _no_scan(image, kernel, bias, region, size, choice, taken)
        notes.extend(lines)
        return done(lines[-1], (scan_case,), float(scan_case.near))
    cases: list[tuple[V8Case, str]] = []
    if image.load_kind is LoadKind.EXEC:
        h0 = align_up(max(seg.vaddr + seg.memsz for seg in image.loads) + bias, PAGE)
        last = h0 + kernel.brk_rnd - PAGE
        far = place_code_range([*taken, Span(last, last + PAGE)], region, size, rule,
                               mmap_min_addr=mmin)
        # Whether the heap's place decides: the first gap lies below the heap's last
        # place and the request reaches past the heap's first (a request ending below
        # the bss, as a small --code-range under the image, is never in the heap's way).
        heap_decides = far.gap is not None and far.gap.start < last and far.request.end > h0
        p_far = 0.0
        if heap_decides:
            # Heap offsets (page steps) that leave the first gap holding the request.
            need = far.request.end - h0
            p_far = max(0, kernel.brk_rnd - align_up(need, PAGE)) / kernel.brk_rnd
            label = f"brk heap {format_size(need)} or more above the bss (p={p_far:.2f} over ASLR)"
        else:
            if far.gap is not None and far.request.end <= h0:
                p_far = 1.0  # the first gap lies below the bss: no heap position changes it
            label = "brk heap anywhere"
        notes.append(_describe(label, far))
        cases.append((V8Case(label, _source(label, far), far, far.near), notes[-1]))
        near = place_code_range([*taken, Span(h0, h0 + 2 * 1024 * 1024)], region, size,
                                rule, mmap_min_addr=mmin)
        rounded = " rounded down to 256 KiB" if rule.hint_align > 1 else ""
        # Heap nearer: honoured when the heap's end is 256 KiB-aligned (page steps).
        p_near = p_far * far.near + (1 - p_far) * (PAGE / rule.hint_align if rule.hint_align
                                                   > 1 else float(near.near))
        if near.gap is not None and near.gap.start >= h0 and near.hint != far.hint:
            cost = ("refused unless the heap's end at V8's start is 256 KiB-aligned "
                    "(1 page position in 64)" if rule.hint_align == V8_PAGE
                    else "honoured when the range above it is free")
            notes.append(f"v8: brk heap nearer: the first gap is above the heap, the hint "
                         f"is the heap's end at V8's start{rounded}: {cost}")
            cases.append((V8Case("brk heap nearer", f"the heap's end at V8's start{rounded}",
                                 near, near.near and rule.hint_align == 1), notes[-1]))
        notes.append(f"v8: code range within reach in {p_near:.1%} of runs over ASLR "
                     "(heap position and the heap's end at V8's start)")
        pad_to = align_up(far.gap.start, rule.hint_align) if far.gap is not None else 0
        # Padding advice only where rounding the gap's start down is what refuses the hint.
        if far.blocker is not None and far.gap is not None and pad_to != far.gap.start:
            notes.append(f"v8: advice: end the image's last page on a 256 KiB boundary "
                         f"({far.gap.start:#x} -> {pad_to:#x}, "
                         f"{format_size(pad_to - far.gap.start)} of padding after .bss) and "
                         f"this hint is honoured whenever the heap is far (within reach in "
                         f"{p_far + (1 - p_far) * PAGE / rule.hint_align:.1%} of runs); a "
                         "PIE build alone "
                         "does not help this rule: the rounded hint falls up to 252 KiB "
                         "below the window's start (near for 1 load bias in 64)")
    else:
        free_below = place_code_range(taken, region, size, rule, mmap_min_addr=mmin)
        share = 1.0 if rule.hint_align == 1 else PAGE / rule.hint_align
        label = (f"position-independent, nothing mapped below the window "
                 f"(near for {share:.0%} of load biases)")
        notes.append(_describe(label, free_below))
        near_case = free_below.near and rule.hint_align == 1
        cases.append((V8Case(label, _source(label, free_below), free_below, near_case),
                      notes[-1]))
        p_near = share if free_below.near or rule.hint_align > 1 else 0.0
    if pad:
        notes.append(f"v8: the hint asks for {format_size(size + pad)} "
                     f"(OS::Allocate trims to 256 KiB alignment); --max-old-space-size "
                     f"does not move the code range (under {SHORT_CALLS_HEAP // MiB} it "
                     "turns short builtin calls off: no remap, builtins called through a "
                     "register)")
    worst = next((text for case, text in cases if not case.near), cases[0][1])
    return done(worst, tuple(case for case, _ in cases), p_near)


def _cost(image: ElfImage, rule: V8Rule) -> str:
    """What a code range out of reach of the builtins costs on ``image``'s arch."""
    if image.arch.isa in rule.short_calls_isas:
        return (f"{REMAP} (a copy of the embedded blob at the range's end; with "
                f"--max-old-space-size under {SHORT_CALLS_HEAP // MiB}: called through a "
                "register instead)")
    return (f"builtins are called through a register (no short builtin calls on "
            f"{image.arch} in Node's build: nothing is remapped)")


def _no_scan(image: ElfImage, kernel: KernelConfig, bias: int, region: Span, size: int,
             choice: V8Choice, taken: list[Span]) -> tuple[list[str], V8Case]:
    """Where V8 does not scan the maps (arm64 in Node 20's build): one fixed hint."""
    lines = []
    if size > region.size:
        lines.append(f"v8: a {format_size(size)} code range cannot lie within the "
                     f"{format_size(region.size)} short-call window of {image.arch}")
    if image.arch.isa in choice.profile.rule.short_calls_isas:
        cost = REMAP
    else:
        cost = (f"builtins are called through a register (no short builtin calls on "
                f"{image.arch} in Node's build: nothing is remapped)")
    lines.append(f"v8: no maps scan ({choice.profile.rule.label} on {image.arch}): the hint "
                 "lies in the image's own code whatever the layout, so no link change "
                 "brings the code range near")
    func = choice.build.hint_function
    label = f"no maps scan on {image.arch}"
    if func is None:
        lines.append(f"v8: no maps scan on {image.arch}: the hint is V8's own "
                     "FunctionInStaticBinaryForAddressHint (stripped here): inside the "
                     f"image, so the range goes anywhere; {cost}")
        return lines, V8Case(label, "FunctionInStaticBinaryForAddressHint (stripped: "
                             "inside the image, address unknown)", None, False)
    placed = place_code_range(taken, region, size, choice.profile.rule,
                              mmap_min_addr=kernel.mmap_min_addr, hint_function=func + bias)
    lines.append(_describe(label, placed, cost))
    return lines, V8Case(label, _source(label, placed), placed, placed.near)


def v8_advice(reader: ElfReader, scenario: Scenario, image: ElfImage, kernel: KernelConfig,
              anchor: str | None, *, padded: bool = False) -> list[str]:
    """For ``advise`` on a V8 binary: the candidates are ranked by room in the generic
    window, but V8 takes its code range by one hint; what V8's own rule says
    (``padded``: the padding is a recommendation, advice/v8_pad.py, not a note)."""
    choice = choose_v8(reader, scenario, luajit_found=False) if anchor is None else None
    if choice is None or choice.build.blob is None:
        return []
    bias, _ = kernel.nominal_bias(image)
    blob = choice.build.blob.shifted(bias)
    jit = window_for_span(choice.profile, image.arch, blob, kernel.user_space)
    seen = outlook(image, kernel, bias, jit, choice, blob)
    keep = [n for n in seen.notes if ("advice:" in n or "within reach in" in n
            or "no maps scan (" in n or "max-old-space-size" in n)
            and not (padded and "advice:" in n)]
    head = ("v8: the first recommendation is V8's own rule's (the padding to 256 KiB); the "
            "others are ranked by room in the generic window" if padded else
            "v8: the changes below are ranked by room in the generic window; V8 takes its "
            "code range by one hint, so what decides is V8's own rule (inspect shows it):")
    return [head, *keep]
