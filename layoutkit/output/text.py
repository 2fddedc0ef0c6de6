"""Text output: generators of lines, readelf-like (aligned columns, hex, binary units)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING

from layoutkit.advice import linkers
from layoutkit.core.kinds import CodeRangeVerdict, Verdict
from layoutkit.core.text import escaped, shown
from layoutkit.core.units import format_size
from layoutkit.output.document import flags_text
from layoutkit.output.opcache import opcache_lines
from layoutkit.output.replay import replay_lines, replay_summary, replay_verdict, worst_line
from layoutkit.output.safety import safety_lines
from layoutkit.output.terminal import terminal_view

if TYPE_CHECKING:  # annotations only: rendering loads no analysis module
    from layoutkit.advice.candidates import Advice
    from layoutkit.advice.move import RelocationCheck
    from layoutkit.commands.inspect import Inspection
    from layoutkit.commands.maps import MapsAnalysis
    from layoutkit.core.model import ElfImage
    from layoutkit.core.scenario import KernelCapture
    from layoutkit.core.spans import Span
    from layoutkit.ranges import BranchForm
    from layoutkit.window.accounting import Accounting
    from layoutkit.window.kernel import KernelConfig
    from layoutkit.window.profiles import Generation


def table(
    rows: Iterable[tuple[str, ...]], header: tuple[str, ...], indent: str = "  "
) -> Iterator[str]:
    """Columns padded to their widest cell; the last column is not padded."""
    all_rows = [header, *rows]
    widths = [max(len(row[i]) for row in all_rows) for i in range(len(header))]
    for row in all_rows:
        cells = [cell.ljust(width) for cell, width in zip(row[:-1], widths, strict=False)]
        yield (indent + "  ".join([*cells, row[-1]])).rstrip()


def image_lines(image: ElfImage) -> Iterator[str]:
    endian = "little" if image.little_endian else "big"
    yield f"File:        {shown(image.path)}"
    yield (f"Format:      ELF{image.bits} {endian}-endian, {image.arch} "
           f"(e_machine {image.e_machine}), {image.e_type}, entry {image.entry:#x}")
    yield f"Load model:  {image.load_kind.describe()}"
    if image.interpreter:
        yield f"Interpreter: {shown(image.interpreter)}"
    if image.soname:
        yield f"SONAME:      {shown(image.soname)}"
    if image.needed:
        yield f"Needed:      {', '.join(shown(n) for n in image.needed)}"
    yield f"Build ID:    {image.build_id or '(none)'}"
    symtab = "yes" if image.has_symtab else "no (stripped)"
    yield f"Symbols:     .symtab {symtab}, .dynsym {'yes' if image.has_dynsym else 'no'}"
    if image.comment:
        yield f"Comment:     {' | '.join(image.comment)}"
    yield ""
    yield "Program headers:"
    yield from table(
        ((seg.type, f"{seg.offset:#08x}", f"{seg.vaddr:#018x}", f"{seg.filesz:#08x}",
          f"{seg.memsz:#08x}", flags_text(seg), f"{seg.align:#x}") for seg in image.segments),
        ("Type", "Offset", "VirtAddr", "FileSiz", "MemSiz", "Flg", "Align"),
    )


def inspection_lines(result: Inspection, *, bundled: bool = False) -> Iterator[str]:
    """``bundled``: no BINARY was given and the bundled sample is shown."""
    if bundled:
        yield f"No BINARY given: inspecting the bundled sample {result.image.path}"
        yield "(AArch64, non-PIE, GNU ld default base, LuaJIT-like anchor)."
        yield ""
    yield from image_lines(result.image)
    yield ""
    kernel = result.kernel
    if result.bias:
        yield (f"Placement:   load bias {result.bias:#x} ({result.bias_how}); "
               "the addresses below are run-time addresses")
    else:
        yield f"Placement:   {result.bias_how}"
    yield (f"Kernel:      {kernel_text(kernel)}, VA bits {kernel.va_bits}, user space "
           f"[{kernel.mmap_min_addr:#x}, {kernel.user_top:#x}) (mmap_min_addr to TASK_SIZE)")
    code = result.image.code_segments
    for seg in code:
        span = seg.span
        yield (f"Code:        [{span.start + result.bias:#x}, {span.end + result.bias:#x}) "
               f"{format_size(span.size)}")
    anchor, runtime = result.anchor, result.runtime_anchor
    where = (f"{runtime.start:#x}" if runtime.size == 1
             else f"[{runtime.start:#x}, {runtime.end:#x})")
    yield (f"Anchor:      {shown(anchor.name)} at {where} ({anchor.how_found}: "
           f"{escaped(anchor.detail)})")
    yield ""
    yield "Reach windows (where code can lie and still reach the anchor):"
    yield from table(
        (
            (
                r.form.name,
                r.form.kind.value,
                f"-{r.below:#x}" if r.window else "-",
                f"+{r.above:#x}" if r.window else "-",
                f"[{r.window.start:#x}, {r.window.end:#x})" if r.window else "none",
                format_size(r.window.size) if r.window else "0 B",
                _clip_note(r.clipped_below, r.clipped_above),
            )
            for r in result.reach
        ),
        ("Form", "Kind", "Below", "Above", "Window", "Size", "Clipped"),
    )
    yield ""
    yield from prediction_lines(result)
    yield ""
    if result.opcache is not None:
        yield from opcache_lines(result.opcache)
        yield ""
    yield from replay_lines(result.forecast)
    yield ""
    yield verdict(result)
    yield worst_line(result.prediction.worst)
    if result.v8 is not None:
        # V8 takes one contiguous range by one hint: its placement decides, not the room.
        yield (f"Verdict: {result.v8.verdict}: V8's code range "
               f"{'within' if result.v8.worst_near else 'out of'} reach of its builtins in "
               f"the worst case: {result.v8.worst.removeprefix('v8: ')}")
    else:
        yield replay_verdict(result.forecast)


def kernel_text(kernel: KernelConfig) -> str:
    """Which kernel: its release where one was seen or given, and where from."""
    release = f"Linux {kernel.release}" if kernel.release else "Linux (current rules)"
    legacy = ("; vm.legacy_va_layout=1: its mmap area grows bottom-up, the model places "
              "it top-down" if kernel.legacy_va_layout else "")
    return f"{release} {kernel.arch} ({kernel.source}{legacy})"


def _clip_note(below: int, above: int) -> str:
    parts = []
    if below:
        parts.append(f"{format_size(below)} below mmap_min_addr")
    if above:
        parts.append(f"{format_size(above)} above TASK_SIZE")
    return ", ".join(parts) or "-"


def verdict(result: Inspection) -> str:
    direct = result.reach[0]
    full = direct.below + direct.above
    size = direct.window.size if direct.window else 0
    lost = direct.clipped_below + direct.clipped_above
    name = direct.form.name
    if direct.window is None:
        return f"Reach: no {name} window: the anchor span is wider than the branch reach"
    if lost:
        share = 100 * size // max(full, 1)
        return (f"Reach: the {name} window is cut to {format_size(size)} of "
                f"{format_size(full)} ({share}%) by the edges of user space")
    return f"Reach: the full {format_size(size)} {name} window lies inside user space"


def forms_lines(forms: Iterable[BranchForm]) -> Iterator[str]:
    rows = []
    for form in forms:
        if form.wraps:
            back, fwd = "all", "all"
        elif form.region:
            back, fwd = "region", f"{format_size(form.region)} aligned"
        else:
            back, fwd = f"{-form.disp_min:#x}", f"{form.disp_max:#x}"
        rows.append((form.arch, form.name, form.kind.value, back, fwd,
                     format_size(form.reach), str(form.granule), form.note or "-"))
    yield from table(rows, ("Arch", "Form", "Kind", "Back", "Forward", "Reach", "Align", "Note"))


def _span(span: Span | None) -> str:
    return f"[{span.start:#x}, {span.end:#x})" if span else "none"


def window_lines(acc: Accounting, *, best: Accounting | None = None,
                 generation: Generation | None = None) -> Iterator[str]:
    jit = acc.jit
    evidence = (f"; generation: {generation.evidence} ({generation.confidence})"
                if generation else "")
    yield (f"JIT window ({jit.profile.name}, {jit.profile.summary}{evidence}):")
    yield (f"  window {_span(jit.window)} {format_size(jit.window.size)} around target "
           f"{jit.target:#x}; usable {_span(jit.usable)}, {acc.slots} slots of "
           f"{format_size(jit.slot)}")
    label = "worst case over ASLR" if best is not None else "as mapped"
    yield ""
    yield f"Occupants ({label}):"
    if acc.occupants:
        yield from table(
            ((o.kind.value, f"{o.span.start:#x}", f"{o.span.end:#x}",
              format_size(o.overlap(jit.window)), shown(o.path) if o.path else "-")
             for o in acc.occupants),
            ("Kind", "Start", "End", "In window", "Path"),
        )
    else:
        yield "  (none)"
    yield ""
    share = f"{100 * acc.free_share:.1f}%"
    yield (f"Free: {acc.free_slots} of {acc.slots} slots ({share}), "
           f"{format_size(acc.free_bytes)}; largest free run {_span(acc.largest_free)} "
           f"{format_size(acc.largest_free.size) if acc.largest_free else ''}".rstrip())
    if best is not None:
        yield (f"      best case over ASLR: {best.free_slots} of {best.slots} slots "
               f"({100 * best.free_share:.1f}%)")
    if acc.miss_probability is not None:
        yield (f"Probing: {jit.random_probes} random hints per area; chance that all miss a "
               f"free slot: {acc.miss_probability:.3g} ({jit.profile.on_failure})")
    cap = acc.capacity
    per = max(1, -(-cap.mcode_per_state // cap.area_size))
    yield (f"Capacity: {cap.states_requested} state(s) x {format_size(cap.mcode_per_state)} "
           f"= {format_size(cap.demand)}; {cap.areas_free} free areas of "
           f"{format_size(cap.area_size)} / {per} per state = {cap.states_fit} state(s) fit: "
           f"{cap.verdict}")


def accounting_verdict(acc: Accounting) -> str:
    cap = acc.capacity
    if cap.verdict is Verdict.OK:
        return (f"Verdict: ok: {cap.states_fit} state(s) of {format_size(cap.mcode_per_state)} "
                f"fit, {cap.states_requested} requested")
    return (f"Verdict: insufficient: {cap.states_requested} state(s) of "
            f"{format_size(cap.mcode_per_state)} requested, {cap.states_fit} fit")


def prediction_lines(result: Inspection) -> Iterator[str]:
    pred = result.prediction
    yield from window_lines(pred.worst, best=pred.best, generation=result.generation)
    yield ""
    yield "Picture (worst case; --svg FILE draws it to scale):"
    yield from ("  " + line for line in terminal_view(pred.worst, result.runtime_anchor))
    for note in result.notes:
        yield f"Note: {note}"


def maps_lines(result: MapsAnalysis) -> Iterator[str]:
    maps, acc = result.maps, result.accounting
    yield f"Source:      {shown(maps.source)} ({len(maps.mappings)} mappings)"
    yield f"Executable:  {shown(maps.executable) if maps.executable else '(unknown)'}"
    kernel = result.kernel
    yield (f"Kernel:      {kernel_text(kernel)}, VA bits {kernel.va_bits}, user space "
           f"[{kernel.mmap_min_addr:#x}, {kernel.user_top:#x})")
    anchor = result.anchor
    where = (f"{anchor.span.start:#x}" if anchor.span.size == 1 else _span(anchor.span))
    yield (f"Anchor:      {shown(anchor.name)} at {where} ({anchor.how_found}: "
           f"{escaped(anchor.detail)})")
    yield ""
    total = sum(a.span.size for a in result.jit_areas)
    yield f"JIT code: {len(result.jit_areas)} area(s), {format_size(total)}"
    if result.jit_areas:
        yield from table(
            ((f"{a.span.start:#x}", f"{a.span.end:#x}", format_size(a.span.size),
              f"{a.distance:+#x}", "inside" if acc.jit.window.contains(a.span) else "OUTSIDE")
             for a in result.jit_areas),
            ("Start", "End", "Size", "Distance", "Window"),
        )
    yield ""
    yield from window_lines(acc, generation=result.generation)
    yield ""
    yield "Picture (--svg FILE draws it to scale):"
    yield from ("  " + line for line in terminal_view(
        acc, result.anchor.span, jit_areas=[a.span for a in result.jit_areas]))
    for note in result.notes:
        yield f"Note: {note}"
    yield ""
    if result.opcache is not None:
        yield from opcache_lines(result.opcache)
        yield ""
    yield from replay_lines(result.forecast)
    yield ""
    yield worst_line(acc).replace("Worst case over ASLR", "Slot arithmetic, as mapped")
    v8 = result.v8
    if v8 is not None and v8.code_range is not None:
        reach = "within" if v8.verdict is CodeRangeVerdict.NEAR else "out of"
        yield (f"Verdict: {v8.verdict}: V8's code range [{v8.code_range.start:#x}, "
               f"{v8.code_range.end:#x}) ({v8.how}) is {reach} reach of its builtins: "
               f"{v8.cost}")
    else:
        yield replay_verdict(result.forecast) if result.forecast.result else accounting_verdict(acc)


def _figures(acc: Accounting) -> str:
    big = acc.largest_free
    return (f"{acc.free_slots}/{acc.slots} slots free ({100 * acc.free_share:.1f}%), "
            f"{format_size(acc.free_bytes)}, largest run {format_size(big.size) if big else '0 B'}"
            f", {acc.capacity.states_fit} state(s) fit: {acc.capacity.verdict}")


def advice_lines(advice: Advice) -> Iterator[str]:
    what = "default link" if advice.synthetic else shown(advice.image.path)
    yield f"Binary:      {what} ({advice.arch})"
    yield f"Linker:      {advice.linker} ({advice.linker_evidence})"
    yield f"JIT profile: {advice.profile}"
    kernel = advice.kernel
    yield (f"Kernel:      {kernel_text(kernel)}, VA bits {kernel.va_bits}, mmap_min_addr "
           f"{kernel.mmap_min_addr:#x}")
    for note in advice.notes:
        yield f"Note: {note}"
    yield ""
    current = advice.current.worst
    yield (f"Now (worst case over ASLR): window {_span(current.jit.window)}: "
           f"{_figures(current)}")
    if advice.forecast is not None:
        yield from replay_lines(advice.forecast)
    yield ""
    for number, rec in enumerate(advice.recommendations, start=1):
        yield f"{number}. {rec.kind} ({rec.linker})"
        if rec.flags:
            yield f"   flags:  {' '.join(rec.flags)}"
        if rec.worst is not None:
            yield f"   after:  window {_span(rec.worst.jit.window)}: {_figures(rec.worst)}"
        if rec.forecast is not None:
            yield f"   replay: {replay_summary(rec.forecast)}"
        for reason in rec.reasons:
            yield f"   why:    {reason}"
        yield from safety_lines(rec.safety)
        if rec.flags:
            for system, text in linkers.snippets(list(rec.flags)).items():
                yield f"   {system + ':':<7} {text}"
        yield ""
    yield advice_verdict(advice)


def advice_verdict(advice: Advice) -> str:
    """The top recommendation, before and after, by the replay where there is one."""
    current = advice.current.worst
    top = next((r for r in advice.recommendations if r.worst is not None), None)
    if top is None or top.worst is None:
        return "Verdict: nothing to change at link time"
    now = advice.forecast.result if advice.forecast else None
    after = top.forecast.result if top.forecast else None
    if now is not None and after is not None:
        return (f"Verdict: {top.kind} with {top.linker}: {now.states} state(s) abort traces "
                f"in {100 * now.p_abort:.1f}% -> {100 * after.p_abort:.1f}% of {now.runs} "
                f"replay runs; safe states {now.safe_states} -> {after.safe_states} "
                f"(worst case: {current.free_slots} -> {top.worst.free_slots} free slots)")
    return (f"Verdict: {top.kind} with {top.linker}: {current.free_slots} -> "
            f"{top.worst.free_slots} free slots (worst case), "
            f"{top.worst.capacity.states_fit} state(s) fit")


def capture_lines(capture: KernelCapture, config: KernelConfig) -> Iterator[str]:
    """``layoutkit kernel``: this machine's kernel facts and the rules they give."""
    yield f"Kernel:      Linux {capture.release} {capture.machine} ({capture.source})"
    yield f"ASLR:        kernel.randomize_va_space = {capture.randomize_va_space}"
    yield f"mmap:        vm.mmap_min_addr = {capture.mmap_min_addr:#x}, vm.mmap_rnd_bits = " \
          f"{'(none)' if capture.mmap_rnd_bits is None else capture.mmap_rnd_bits}, " \
          f"vm.legacy_va_layout = {int(capture.legacy_va_layout)}"
    yield (f"Rules:       PIE bias and mmap base randomised over {format_size(config.mmap_rnd)}, "
           f"brk over {format_size(config.brk_rnd)}, user space [{config.mmap_min_addr:#x}, "
           f"{config.user_top:#x})")
    yield "`layoutkit kernel --capture > host.json` writes these facts for --kernel-file."


