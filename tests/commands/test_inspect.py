"""Anchors and reach windows of real fixtures, against readelf and arithmetic written out."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from layoutkit.commands.inspect import inspect_binary
from layoutkit.core.scenario import KernelOverrides, Scenario
from layoutkit.core.spans import Span
from layoutkit.errors import InputError, UsageError
from tests.support import ELF_DIR, oracle

MiB, GiB = 1 << 20, 1 << 30


def readelf_symbol(binary: Path, name: str) -> int:
    """Value of ``name`` in readelf's .symtab listing."""
    match = re.search(rf"^\s*\d+: ([0-9a-f]+) .* {re.escape(name)}$", oracle(binary, "s"), re.M)
    assert match, name
    return int(match.group(1), 16)


def readelf_code_span(binary: Path) -> tuple[int, int]:
    for line in oracle(binary, "l").splitlines():
        cols = line.split()
        if cols[:1] == ["LOAD"] and "E" in cols[6:8]:
            return int(cols[2], 16), int(cols[2], 16) + int(cols[5], 16)
    raise AssertionError("no executable LOAD")


def test_aarch64_nopie_at_default_base_loses_most_of_the_window_below() -> None:
    binary = ELF_DIR / "aarch64" / "nopie"
    anchor = readelf_symbol(binary, "lj_vm_exit_handler")
    result = inspect_binary(binary)
    assert result.anchor.name == "lj_vm_exit_handler"
    assert result.anchor.address == anchor
    assert result.bias == 0
    direct = result.reach[0]
    assert direct.form.name == "b/bl"
    # B/BL reaches [pc - 2^27, pc + 2^27 - 4]: code at pc reaches the anchor when
    # anchor - (2^27 - 4) <= pc <= anchor + 2^27. Below, user space starts at
    # mmap_min_addr = 4096 (arm64 default here).
    assert direct.window == Span(0x1000, anchor + 2**27 + 1)
    assert direct.clipped_below == (2**27 - 4) - (anchor - 0x1000)
    assert direct.below == 2**27 - 4 and direct.above == 2**27


def test_va_bits_and_mmap_min_addr_change_the_window() -> None:
    binary = ELF_DIR / "aarch64" / "nopie"
    anchor = readelf_symbol(binary, "lj_vm_exit_handler")
    result = inspect_binary(
        binary, Scenario(kernel=KernelOverrides(va_bits=39, mmap_min_addr=0x10000)))
    assert result.kernel.user_top == 1 << 39
    assert result.reach[0].window == Span(0x10000, anchor + 2**27 + 1)
    with pytest.raises(UsageError, match="--va-bits 40"):
        inspect_binary(binary, Scenario(kernel=KernelOverrides(va_bits=40)))


def test_x86_64_nopie_rel32_window_is_clipped_at_mmap_min_addr() -> None:
    binary = ELF_DIR / "x86_64" / "nopie"
    anchor = readelf_symbol(binary, "lj_vm_exit_handler")
    result = inspect_binary(binary)
    direct = result.reach[0]
    # This machine's vm.mmap_min_addr when it is an x86-64 one (the kernel judged under),
    # else Debian's amd64 default (CONFIG_DEFAULT_MMAP_MIN_ADDR=65536).
    here = os.uname().machine == "x86_64"
    floor = int(Path("/proc/sys/vm/mmap_min_addr").read_text()) if here else 0x10000
    # jmp rel32 (5 bytes): target = pc + 5 + rel32, rel32 in [-2^31, 2^31 - 1].
    assert direct.window == Span(floor, anchor - (5 - 2**31) + 1)


def test_moved_aarch64_image_gets_the_whole_window() -> None:
    binary = ELF_DIR / "aarch64" / "nopie-bfd-textseg"
    anchor = readelf_symbol(binary, "lj_vm_exit_handler")
    result = inspect_binary(binary)
    assert result.reach[0].window == Span(anchor - (2**27 - 4), anchor + 2**27 + 1)
    assert result.reach[0].clipped_below == 0


@pytest.mark.parametrize(("arch", "bias"), [
    # x86-64: DEFAULT_MAP_WINDOW / 3 * 2 = 0x7ffffffff000 // 3 * 2, page aligned.
    ("x86_64", (0x7FFFFFFFF000 // 3 * 2) & ~0xFFF),
    # arm64: 2 * 2^48 / 3 aligned to the 64 KiB p_align of Debian's binaries.
    ("aarch64", (2 * 2**48 // 3) & ~0xFFFF),
    # ppc64: ELF_ET_DYN_BASE is 0x100000000.
    ("ppc64le", 0x100000000),
])
def test_pie_is_placed_at_elf_et_dyn_base(arch: str, bias: int) -> None:
    binary = ELF_DIR / arch / "pie"
    anchor = readelf_symbol(binary, "lj_vm_exit_handler")
    result = inspect_binary(binary)
    assert result.image.pie
    assert result.bias == bias
    assert result.runtime_anchor.start == bias + anchor


def test_stripped_binary_falls_back_to_the_executable_segment() -> None:
    binary = ELF_DIR / "aarch64" / "nopie-stripped"
    start, end = readelf_code_span(binary)
    result = inspect_binary(binary)
    assert result.anchor.how_found.value == "executable-segment"
    assert result.anchor.span == Span(start, end)
    assert "stripped" in result.anchor.detail
    # The window must reach the whole span: from its last byte down, from its first up.
    assert result.reach[0].window == Span(0x1000, start + 2**27 + 1)


def test_anchor_option_takes_a_symbol_or_an_address() -> None:
    binary = ELF_DIR / "x86_64" / "nopie"
    main = readelf_symbol(binary, "main")
    assert inspect_binary(binary, anchor="main").anchor.address == main
    by_address = inspect_binary(binary, anchor=hex(main)).anchor
    assert (by_address.address, by_address.how_found.value) == (main, "address")
    with pytest.raises(InputError, match="no symbol 'no_such_symbol'"):
        inspect_binary(binary, anchor="no_such_symbol")
    with pytest.raises(UsageError, match="not inside any PT_LOAD"):
        inspect_binary(binary, anchor="0x10")


def test_shared_library_anchor_lies_in_the_library() -> None:
    binary = ELF_DIR / "x86_64" / "libanchor.so"
    anchor = readelf_symbol(binary, "lj_vm_exit_handler")
    result = inspect_binary(binary)
    assert result.image.soname == "libanchor.so"
    assert result.anchor.address == anchor
    assert result.bias_how == "top of the mmap area with ASLR, before its random offset"
