"""Per-run randomisation of the layout: brk offset, load bias and mmap base, as the kernel draws.

One draw per replay run, from a seeded generator (Python's ``random``), so a replay is
reproducible and every run of a search over the number of states sees the same layouts
(common random numbers).
With ``aslr=False`` every run gets the fixed layout of ``setarch -R`` /
``randomize_va_space=0``.

Kernel rules (Linux source, file and function):

- brk: ``fs/binfmt_elf.c`` load_elf_binary sets ``mm->brk`` to the page-aligned end of the
  highest PT_LOAD (bss included), then with randomisation ``arch_randomize_brk()``.
  arm64 (``arch/arm64/kernel/process.c``): ``randomize_page(mm->brk, SZ_1G)`` for 64-bit
  tasks. x86-64 (``arch/x86/kernel/process.c``): ``randomize_page(mm->brk, 0x02000000)``
  (32 MiB) until v6.9, ``SZ_1G`` for 64-bit tasks since commit 44c76825d6ee ("x86:
  Increase brk randomness entropy for 64-bit systems", v6.9). ``randomize_page()``
  (``mm/util.c``) adds ``get_random_long() % pages`` whole pages: [0, range) in pages.
- load bias of a PIE: ``ELF_ET_DYN_BASE + arch_mmap_rnd()`` aligned down to the largest
  p_align (``fs/binfmt_elf.c``, v5.10+); ``arch_mmap_rnd()`` is ``mmap_rnd_bits`` random
  page numbers (``arch/arm64/mm/mmap.c`` up to v5.1, ``mm/util.c`` since).
- mmap base: ``mm/util.c`` mmap_base(): ``PAGE_ALIGN(STACK_TOP - gap - rnd)`` with the
  same ``arch_mmap_rnd()``; when randomising, the gap also keeps the stack's own
  randomisation range free (STACK_RND_MASK << PAGE_SHIFT: 16 GiB on x86-64, 1 GiB on
  arm64; ``KernelConfig.mmap_gap``), so even a zero draw puts the base far below where
  ``setarch -R`` has it.

What moves what: the JIT window is fixed to the anchor, so a load bias moves the window
and the image together and only changes the window's 64 KiB rounding; the brk offset is
what moves the heap relative to the window. A library anchor (or static PIE) sits at the
top of the mmap area: the mmap base moves it, the window, and the thread stacks and arenas
below it together.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from layoutkit.core.model import ElfImage, LoadKind
from layoutkit.core.spans import align_down, align_up
from layoutkit.window.kernel import PAGE, KernelConfig


@dataclass(frozen=True)
class Layouts:
    """The randomised quantities of ``runs`` runs (one entry per run)."""

    bias: tuple[int, ...]  # load bias of the image
    heap_start: tuple[int, ...]  # run-time brk start; meaningless for a library anchor
    mmap_shift: tuple[int, ...]  # mmap base minus the ASLR-off mmap base (<= 0)
    brk_range: int  # the range the brk offset was drawn from (0 with ASLR off)


def brk_base(image: ElfImage, bias: int) -> int:
    """Where brk starts before randomisation: the page after the highest PT_LOAD's end."""
    end = max(seg.vaddr + seg.memsz for seg in image.loads) + bias
    return align_up(end, PAGE)


def draw(image: ElfImage, kernel: KernelConfig, bias: int, *, runs: int, seed: int,
         randomize: bool) -> Layouts:
    """Draw ``runs`` layouts of ``image`` (``bias``: its ASLR-off load bias)."""
    start = brk_base(image, bias)
    if not randomize:
        return Layouts((bias,) * runs, (start,) * runs, (0,) * runs, 0)
    gen = random.Random(seed * 0x100000001B3 + 0x61736C72)  # "aslr": its own stream
    brk = kernel.brk_rnd
    align = max(PAGE, image.max_align)
    biases, heaps, shifts = [], [], []

    def top(rnd: int) -> int:
        return kernel.mmap_top(randomize=True, rnd=rnd)

    for _ in range(runs):
        mmap_rnd = gen.randrange(kernel.mmap_rnd // PAGE) * PAGE  # arch_mmap_rnd()
        brk_off = gen.randrange(brk // PAGE) * PAGE  # randomize_page(brk, range)
        if image.load_kind is LoadKind.EXEC:
            run_bias = bias
        elif image.load_kind is LoadKind.PIE:
            # ELF_ET_DYN_BASE + arch_mmap_rnd(), aligned down to the largest p_align.
            run_bias = bias + align_down(mmap_rnd, align)
        else:
            # Top of the mmap area: mmap_base() below the stack's randomisation range and
            # the random offset; the image is the first fit below it.
            run_bias = kernel.top_of_mmap_bias(image, top(mmap_rnd))
        biases.append(run_bias)
        heaps.append(start + (run_bias - bias) + brk_off)
        shifts.append(top(mmap_rnd) - kernel.mmap_base)
    return Layouts(tuple(biases), tuple(heaps), tuple(shifts), align_down(brk, PAGE))