def move_lines(check: RelocationCheck) -> Iterator[str]:
    allowed = check.allowed
    names = ", ".join(check.sections)
    yield (f"Moving {names} (now at {check.address:#x}) while the rest stays: "
           f"{check.references} PC-relative references cross the cut (decoded)")
    lo, hi = max(0, check.address + allowed.lo), check.address + allowed.hi
    yield f"  feasible: [{lo:#x}, {hi:#x}] (offsets {allowed.lo:+#x} to {allowed.hi:+#x})"
    for label, bound in (("lowest", allowed.limit_lo), ("highest", allowed.limit_hi)):
        if bound is not None:
            yield (f"  {label} set by the {bound.form} at {bound.pc:#x} -> {bound.target:#x}")
    if check.requested is not None:
        flags = f"-Wl,--section-start={check.sections[0]}={check.requested:#x}"
        yield f"  requested {check.requested:#x}: feasible"
        if check.sections:
            yield f"  flags (GNU ld, gold): {flags} (the sections after it move too)"
            yield "  lld and mold: not offered (their --section-start was not verified here)"
        else:
            yield "  several sections move as one: place them with a linker script"
    yield ("  note: AArch64, ARM and PPC linkers add range-extension veneers for a B/BL "
           "beyond reach: past this range calls still link, through a stub")
    yield f"Verdict: {names} can move within [{lo:#x}, {hi:#x}]"
