"""Recover ``lj_vm_exit_handler`` of a stripped LuaJIT from its live JIT code.

Every trace's exits branch to the exit handler, so the JIT code names it over and over:

- x86-64 (src/lj_asm_x86.h, asm_exitstub_gen): each exit-stub group ends with
  ``push imm8`` (the high byte of the exit number; without GC64 followed by a
  ``mov dword [esp+...], imm32``) and ``jmp rel32 -> lj_vm_exit_handler``.
- arm64 (src/lj_asm_arm64.h, asm_exitstub_setup): each trace's stub block starts with
  ``str x30, [sp]`` then ``bl -> lj_vm_exit_handler``.

Candidates are found by their fixed bytes and confirmed by decoding with capstone; the
target named most often wins.
"""

from __future__ import annotations

import os
import struct
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass

from layoutkit.core.arches import Arch
from layoutkit.core.spans import Span
from layoutkit.read.decode import decode_one
from layoutkit.read.files import READ_FAULTS

_STR_X30_SP = struct.pack("<I", 0xF90003FE)  # str x30, [sp] (A64 STR imm, unsigned offset 0)
_PUSH_I8 = 0x6A
_JMP_REL32 = 0xE9
_MOV_ESP_IMM32 = b"\xc7\x44\x24"  # mov dword [esp+disp8], imm32 (non-GC64 x64 stubs)
MAX_READ = 64 << 20  # bytes of JIT code read per process (bounded memory)


@dataclass(frozen=True)
class Recovered:
    address: int
    votes: int
    candidates: int
    pattern: str


def _x86_64(code: bytes, base: int, arch: Arch) -> Iterable[int]:
    pos = code.find(_JMP_REL32)
    while pos != -1:
        pushed = pos >= 2 and code[pos - 2] == _PUSH_I8
        moved = pos >= 10 and code[pos - 10] == _PUSH_I8 and \
            code[pos - 8:pos - 5] == _MOV_ESP_IMM32
        if pushed or moved:
            insn = decode_one(arch, code[pos:pos + 5], base + pos)
            if insn is not None and insn.mnemonic == "jmp" and insn.target is not None:
                yield insn.target
        pos = code.find(_JMP_REL32, pos + 1)


def _aarch64(code: bytes, base: int, arch: Arch) -> Iterable[int]:
    pos = code.find(_STR_X30_SP)
    while pos != -1:
        if pos % 4 == 0 and pos + 8 <= len(code):
            insn = decode_one(arch, code[pos + 4:pos + 8], base + pos + 4)
            if insn is not None and insn.mnemonic == "bl" and insn.target is not None:
                yield insn.target
        pos = code.find(_STR_X30_SP, pos + 1)


_PATTERNS = {
    "x86_64": (_x86_64, "jmp rel32 after push imm8 (x86-64 exit-stub groups)"),
    "aarch64": (_aarch64, "bl after str x30, [sp] (arm64 exit stubs)"),
}


def supported(arch: Arch) -> bool:
    return arch.name in _PATTERNS


def recover(arch: Arch, areas: Iterable[tuple[int, bytes]], code: Span) -> Recovered | None:
    """The exit handler named by the most stubs in ``areas`` (address, bytes), if any
    target lies in ``code`` (the executable span of the object holding LuaJIT)."""
    if arch.name not in _PATTERNS:
        return None
    scan, pattern = _PATTERNS[arch.name]
    votes: Counter[int] = Counter()
    for base, data in areas:
        votes.update(t for t in scan(data, base, arch) if t in code)
    if not votes:
        return None
    address, count = votes.most_common(1)[0]
    return Recovered(address, count, sum(votes.values()), pattern)


def read_memory(pid: int, spans: Iterable[Span]) -> tuple[list[tuple[int, bytes]], str | None]:
    """The bytes of ``spans`` in process ``pid`` (bounded), or why they cannot be read.

    Reading /proc/PID/mem needs ptrace access (the same user and, with Yama's
    ptrace_scope 1, being its ancestor; or CAP_SYS_PTRACE). It never writes.
    """
    out: list[tuple[int, bytes]] = []
    budget = MAX_READ
    try:
        fd = os.open(f"/proc/{pid}/mem", os.O_RDONLY)
    except OSError as e:
        why = READ_FAULTS.get(e.errno or 0, "the system refuses to open it")
        return out, f"cannot open /proc/{pid}/mem: {why}"
    try:
        for span in spans:
            size = min(span.size, budget)
            if size <= 0:
                break
            try:
                out.append((span.start, os.pread(fd, size, span.start)))
            except OSError as e:
                why = READ_FAULTS.get(e.errno or 0, "the kernel refuses to read it")
                return out, f"cannot read JIT code: {why}"
            budget -= size
    finally:
        os.close(fd)
    return out, None
