"""JIT allocator profiles: windows, usable slots and hint sets against LuaJIT's own rules.

Every expected value is derived here from the rule quoted from LuaJIT's src/lj_mcode.c
(per generation), by brute force over the 64 KiB-aligned addresses or by arithmetic
written out in the test; never by calling the code under test.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from click.testing import CliRunner

from layoutkit.cli import cli
from layoutkit.commands.inspect import inspect_binary
from layoutkit.core.arches import Arch, by_name
from layoutkit.core.scenario import Scenario
from layoutkit.core.spans import Span
from layoutkit.errors import UsageError
from layoutkit.window.accounting import account
from layoutkit.window.kernel import KernelConfig
from layoutkit.window.profiles import (
    Generation,
    JitWindow,
    choose_profile,
    classify_version,
    detect_generation,
    jit_window,
    window_for_span,
)
from tests.support import ELF_DIR, MAPS_DIR, oracle, require

KiB, MiB, GiB = 1 << 10, 1 << 20, 1 << 30
SZ = 64 * KiB  # sizemcode on 64-bit (lj_jit.h JIT_P_sizemcode 64), also the slot size
U64 = (1 << 64) - 1

# LJ_TARGET_JUMPRANGE (src/lj_arch.h): x64 31, ARM 25, ARM64 27, MIPS 27 (28 since 68354f44).
JUMPRANGE = {"x86_64": 31, "aarch64": 27, "arm": 25, "mips64el": 27}

# A link address well inside user space on every 64-bit arch (the aarch64
# nopie-bfd-textseg fixture puts lj_vm_exit_handler there); 32-bit ARM gets its own.
FAR_ANCHOR = {"x86_64": 0x7F00003DD0, "aarch64": 0x7F00003DD0, "mips64el": 0x7F00003DD0,
              "arm": 0x40003980}


def arch(name: str) -> Arch:
    return by_name(name)


def user_space(name: str, mmap_min_addr: int | None = None) -> Span:
    return KernelConfig.for_arch(arch(name), mmap_min_addr=mmap_min_addr).user_space


def readelf_symbol(binary: Path, name: str) -> int:
    for line in oracle(binary, "s").splitlines():
        cols = line.split()
        if len(cols) == 8 and cols[7] == name:
            return int(cols[1], 16)
    raise AssertionError(f"{name} not in the readelf -sW oracle of {binary}")


# --- LuaJIT 2.1 (2017-03-08 .. 2025-11-06) ---------------------------------------------
#
# src/lj_mcode.c, mcode_alloc:
#   uintptr_t target = (uintptr_t)(void *)lj_vm_exit_handler & ~(uintptr_t)0xffff;
#   (MIPS: ((uintptr_t)lj_vm_exit_handler & ~(uintptr_t)0x0fffffffu) + 0x08000000u)
#   const uintptr_t range = (1u << (LJ_TARGET_JUMPRANGE-1)) - (1u << 21);
#   for (i = 0; i < LJ_TARGET_JUMPRANGE; i++) {
#     if (mcode_validptr(hint)) {
#       void *p = mcode_alloc_at(J, hint, sz, MCPROT_GEN);
#       if (mcode_validptr(p) &&
#           ((uintptr_t)p + sz - target < range || target - (uintptr_t)p < range))
#         return p;
#       ...
#     }
#     do {
#       hint = lj_prng_u64(&J2G(J)->prng) & ((1u<<LJ_TARGET_JUMPRANGE)-0x10000);
#     } while (!(hint + sz < range+range));
#     hint = target + hint - range;
#   }


def lj21_target(arch_name: str, anchor: int) -> int:
    if arch_name.startswith("mips"):
        return (anchor & ~0x0FFFFFFF) + 0x08000000
    return anchor & ~0xFFFF


def lj21_range(jr: int) -> int:
    return (1 << (jr - 1)) - (1 << 21)


def lj21_accepts(p: int, target: int, rng: int, sz: int = SZ) -> bool:
    """The acceptance test, with C's unsigned (uintptr_t) wrap-around."""
    return ((p + sz - target) & U64) < rng or ((target - p) & U64) < rng


