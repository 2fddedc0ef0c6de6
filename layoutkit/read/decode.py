"""Instruction decoding: the only module that imports capstone.

It turns bytes at an address into :class:`Decoded` values with the absolute target of
a PC-relative branch or reference, smoothing over how capstone 5 reports targets per
architecture (absolute for most, a raw offset for RISC-V, a memory operand for x86
RIP-relative addressing).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterator
from dataclasses import dataclass

import capstone

from layoutkit.core.arches import Arch, Isa
from layoutkit.errors import UnsupportedArchError


def _modes(arch: Arch) -> tuple[int, int] | None:
    """capstone's (arch, mode) for ``arch``, from the names on the arch value
    (core/arches.py; capstone 5 has no LoongArch)."""
    if not arch.capstone:
        return None
    cs_arch, *modes = (getattr(capstone, name) for name in arch.capstone)
    mode = 0
    for flag in modes:
        mode |= flag
    return cs_arch, mode


# Mnemonics that form an address from the pc without being branches.
_PC_REFERENCES = frozenset({"adr", "adrp", "ldr", "ldrsw", "prfm", "auipc"})
_BRANCH_GROUPS = (capstone.CS_GRP_JUMP, capstone.CS_GRP_CALL, capstone.CS_GRP_BRANCH_RELATIVE)
# Calls capstone 5 puts in no jump/call group: MIPS jal/jalx/bal, s390x brasl/bras.
_UNGROUPED_CALLS = frozenset({"jal", "jalx", "bal", "brasl", "bras"})


@dataclass(frozen=True)
class Decoded:
    """One decoded instruction; ``target`` is the absolute PC-relative target, if any."""

    address: int
    size: int
    mnemonic: str
    op_str: str
    target: int | None

    def __str__(self) -> str:
        return f"{self.address:#x}: {self.mnemonic} {self.op_str}".rstrip()


def supported(arch: Arch) -> bool:
    return _modes(arch) is not None


@functools.lru_cache(maxsize=32)
def _disassembler(arch: Arch, thumb: bool) -> capstone.Cs:
    modes = _modes(arch)
    if modes is None:
        raise UnsupportedArchError(f"capstone 5 cannot decode {arch}")
    cs_arch, mode = modes
    if thumb:
        if arch.name != "arm":
            raise UnsupportedArchError(f"thumb mode is an arm mode, not {arch}")
        mode = capstone.CS_MODE_THUMB
    md = capstone.Cs(cs_arch, mode)
    md.detail = True
    return md


def _signed(value: int, bits: int) -> int:
    value &= (1 << bits) - 1
    return value - (1 << bits) if value >> (bits - 1) else value


def _target(arch: Arch, insn: capstone.CsInsn) -> int | None:
    is_branch = any(insn.group(group) for group in _BRANCH_GROUPS)
    if arch.isa is Isa.X86:
        for op in insn.operands:
            if op.type == capstone.x86.X86_OP_MEM and op.mem.base == capstone.x86.X86_REG_RIP:
                return int(insn.address + insn.size + op.mem.disp)
    if not (is_branch or insn.mnemonic in _PC_REFERENCES or insn.mnemonic in _UNGROUPED_CALLS):
        return None
    imms = [op.imm for op in insn.operands if op.type == capstone.CS_OP_IMM]
    if not imms:
        return None
    imm = int(imms[-1])
    if arch.isa is Isa.RISCV:
        # capstone 5 reports RISC-V's raw immediates: an offset for JAL and branches,
        # the upper 20 bits for AUIPC; JALR is register-relative (no target).
        if insn.mnemonic == "auipc":
            return int(insn.address) + _signed(imm << 12, 32)
        if insn.mnemonic in ("jalr", "c.jalr", "c.jr"):
            return None
        return int(insn.address + imm)
    if arch.bits == 32:
        return imm & 0xFFFFFFFF
    return _signed(imm, 64)


def decode(arch: Arch, code: bytes, address: int, *, thumb: bool = False) -> Iterator[Decoded]:
    """Decode ``code`` placed at ``address``; stops at the first undecodable bytes."""
    md = _disassembler(arch, thumb)
    for insn in md.disasm(code, address):
        yield Decoded(insn.address, insn.size, insn.mnemonic, insn.op_str, _target(arch, insn))


def decode_one(arch: Arch, code: bytes, address: int, *, thumb: bool = False) -> Decoded | None:
    """The first instruction of ``code``, or None when it does not decode."""
    return next(decode(arch, code, address, thumb=thumb), None)


_RIP = re.compile(r"\[rip ([+-]) (0x[0-9a-f]+|[0-9]+)\]")


def x86_pcrel(code: bytes, address: int, *,
              bits: int = 64) -> tuple[list[tuple[int, int, int]], int]:
    """PC-relative branches and RIP-relative operands in ``code``, fast.

    Uses capstone's detail-free ``disasm_lite`` (about 1 us per instruction, against
    tens with operand details) and reads the target from the operand text. Returns
    ``(pc, size, target)`` triples and how many bytes were decoded before capstone
    stopped (at the end, or at bytes it cannot decode).
    """
    md = capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_64 if bits == 64
                     else capstone.CS_MODE_32)
    found: list[tuple[int, int, int]] = []
    end = 0
    for pc, size, mnemonic, op_str in md.disasm_lite(code, address):
        # Offsets modulo the address size: capstone wraps an address past the top.
        end = (pc + size - address) & ((1 << bits) - 1)
        if "rip" in op_str:
            match = _RIP.search(op_str)
            if match:
                disp = int(match.group(2), 0)
                found.append((pc, size, pc + size + (disp if match.group(1) == "+" else -disp)))
        elif op_str.startswith("0x") and (mnemonic[0] == "j" or mnemonic.startswith("call")
                                         or mnemonic.startswith("loop")):
            found.append((pc, size, int(op_str, 16)))
    return found, end
