"""The candidates of ``layoutkit advise``: linker flags (or a runtime change) that widen
a JIT's window.

Candidates, each predicted with the same kernel model and accounting as ``inspect``
(worst case over ASLR) and ranked by worst-case free slots, then capacity:

- ``rebase``: move the whole non-PIE image so the window lies wholly in user space,
  clear of mmap_min_addr (``-Ttext-segment`` for GNU ld and gold, ``--image-base`` for
  lld and mold), within what the code model links (x86-64 and riscv64 non-PIE
  executables cannot be linked above 2 GiB with Debian's crt objects: ``Arch.link``);
- ``pie``: link as a PIE: the kernel puts it at ELF_ET_DYN_BASE (+ ASLR), far from
  everything but its own heap, and the link address no longer matters;
- ``relocate-text``: keep the code where it is rebased to, but give .bss its own segment
  above the window (``-Tbss``, GNU ld and gold only), so the brk heap that follows the
  bss grows outside the window; only when the code's references to .bss still reach;
- ``runtime``: what a running LuaJIT can change (maxmcode, the 2025 allocator).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from layoutkit.advice import linkers, relocate, safety_table
from layoutkit.advice.edits import Edit, MakePie, Rebase, RelocateText
from layoutkit.advice.safety import Protection, Protections, Safety, Shape, Source
from layoutkit.advice.v8_pad import Padding
from layoutkit.advice.v8_pad import padding as v8_padding
from layoutkit.core.arches import Arch, GiB
from layoutkit.core.kinds import AdviceKind, Verdict
from layoutkit.core.model import ElfImage, LoadKind, Perm, Section, Segment
from layoutkit.core.scenario import Scenario
from layoutkit.core.spans import Span, align_up
from layoutkit.core.units import format_size
from layoutkit.elf import ElfReader
from layoutkit.errors import NoFitError, UsageError
from layoutkit.ranges import FormKind, data_reach, forms
from layoutkit.read import refs
from layoutkit.read.host import host
from layoutkit.window.accounting import Accounting
from layoutkit.window.anchor import find_anchor, luajit_generation
from layoutkit.window.kernel import PAGE, KernelConfig
from layoutkit.window.layout import Prediction, predict
from layoutkit.window.opcache import settings_advice, text_of
from layoutkit.window.profiles import Generation, JitWindow, choose_profile, window_for_span
from layoutkit.window.v8_outlook import v8_advice

if TYPE_CHECKING:  # the replay (numpy) is run by the use case, commands/advise.py
    from layoutkit.window.forecast import Forecast


@dataclass(frozen=True)
class Recommendation:
    kind: AdviceKind
    linker: str  # "bfd", "gold", "lld", "mold" or "any"
    flags: tuple[str, ...]  # exactly as they go on a gcc/clang command line
    edit: Edit | None  # what the flags do to the image; None for runtime advice
    prediction: Prediction | None  # None for runtime advice
    reasons: tuple[str, ...]
    safety: Safety | None = None  # what the flags do to the protections (None: runtime)
    forecast: Forecast | None = None  # the allocator replay on the advised image

    @property
    def base(self) -> int | None:
        return self.edit.base if isinstance(self.edit, Rebase | RelocateText) else None

    @property
    def bss(self) -> int | None:
        return self.edit.bss if isinstance(self.edit, RelocateText) else None

    @property
    def worst(self) -> Accounting | None:
        return self.prediction.worst if self.prediction else None


@dataclass(frozen=True)
class Advice:
    arch: Arch
    image: ElfImage
    synthetic: bool  # True when no binary was given (the default link of the arch)
    linker: str
    linker_evidence: str
    profile: str
    kernel: KernelConfig
    current: Prediction
    recommendations: tuple[Recommendation, ...]
    notes: tuple[str, ...]
    # Why the requested states do not fit even after the best change, by slot arithmetic
    # (None: they fit); the use case judges on the replay where there is one.
    no_fit: str | None = None
    forecast: Forecast | None = None  # the allocator replay on the current image


_PIE_WHY = ("the kernel loads a PIE at ELF_ET_DYN_BASE + ASLR, far from the mmap area and "
            "the stack; the link address stops mattering",
            "compile every object with -fPIE as well",
            "its brk heap still follows the image (the worst case counts it)")
# fs/binfmt_elf.c, load_elf_binary: an ET_DYN without PT_INTERP is mapped where mmap puts
# it, and its brk moved to ELF_ET_DYN_BASE, away from the image.
_STATIC_PIE_WHY = ("the kernel maps a static PIE where mmap puts it (the top of the mmap "
                   "area, + ASLR); the link address stops mattering",
                   "compile every object with -fPIE as well",
                   "its brk heap starts at ELF_ET_DYN_BASE, away from the image")


def synthetic_image(arch: Arch, linker: str, *, text: int = 1 << 20,
                    data: int = 256 << 10) -> ElfImage:
    """A default non-PIE link of ``arch``: code then data (half of it bss)."""
    base = linkers.default_base(linker, arch)
    page = arch.max_page_size
    code = Segment("PT_LOAD", base, text, 0, text, Perm.R | Perm.X, 5, page)
    rw_at = align_up(base + text, page) + (base + text) % page
    rw = Segment("PT_LOAD", rw_at, data, text, data // 2, Perm.R | Perm.W, 6, page)
    return ElfImage(f"(default {linker} link of {arch})", text + data // 2, arch, arch.bits,
                    arch.little_endian, arch.e_machine, "ET_EXEC", LoadKind.EXEC, base,
                    None, (code, rw), (), None, (), None, False, False, ())


def _window(profile: str, arch: Arch, anchor: Span, kernel: KernelConfig,
            form: str | None) -> JitWindow:
    return window_for_span(profile, arch, anchor, kernel.user_space, form_name=form)


def _extent_below(profile: str, arch: Arch, anchor: Span, kernel: KernelConfig,
                  form: str | None) -> int:
    """How far the window reaches below the anchor, measured where nothing clips it."""
    probe = Span(1 << 40, (1 << 40) + anchor.size)
    jit = window_for_span(profile, arch, probe, Span(0, 1 << 60), form_name=form)
    return probe.start - jit.window.start + 0x10000  # + LuaJIT's target rounding


def candidates(reader: ElfReader | None, scenario: Scenario, *, arch_name: str | None,
               linker: str | None, anchor: str | None, allow_weaker: bool = False) -> Advice:
    """Ranked recommendations for the binary behind ``reader`` (None: the default link
    of ``arch_name``), each predicted under ``scenario``, each with its safety
    (advice/safety_table.py): one that would weaken a protection carries the flags that
    keep it, or is dropped with the reason (``allow_weaker``: shown, marked)."""
    jit, form = scenario.jit, scenario.form
    notes: list[str] = []
    generation = None
    if reader is not None:
        binary = reader.path
        image = reader.image()
        found = find_anchor(reader, anchor)
        generation = luajit_generation(reader, found)
        if arch_name is not None and image.arch.name != arch_name:
            from layoutkit.core.arches import by_name
            if by_name(arch_name) is not image.arch:
                raise UsageError(f"--arch {arch_name}, but {binary} is {image.arch}")
        arch = image.arch
        guess = linkers.detect(image)
        chosen = linker or guess.name
        evidence = guess.evidence if linker is None else "given with --linker"
        anchor_link = found.span
        synthetic = False
    else:
        if arch_name is None:
            raise UsageError("advise without a BINARY needs --arch")
        from layoutkit.core.arches import by_name
        arch = by_name(arch_name)
        chosen = linker or "bfd"
        evidence = "the default link (no binary given)"
        image = synthetic_image(arch, chosen)
        code = image.code_segments[0]
        middle = code.vaddr + code.memsz // 2
        anchor_link = Span(middle, middle + 1)
        synthetic = True
        notes.append(f"no binary: a {format_size(code.memsz)} code segment at the "
                     f"{chosen} default {code.vaddr:#x}, anchor in its middle")
    linkers.check(chosen, arch)
    if synthetic and generation is None:
        generation = Generation("luajit-2.1", "no binary: assuming LuaJIT 2.1", "low")
    profile, note = choose_profile(arch, jit, generation)
    if note:
        notes.append(note)
    kernel = KernelConfig.resolve(arch, scenario.kernel, host=host())

    def evaluate(img: ElfImage, anchor_at: Span) -> Prediction:
        bias, _ = kernel.nominal_bias(img, randomize=True)
        runtime = Span(anchor_at.start + bias, anchor_at.end + bias)
        return predict(img, kernel, _window(profile, arch, runtime, kernel, form), bias,
                       scenario)

    current = evaluate(image, anchor_link)
    recs: list[Recommendation] = []
    image_span = image.image_span
    assert image_span is not None
    page = max(arch.max_page_size, PAGE)
    rebuild: Callable[[tuple[str, ...]], Recommendation | str] | None = None
    shape = Shape.DYNAMIC if synthetic else Shape.of(image)  # the calculator: dynamic
    if image.load_kind is LoadKind.EXEC:
        floor = max(kernel.mmap_min_addr, 0x10000)
        below = _extent_below(profile, arch, anchor_link, kernel, form)
        offset = anchor_link.start - image_span.start
        base = align_up(max(floor + below - offset, floor), page)
        limit = 2 * GiB if arch.link.low_2g else kernel.user_top
        clamped = base + image_span.size > limit
        if clamped:
            # The whole window cannot lie above mmap_min_addr: go as high as links.
            base = (limit - image_span.size) // page * page
            if base < floor:
                raise NoFitError(f"no base: a {format_size(image_span.size)} {arch} image "
                                 f"does not fit between {floor:#x} and {limit:#x}")
        delta = base - image_span.start
        rebase = Rebase(base)
        moved_anchor = Span(anchor_link.start + delta, anchor_link.end + delta)
        pred = evaluate(rebase.apply(image), moved_anchor)
        window = pred.worst.jit.window
        reasons = [(f"the highest base that still links: the window [{window.start:#x}, "
                    f"{window.end:#x}) keeps what lies above mmap_min_addr") if clamped else
                   (f"the lowest base that puts the window [{window.start:#x}, "
                    f"{window.end:#x}) wholly above mmap_min_addr, far below the mmap area"),
                   f"aligned to the {format_size(page)} max page size of {arch}"]
        if arch.link.low_2g:
            reasons.append(f"{arch} non-PIE images must stay below 2 GiB (32-bit absolute "
                           "relocations in Debian's crt objects)")
        if chosen in ("lld", "mold") and arch.name != "x86_64":
            reasons.append(f"with a cross gcc 12, -fuse-ld={chosen} needs -B DIR where DIR "
                           f"holds an ld.{chosen} link")
        flags = (*linkers.fuse_ld(chosen), *linkers.base_flags(chosen, base))
        recs.append(Recommendation(AdviceKind.REBASE, chosen, flags, rebase, pred,
                                   tuple(reasons)))
        # The brk heap follows the bss: with -Tbss (GNU ld, gold) it starts above the window.
        bss = image.section(".bss")
        has_bss = any(s.memsz > s.filesz for s in image.loads) if synthetic else bss is not None
        if has_bss and linkers.separate_bss_supported(chosen):
            bss_at = align_up(pred.worst.jit.window.end + 0x10000, page)
            ok, why = _bss_move_ok(reader, bss, bss_at, delta, arch, base)
            if ok:
                def relocate_text(keep: tuple[str, ...]) -> Recommendation | str:
                    """-Tbss above the window; with ``keep`` (-z separate-code) the code
                    moves, and so do the window and the .bss address after it (a
                    reason instead when .bss can then no longer be reached)."""
                    edit = RelocateText(base, 0, separate_code=bool(keep))
                    shift = edit.code_shift(image)
                    at = Span(moved_anchor.start + shift, moved_anchor.end + shift)
                    window_end = evaluate(rebase.apply(image), at).worst.jit.window.end
                    edit = replace(edit, bss=align_up(window_end + 0x10000, page))
                    reach_ok, reach = (ok, why) if not shift else _bss_move_ok(
                        reader, bss, edit.bss, delta + shift, arch, base + shift)
                    if not reach_ok:
                        return reach
                    return Recommendation(
                        AdviceKind.RELOCATE_TEXT, chosen,
                        (*linkers.fuse_ld(chosen), *linkers.base_flags(chosen, base),
                         f"-Wl,-Tbss={edit.bss:#x}", *keep),
                        edit, evaluate(edit.apply(image), at),
                        (f".bss gets its own PT_LOAD at {edit.bss:#x}, above the window, so "
                         "the brk heap that starts after it cannot grow into the window",
                         reach,
                         "GNU ld and gold only: lld 14 moves every later section after "
                         ".bss, mold 1.10 stretches the RW segment over the gap"))
                rebuild = relocate_text
                first = relocate_text(())
                if isinstance(first, Recommendation):
                    recs.append(first)
            else:
                notes.append(f"no separate .bss: {why}")
    if image.load_kind is not LoadKind.EXEC:
        notes.append(f"{image.load_kind.describe()}: the kernel ignores the link address, so "
                     "no rebase flag would change anything")
    if image.load_kind is not LoadKind.PIE:
        make_pie = MakePie(static=shape is Shape.STATIC)
        pie_anchor = Span(anchor_link.start - image_span.start,
                          anchor_link.end - image_span.start)
        pred_p = evaluate(make_pie.apply(image), pie_anchor)
        recs.append(Recommendation(
            AdviceKind.PIE, chosen,
            (*linkers.fuse_ld(chosen), *linkers.pie_flags(shape is Shape.STATIC)), make_pie,
            pred_p, _STATIC_PIE_WHY if make_pie.static else _PIE_WHY))
    def relayout(rec: Recommendation, edit: Edit) -> Recommendation:
        """``rec`` with ``edit`` and the prediction for the image it lays out."""
        at = edit.address(image, anchor_link.start)
        return replace(rec, edit=edit,
                       prediction=evaluate(edit.apply(image), Span(at, at + anchor_link.size)))

    recs = _safe(recs, image, shape, notes, allow_weaker, rebuild, relayout)
    pie_rec = next((r for r in recs if r.kind is AdviceKind.PIE), None)
    rebase_rec = next((r for r in recs if r.kind is AdviceKind.REBASE), None)
    if pie_rec and pie_rec.worst and (rebase_rec is None or (
            rebase_rec.worst and pie_rec.worst.free_slots >= rebase_rec.worst.free_slots)):
        pie_rec = replace(pie_rec, reasons=(*pie_rec.reasons, (
            f"on {arch} with {kernel.va_bits}-bit VA a PIE gets as much room as any rebase "
            "and needs no address picked: prefer it where the code can be built -fPIE")))
        recs = [pie_rec if r.kind is AdviceKind.PIE else r for r in recs]
    # A change that leaves less room than there is now is no advice.
    for rec in [r for r in recs if r.worst and r.worst.free_slots < current.worst.free_slots]:
        recs.remove(rec)
        notes.append(f"no {rec.kind} with {rec.linker}: the current layout already leaves "
                     f"{current.worst.free_slots} free slots, the change would leave "
                     f"{rec.worst.free_slots if rec.worst else 0}")
    recs.sort(key=lambda r: (bool(r.safety and r.safety.weaker),  # --allow-weaker: last
                             -(r.worst.free_slots if r.worst else 0),
                             r.kind is not AdviceKind.RELOCATE_TEXT))
    best = (recs[0].worst if recs else None) or current.worst
    padded = False
    if reader is not None and jit is None and generation is None:
        def v8_rec(keep: tuple[str, ...]) -> Recommendation | str:
            pad = v8_padding(reader, scenario, image, kernel, anchor, chosen, keep)
            if not isinstance(pad, Padding):
                return pad or "V8's rule needs no padding"
            at = pad.edit.address(image, anchor_link.start)
            return Recommendation(AdviceKind.RELOCATE_TEXT, chosen, pad.flags, pad.edit,
                                  evaluate(pad.edit.apply(image),
                                           Span(at, at + anchor_link.size)), pad.reasons)

        first_v8 = v8_padding(reader, scenario, image, kernel, anchor, chosen)
        if isinstance(first_v8, str):
            notes.append(f"v8: {first_v8}")
        elif first_v8 is not None:
            made = v8_rec(())
            assert isinstance(made, Recommendation)
            # V8 takes its code range by one hint: its own rule's change comes first.
            kept = _safe([made], image, shape, notes, allow_weaker, v8_rec, relayout)
            recs = [*kept, *recs]
            padded = bool(kept)
    runtime = _runtime(best, scenario.demand.states, scenario.demand.mcode)
    found_text = text_of(reader, 0) if reader is not None else None
    extent = found_text[1].end - image_span.start if found_text else None
    runtime += [Recommendation(AdviceKind.RUNTIME, "any", (), None, None, reasons)
                for reasons in settings_advice(arch, profile, scenario.opcache, extent)]
    recs.extend(runtime)
    no_fit = None
    if best.capacity.verdict is not Verdict.OK:
        alternatives = "; ".join(r.reasons[0] for r in runtime) or "none"
        far = next((f for f in forms(arch) if f.kind is FormKind.FAR), None)
        if not best.jit.profile.luajit and far is not None and form != far.name:
            alternatives += f"; a JIT that calls through {far.name}: --form {far.name}"
        no_fit = (f"{scenario.demand.states} JIT state(s) of "
                  f"{format_size(best.capacity.mcode_per_state)} do not "
                  f"fit the {profile} window of {arch} even after the best change "
                  f"({best.capacity.states_fit} fit in {best.free_slots} free slots): "
                  f"runtime alternatives: {alternatives}")
    if reader is not None and jit is None and generation is None:
        notes.extend(v8_advice(reader, scenario, image, kernel, anchor, padded=padded))
    return Advice(arch, image, synthetic, chosen, evidence, profile, kernel, current,
                  tuple(recs), tuple(notes), no_fit)


def _safe(recs: list[Recommendation], image: ElfImage, shape: Shape, notes: list[str],
          allow_weaker: bool,
          rebuild: Callable[[tuple[str, ...]], Recommendation | str] | None,
          relayout: Callable[[Recommendation, Edit], Recommendation] | None = None,
          ) -> list[Recommendation]:
    """Each link-time recommendation with its safety from the table: as it is when it
    keeps every protection, with the flags that keep them (relocate-text rebuilt with
    them, since -z separate-code moves the code), or dropped with the reason; with
    ``allow_weaker`` a weaker one stays too, marked."""
    before = Protections.measure(image)

    def safety(rec: Recommendation, lost: frozenset[Protection], added: tuple[str, ...],
               source: Source, effect: safety_table.Effect | None) -> Safety:
        """``before`` less ``lost``, over the PT_LOADs of the advised image."""
        after = before.without(lost)
        if rec.edit is not None and (not lost or (isinstance(rec.edit, RelocateText)
                                     and rec.edit.merged)):
            after = replace(after, segments=Protections.measure(rec.edit.apply(image)).segments)
        notes = effect.notes if effect else (
            f"not measured for a {shape} {image.arch} program linked by {rec.linker}",)
        return Safety(before, after, added, source, notes)

    out: list[Recommendation] = []
    for rec in recs:
        found = safety_table.effect(rec.linker, shape, image.arch.name, rec.kind)
        if found is None:
            out.append(replace(rec, safety=safety(rec, frozenset(), (), Source.NOT_MEASURED, None)))
            continue
        if not found.links:
            notes.append(f"no {rec.kind} with {rec.linker}: {found.failure}")
            continue
        if not found.lost:
            out.append(replace(rec, safety=safety(rec, frozenset(), (), Source.TABLE, found)))
            continue
        lost = ", ".join(str(p) for p in sorted(found.lost, key=str))
        emitted = rec
        if (isinstance(rec.edit, RelocateText) and Protection.W_XOR_X in found.lost
                and relayout is not None):
            emitted = relayout(rec, replace(rec.edit, merged=True))  # what ld really emits
        weak = replace(emitted, safety=safety(emitted, found.lost, (), Source.TABLE, found))
        keep = found.keep or ()
        # Only relocate-text has a row that needs keeping flags (safety_table.py), and
        # its layout with them is modelled; anything else is dropped, not guessed.
        kept: Recommendation | str = (
            rebuild(keep) if keep and rebuild is not None
            and rec.kind is AdviceKind.RELOCATE_TEXT else
            f"{' '.join(keep)} would keep them, but the layout it gives is not modelled"
            if keep else "no flag keeps them")
        if isinstance(kept, Recommendation):
            out.append(replace(kept, reasons=(*kept.reasons, (
                f"{' '.join(keep)} keeps {lost}, which the other flags alone lose on "
                f"a {shape} {image.arch} program; its padding moves the code: the window "
                "and .bss address above are computed with it")),
                safety=safety(kept, frozenset(), keep, Source.TABLE, found)))
            notes.append(f"{' '.join(rec.flags)} alone would lose {lost} on a {shape} "
                         f"{image.arch} program ({rec.linker}): advised with "
                         f"{' '.join(keep)}")
        else:
            notes.append(f"no {rec.kind} with {rec.linker}: {' '.join(rec.flags)} would lose "
                         f"{lost} on a {shape} {image.arch} program and {kept}")
        if allow_weaker:
            out.append(replace(weak, reasons=(
                f"WEAKER: loses {lost}; shown only because of --allow-weaker",
                *weak.reasons)))
    return out


def _bss_move_ok(reader: ElfReader | None, bss: Section | None, bss_at: int, delta: int,
                 arch: Arch, base: int) -> tuple[bool, str]:
    """Whether every reference from the code into .bss still reaches at ``bss_at``.

    With a binary: its PC-relative references, decoded (refs.py), as difference
    constraints (relocate.py). Without one: the arch's data-reference reach.
    """
    bss_size = bss.size if bss is not None else 0
    if arch.link.low_2g and bss_at + bss_size > 2 * GiB:
        # Non-PIE code addresses .bss with sign-extended 32-bit absolutes (R_X86_64_32S,
        # R_RISCV_HI20): all of it must end below 2 GiB, not just start there.
        return False, (f".bss of {format_size(bss_size)} at {bss_at:#x} would end above the "
                       f"2 GiB a non-PIE {arch} image's absolute references reach")
    if reader is None or bss is None:
        reach = data_reach(arch)
        if bss_at - base >= reach:
            return False, f".bss {format_size(bss_at - base)} from the code is beyond {reach}"
        return True, (f"code reaches .bss {format_size(bss_at - base)} away: within the "
                      f"{format_size(reach)} of {arch}'s PC-relative data references")
    pairs = refs.scan(reader)
    try:
        allowed = relocate.move_range(pairs, [bss.name])
    except relocate.Infeasible as e:
        return False, str(e)
    offset = bss_at - (bss.addr + delta)
    count = sum(p.count for p in pairs if ".bss" in (p.src, p.dst))
    if allowed.allows(offset):
        return True, (f"all {count} PC-relative references into .bss (decoded) still reach: "
                      f".bss may move by [{allowed.lo:#x}, {allowed.hi:#x}], this moves it "
                      f"{offset:#x}")
    limit = allowed.limit_hi if offset > allowed.hi else allowed.limit_lo
    who = (f"{limit.form} at {limit.pc:#x} -> {limit.target:#x}" if limit else "a reference")
    return False, (f"moving .bss by {offset:#x} breaks {who}: .bss may only move by "
                   f"[{allowed.lo:#x}, {allowed.hi:#x}]")


def _runtime(acc: Accounting, states: int, mcode: int | None) -> list[Recommendation]:
    """What the running JIT can change (LuaJIT only): maxmcode, the 2025 allocator."""
    out: list[Recommendation] = []
    if not acc.jit.profile.luajit:
        return out
    area = acc.capacity.area_size
    per_state = (acc.free_slots * acc.jit.slot) // max(states, 1) // area * area
    want = mcode if mcode is not None else acc.jit.profile.maxmcode
    if 0 < per_state < want:
        kib = per_state >> 10
        out.append(Recommendation(
            AdviceKind.RUNTIME, "any", (), None, None,
            (f"limit each of the {states} JIT state(s) to {kib} KiB of machine code: "
             f"jit.opt.start(\"maxmcode={kib}\") or luajit -Omaxmcode={kib}",
             f"{acc.free_slots} free slots of {format_size(acc.jit.slot)} shared by "
             f"{states} state(s)")))
    if acc.jit.profile.aborts:
        out.append(Recommendation(
            AdviceKind.RUNTIME, "any", (), None, None,
            (f"upgrade to {acc.jit.profile.upgrade}: a full "
             "window then costs speed (calls through a register), not trace aborts",
             "the 2025 allocator also centres a 2^JR - 64 KiB window on the exact anchor")))
    return out
