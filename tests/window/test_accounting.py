"""Window accounting: occupants, free slots, capacity and miss probability, written out."""

from __future__ import annotations

from dataclasses import replace

import pytest
from hypothesis import given
from hypothesis import strategies as st

from layoutkit.core.arches import by_name
from layoutkit.core.kinds import OccupantKind as K
from layoutkit.core.scenario import Demand, Scenario
from layoutkit.core.spans import Span
from layoutkit.elf import ElfReader
from layoutkit.ranges import default_form
from layoutkit.window.accounting import Occupant, account, fit_count, miss_probability
from layoutkit.window.kernel import KernelConfig
from layoutkit.window.layout import predict
from layoutkit.window.profiles import PROFILES, JitWindow, jit_window
from tests.support import ELF_DIR, oracle

KiB, MiB, GiB = 1 << 10, 1 << 20, 1 << 30
SZ = 64 * KiB
PAGE = 4096
ARM64 = by_name("aarch64")


def hand_window(lo: int = 0x100000, slots: int = 16, probes: int = 3,
                profile: str = "luajit-2.1") -> JitWindow:
    """A window of ``slots`` whole 64 KiB slots whose hints are exactly those slots.

    The hint set is hint_lo + k * slot for every k with hint_lo + k * slot + size < hint_hi
    (LuaJIT's `hint + sz < range+range` shape): hint_hi one byte past the window gives k
    in 0..slots-1.
    """
    span = Span(lo, lo + slots * SZ)
    return JitWindow(PROFILES[profile], default_form(ARM64), lo + slots * SZ // 2, span, span,
                     lo, span.end + 1, SZ, probes)


# Window [0x100000, 0x200000): 16 slots. What occupies it (and around it):
IMAGE = Occupant(K.IMAGE, Span(0x0F8000, 0x121000), "/bin/x")  # starts below the window
HEAP = Occupant(K.HEAP, Span(0x150000, 0x1A0000), "[heap]")
RESERVE = Occupant(K.HEAP_RESERVE, Span(0x190000, 0x1C8000), "[heap]")  # overlaps HEAP
JIT = Occupant(K.JIT, Span(0x1D0000, 0x1E0000))
STACK = Occupant(K.STACK, Span(0x300000, 0x310000), "[stack]")  # outside the window
OCCUPANTS = [STACK, JIT, RESERVE, HEAP, IMAGE]


def test_account_free_runs_slots_and_overlaps() -> None:
    jw = hand_window()
    acc = account(jw, OCCUPANTS)
    # Taken (merged): [0xf8000, 0x121000), [0x150000, 0x1c8000), [0x1d0000, 0x1e0000).
    # Free parts of the window: [0x121000, 0x150000) -> whole slots [0x130000, 0x150000);
    # [0x1c8000, 0x1d0000) -> no whole slot; [0x1e0000, 0x200000).
    assert acc.free == (Span(0x130000, 0x150000), Span(0x1E0000, 0x200000))
    assert acc.free_bytes == 4 * SZ
    assert (acc.slots, acc.free_slots) == (16, 4)
    assert acc.free_share == 4 / 16
    # Two runs of two slots: the lower one is reported.
    assert acc.largest_free == Span(0x130000, 0x150000)
    # Occupants that touch the window, in address order, with their bytes inside it.
    assert [o.kind.value for o in acc.occupants] == ["image", "heap", "heap-reserve", "jit"]
    overlaps = [o.overlap(jw.window) for o in acc.occupants]
    assert overlaps == [0x121000 - 0x100000, 0x1A0000 - 0x150000, 0x1C8000 - 0x190000,
                        0x10000]


def test_account_occupant_in_the_boundary_slot_is_listed_but_takes_no_slot() -> None:
    jw = jit_window("luajit-2.1", ARM64, 0x7F00003DD0, Span(0x1000, 1 << 48))
    # LuaJIT never keeps the lowest window slot (target - range): `target - p < range`.
    edge = Occupant(K.ANONYMOUS, Span(jw.window.start, jw.window.start + SZ))
    acc = account(jw, [edge])
    assert acc.occupants == (edge,)
    assert acc.free_slots == 1982


