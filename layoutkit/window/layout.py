"""Where the kernel puts a program's pieces, over ASLR, and what lands in a JIT window.

For a binary (not a running process) the occupants of a window are predicted: the
image at its placement, the brk heap that starts after the image's bss (randomised by
``arch_randomize_brk``) and grows by the ``heap`` reserve, and for a library anchor the
top of the mmap area. The result is a range over ASLR: the worst and best accounting
over every distinct heap position (the free space is piecewise linear in the heap's
offset, so its extremes lie where a heap edge meets a window or occupant edge).
"""

from __future__ import annotations

from dataclasses import dataclass

from layoutkit.core.kinds import OccupantKind
from layoutkit.core.model import ElfImage, LoadKind
from layoutkit.core.scenario import Scenario
from layoutkit.core.spans import Span, align_down, align_up, normalize
from layoutkit.core.units import format_size
from layoutkit.window.accounting import Accounting, Occupant, account
from layoutkit.window.kernel import PAGE, STACK_RLIMIT, KernelConfig
from layoutkit.window.profiles import JitWindow


@dataclass(frozen=True)
class Prediction:
    bias_range: tuple[int, int]  # lowest and highest load bias over ASLR (inclusive)
    heap_start: tuple[int, int] | None  # brk start range (run-time, inclusive), if in play
    heap_reserve: int
    worst: Accounting
    best: Accounting
    notes: tuple[str, ...]


def image_span(image: ElfImage, bias: int) -> Span:
    span = image.image_span
    assert span is not None  # ElfReader refuses images without PT_LOAD
    return Span(span.start + bias, span.end + bias)


def image_occupants(image: ElfImage, bias: int) -> list[Occupant]:
    """The pages each PT_LOAD maps (a gap between segments, as -Tbss makes, stays free)."""
    spans = normalize(Span(seg.page_span(PAGE).start + bias, seg.page_span(PAGE).end + bias)
                      for seg in image.loads if seg.memsz)
    return [Occupant(OccupantKind.IMAGE, span, image.path) for span in spans]


def _candidates(lo: int, hi: int, edges: list[int], h0: int, heap: int) -> list[int]:
    """Heap offsets in [lo, hi] where the accounting can change its trend."""
    picks = {lo, hi}
    for edge in edges:
        for r in (edge - h0, edge - h0 - heap):
            for near in (align_down(r, PAGE), align_up(r, PAGE)):
                if lo <= near <= hi:
                    picks.add(near)
    return sorted(picks)


def predict(image: ElfImage, kernel: KernelConfig, jit: JitWindow, bias: int,
            scenario: Scenario) -> Prediction:
    """Accounting of ``jit`` (placed for load ``bias``) over the kernel's randomisation."""
    heap = scenario.heap
    states, mcode = scenario.demand.states, scenario.demand.mcode
    notes: list[str] = []
    img = Occupant(OccupantKind.IMAGE, image_span(image, bias), image.path)
    fixed: list[Occupant] = image_occupants(image, bias)
    if image.load_kind is LoadKind.EXEC:
        bias_range = (0, 0)
    elif image.load_kind is LoadKind.PIE:
        bias_range = (bias, bias + kernel.mmap_rnd - PAGE)
    else:
        # The top of the mmap area over arch_mmap_rnd()'s draws, with ASLR on
        # (KernelConfig.mmap_gap: below the stack's randomisation range).
        bias_range = (kernel.top_of_mmap_bias(image, kernel.mmap_top(
                          randomize=True, rnd=kernel.mmap_rnd - PAGE)),
                      kernel.top_of_mmap_bias(image, kernel.mmap_top(randomize=True)))
    if image.load_kind in (LoadKind.EXEC, LoadKind.PIE):
        # fs/binfmt_elf.c: brk starts at the end of the highest PT_LOAD (bss included),
        # then arch_randomize_brk() moves it up by [0, brk_rnd).
        end = max(seg.vaddr + seg.memsz for seg in image.loads) + bias
        h0 = align_up(end, PAGE)
        lo, hi = 0, kernel.brk_rnd - PAGE
        edges = [jit.window.start, jit.window.end, jit.usable.start, jit.usable.end,
                 img.span.start, img.span.end]
        results = []
        for r in _candidates(lo, hi, edges, h0, heap):
            heap_occ = Occupant(OccupantKind.HEAP_RESERVE, Span(h0 + r, h0 + r + heap),
                               "[heap]")
            results.append(account(jit, [*fixed, heap_occ], states=states, mcode=mcode))
        # Run-time range: the image itself moves over the bias range (PIE), the heap with it.
        spread = bias_range[1] - bias_range[0]
        heap_start: tuple[int, int] | None = (h0 + lo, h0 + hi + spread)
        notes.append(f"brk heap starts {format_size(0)}..{format_size(hi)} after the bss "
                     f"(randomised by up to {format_size(kernel.brk_rnd)}) and is given "
                     f"{format_size(heap)} to grow (--heap)")
    elif image.load_kind is LoadKind.STATIC_PIE:
        # fs/binfmt_elf.c load_elf_binary: a static PIE (no interpreter, load_bias 0) is
        # the first mapping of the top-down mmap area, just below mmap_base. With ASLR on
        # mmap_base() keeps the stack's randomisation range free above it as well
        # (KernelConfig.mmap_gap): ``bias`` is that placement with a zero mmap offset
        # (nominal_bias(randomize=True)). Worst case: the stack drew its lowest top,
        # STACK_TOP - STACK_RND_MASK pages, and its rlimit and guard gap reach down to
        # mmap_base; best case: its highest, STACK_TOP. The vDSO is mapped next, top-down
        # (arch_setup_additional_pages), next to the image: it may take the slot after
        # the image's last one (worst) or none of its own (best). Measured: on Debian's
        # arm64 6.1 kernel [vvar][vdso] right above the image, 12 KiB; on this x86-64
        # host's 6.18 kernel right below it.
        extra = align_up(img.span.end, jit.slot)
        vdso = Occupant(OccupantKind.VDSO, Span(extra, extra + PAGE), "[vdso]")
        facts = kernel.arch.kernel
        reserve = STACK_RLIMIT + facts.stack_guard_gap
        low = kernel.user_top - facts.stack_rnd
        stacks = [Occupant(OccupantKind.STACK, Span(top - reserve, top), "[stack]")
                  for top in (low, kernel.user_top)]
        results = [account(jit, [*fixed, stacks[0], vdso], states=states, mcode=mcode),
                   account(jit, [*fixed, stacks[1]], states=states, mcode=mcode)]
        heap_start = None
        notes.append("static PIE: at the top of the mmap area, below the gap mmap_base() "
                     f"keeps for the stack ({format_size(kernel.mmap_gap(randomize=True))} "
                     "with ASLR on); its brk heap is far away (ELF_ET_DYN_BASE)")
    else:
        # A library sits at the top of the mmap area: what was mapped before it (the
        # loader, earlier libraries) lies above, later mappings below.
        above = Span(img.span.end, kernel.user_top)
        fixed.append(Occupant(OccupantKind.MAPPED_BEFORE, above))
        results = [account(jit, fixed, states=states, mcode=mcode)]
        heap_start = None
        notes.append("library anchor: the space above it (earlier mappings, the stack and "
                     "its gap) is counted as taken; thread stacks, arenas and libraries "
                     "loaded later take the space below: measure a live process with "
                     "`layoutkit maps`")
    worst = min(results, key=lambda a: (a.free_slots, a.free_bytes))
    best = max(results, key=lambda a: (a.free_slots, a.free_bytes))
    return Prediction(bias_range, heap_start, heap, worst, best, tuple(notes))
