"""Recovering lj_vm_exit_handler of a stripped LuaJIT from its JIT code."""

from __future__ import annotations

import os
import re
import struct
import subprocess

import pytest

from layoutkit.commands.maps import analyse_maps
from layoutkit.core.arches import by_name
from layoutkit.core.spans import Span
from layoutkit.read.maps import read_process_maps
from layoutkit.read.stubs import recover
from tests.support import FIXTURES, require


def bl(pc: int, target: int) -> bytes:
    """A64 BL: 0b100101 then imm26 = (target - pc) / 4 (Arm ARM C6.2.34)."""
    return struct.pack("<I", 0x94000000 | (((target - pc) >> 2) & 0x3FFFFFF))


def test_arm64_stub_block_names_the_handler() -> None:
    base, handler = 0x7F0000_0000, 0x7F0400_1230
    code = struct.pack("<I", 0xF90003FE) + bl(base + 4, handler)  # str x30, [sp]; bl
    code += struct.pack("<I", 0x52800000 | (7 << 5))  # movz w0, #7 (trace number)
    found = recover(by_name("arm64"), [(base, code)], Span(0x7F0400_0000, 0x7F0500_0000))
    assert found is not None
    assert (found.address, found.votes) == (handler, 1)


def test_x86_64_stub_group_names_the_handler_with_and_without_gc64() -> None:
    base, handler = 0x5555_0000_0000, 0x5555_1234_5678
    gc64 = bytes([0x6A, 0x00]) + b"\xe9" + struct.pack("<i", handler - (base + 2 + 5))
    start = base + len(gc64)
    # Without GC64: push imm8; mov dword [esp+16], imm32; jmp rel32.
    legacy = bytes([0x6A, 0x01]) + b"\xc7\x44\x24\x10" + b"\0\0\0\0"
    legacy += b"\xe9" + struct.pack("<i", handler - (start + len(legacy) + 5))
    found = recover(by_name("x86_64"), [(base, gc64 + legacy)],
                    Span(0x5555_1230_0000, 0x5555_1240_0000))
    assert found is not None
    assert (found.address, found.votes, found.candidates) == (handler, 2, 2)
    # A target outside the code span is not a candidate.
    assert recover(by_name("x86_64"), [(base, gc64)], Span(0x1000, 0x2000)) is None


@pytest.mark.toolchain
@pytest.mark.skipif(os.uname().machine != "x86_64", reason="runs Debian's x86-64 luajit")
def test_live_stripped_luajit_gives_its_exit_handler() -> None:
    luajit = require("luajit")
    proc = subprocess.Popen([luajit, str(FIXTURES / "src" / "jit-heavy.lua")],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        lines = []
        for line in proc.stdout:
            lines.append(line)
            if line.startswith("ready"):
                break
        # The script decodes the handler itself through jit.util (independent of
        # layoutkit): the jmp rel32 at the end of exit-stub group 0.
        printed = re.search(r"^exit_handler (0x[0-9a-f]+)$", "".join(lines), re.M)
        assert printed, lines
        result = analyse_maps(read_process_maps(proc.pid))
    finally:
        proc.kill()
        proc.wait()
    assert result.anchor.how_found.value == "jit-code"
    assert result.anchor.span.start == int(printed.group(1), 16)
    assert result.generation is not None and result.generation.profile == "luajit-2.1"