@pytest.mark.parametrize(("mcode", "per_state"), [
    (None, 8),  # default maxmcode 512 KiB: 8 areas of 64 KiB
    (64 * KiB, 1),
    (1, 1),  # any code at all needs one whole area
    (100 * KiB, 2),  # areas are allocated whole (mcode_allocarea: sizemcode bytes)
    (128 * KiB, 2),
    (129 * KiB, 3),
])
def test_capacity_counts_whole_areas_per_state(mcode: int | None, per_state: int) -> None:
    jw = hand_window()
    acc = account(jw, OCCUPANTS, states=2, mcode=mcode)
    cap = acc.capacity
    assert cap.area_size == 64 * KiB
    assert cap.areas_free == 4
    assert cap.mcode_per_state == (512 * KiB if mcode is None else mcode)
    assert cap.states_fit == 4 // per_state
    assert cap.demand == 2 * cap.mcode_per_state
    assert cap.verdict.value == ("ok" if 4 // per_state >= 2 else "insufficient")


def test_states_fit_over_several_runs() -> None:
    # 16 slots, occupied so that runs of 3, 5 and 6 slots remain: 14 areas; a state of
    # 4 areas (256 KiB) needs them only in total (each area is allocated on its own).
    jw = hand_window()
    taken = [Occupant(K.ANONYMOUS, Span(0x130000, 0x140000)),
             Occupant(K.ANONYMOUS, Span(0x190000, 0x1A0000))]
    acc = account(jw, taken, states=4, mcode=256 * KiB)
    assert [s.size // SZ for s in acc.free] == [3, 5, 6]
    assert acc.capacity.areas_free == 14
    assert acc.capacity.states_fit == 14 // 4 == 3
    assert acc.capacity.verdict.value == "insufficient"


def test_miss_probability_written_out() -> None:
    jw = hand_window(probes=3)
    acc = account(jw, OCCUPANTS)
    # 16 equally likely hints, 4 of them on a free slot; 3 independent probes miss with
    # (1 - 4/16)^3 = (3/4)^3 = 27/64.
    assert jw.hint_count(SZ) == 16
    assert acc.miss_probability == 27 / 64 == 0.421875
    assert miss_probability(jw, acc.free, SZ) == 27 / 64
    # One free slot of 16, 5 probes: (15/16)^5.
    five = hand_window(probes=5)
    one = account(five, [Occupant(K.ANONYMOUS, Span(0x100000, 0x1F0000))])
    assert one.free_slots == 1
    assert one.miss_probability == pytest.approx((15 / 16) ** 5, rel=1e-12)


def test_miss_probability_edge_cases() -> None:
    jw = hand_window()
    assert account(jw, []).miss_probability == 0.0  # every hint hits
    full = account(jw, [Occupant(K.ANONYMOUS, jw.window)])
    assert full.miss_probability == 1.0
    # An empty window (nothing to draw from).
    empty = JitWindow(PROFILES["luajit-2.1"], default_form(ARM64), 0x100000,
                      Span(0x100000, 0x100000), Span(0x100000, 0x100000), 0x100000, 0x100000,
                      SZ, 26)
    assert empty.hint_count(SZ) == 0
    assert account(empty, []).miss_probability == 1.0
    # A window clipped away entirely: hints are still drawn (raw arithmetic), none hits.
    clipped = jit_window("luajit-2.1", ARM64, 0x7F00003DD0, Span(0x1000, 0x2000000))
    assert clipped.window.empty
    assert account(clipped, []).miss_probability == 1.0
    # First fit: no randomness, no miss probability.
    generic = jit_window("generic", ARM64, 0x7F00003DD0, Span(0x1000, 1 << 48))
    assert account(generic, []).miss_probability is None


def test_miss_probability_of_an_empty_arm64_window() -> None:
    jw = jit_window("luajit-2.1", ARM64, 0x7F00003DD0, Span(0x1000, 1 << 48))
    # 1983 hints target - range + k * 64K (k = 0..1982); only k = 0 (p == target - range)
    # is refused; 26 random probes.
    assert account(jw, []).miss_probability == pytest.approx((1 - 1982 / 1983) ** 26, rel=1e-12)


def test_luajit2017_hints_miss_when_only_the_outer_halves_are_free() -> None:
    # Issue #282: the old hints only cover target +- range/2. Fill that middle half and
    # 990 slots stay free, yet no hint can ever land on them.
    target, rng = 0x7F00000000, 62 * MiB
    jw = jit_window("luajit-2017", ARM64, target + 0x3DD0, Span(0x1000, 1 << 48))
    acc = account(jw, [Occupant(K.ANONYMOUS, Span(target - rng // 2, target + rng // 2))])
    assert acc.free_slots == 1982 - rng // SZ == 990
    assert acc.miss_probability == 1.0


# --- fit_count ----------------------------------------------------------------------------


def brute_fit(gaps: list[Span], size: int, step: int) -> int:
    """Every multiple of ``step`` where ``[p, p + size)`` lies inside one gap."""
    top = max((g.end for g in gaps), default=0)
    return sum(1 for p in range(0, top + 1, step)
               if any(g.start <= p and p + size <= g.end for g in gaps))


@st.composite
def disjoint_gaps(draw: st.DrawFn) -> list[Span]:
    cuts = sorted(set(draw(st.lists(st.integers(0, 3000), max_size=12))))
    pairs = list(zip(cuts[::2], cuts[1::2], strict=False))
    return [Span(a, b) for a, b in pairs if a < b]


@given(gaps=disjoint_gaps(), size=st.integers(1, 400), step=st.integers(1, 300))
def test_fit_count_matches_brute_force(gaps: list[Span], size: int, step: int) -> None:
    assert fit_count(gaps, size, step) == brute_fit(gaps, size, step)


def test_fit_count_examples() -> None:
    # [0x12000, 0x50000) holds 64K-aligned starts 0x20000, 0x30000, 0x40000.
    assert fit_count([Span(0x12000, 0x50000)], SZ, SZ) == 3
    # 128 KiB areas there: starts 0x20000 and 0x30000.
    assert fit_count([Span(0x12000, 0x50000)], 2 * SZ, SZ) == 2
    assert fit_count([Span(0x12000, 0x2F000)], SZ, SZ) == 0
    assert fit_count([], SZ, SZ) == 0


# --- layout.predict: aarch64 nopie at 0x400000 ----------------------------------------------


def readelf_loads(binary_name: str) -> list[tuple[int, int]]:
    """(vaddr, memsz) of every LOAD line in the readelf -lW oracle."""
    rows = []
    for line in oracle(ELF_DIR / "aarch64" / binary_name, "l").splitlines():
        cols = line.split()
        if cols[:1] == ["LOAD"]:
            rows.append((int(cols[2], 16), int(cols[5], 16)))
    return rows


def test_predict_aarch64_nopie_worst_and_best() -> None:
    loads = readelf_loads("nopie")
    assert loads == [(0x400000, 0x42CC), (0x41FDE8, 0x2D0)]
    bss_end = max(v + m for v, m in loads)  # 0x4200b8
    heap0 = -(-bss_end // PAGE) * PAGE  # brk starts on the next page
    assert heap0 == 0x421000
    image_end = heap0
    # lj_vm_exit_handler 0x403dd0: target 0x400000, range 62 MiB; usable is
    # (target - range, target + range) less one slot at each end, cut at mmap_min_addr
    # 4096: [0x1000, 0x41f0000), first whole slot 0x10000.
    usable_end = 0x400000 + 62 * MiB - SZ
    assert usable_end == 0x41F0000
    below = Span(0x10000, 0x400000)
    above = Span(-(-image_end // SZ) * SZ, usable_end)
    assert above == Span(0x430000, 0x41F0000)

    with ElfReader(ELF_DIR / "aarch64" / "nopie") as reader:
        image = reader.image()
    kernel = KernelConfig.for_arch(ARM64, mmap_min_addr=4096)
    jw = jit_window("luajit-2.1", ARM64, 0x403DD0, kernel.user_space)
    pred = predict(image, kernel, jw, 0, Scenario())

    assert pred.bias_range == (0, 0)  # ET_EXEC: at its link address
    # arch_randomize_brk (arm64): randomize_page(mm->brk, SZ_1G): [brk, brk + 1 GiB - page].
    assert pred.heap_start == (heap0, heap0 + GiB - PAGE)
    assert pred.heap_reserve == 64 * MiB

    # Worst: the heap right after the bss, its 64 MiB reserve covering everything above
    # the image up to the end of the window: only the slots below the image are left.
    worst = pred.worst
    assert worst.free == (below,)
    assert worst.free_slots == below.size // SZ == 63
    assert worst.capacity.states_fit == 63 // 8 == 7
    heaps = [o for o in worst.occupants if o.kind.value == "heap-reserve"]
    assert len(heaps) == 1 and heaps[0].span.start < above.start

    # Best: the heap placed beyond the window: below and above the image are free.
    best = pred.best
    assert best.free == (below, above)
    assert best.free_slots == 63 + above.size // SZ == 63 + 988 == 1051
    assert best.capacity.states_fit == 1051 // 8 == 131
    assert all(o.span.start >= usable_end for o in best.occupants if o.kind.value == "heap-reserve")


def test_predict_heap_zero_leaves_only_the_image() -> None:
    with ElfReader(ELF_DIR / "aarch64" / "nopie") as reader:
        image = reader.image()
    kernel = KernelConfig.for_arch(ARM64, mmap_min_addr=4096)
    jw = jit_window("luajit-2.1", ARM64, 0x403DD0, kernel.user_space)
    pred = predict(image, kernel, jw, 0, Scenario(heap=0, demand=Demand(states=8)))
    for acc in (pred.worst, pred.best):
        assert acc.free == (Span(0x10000, 0x400000), Span(0x430000, 0x41F0000))
        assert acc.capacity.states_fit == 1051 // 8
        assert acc.capacity.verdict.value == "ok"


@pytest.mark.parametrize(("release", "spread"), [
    ("6.8.12-amd64", 32 * MiB),  # arch/x86/kernel/process.c before 44c76825d6ee: SZ_32M
    ("6.12.48+deb13-amd64", GiB),  # v6.9 and later: SZ_1G
    (None, GiB),  # no release known: a current kernel's rule
])
def test_predict_brk_range_follows_the_kernel_release(release: str | None,
                                                      spread: int) -> None:
    """The worst/best corners and the replay read the same brk rule (KernelConfig)."""
    with ElfReader(ELF_DIR / "x86_64" / "nopie") as reader:
        image = reader.image()
    x86 = by_name("x86_64")
    kernel = replace(KernelConfig.for_arch(x86), release=release)
    jw = jit_window("luajit-2.1", x86, 0x4044A0, kernel.user_space)
    pred = predict(image, kernel, jw, 0, Scenario())
    assert pred.heap_start is not None
    assert pred.heap_start[1] - pred.heap_start[0] == spread - PAGE
