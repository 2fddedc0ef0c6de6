"""Per-run layouts (window/aslr.py) and what the replay does with them, on real fixtures.

Expected values come from the fixtures' ``readelf -lW`` oracles and the kernel rules
cited in aslr.py (fs/binfmt_elf.c, arch_randomize_brk, randomize_page).
"""

from __future__ import annotations

from dataclasses import asdict, replace

import numpy as np

from layoutkit.core.arches import by_name
from layoutkit.elf import ElfReader
from layoutkit.window.aslr import draw
from layoutkit.window.kernel import KernelConfig, release_version
from layoutkit.window.replay import HeapTiming, ReplayParams, arena_hole, replay, simulate
from tests.support import ELF_DIR
from tests.window.test_replay import load

MiB, GiB = 1 << 20, 1 << 30
PAGE = 4096


def test_brk_range_per_arch_and_kernel_version() -> None:
    arm64 = KernelConfig.for_arch(by_name("aarch64"))
    x86 = KernelConfig.for_arch(by_name("x86_64"))
    assert arm64.brk_rnd == GiB  # arch/arm64/kernel/process.c: SZ_1G
    assert replace(arm64, release="4.19.0-27-arm64").brk_rnd == GiB
    # arch/x86/kernel/process.c: 0x02000000 before commit 44c76825d6ee (v6.9).
    assert replace(x86, release="6.8.12-amd64").brk_rnd == 32 * MiB
    assert replace(x86, release="6.9.0").brk_rnd == GiB
    assert replace(x86, release="6.12.48+deb13-amd64").brk_rnd == GiB
    assert x86.brk_rnd == GiB
    assert release_version("6.1.0-27-arm64") == (6, 1)
    assert release_version("unknown") is None


def test_fixed_layout_of_the_nopie_fixture() -> None:
    with ElfReader(ELF_DIR / "aarch64" / "nopie") as reader:
        image = reader.image()
    kernel = KernelConfig.for_arch(image.arch)
    lay = draw(image, kernel, 0, runs=3, seed=1, randomize=False)
    # readelf -lW: the RW PT_LOAD ends at 0x41fde8 + 0x2d0 = 0x4200b8; brk is the next page.
    assert lay.heap_start == (0x421000,) * 3
    assert lay.bias == (0,) * 3
    assert lay.brk_range == 0


def test_randomised_layouts_follow_the_kernel_rules() -> None:
    with ElfReader(ELF_DIR / "aarch64" / "nopie") as reader:
        nopie = reader.image()
    with ElfReader(ELF_DIR / "aarch64" / "pie") as reader:
        pie = reader.image()
    kernel = KernelConfig.for_arch(nopie.arch)
    lay = draw(nopie, kernel, 0, runs=2000, seed=4, randomize=True)
    offsets = np.asarray(lay.heap_start) - 0x421000
    assert set(lay.bias) == {0}  # ET_EXEC stays at its link address
    assert (offsets % PAGE == 0).all()
    assert offsets.min() >= 0
    assert offsets.max() < GiB
    assert offsets.max() > GiB - 8 * MiB  # the whole range is used
    again = draw(nopie, kernel, 0, runs=2000, seed=4, randomize=True)
    assert again == lay
    base = kernel.pie_base(pie.max_align)
    assert base == 0xAAAAAAAA0000
    lay = draw(pie, kernel, base, runs=2000, seed=4, randomize=True)
    biases, heaps = np.asarray(lay.bias), np.asarray(lay.heap_start)
    steps = (biases - base) // 0x10000
    assert ((biases - base) % 0x10000 == 0).all()  # p_align 0x10000
    assert steps.min() >= 0
    assert steps.max() < (1 << 18) * PAGE // 0x10000  # mmap_rnd_bits 18 on arm64
    # brk after the PIE's bss (0x1fdb8 + 0x2f8 -> 0x21000), moved with the bias.
    assert ((heaps - biases - 0x21000) % PAGE == 0).all()
    assert (heaps - biases - 0x21000 < GiB).all()


def test_2025_always_ends_with_every_area_placed() -> None:
    """The 2025 allocator cannot abort a state forever: a state without areas takes
    mmap(NULL) and a new range. With enough retries every state ends holding its
    maxmcode, some of it far away."""
    image, kernel, jit, bias = load(ELF_DIR / "aarch64" / "nopie", "luajit-2025")
    p = ReplayParams(states=16, runs=50, aslr=False, heap_timing=HeapTiming.BEFORE,
                     retries=100)
    out = simulate(image, kernel, jit, bias, p)
    assert out.held.tolist() == [16 * 32] * 50  # 2048 KiB / 64 KiB areas per state
    assert (out.far > 0).all()
    # Aborts come only from states that held areas in the first range: at most one each
    # there, then once per far range that fills (none does at this size).
    assert int(out.aborts.max()) <= 1


def test_a_library_window_moves_with_the_mmap_base() -> None:
    """libanchor.so sits at the top of the mmap area: ASLR moves it, its window and the
    thread stacks below it together (in 64 KiB steps: p_align 0x10000), so the replay
    gives the same statistics with ASLR on and off."""
    image, kernel, jit, bias = load(ELF_DIR / "aarch64" / "libanchor.so", "luajit-2.1")
    on = asdict(replay(image, kernel, jit, bias, ReplayParams(states=64, runs=100),
                       search=False))
    off = asdict(replay(image, kernel, jit, bias,
                        ReplayParams(states=64, runs=100, aslr=False), search=False))
    assert on.pop("aslr") is True
    assert off.pop("aslr") is False
    assert on == off
    assert on["areas_placed"] >= 64 * 8


def test_2025_far_ranges_start_in_the_arena_alignment_hole() -> None:
    """glibc's first arena keeps the 64 MiB-aligned half of a 128 MiB mapping below the
    thread stacks (malloc/arena.c new_heap); the rest of the 64 MiB above it stays free.
    By hand, arm64 with ASLR off: mmap_base = 2^48 - 128 MiB (mm/util.c MIN_GAP), 64
    stacks of 8 MiB + a 64 KiB guard below it end at 0xffffd7c00000, 60 MiB above a
    64 MiB boundary: 960 free slots, then 8 arenas (one vCPU) of 1024 slots each."""
    with ElfReader(ELF_DIR / "aarch64" / "nopie") as reader:
        image = reader.image()
    kernel = KernelConfig.for_arch(by_name("aarch64"))
    assert kernel.mmap_base == (1 << 48) - (128 << 20)
    lay = draw(image, kernel, 0, runs=3, seed=1, randomize=False)
    arenas, hole = arena_hole(kernel, lay, 64, 1)
    assert (arenas, hole.tolist()) == (8 * 1024, [960] * 3)
    # 4 MiB mapped before the threads start move the stacks down: 56 MiB, 896 slots.
    assert arena_hole(kernel, lay, 64, 1, 4 << 20)[1].tolist() == [896] * 3
    assert arena_hole(kernel, lay, 4, 1)[0] == 4 * 1024  # one arena per thread, up to 8
    assert arena_hole(kernel, lay, 64, 4)[0] == 31 * 1024  # 8 x cores, less the main one
    # With ASLR the mmap base moves by whole pages over 1 GiB: the hole takes any size.
    _, holes = arena_hole(kernel, draw(image, kernel, 0, runs=400, seed=1, randomize=True),
                           64, 1)
    assert holes.min() < 100 and holes.max() > 900