def accepted_slots(target: int, rng: int, limit: Span) -> list[int]:
    """Every 64 KiB-aligned area start LuaJIT keeps, inside ``limit``, by brute force."""
    lo = max(0, (target - rng - 4 * SZ) // SZ * SZ)
    return [p for p in range(lo, target + rng + 4 * SZ, SZ)
            if limit.start <= p and p + SZ <= limit.end and lj21_accepts(p, target, rng)]


def lj21_hints(target: int, jr: int, sz: int = SZ) -> list[int]:
    """Every distinct random hint LuaJIT 2.1 can ask for (the do/while above)."""
    rng = lj21_range(jr)
    mask = (1 << jr) - 0x10000
    draws = range(0, 1 << jr, 0x10000)  # prng & mask: exactly the 64K multiples < 2^JR
    assert all(h & mask == h for h in draws)
    return [target + h - rng for h in draws if h + sz < rng + rng]


def model_hints(jw: JitWindow, size: int = SZ) -> list[int]:
    """The hint set as JitWindow's docstring defines it: hint_lo + k*slot, + size < hint_hi."""
    out, hint = [], jw.hint_lo
    while hint + size < jw.hint_hi:
        out.append(hint)
        hint += jw.slot
    return out


def test_luajit21_arm64_window_written_out() -> None:
    anchor = FAR_ANCHOR["aarch64"]
    jw = jit_window("luajit-2.1", arch("aarch64"), anchor, user_space("aarch64"))
    target = anchor & ~0xFFFF
    rng = 2**26 - 2**21
    assert rng == 62 * MiB
    assert jw.target == target == 0x7F00000000
    assert jw.window == Span(target - 62 * MiB, target + 62 * MiB)
    assert jw.window.size == 124 * MiB
    # Strict acceptance: the lowest slot (target - range) fails `target - p < range`, the
    # highest (p + sz == target + range) fails `p + sz - target < range`.
    assert jw.usable == Span(target - rng + SZ, target + rng - SZ)
    assert jw.usable.size // SZ == 124 * 16 - 2 == 1982
    # JR iterations; the first tries `mcarea - sz` (nothing for the first area), each
    # iteration draws the random hint the next one tries: JR - 1 random probes.
    assert jw.random_probes == 27 - 1 == 26
    # Hints h = 0, 64K, ..., with h + 64K < 2 * range: h <= 124 MiB - 128 KiB.
    assert jw.hint_count(SZ) == (124 * MiB - 2 * SZ) // SZ + 1 == 1983


@pytest.mark.parametrize("name", ["x86_64", "aarch64", "arm", "mips64el"])
def test_luajit21_usable_is_exactly_what_lj_mcode_accepts(name: str) -> None:
    anchor = FAR_ANCHOR[name]
    limit = user_space(name)
    jr = JUMPRANGE[name]
    target, rng = lj21_target(name, anchor), lj21_range(jr)
    jw = jit_window("luajit-2.1", arch(name), anchor, limit)
    kept = accepted_slots(target, rng, limit)
    assert jw.target == target
    assert jw.window == Span(target - rng, target + rng)
    assert jw.usable == Span(kept[0], kept[-1] + SZ)
    assert jw.usable.size // SZ == len(kept)
    assert jw.random_probes == jr - 1
    hints = lj21_hints(target, jr)
    assert jw.hint_count(SZ) == len(hints)
    assert model_hints(jw) == hints


@pytest.mark.parametrize(("name", "slots", "hints"), [
    # 2 * range / 64K - 2 boundary slots; hints: 2^JR/64K - 4 MiB/64K - 1.
    ("x86_64", 2 * 1022 * 16 - 2, 2**31 // SZ - 64 - 1),  # range 1022 MiB
    ("aarch64", 2 * 62 * 16 - 2, 2**27 // SZ - 64 - 1),  # range 62 MiB
    ("arm", 2 * 14 * 16 - 2, 2**25 // SZ - 64 - 1),  # range 14 MiB
    ("mips64el", 2 * 62 * 16 - 2, 2**27 // SZ - 64 - 1),
])
def test_luajit21_slot_and_hint_counts(name: str, slots: int, hints: int) -> None:
    jw = jit_window("luajit-2.1", arch(name), FAR_ANCHOR[name], user_space(name))
    assert jw.usable.size // SZ == slots
    assert jw.hint_count(SZ) == hints
    assert account(jw, []).free_slots == slots


def test_luajit21_mips_targets_the_middle_of_the_256mib_region() -> None:
    binary = ELF_DIR / "mips64el" / "nopie"
    anchor = readelf_symbol(binary, "lj_vm_exit_handler")
    assert anchor == 0x120004040
    jw = jit_window("luajit-2.1", arch("mips64el"), anchor, user_space("mips64el"))
    # (0x120004040 & ~0x0fffffff) + 0x08000000
    assert jw.target == 0x128000000
    rng = 62 * MiB
    assert jw.window == Span(0x128000000 - rng, 0x128000000 + rng)


@pytest.mark.parametrize("mmap_min_addr", [0x1000, 0x10000])
@pytest.mark.parametrize(("name", "binary"), [("aarch64", "nopie"), ("x86_64", "nopie")])
def test_luajit21_clipped_at_the_bottom_of_user_space(name: str, binary: str,
                                                      mmap_min_addr: int) -> None:
    anchor = readelf_symbol(ELF_DIR / name / binary, "lj_vm_exit_handler")
    assert 0x400000 <= anchor < 0x410000
    limit = user_space(name, mmap_min_addr)
    assert limit.start == mmap_min_addr
    jw = jit_window("luajit-2.1", arch(name), anchor, limit)
    target, rng = 0x400000, lj21_range(JUMPRANGE[name])
    assert target - rng < 0  # the window would start below address 0
    assert jw.window == Span(mmap_min_addr, target + rng)
    assert jw.usable == Span(mmap_min_addr, target + rng - SZ)
    kept = accepted_slots(target, rng, limit)
    # The first whole slot above mmap_min_addr (0x1000 or 0x10000) is 0x10000.
    assert kept[0] == 0x10000
    assert account(jw, []).free_slots == len(kept) == (target + rng - SZ - 0x10000) // SZ
    # Hints are raw arithmetic: those below 0 wrap in C and are wasted draws, still drawn.
    assert jw.hint_count(SZ) == len(lj21_hints(target, JUMPRANGE[name]))


def test_luajit21_clipped_at_the_top_of_user_space() -> None:
    limit = user_space("aarch64", None)
    top = limit.end  # 2^48 with the default arm64 VA size
    assert top == 1 << 48
    anchor = top - 0x10000 + 0x3DD0  # in the last 64 KiB page of user space
    jw = jit_window("luajit-2.1", arch("aarch64"), anchor, limit)
    target, rng = top - 0x10000, 62 * MiB
    assert jw.window == Span(target - rng, top)
    kept = accepted_slots(target, rng, limit)
    assert jw.usable == Span(kept[0], kept[-1] + SZ) == Span(target - rng + SZ, top)


# --- LuaJIT before 2017-03-08 -------------------------------------------------------------
#
# src/lj_mcode.c, mcode_alloc (e.g. v2.1.0-beta2):
#   for (i = 0; i < 32; i++) {  /* 32 attempts ought to be enough ... */
#     ... same acceptance test as above ...
#     do {
#       hint = (0x78fb ^ LJ_PRNG_BITS(J, 15)) << 16;  /* 64K aligned. */
#     } while (!(hint + sz < range));
#     hint = target + hint - (range>>1);
#   }


@pytest.mark.parametrize("name", ["x86_64", "aarch64", "arm"])
def test_luajit2017_hints_cover_only_the_middle_half(name: str) -> None:
    anchor = FAR_ANCHOR[name]
    jw = jit_window("luajit-2017", arch(name), anchor, user_space(name))
    target, rng = lj21_target(name, anchor), lj21_range(JUMPRANGE[name])
    # 0x78fb ^ x is a bijection of the 15-bit values: every h = k << 16, k < 2^15.
    draws = sorted((0x78FB ^ x) << 16 for x in range(1 << 15))
    hints = [target + h - (rng >> 1) for h in draws if h + SZ < rng]
    assert model_hints(jw) == hints
    assert jw.hint_count(SZ) == len(hints) == rng // SZ - 1
    assert hints[0] == target - rng // 2 and hints[-1] + SZ < target + rng // 2
    # The acceptance test (and so the usable span) is the same as 2.1's.
    kept = accepted_slots(target, rng, user_space(name))
    assert jw.window == Span(target - rng, target + rng)
    assert jw.usable == Span(kept[0], kept[-1] + SZ)
    # 32 iterations, the first tries the area below the last one: 31 random hints.
    assert jw.random_probes == 31


def test_luajit2017_arm64_numbers_written_out() -> None:
    jw = jit_window("luajit-2017", arch("aarch64"), FAR_ANCHOR["aarch64"],
                    user_space("aarch64"))
    # range 62 MiB; hints target - 31 MiB + h, h <= 62 MiB - 128 KiB: 991 of them.
    assert jw.hint_count(SZ) == 991
    assert jw.hint_lo == 0x7F00000000 - 31 * MiB


# --- LuaJIT since 2025-11-06 (commit 68354f44) -------------------------------------------
#
# src/lj_mcode.c:
#   #define MCODE_RANGE64  ((1u << LJ_TARGET_JUMPRANGE) - 0x10000u)
#   static void mcode_setrange(jit_State *J, uintptr_t addr) {
#   #if LJ_TARGET_MIPS
#     J->mcmin = addr & ~(uintptr_t)((1u << LJ_TARGET_JUMPRANGE) - 1);
#     J->mcmax = J->mcmin + (1u << LJ_TARGET_JUMPRANGE);
#   #else
#     J->mcmin = (addr - (MCODE_RANGE64 >> 1) + 0xffffu) & ~(uintptr_t)0xffffu;
#     J->mcmax = J->mcmin + MCODE_RANGE64;
#   #endif
#     if (addr < J->mcmin || !J->mcmin) J->mcmin = 0x10000u;
#     if (addr > J->mcmax) J->mcmax = ~(uintptr_t)0xffffu;
#   }
#   mcode_inrange: addr >= J->mcmin && addr + sz >= J->mcmin && addr + sz <= J->mcmax
#   mcode_alloc: mcode_setrange(J, (uintptr_t)(void *)lj_vm_exit_handler); then
#     for (; i < 16; i++) { try hint; probe: do {
#       hint = J->mcmin + (lj_prng_u64(&J2G(J)->prng) & MCODE_RANGE64);
#       if (++j > 15) goto fail; } while (!mcode_inrange(J, hint, sz)); }


def setrange_2025(addr: int, jr: int, mips: bool = False) -> tuple[int, int]:
    """J->mcmin, J->mcmax exactly as mcode_setrange computes them (uintptr_t arithmetic)."""
    range64 = (1 << jr) - 0x10000
    if mips:
        mcmin = addr & ~((1 << jr) - 1) & U64
        mcmax = (mcmin + (1 << jr)) & U64
    else:
        mcmin = ((addr - (range64 >> 1) + 0xFFFF) & U64) & (~0xFFFF & U64)
        mcmax = (mcmin + range64) & U64
    if addr < mcmin or not mcmin:
        mcmin = 0x10000
    if addr > mcmax:
        mcmax = ~0xFFFF & U64
    return mcmin, mcmax


def inrange_2025(addr: int, mcmin: int, mcmax: int, sz: int = SZ) -> bool:
    end = (addr + sz) & U64
    return addr >= mcmin and end >= mcmin and end <= mcmax


def hints_2025(mcmin: int, mcmax: int, jr: int) -> list[int]:
    range64 = (1 << jr) - 0x10000
    return [mcmin + h for h in range(0, range64 + 1, 0x10000)
            if inrange_2025(mcmin + h, mcmin, mcmax)]


def test_luajit2025_window_is_centred_on_the_exact_anchor() -> None:
    anchor = FAR_ANCHOR["aarch64"]
    jw = jit_window("luajit-2025", arch("aarch64"), anchor, user_space("aarch64"))
    width = 2**27 - 64 * KiB
    # mcode_setrange: mcmin = (addr - RANGE64/2 + 0xffff) & ~0xffff, mcmax = mcmin + RANGE64.
    mcmin = (anchor - width // 2 + 0xFFFF) & ~0xFFFF
    assert jw.window == Span(mcmin, mcmin + width) == Span(*setrange_2025(anchor, 27))
    assert jw.window.size == width
    # Up to 16 iterations, each trying one in-range random hint (the first area has no
    # `mcarea - sz` to try).
    assert jw.random_probes == 16


@pytest.mark.parametrize("mmap_min_addr", [0x1000, 0x10000])
def test_luajit2025_low_end_is_clamped_to_0x10000(mmap_min_addr: int) -> None:
    binary = ELF_DIR / "aarch64" / "nopie"
    anchor = readelf_symbol(binary, "lj_vm_exit_handler")
    jw = jit_window("luajit-2025", arch("aarch64"), anchor, user_space("aarch64", mmap_min_addr))
    mcmin, _ = setrange_2025(anchor, 27)
    assert mcmin == 0x10000  # addr - RANGE64/2 wrapped: `addr < J->mcmin` resets it
    assert jw.window.start == 0x10000
    assert jw.usable.start == 0x10000


def test_luajit2025_mips_uses_the_whole_256mib_region() -> None:
    anchor = readelf_symbol(ELF_DIR / "mips64el" / "nopie", "lj_vm_exit_handler")
    jw = jit_window("luajit-2025", arch("mips64el"), anchor, user_space("mips64el"))
    mcmin, mcmax = setrange_2025(anchor, 28, mips=True)
    assert (mcmin, mcmax) == (0x120000000, 0x130000000)
    assert jw.window == Span(mcmin, mcmax)
    assert jw.usable == Span(mcmin, mcmax)
    hints = hints_2025(mcmin, mcmax, 28)
    assert len(hints) == 2**28 // SZ
    assert jw.hint_count(SZ) == len(hints)
    assert model_hints(jw) == hints


@pytest.mark.parametrize(("name", "anchor"), [
    pytest.param("aarch64", FAR_ANCHOR["aarch64"], id="aarch64-unaligned"),
    pytest.param("x86_64", 0x555555558A40, id="x86_64-unaligned"),
    # anchor - (2^27 - 64K)/2 is 64K-aligned when anchor & 0xffff == 0x8000: agrees.
    pytest.param("aarch64", 0x7F00008000, id="aarch64-aligned"),
    # Clamped at the bottom: mcmin = 0x10000 but mcmax keeps align_up(addr - half) + RANGE64.
    pytest.param("aarch64", 0x403DD0, id="aarch64-clamped"),
])
def test_luajit2025_usable_and_hints_are_what_mcode_inrange_accepts(name: str,
                                                                    anchor: int) -> None:
    jr = JUMPRANGE[name]
    limit = user_space(name, 0x1000)
    jw = jit_window("luajit-2025", arch(name), anchor, limit)
    mcmin, mcmax = setrange_2025(anchor, jr)
    kept = [p for p in range(mcmin, mcmax, SZ) if inrange_2025(p, mcmin, mcmax)]
    assert jw.usable == Span(kept[0], kept[-1] + SZ) == Span(mcmin, mcmax)
    assert account(jw, []).free_slots == len(kept)
    hints = hints_2025(mcmin, mcmax, jr)
    assert jw.hint_count(SZ) == len(hints)


# --- generic --------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "form", "width"), [
    # Mutual reach: the lowest instruction must reach the highest and back, so
    # width - granule <= disp_max and width - granule <= -disp_min.
    # B/BL imm26*4: [-2^27, 2^27 - 4], granule 4: width 2^27.
    ("aarch64", "b/bl", 2**27),
    # JAL imm20*2: [-2^20, 2^20 - 2], granule 2: width 2^20.
    ("riscv64", "jal", 2**20),
    # b/bl LI*4: [-2^25, 2^25 - 4]: width 2^25.
    ("ppc64le", "b/bl", 2**25),
    # jmp rel32 from the next instruction: [5 - 2^31, 4 + 2^31], granule 1:
    # width - 1 <= 2^31 - 5.
    ("x86_64", "jmp/call rel32", 2**31 - 4),
])
def test_generic_width_is_the_one_way_reach_centred(name: str, form: str,
                                                    width: int) -> None:
    anchor = 0x7F00003DD0 if name != "riscv64" else 0x40003C70
    jw = jit_window("generic", arch(name), anchor, user_space(name))
    assert jw.form.name == form
    assert jw.window == Span(anchor - width // 2, anchor - width // 2 + width)
    start = -(-jw.window.start // SZ) * SZ
    end = jw.window.end // SZ * SZ
    assert jw.usable == Span(start, end)
    assert (jw.random_probes, jw.hint_count(SZ)) == (0, 0)


def test_generic_riscv64_fixture_window() -> None:
    anchor = readelf_symbol(ELF_DIR / "riscv64" / "nopie-bfd-textseg", "lj_vm_exit_handler")
    assert anchor == 0x40003C70
    jw = jit_window("generic", arch("riscv64"), anchor, user_space("riscv64"))
    # Width 2^20 (JAL's one-way reach), centred: [anchor - 2^19, anchor + 2^19).
    assert jw.window == Span(0x40003C70 - 2**19, 0x40003C70 + 2**19)
    assert jw.usable == Span(0x3FF90000, 0x40080000)
    assert account(jw, []).free_slots == 15


def test_generic_mips_window_lies_in_the_jal_region() -> None:
    anchor = readelf_symbol(ELF_DIR / "mips64el" / "nopie", "lj_vm_exit_handler")
    jw = jit_window("generic", arch("mips64el"), anchor, user_space("mips64el"))
    # MIPS64 J/JAL: target = (pc + 4)[63:28] || instr_index << 2, so code at pc reaches
    # the anchor iff (pc + 4) >> 28 == anchor >> 28.
    for pc in (jw.usable.start, jw.usable.end - 4):
        assert (pc + 4) >> 28 == anchor >> 28, hex(pc)


def test_generic_window_every_instruction_reaches_a_64k_aligned_anchor() -> None:
    anchor = 0x7F00010000
    jw = jit_window("generic", arch("aarch64"), anchor, user_space("aarch64"))
    # B/BL: target - pc in [-2^27, 2^27 - 4].
    for pc in (jw.usable.start, jw.usable.end - 4):
        assert -(2**27) <= anchor - pc <= 2**27 - 4, hex(pc)


def test_generic_window_is_mutually_reachable() -> None:
    jw = jit_window("generic", arch("aarch64"), 0x7F00003DD0, user_space("aarch64"))
    low, high = jw.usable.start, jw.usable.end - 4
    assert low - high >= -(2**27)  # a branch at the top back to the bottom
    assert high - low <= 2**27 - 4  # and from the bottom up to the top


# --- window_for_span ---------------------------------------------------------------------


@pytest.mark.parametrize("profile", ["luajit-2.1", "luajit-2017"])
def test_window_for_span_is_the_intersection(profile: str) -> None:
    span = Span(0x7F00000400, 0x7F00123456)  # e.g. a stripped binary's code segment
    limit = user_space("aarch64")
    jw = window_for_span(profile, arch("aarch64"), span, limit)
    rng = 62 * MiB
    near, far = span.start & ~0xFFFF, (span.end - 1) & ~0xFFFF
    assert (near, far) == (0x7F00000000, 0x7F00120000)
    assert jw.window == Span(far - rng, near + rng)
    # A slot is kept for the span iff it is kept for both ends' targets.
    both = sorted(set(accepted_slots(near, rng, limit)) & set(accepted_slots(far, rng, limit)))
    assert jw.usable == Span(both[0], both[-1] + SZ)
    assert account(jw, []).free_slots == len(both) == 1982 - 0x12


def test_window_for_span_generic_and_one_byte_span() -> None:
    limit = user_space("riscv64")
    span = Span(0x40001000, 0x40009000)
    jw = window_for_span("generic", arch("riscv64"), span, limit)
    # JAL's mutual-reach width is 2^20, centred on each end: [end-1 - 2^19, start + 2^19).
    assert jw.window == Span(span.end - 1 - 2**19, span.start + 2**19)
    one = window_for_span("luajit-2.1", arch("aarch64"), Span(0x7F00003DD0, 0x7F00003DD1),
                          user_space("aarch64"))
    assert one.window == Span(0x7F00000000 - 62 * MiB, 0x7F00000000 + 62 * MiB)


def test_unknown_profile_and_arch_without_luajit() -> None:
    with pytest.raises(UsageError, match="unknown JIT profile 'luajit-3'"):
        jit_window("luajit-3", arch("aarch64"), 0x400000, user_space("aarch64"))
    for name in ("riscv64", "ppc64le"):
        with pytest.raises(UsageError, match=f"LuaJIT has no JIT for {name}"):
            jit_window("luajit-2.1", arch(name), 0x10000000, user_space(name))


# --- generations ---------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "profile"), [
    ("LuaJIT 2.1.0-beta3", "luajit-2.1"),  # released 2017-05-01, after 2017-03-08
    ("LuaJIT 2.1.0-beta3 -- Copyright (C) 2005-2022 Mike Pall.", "luajit-2.1"),
    ("LuaJIT 2.1.0-beta2", "luajit-2017"),  # 2016-03-03
    ("LuaJIT 2.1.0-beta1", "luajit-2017"),
    ("LuaJIT 2.0.4", "luajit-2017"),  # 2015-05-14
    ("LuaJIT 2.0.5", "luajit-2.1"),  # 2017-05-01: v2.0 got the allocator fix too
    ("LuaJIT 2.1.1700000000", "luajit-2.1"),  # rolling: 2023-11-14
    ("LuaJIT 2.1.1762300000", "luajit-2.1"),  # 2025-11-05, before 68354f44
    ("LuaJIT 2.1.1762400000", "luajit-2025"),  # 2025-11-06 (68354f44's day)
    ("LuaJIT 2.1.1770000000", "luajit-2025"),  # 2026-02
])
def test_classify_version(text: str, profile: str) -> None:
    gen = classify_version(text)
    assert gen.profile == profile
    assert gen.confidence == "high"


def test_classify_version_rejects_other_text() -> None:
    with pytest.raises(UsageError, match="not a LuaJIT version string"):
        classify_version("Lua 5.1.5")


def luajit_library() -> Path:
    require("luajit")  # Debian's luajit depends on libluajit-5.1-2
    found = sorted(Path("/usr/lib").glob("*/libluajit-5.1.so.2"))
    assert found, "libluajit-5.1-2 is not installed although luajit is"
    return found[0]


def detect(path: str | os.PathLike[str], **kwargs: bool) -> Generation | None:
    with open(path, "rb") as stream:
        return detect_generation(stream, os.path.getsize(path),
                                 luajit_symbols=kwargs.get("luajit_symbols", False),
                                 needs_libluajit=kwargs.get("needs_libluajit", False))


@pytest.mark.toolchain
@pytest.mark.parametrize("which", ["luajit", "libluajit-5.1.so.2"])
def test_detect_generation_in_debian_luajit(which: str) -> None:
    path = require("luajit") if which == "luajit" else str(luajit_library())
    # Ground truth: the version the binary reports (`luajit -v`) is in its bytes.
    assert b"LuaJIT 2.1.0-beta3" in Path(path).read_bytes()
    gen = detect(path)
    assert gen is not None
    assert (gen.profile, gen.confidence) == ("luajit-2.1", "high")
    assert "LuaJIT 2.1.0-beta3" in gen.evidence


def test_detect_generation_without_a_version_string() -> None:
    binary = ELF_DIR / "x86_64" / "nopie"
    assert b"LuaJIT 2." not in binary.read_bytes()
    assert detect(binary) is None
    low = detect(binary, luajit_symbols=True)
    assert low is not None and (low.profile, low.confidence) == ("luajit-2.1", "low")
    needed = detect(binary, needs_libluajit=True)
    assert needed is not None and (needed.profile, needed.confidence) == ("luajit-2.1", "low")


@pytest.mark.parametrize("name", ["riscv64", "ppc64le"])
def test_choose_profile_without_a_luajit_jit_is_generic_with_a_note(name: str) -> None:
    evidence = Generation("luajit-2.1", "version string 'LuaJIT 2.1.0-beta3'", "high")
    profile, note = choose_profile(arch(name), None, evidence)
    assert profile == "generic"
    assert note is not None and f"LuaJIT has no JIT for {name}" in note
    assert choose_profile(arch("aarch64"), None, evidence) == ("luajit-2.1", None)
    assert choose_profile(arch("aarch64"), "luajit-2025", evidence) == ("luajit-2025", None)
    profile, note = choose_profile(arch("aarch64"), None, None)
    assert profile == "generic" and note is not None and "no LuaJIT found" in note


def test_riscv64_binary_with_luajit_symbols_gets_generic() -> None:
    result = inspect_binary(ELF_DIR / "riscv64" / "nopie")
    assert result.profile == "generic"
    assert any("LuaJIT has no JIT for riscv64" in n for n in result.notes)
    with pytest.raises(UsageError, match="LuaJIT has no JIT for riscv64"):
        inspect_binary(ELF_DIR / "riscv64" / "nopie", Scenario(jit="luajit-2.1"))
    code = CliRunner().invoke(cli, ["inspect", str(ELF_DIR / "riscv64" / "nopie"),
                                    "--jit", "luajit-2.1"]).exit_code
    assert code == 2


# --- the example: 256 states x 512 KiB on arm64 ----------------------------------


def test_256_states_cannot_fit_an_empty_arm64_window() -> None:
    jw = jit_window("luajit-2.1", arch("aarch64"), FAR_ANCHOR["aarch64"], user_space("aarch64"))
    acc = account(jw, [], states=256)
    assert acc.free_slots == 1982
    # 512 KiB = 8 areas of 64 KiB per state: 1982 // 8 = 247 (not 124 MiB / 512 KiB = 248).
    assert acc.capacity.mcode_per_state == 512 * KiB
    assert acc.capacity.states_fit == 1982 // 8 == 247
    assert acc.capacity.verdict.value == "insufficient"


def inspect_json(*args: str) -> tuple[int, dict[str, object]]:
    result = CliRunner().invoke(cli, ["inspect", *args, "--format", "json"])
    doc = json.loads(result.stdout)
    assert isinstance(doc, dict)
    return result.exit_code, doc


def test_cli_256_states_on_the_moved_arm64_image() -> None:
    binary = ELF_DIR / "aarch64" / "nopie-bfd-textseg"
    # readelf -lW: LOAD 0x7f00000000 memsz 0x42cc (R E), LOAD 0x7f0001fde8 memsz 0x2d0 (RW).
    # lj_vm_exit_handler 0x7f00003dd0: target 0x7f00000000, usable = target +- 62 MiB
    # minus one slot at each end: [0x7efc210000, 0x7f03df0000), 1982 slots. The image's
    # pages [0x7f00000000, 0x7f00021000) take 3 slots: 1979 free with no heap.
    code, doc = inspect_json(str(binary), "--states", "256", "--heap", "0")
    assert code == 0  # inspect reports; it does not fail on a verdict
    capacity, window, best = doc["capacity"], doc["window"], doc["window_best"]
    assert isinstance(capacity, dict) and isinstance(window, dict) and isinstance(best, dict)
    assert (window["usable_start"], window["usable_end"]) == ("0x7efc210000", "0x7f03df0000")
    assert window["slots"] == 1982
    assert window["free_slots"] == best["free_slots"] == 1982 - 3
    assert capacity["states_fit"] == (1982 - 3) // 8 == 247
    assert capacity["verdict"] == "insufficient"
    # With the default 64 MiB heap reserve: the worst case has the brk heap right after
    # the bss (0x7f000200b8 -> 0x7f00021000) covering everything above the image (988
    # slots < 64 MiB); the best case has it beyond the window.
    code, doc = inspect_json(str(binary), "--states", "256")
    assert code == 0
    capacity, window, best = doc["capacity"], doc["window"], doc["window_best"]
    assert isinstance(capacity, dict) and isinstance(window, dict) and isinstance(best, dict)
    below = (0x7F00000000 - 0x7EFC210000) // SZ
    assert window["free_slots"] == below == 991
    assert capacity["states_fit"] == 991 // 8 == 123
    assert best["free_slots"] == 1979 and 1979 // 8 == 247


def test_cli_maps_exits_1_when_capacity_is_insufficient() -> None:
    capture = MAPS_DIR / "aarch64-nopie-jit4.maps"
    fixtures = str(ELF_DIR.parent)
    # The capture names the fixture where it was captured: map that folder to ours.
    meta = json.loads(capture.with_name("aarch64-nopie-jit4.meta.json").read_text())
    binary = str(meta["fixture_binary"])
    recorded = next(str(c) for c in meta["command"] if str(c).endswith(binary))
    where = recorded[: -len(binary)].rstrip("/")
    args = ["maps", str(capture), "--path-map", f"{where}={fixtures}",
            "--heap", "0", "--format", "json"]
    # Usable [0x10000, 0x41f0000) (mmap_min_addr 4096, target 0x400000); taken: the JIT
    # areas 0x3c0000-0x400000, the image 0x400000-0x421000 and the anonymous rw-p
    # 0x421000-0x442000: free 0x10000-0x3c0000 (59 slots) and 0x450000-0x41f0000 (986).
    low = CliRunner().invoke(cli, [*args, "--states", "256"])
    doc = json.loads(low.stdout)
    assert doc["capacity"]["states_fit"] == (59 + 986) // 8 == 130
    assert doc["capacity"]["verdict"] == "insufficient"
    assert low.exit_code == 1
    fits = CliRunner().invoke(cli, [*args, "--states", "130"])
    assert json.loads(fits.stdout)["capacity"]["verdict"] == "ok"
    # The exit status follows the replay: LuaJIT's random hints miss the last free slots
    # long before slot arithmetic runs out, so 130 states abort although they "fit".
    replay = json.loads(fits.stdout)["replay"]
    assert (fits.exit_code, replay["p_abort"] >= 0.01) == (1, True)
    safe, unsafe = replay["safe_states"], replay["safe_search"]["unsafe_states"]
    assert 0 < safe < unsafe <= 130
    ok = CliRunner().invoke(cli, [*args, "--states", str(safe)])
    assert (ok.exit_code, json.loads(ok.stdout)["replay_verdict"]) == (0, "ok")
    over = CliRunner().invoke(cli, [*args, "--states", str(unsafe)])
    assert (over.exit_code, json.loads(over.stdout)["replay_verdict"]) == (1, "aborts")
