"""Every architecture carries every per-arch fact (angr's archinfo pattern): a new arch
cannot be half-described and fail later with a KeyError in some module."""

from __future__ import annotations

import dataclasses

import pytest

from layoutkit.core.arches import ARCHES, Arch, KernelFacts, LinkFacts
from layoutkit.ranges import DATA_REACH_FALLBACK, data_reach, default_form, forms
from layoutkit.read.decode import supported


@pytest.mark.parametrize("arch", ARCHES, ids=str)
def test_every_arch_has_every_fact(arch: Arch) -> None:
    optional = {"et_dyn_base", "brk_rnd_before"}  # None: derived from the VA size / no change
    for field in dataclasses.fields(KernelFacts):
        assert getattr(arch.kernel, field.name) is not None or field.name in optional
    assert arch.kernel.va_bits in arch.kernel.va_choices
    assert arch.kernel.mmap_rnd > 0 and arch.kernel.brk_rnd > 0
    for field in dataclasses.fields(LinkFacts):
        assert hasattr(arch.link, field.name)
    assert "bfd" in arch.link.linkers  # GNU ld links every arch layoutkit knows
    assert forms(arch), "a reach table row"
    assert default_form(arch).arch == arch.name
    # capstone decodes every arch but LoongArch (capstone 5 has none)
    assert supported(arch) == (arch.name != "loongarch64")


def test_data_reach_comes_from_the_reach_table() -> None:
    by = {a.name: a for a in ARCHES}
    # ADRP: pc page + [-2^32, 2^32 - 4096] plus the whole target page (Arm ARM C6.2.13)
    assert data_reach(by["aarch64"]) == 2**32
    # lea [rip+disp32]: next instruction (7 bytes) + disp32 (Intel SDM 2A §2.2.1.6)
    assert data_reach(by["x86_64"]) == 7 + 2**31
    # AUIPC imm20<<12 + ADDI imm12 (RISC-V unprivileged ISA §2.4)
    assert data_reach(by["riscv64"]) == 2**31 - 2**11
    for name in ("ppc64le", "ppc64", "mips64el", "mips64", "s390x", "loongarch64", "arm"):
        assert data_reach(by[name]) == DATA_REACH_FALLBACK


def test_luajit_jumprange_is_lj_arch_h() -> None:
    # LJ_TARGET_JUMPRANGE, LuaJIT src/lj_arch.h (v2.1): x64 31, ARM 25, ARM64 27, MIPS 27;
    # s390x 32 in the openresty/luajit2 fork only.
    got = {a.name: a.luajit_jumprange for a in ARCHES if a.luajit_jumprange is not None}
    assert got == {"x86_64": 31, "aarch64": 27, "arm": 25, "mips64el": 27, "mips64": 27,
                   "s390x": 32}
    # 68354f44 (2025-11-06) raised MIPS to 28 and nothing else.
    got_2025 = {a.name: a.luajit_jumprange_2025 for a in ARCHES
                if a.luajit_jumprange_2025 is not None}
    assert got_2025 == {**got, "mips64el": 28, "mips64": 28}


def test_x86_64_brk_range_changed_in_6_9() -> None:
    # arch/x86/kernel/process.c arch_randomize_brk: SZ_32M until v6.8, SZ_1G from v6.9
    # (commit 44c76825d6ee); the other arches have always used their one range.
    x86 = next(a for a in ARCHES if a.name == "x86_64")
    assert x86.kernel.brk_rnd_before == ((6, 9), 32 << 20)
    assert x86.kernel.brk_rnd == 1 << 30
    assert all(a.kernel.brk_rnd_before is None for a in ARCHES if a is not x86)
