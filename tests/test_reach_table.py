"""The reach table checked against the ISA manuals, one row at a time.

For every row of :data:`layoutkit.ranges.REACH` this file holds an encoder written
from the ISA manual (not from layoutkit), builds the instruction with the largest and
the smallest immediate its field holds, places it at a realistic pc and decodes it
with an independent decoder: capstone through :func:`layoutkit.read.decode.decode_one`,
and for LoongArch (which capstone 5 lacks) GNU objdump or llvm-objdump. The decoded
absolute target must equal ``pc + disp_max`` / ``pc + disp_min`` of the row.

Each encoder packs its immediate with :func:`sfield`, which refuses a value that does
not fit the field: so the field width written here is what limits the reach, and one
step beyond either extreme raises.

Expected numbers are written out from the manuals; the code under test is only called
to produce what is being checked.
"""

from __future__ import annotations

import functools
import os
import re
import shutil
import struct
import subprocess
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

from layoutkit.core.arches import by_name
from layoutkit.core.spans import Span
from layoutkit.ranges import REACH, BranchForm
from layoutkit.read.decode import decode_one

# Realistic instruction addresses: high enough that every backward extreme stays
# non-negative. PC32 suits the 32-bit ISAs (and every +-2 GiB-or-less form).
PC64 = 0x7F00_0000_0000
PC32 = 0x1000_0000
# ADRP aligns pc down to 4 KiB first: a pc that is not page-aligned shows that.
PC_ADRP = 0x7F00_4000_0123 & ~3
# Thumb: halfword-aligned but not word-aligned (B/BL/B<c> use PC = pc + 4 unaligned).
PC_THUMB = 0x1000_0002


# --- bit packing -------------------------------------------------------------------


def sfield(value: int, bits: int) -> int:
    """``value`` as a ``bits``-wide two's-complement field; ValueError when it does not fit."""
    if not -(1 << (bits - 1)) <= value <= (1 << (bits - 1)) - 1:
        raise ValueError(f"{value} does not fit a signed {bits}-bit field")
    return value & ((1 << bits) - 1)


def ufield(value: int, bits: int) -> int:
    """``value`` as a ``bits``-wide unsigned field; ValueError when it does not fit."""
    if not 0 <= value < (1 << bits):
        raise ValueError(f"{value} does not fit an unsigned {bits}-bit field")
    return value


def le32(word: int) -> bytes:
    return struct.pack("<I", word)


def be32(word: int) -> bytes:
    return struct.pack(">I", word)


def smax(bits: int) -> int:
    return (1 << (bits - 1)) - 1


def smin(bits: int) -> int:
    return -(1 << (bits - 1))


# --- x86: Intel SDM vol. 2A ----------------------------------------------------------
# Ch. 3.2 "JMP" (EB cb, E9 cd), "CALL" (E8 cd), "Jcc" (7x cb, 0F 8x cd): the rel8/rel32
# is added to the address of the next instruction. §2.2.1.6 "RIP-Relative Addressing":
# disp32 is added to the next instruction's address; LEA r64, m is REX.W 8D /r, and
# ModRM 0x05 (mod 00, reg rax, r/m 101) selects [rip + disp32] in 64-bit mode.


def x86_rel8(opcode: bytes) -> Callable[[int], bytes]:
    return lambda imm: opcode + struct.pack("<B", sfield(imm, 8))


def x86_rel32(opcode: bytes) -> Callable[[int], bytes]:
    return lambda imm: opcode + struct.pack("<I", sfield(imm, 32))


# --- A64: Arm ARM DDI 0487, C4.1 encoding index and C6.2 per instruction ------------
# B:           0 00101 imm26                      target = pc + imm26:'00'
# BL:          1 00101 imm26
# B.cond:      0101010 0 imm19 0 cond             target = pc + imm19:'00'
# CBZ/CBNZ:    sf 011010 op imm19 Rt
# LDR (lit.):  opc=01 011 0 00 imm19 Rt           (64-bit LDR Xt, label)
# TBZ/TBNZ:    b5 011011 op b40 imm14 Rt          target = pc + imm14:'00'
# ADR:         0 immlo 10000 immhi Rd             target = pc + immhi:immlo
# ADRP:        1 immlo 10000 immhi Rd             target = (pc & ~0xfff) + immhi:immlo:Zeros(12)
# ADD (imm):   sf 0 0 100010 sh imm12 Rn Rd       (64-bit, sh = 0)


def a64_imm26(op: int) -> Callable[[int], bytes]:
    return lambda imm: le32((op << 31) | (0b00101 << 26) | sfield(imm, 26))


def a64_imm19(top: int) -> Callable[[int], bytes]:
    """``top`` holds bits 31..24 (and the low 5 bits come from the caller's Rt/cond 0)."""
    return lambda imm: le32((top << 24) | (sfield(imm, 19) << 5))


def a64_imm14(op: int) -> Callable[[int], bytes]:
    # b5 = 0, b40 = 0 (test bit 0 of w0), Rt = 0.
    return lambda imm: le32((0b011011 << 25) | (op << 24) | (sfield(imm, 14) << 5))


def a64_adr(page: int) -> Callable[[int], bytes]:
    def encode(imm: int) -> bytes:
        v = sfield(imm, 21)
        return le32((page << 31) | ((v & 3) << 29) | (0b10000 << 24) | ((v >> 2) << 5))

    return encode


def a64_add_imm(imm12: int) -> bytes:
    """ADD x0, x0, #imm12."""
    return le32((1 << 31) | (0b100010 << 23) | (ufield(imm12, 12) << 10))


# --- A32/T32: Arm ARM DDI 0406C -----------------------------------------------------
# A8.8.18 B, encoding A1:   cond 1010 imm24   imm32 = SignExtend(imm24:'00'), PC = pc + 8
# A8.8.25 BL, encoding A1:  cond 1011 imm24
# A8.8.18 B, encoding T4:   11110 S imm10 | 10 J1 1 J2 imm11
#         I1 = NOT(J1 XOR S); I2 = NOT(J2 XOR S); imm32 = SignExtend(S:I1:I2:imm10:imm11:'0')
# A8.8.25 BL, encoding T1:  11110 S imm10 | 11 J1 1 J2 imm11 (same immediate)
# A8.8.18 B, encoding T3:   11110 S cond imm6 | 10 J1 0 J2 imm11
#         imm32 = SignExtend(S:J2:J1:imm6:imm11:'0')
# In Thumb state PC reads as pc + 4. A 32-bit T32 instruction is stored as two
# little-endian halfwords, the first halfword (bits 31..16 above) first (A6.1).
COND_AL, COND_EQ = 0b1110, 0b0000


def a32_imm24(link: int) -> Callable[[int], bytes]:
    return lambda imm: le32((COND_AL << 28) | (0b101 << 25) | (link << 24) | sfield(imm, 24))


def t32_pair(hw1: int, hw2: int) -> bytes:
    return struct.pack("<HH", hw1, hw2)


def t32_imm24(link: int) -> Callable[[int], bytes]:
    """B.W (T4) when ``link`` is 0, BL (T1) when 1; ``imm`` counts halfwords."""

    def encode(imm: int) -> bytes:
        v = sfield(imm, 24)
        s, i1, i2 = (v >> 23) & 1, (v >> 22) & 1, (v >> 21) & 1
        imm10, imm11 = (v >> 11) & 0x3FF, v & 0x7FF
        j1, j2 = (i1 ^ 1) ^ s, (i2 ^ 1) ^ s
        hw1 = (0b11110 << 11) | (s << 10) | imm10
        hw2 = (0b1 << 15) | (link << 14) | (j1 << 13) | (1 << 12) | (j2 << 11) | imm11
        return t32_pair(hw1, hw2)

    return encode


def t32_bcond(imm: int) -> bytes:
    """B<c>.W (T3) with cond EQ; ``imm`` counts halfwords."""
    v = sfield(imm, 20)
    s, j2, j1 = (v >> 19) & 1, (v >> 18) & 1, (v >> 17) & 1
    imm6, imm11 = (v >> 11) & 0x3F, v & 0x7FF
    hw1 = (0b11110 << 11) | (s << 10) | (COND_EQ << 6) | imm6
    hw2 = (0b10 << 14) | (j1 << 13) | (0 << 12) | (j2 << 11) | imm11
    return t32_pair(hw1, hw2)


# --- Power ISA v3.1 Book I, 2.4 "Branch Instructions" -------------------------------
# b/bl:  I-form  18 | LI (24) | AA | LK     target = pc + EXTS(LI || 0b00) when AA = 0
# bc:    B-form  16 | BO (5) | BI (5) | BD (14) | AA | LK   target = pc + EXTS(BD || 0b00)
# BO = 0b01100 (branch if CR bit BI is set), BI = 2 (cr0.eq): "beq".


def ppc_i(link: int, pack: Callable[[int], bytes]) -> Callable[[int], bytes]:
    return lambda imm: pack((18 << 26) | (sfield(imm, 24) << 2) | link)


def ppc_beq(pack: Callable[[int], bytes]) -> Callable[[int], bytes]:
    return lambda imm: pack((16 << 26) | (0b01100 << 21) | (2 << 16) | (sfield(imm, 14) << 2))


# --- RISC-V unprivileged ISA 20191213, 2.5 "Control Transfer Instructions" ---------
# (AUIPC: 2.4 "Integer Computational Instructions").
# JAL (J-type):   imm[20|10:1|11|19:12] rd 1101111        target = pc + imm (imm[0] = 0)
# Bxx (B-type):   imm[12|10:5] rs2 rs1 funct3 imm[4:1|11] 1100011
# AUIPC (U-type): imm[31:12] rd 0010111                   rd = pc + (imm << 12)
# JALR (I-type):  imm[11:0] rs1 000 rd 1100111            target = (rs1 + imm) & ~1
# ``imm`` below counts the field's units (halfwords for JAL/Bxx).
RA, T0, A0, A1 = 1, 5, 10, 11


def rv_jal(imm: int) -> bytes:
    off = sfield(imm, 20) << 1  # a 21-bit offset with bit 0 clear
    word = (
        (((off >> 20) & 1) << 31)
        | (((off >> 1) & 0x3FF) << 21)
        | (((off >> 11) & 1) << 20)
        | (((off >> 12) & 0xFF) << 12)
        | (RA << 7)
        | 0b1101111
    )
    return le32(word)


def rv_branch(funct3: int) -> Callable[[int], bytes]:
    def encode(imm: int) -> bytes:
        off = sfield(imm, 12) << 1  # a 13-bit offset with bit 0 clear
        word = (
            (((off >> 12) & 1) << 31)
            | (((off >> 5) & 0x3F) << 25)
            | (A1 << 20)
            | (A0 << 15)
            | (funct3 << 12)
            | (((off >> 1) & 0xF) << 8)
            | (((off >> 11) & 1) << 7)
            | 0b1100011
        )
        return le32(word)

    return encode


def rv_auipc(imm: int) -> bytes:
    return le32((sfield(imm, 20) << 12) | (T0 << 7) | 0b0010111)


def rv_jalr(imm: int) -> bytes:
    return le32((sfield(imm, 12) << 20) | (T0 << 15) | (RA << 7) | 0b1100111)


# --- MIPS64 Architecture vol. II-A (MD00087) ----------------------------------------
# J:    000010 instr_index(26)   target = (pc + 4)[63:28] || instr_index || 00
# JAL:  000011 instr_index(26)
# BEQ:  000100 rs rt offset(16)  target = pc + 4 + SignExtend(offset || 00);
#       B is BEQ $0, $0
# BAL:  000001 00000 10001 offset(16) (BGEZAL $0)


def mips_j(op: int, pack: Callable[[int], bytes]) -> Callable[[int], bytes]:
    return lambda index: pack((op << 26) | ufield(index, 26))


def mips_i(top: int, pack: Callable[[int], bytes]) -> Callable[[int], bytes]:
    """``top`` holds bits 31..16 (opcode, rs, rt)."""
    return lambda imm: pack((top << 16) | sfield(imm, 16))


MIPS_B = (0b000100 << 10) | (0 << 5) | 0  # beq $zero, $zero
MIPS_BEQ = (0b000100 << 10) | (4 << 5) | 5  # beq $a0, $a1
MIPS_BAL = (0b000001 << 10) | (0 << 5) | 0b10001  # bgezal $zero


# --- z/Architecture Principles of Operation SA22-7832, ch. 7 "General Instructions"
# BRANCH RELATIVE AND SAVE LONG (RIL-b): C0 R1 5 I2(32)    target = pc + 2 * I2
# BRANCH RELATIVE ON CONDITION LONG (RIL-c): C0 M1 4 I2(32)
# BRANCH RELATIVE AND SAVE (RI-b): A7 R1 5 I2(16)
# BRANCH RELATIVE ON CONDITION (RI-c): A7 M1 4 I2(16)
# Instructions are big-endian halfword streams.


def s390_ril(op2: int, r1: int) -> Callable[[int], bytes]:
    return lambda imm: bytes([0xC0, (r1 << 4) | op2]) + struct.pack(">I", sfield(imm, 32))


def s390_ri(op2: int, r1: int) -> Callable[[int], bytes]:
    return lambda imm: bytes([0xA7, (r1 << 4) | op2]) + struct.pack(">H", sfield(imm, 16))


# --- LoongArch Reference Manual vol. 1 v1.10, 2.2 "Basic Integer Instructions": the
# branch instructions (B, BL, BEQZ/BNEZ, BEQ..., JIRL) and PCADDU18I; formats in 1.2.
# B:      010100 offs[15:0] offs[25:16]     target = pc + SignExtend(offs26 || 00)
# BL:     010101 offs[15:0] offs[25:16]
# BEQZ:   010000 offs[15:0] rj offs[20:16]  target = pc + SignExtend(offs21 || 00)
# BNEZ:   010001 ...
# BEQ:    010110 offs16 rj rd               target = pc + SignExtend(offs16 || 00)
# BNE 010111, BLT 011000, BGE 011001, BLTU 011010, BGEU 011011
# JIRL:   010011 offs16 rj rd               target = GR[rj] + SignExtend(offs16 || 00)
# PCADDU18I: 0001111 si20 rd                GR[rd] = pc + SignExtend(si20 || 18'b0)
LA_RA, LA_A0, LA_A1, LA_T0 = 1, 4, 5, 12


def la_offs26(op: int) -> Callable[[int], bytes]:
    def encode(imm: int) -> bytes:
        v = sfield(imm, 26)
        return le32((op << 26) | ((v & 0xFFFF) << 10) | (v >> 16))

    return encode


def la_offs21(op: int) -> Callable[[int], bytes]:
    def encode(imm: int) -> bytes:
        v = sfield(imm, 21)
        return le32((op << 26) | ((v & 0xFFFF) << 10) | (LA_A0 << 5) | (v >> 16))

    return encode


def la_offs16(op: int, rd: int = LA_A1, rj: int = LA_A0) -> Callable[[int], bytes]:
    return lambda imm: le32((op << 26) | (sfield(imm, 16) << 10) | (rj << 5) | rd)


def la_pcaddu18i(imm: int) -> bytes:
    return le32((0b0001111 << 25) | (sfield(imm, 20) << 5) | LA_T0)


la_jirl = la_offs16(0b010011, rd=LA_RA, rj=LA_T0)


# --- the cases ----------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    """One instruction of a REACH row, with its immediate field as the manual gives it."""

    arch: str
    form: str  # the REACH row's name
    mnemonic: str  # what the decoder calls the instruction the encoder builds
    bits: int  # width of the signed immediate field
    scale: int  # bytes per unit of the field
    bias: int  # what the manual adds to pc besides the immediate (next-ip, pc+8, pc+4)
    encode: Callable[[int], bytes]
    pc: int
    thumb: bool = False
    page: int = 1  # pc is aligned down to this before the displacement is added
    wrap32: bool = False  # the target is computed modulo 2**32

    @property
    def id(self) -> str:
        return f"{self.arch}:{self.mnemonic}/{self.bits}"

    def target(self, imm: int) -> int:
        """The target the manual gives for the field value ``imm`` at ``self.pc``."""
        base = self.pc - self.pc % self.page
        value = base + self.bias + imm * self.scale
        return value % (1 << 32) if self.wrap32 else value


LE, BE = le32, be32

CASES: tuple[Case, ...] = (
    Case("x86_64", "jmp/call rel32", "jmp", 32, 1, 5, x86_rel32(b"\xe9"), PC64),
    Case("x86_64", "jmp/call rel32", "call", 32, 1, 5, x86_rel32(b"\xe8"), PC64),
    Case("x86_64", "jcc rel32", "je", 32, 1, 6, x86_rel32(b"\x0f\x84"), PC64),
    Case("x86_64", "jmp/jcc rel8", "jmp", 8, 1, 2, x86_rel8(b"\xeb"), PC64),
    Case("x86_64", "jmp/jcc rel8", "je", 8, 1, 2, x86_rel8(b"\x74"), PC64),
    Case("x86_64", "lea [rip+disp32]", "lea", 32, 1, 7, x86_rel32(b"\x48\x8d\x05"), PC64),
    Case("i386", "jmp/call rel32", "jmp", 32, 1, 5, x86_rel32(b"\xe9"), PC32, wrap32=True),
    Case("i386", "jmp/call rel32", "call", 32, 1, 5, x86_rel32(b"\xe8"), PC32, wrap32=True),
    Case("i386", "jmp/jcc rel8", "jmp", 8, 1, 2, x86_rel8(b"\xeb"), PC32),
    Case("i386", "jmp/jcc rel8", "je", 8, 1, 2, x86_rel8(b"\x74"), PC32),
    Case("aarch64", "b/bl", "b", 26, 4, 0, a64_imm26(0), PC64),
    Case("aarch64", "b/bl", "bl", 26, 4, 0, a64_imm26(1), PC64),
    Case("aarch64", "b.cond/cbz/ldr-literal", "b.eq", 19, 4, 0, a64_imm19(0b01010100), PC64),
    Case("aarch64", "b.cond/cbz/ldr-literal", "cbz", 19, 4, 0, a64_imm19(0b10110100), PC64),
    Case("aarch64", "b.cond/cbz/ldr-literal", "cbnz", 19, 4, 0, a64_imm19(0b10110101), PC64),
    Case("aarch64", "b.cond/cbz/ldr-literal", "ldr", 19, 4, 0, a64_imm19(0b01011000), PC64),
    Case("aarch64", "tbz/tbnz", "tbz", 14, 4, 0, a64_imm14(0), PC64),
    Case("aarch64", "tbz/tbnz", "tbnz", 14, 4, 0, a64_imm14(1), PC64),
    Case("aarch64", "adr", "adr", 21, 1, 0, a64_adr(0), PC64 + 0x124),
    Case("aarch64", "adrp+add", "adrp", 21, 4096, 0, a64_adr(1), PC_ADRP, page=4096),
    Case("arm", "b/bl (A32)", "b", 24, 4, 8, a32_imm24(0), PC32),
    Case("arm", "b/bl (A32)", "bl", 24, 4, 8, a32_imm24(1), PC32),
    Case("arm", "b.w/bl (T32)", "b.w", 24, 2, 4, t32_imm24(0), PC_THUMB, thumb=True),
    Case("arm", "b.w/bl (T32)", "bl", 24, 2, 4, t32_imm24(1), PC_THUMB, thumb=True),
    Case("arm", "b<c>.w (T32)", "beq.w", 20, 2, 4, t32_bcond, PC_THUMB, thumb=True),
    Case("ppc64le", "b/bl", "b", 24, 4, 0, ppc_i(0, LE), PC64),
    Case("ppc64le", "b/bl", "bl", 24, 4, 0, ppc_i(1, LE), PC64),
    Case("ppc64le", "bc", "beq", 14, 4, 0, ppc_beq(LE), PC64),
    Case("ppc64", "b/bl", "b", 24, 4, 0, ppc_i(0, BE), PC64),
    Case("ppc64", "b/bl", "bl", 24, 4, 0, ppc_i(1, BE), PC64),
    Case("ppc64", "bc", "beq", 14, 4, 0, ppc_beq(BE), PC64),
    Case("riscv64", "jal", "jal", 20, 2, 0, rv_jal, PC64),
    Case("riscv64", "beq/bne/...", "beq", 12, 2, 0, rv_branch(0b000), PC64),
    Case("riscv64", "beq/bne/...", "bne", 12, 2, 0, rv_branch(0b001), PC64),
    Case("mips64el", "b/beq/bal", "b", 16, 4, 4, mips_i(MIPS_B, LE), PC64),
    Case("mips64el", "b/beq/bal", "beq", 16, 4, 4, mips_i(MIPS_BEQ, LE), PC64),
    Case("mips64el", "b/beq/bal", "bal", 16, 4, 4, mips_i(MIPS_BAL, LE), PC64),
    Case("mips64", "b/beq/bal", "b", 16, 4, 4, mips_i(MIPS_B, BE), PC64),
    Case("mips64", "b/beq/bal", "beq", 16, 4, 4, mips_i(MIPS_BEQ, BE), PC64),
    Case("mips64", "b/beq/bal", "bal", 16, 4, 4, mips_i(MIPS_BAL, BE), PC64),
    Case("s390x", "brasl/brcl", "brasl", 32, 2, 0, s390_ril(5, 14), PC64),
    Case("s390x", "brasl/brcl", "jg", 32, 2, 0, s390_ril(4, 15), PC64),  # brcl 15
    Case("s390x", "bras/brc", "bras", 16, 2, 0, s390_ri(5, 14), PC64),
    Case("s390x", "bras/brc", "j", 16, 2, 0, s390_ri(4, 15), PC64),  # brc 15
    Case("loongarch64", "b/bl", "b", 26, 4, 0, la_offs26(0b010100), PC64),
    Case("loongarch64", "b/bl", "bl", 26, 4, 0, la_offs26(0b010101), PC64),
    Case("loongarch64", "beqz/bnez", "beqz", 21, 4, 0, la_offs21(0b010000), PC64),
    Case("loongarch64", "beqz/bnez", "bnez", 21, 4, 0, la_offs21(0b010001), PC64),
    Case("loongarch64", "beq/bne/blt/...", "beq", 16, 4, 0, la_offs16(0b010110), PC64),
    Case("loongarch64", "beq/bne/blt/...", "bne", 16, 4, 0, la_offs16(0b010111), PC64),
    Case("loongarch64", "beq/bne/blt/...", "blt", 16, 4, 0, la_offs16(0b011000), PC64),
    Case("loongarch64", "beq/bne/blt/...", "bgeu", 16, 4, 0, la_offs16(0b011011), PC64),
)

# Every LoongArch instruction the tests decode, for one objdump run.
LOONGARCH_INSNS: tuple[tuple[bytes, int], ...] = (
    *((c.encode(imm), c.pc) for c in CASES if c.arch == "loongarch64"
      for imm in (smax(c.bits), smin(c.bits))),
    *((la_pcaddu18i(imm), PC64) for imm in (smax(20), smin(20))),
    *((la_jirl(imm), PC64 + 4) for imm in (smax(16), smin(16))),
)  # fmt: skip

# Rows whose extremes are checked by the dedicated tests further down.
MULTI_ROWS = {
    ("aarch64", "adrp+add"),  # ADRP is a case above; the ADD half is tested below
    ("riscv64", "auipc+jalr"),
    ("loongarch64", "pcaddu18i+jirl"),
    ("mips64el", "j/jal"),
    ("mips64", "j/jal"),
}

def row(arch: str, name: str) -> BranchForm:
    found = [f for f in REACH if f.arch == arch and f.name == name]
    assert len(found) == 1, f"{arch} {name}: {len(found)} rows"
    return found[0]


def case_params() -> list[object]:
    return [pytest.param(case, id=case.id) for case in CASES]


def test_every_row_has_an_encoder() -> None:
    covered = {(c.arch, c.form) for c in CASES} | MULTI_ROWS
    assert covered == {(f.arch, f.name) for f in REACH}
    assert {f.arch for f in REACH} == {
        "x86_64", "i386", "aarch64", "arm", "ppc64le", "ppc64",
        "riscv64", "mips64el", "mips64", "s390x", "loongarch64",
    }  # fmt: skip


# --- independent decoders -----------------------------------------------------------


@dataclass(frozen=True)
class Insn:
    mnemonic: str
    target: int | None  # absolute target of a pc-relative instruction
    imm: int | None  # the last immediate operand as printed (for jalr/jirl/add)


def _last_immediate(operands: str) -> int | None:
    """The last operand when it is a number: ``-0x800``, ``#0xfff``, ``8(0x8)``, ``0x7ff(t0)``."""
    last = operands.rsplit(",", maxsplit=1)[-1].strip().lstrip("#")
    m = re.match(r"^(-?(?:0x[0-9a-f]+|\d+))", last)
    return int(m.group(1), 0) if m else None


def capstone_insn(arch: str, code: bytes, pc: int, thumb: bool = False) -> Insn:
    decoded = decode_one(by_name(arch), code, pc, thumb=thumb)
    assert decoded is not None, f"{arch}: {code.hex()} does not decode"
    assert decoded.size == len(code), f"{arch}: {decoded} is {decoded.size} bytes"
    return Insn(decoded.mnemonic, decoded.target, _last_immediate(decoded.op_str))


def _elf64_loongarch(chunks: Sequence[tuple[bytes, int]]) -> bytes:
    """A minimal ELF64 little-endian EM_LOONGARCH (258) file, chunk i in section ``.t<i>``.

    llvm-objdump reads no raw binaries, so each (code, address) goes into a section of
    its own at its own address (System V gABI ch. 4: ELF header, code, section name
    table, then the section headers: null, one per chunk, .shstrtab).
    """
    names = b"\0.shstrtab\0" + b"".join(b".t%d\0" % i for i in range(len(chunks)))
    body = bytearray(64)
    headers = bytearray(64)  # SHN_UNDEF
    name_at = len(b"\0.shstrtab\0")
    for i, (code, address) in enumerate(chunks):
        headers += struct.pack(
            "<IIQQQQIIQQ", name_at, 1, 6, address, len(body), len(code), 0, 0, 4, 0
        )  # SHT_PROGBITS, SHF_ALLOC | SHF_EXECINSTR
        name_at += len(b".t%d\0" % i)
        body += code
    headers += struct.pack("<IIQQQQIIQQ", 1, 3, 0, 0, len(body), len(names), 0, 0, 1, 0)
    body += names
    body += bytes(-len(body) % 8)
    count = len(chunks) + 2
    body[:16] = b"\x7fELF" + bytes([2, 1, 1, 0]) + bytes(8)  # ELFCLASS64, LSB, EV_CURRENT
    body[16:64] = struct.pack(
        "<HHIQQQIHHHHHH", 2, 258, 1, 0, 0, len(body), 0, 64, 0, 0, 64, count, count - 1
    )  # ET_EXEC, EM_LOONGARCH, no program headers
    return bytes(body + headers)


@functools.cache
def loongarch_objdump() -> tuple[list[str], str] | str:
    """(command prefix, kind) of a LoongArch-capable objdump, or why there is none.

    GNU objdump first (binutils-multiarch), as ``-b binary -m loongarch64``; Debian 12's
    binutils-multiarch 2.40 is built without LoongArch, so then llvm-objdump >= 16.
    """
    probe = le32(0x50000000)  # "b 0"
    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp, "probe.bin")
        raw.write_bytes(probe)
        for gnu in ("loongarch64-linux-gnu-objdump", "objdump"):
            path = shutil.which(gnu)
            if path is None:
                continue
            run = subprocess.run(
                [path, "-b", "binary", "-m", "loongarch64", "-D", str(raw)],
                capture_output=True, text=True, check=False,
            )  # fmt: skip
            if run.returncode == 0 and re.search(r"^\s*0:.*\bb\b", run.stdout, re.M):
                return [path, "-b", "binary", "-m", "loongarch64", "-D"], "gnu"
        elf = Path(tmp, "probe.elf")
        elf.write_bytes(_elf64_loongarch([(probe, 0)]))
        for llvm in ["llvm-objdump", *(f"llvm-objdump-{v}" for v in range(30, 15, -1))]:
            path = shutil.which(llvm)
            if path is None:
                continue
            run = subprocess.run(
                [path, "-d", "--no-show-raw-insn", str(elf)],
                capture_output=True, text=True, check=False,
            )  # fmt: skip
            if run.returncode == 0 and re.search(r"^\s*0:\s+b\s", run.stdout, re.M):
                return [path, "-d", "--no-show-raw-insn"], "llvm"
    return (
        "no LoongArch disassembler: GNU objdump here lacks LoongArch (`objdump -b binary "
        "-m loongarch64` fails: Debian 12 binutils-multiarch 2.40 has no LoongArch target) "
        "and no llvm-objdump >= 16 is installed (apt-get install llvm-19)"
    )


# PCADDU18I prints si20 itself, the rest print the byte offset (already shifted).
_LA_RAW_IMM = {"pcaddu18i": 18}
_LA_PC_RELATIVE = {"b", "bl", "beqz", "bnez", "beq", "bne", "blt", "bge", "bltu", "bgeu"}


def _parse_objdump_line(listing: str, pc: int) -> Insn:
    line = re.search(rf"^\s*{pc:x}:\s+(?:[0-9a-f]{{8}}\s+)?(\S+)\s*(.*)$", listing, re.M)
    assert line is not None, listing
    mnemonic = line.group(1)
    operands = re.split(r"\s+#|\s*<", line.group(2))[0]  # drop "# 0x..." and "<sym+off>"
    imm = _last_immediate(operands)
    assert imm is not None, line.group(0)
    target = None
    if mnemonic in _LA_PC_RELATIVE:
        target = pc + imm
    elif mnemonic in _LA_RAW_IMM:
        target = pc + (imm << _LA_RAW_IMM[mnemonic])
    return Insn(mnemonic, target, imm)


def objdump_many(chunks: Sequence[tuple[bytes, int]]) -> list[Insn]:
    """Decode each (code, pc) with the LoongArch objdump: one run for llvm-objdump."""
    tool = loongarch_objdump()
    if isinstance(tool, str):
        if os.environ.get("LAYOUTKIT_REQUIRE_ALL"):
            pytest.fail(tool)  # CI: a silently skipped check proves nothing
        pytest.skip(tool)
    command, kind = tool
    with tempfile.TemporaryDirectory() as tmp:
        if kind == "gnu":
            decoded = []
            for i, (code, pc) in enumerate(chunks):
                path = Path(tmp, f"{i}.bin")
                path.write_bytes(code)
                run = [*command, f"--adjust-vma={pc:#x}", str(path)]
                out = subprocess.run(run, capture_output=True, text=True, check=True).stdout
                decoded.append(_parse_objdump_line(out, pc))
            return decoded
        path = Path(tmp, "code.elf")
        path.write_bytes(_elf64_loongarch(chunks))
        out = subprocess.run(
            [*command, str(path)], capture_output=True, text=True, check=True
        ).stdout
    sections = re.split(r"^Disassembly of section \.t(\d+):$", out, flags=re.M)
    listings = dict(zip(map(int, sections[1::2]), sections[2::2], strict=True))
    return [_parse_objdump_line(listings[i], pc) for i, (_, pc) in enumerate(chunks)]


_la_decoded: dict[tuple[bytes, int], Insn] = {}


def objdump_insn(code: bytes, pc: int) -> Insn:
    """One LoongArch instruction; the first call decodes every one this file needs."""
    if (code, pc) not in _la_decoded:
        wanted = [*LOONGARCH_INSNS, (code, pc)]
        _la_decoded.update(zip(wanted, objdump_many(wanted), strict=True))
    return _la_decoded[code, pc]


def decode_insn(arch: str, code: bytes, pc: int, thumb: bool = False) -> Insn:
    if arch == "loongarch64":
        return objdump_insn(code, pc)
    return capstone_insn(arch, code, pc, thumb)


# --- the extremes -------------------------------------------------------------------


@pytest.mark.parametrize("case", case_params())
def test_field_width_is_what_limits_reach(case: Case) -> None:
    hi, lo = smax(case.bits), smin(case.bits)
    assert hi == (1 << (case.bits - 1)) - 1 and lo == -hi - 1
    case.encode(hi)
    case.encode(lo)
    with pytest.raises(ValueError, match="does not fit"):
        case.encode(hi + 1)
    with pytest.raises(ValueError, match="does not fit"):
        case.encode(lo - 1)


@pytest.mark.parametrize("case", case_params())
def test_table_row_is_the_manual_arithmetic(case: Case) -> None:
    form = row(case.arch, case.form)
    assert form.disp_max == case.bias + smax(case.bits) * case.scale
    assert form.disp_min == case.bias + smin(case.bits) * case.scale
    assert form.page == case.page
    assert form.granule == case.scale  # ADRP: its page is its granule


@pytest.mark.parametrize("extreme", ["max", "min"])
@pytest.mark.parametrize("case", case_params())
def test_decoded_extreme_is_the_table_extreme(case: Case, extreme: str) -> None:
    form = row(case.arch, case.form)
    imm = smax(case.bits) if extreme == "max" else smin(case.bits)
    disp = form.disp_max if extreme == "max" else form.disp_min
    insn = decode_insn(case.arch, case.encode(imm), case.pc, case.thumb)
    assert insn.mnemonic == case.mnemonic
    assert insn.target == case.target(imm)  # the decoder agrees with the manual
    base = case.pc - case.pc % case.page
    expected = base + disp
    if case.wrap32:
        expected %= 1 << 32
    assert insn.target == expected  # and both agree with the table


# Spelled-out values for a few rows, so a reader can check them without the helpers.
@pytest.mark.parametrize(
    ("arch", "code", "pc", "thumb", "target"),
    [
        # E9 FF FF FF 7F at 0x7f0000000000: next ip + 0x7fffffff
        ("x86_64", b"\xe9\xff\xff\xff\x7f", PC64, False, PC64 + 5 + 0x7FFF_FFFF),
        # B #+(2^27 - 4): 0x15ffffff
        ("aarch64", le32(0x15FF_FFFF), PC64, False, PC64 + 0x7FF_FFFC),
        # B #-2^27: 0x16000000
        ("aarch64", le32(0x1600_0000), PC64, False, PC64 - 0x800_0000),
        # ADRP x0, max: 0x f0 7f ff e0 -> page(pc) + 0xfffff000
        ("aarch64", le32(0xF07F_FFE0), PC_ADRP, False, 0x7F00_4000_0000 + 0xFFFF_F000),
        # A32 BAL #min: 0xea800000 -> pc + 8 - 2^25
        ("arm", le32(0xEA80_0000), PC32, False, PC32 + 8 - 0x200_0000),
        # T32 B.W max: hw1 f3ff (S 0, imm10 all ones), hw2 97ff (J1 = J2 = 0 as
        # I1 = I2 = 1 and S = 0, imm11 all ones) -> pc + 4 + 2^24 - 2
        ("arm", bytes.fromhex("fff3ff97"), PC_THUMB, True, PC_THUMB + 4 + 0xFF_FFFE),
        # ppc64 bl max: 0x49fffffd (big-endian; AA = 0, LK = 1)
        ("ppc64", be32(0x49FF_FFFD), PC64, False, PC64 + 0x1FF_FFFC),
        # riscv64 jal ra, max: 0x7ffff0ef
        ("riscv64", le32(0x7FFF_F0EF), PC64, False, PC64 + 0xF_FFFE),
    ],
)
def test_spelled_out_encodings(arch: str, code: bytes, pc: int, thumb: bool, target: int) -> None:
    assert capstone_insn(arch, code, pc, thumb).target == target


def test_i386_rel32_wraps_modulo_2_32() -> None:
    form = row("i386", "jmp/call rel32")
    assert form.wraps
    assert form.targets_from(0xFFFF_F000) == (0, 1 << 32)
    assert form.sources_to(0x1005) == (0, 1 << 32)
    # Forward across the top: 0xfffff000 + 5 + 0x2000 = 0x1_00001005 -> 0x1005.
    jmp = x86_rel32(b"\xe9")
    assert capstone_insn("i386", jmp(0x2000), 0xFFFF_F000).target == 0x1005
    # Backward below zero: 0x10000000 + 5 - 2^31 = -0x6ffffffb -> 0x90000005.
    assert capstone_insn("i386", jmp(-(2**31)), PC32).target == 0x9000_0005
    # So any target is one rel32 away: from 0x10000000 to 0xffffffff takes 0xeffffffa,
    # which as a signed 32-bit value is -0x10000006.
    assert capstone_insn("i386", jmp(-0x1000_0006), PC32).target == 0xFFFF_FFFF


# --- page, region and two-instruction forms ----------------------------------------


def test_adrp_add_reaches_every_byte_of_the_page() -> None:
    form = row("aarch64", "adrp+add")
    lo, hi = form.targets_from(PC_ADRP)
    page = PC_ADRP & ~0xFFF
    assert page == 0x7F00_4000_0000
    # ADRP at both extremes, then ADD #0 / ADD #0xfff (imm12 is unsigned, C6.2.4).
    top = capstone_insn("aarch64", a64_adr(1)(smax(21)), PC_ADRP)
    bottom = capstone_insn("aarch64", a64_adr(1)(smin(21)), PC_ADRP)
    add_max = capstone_insn("aarch64", a64_add_imm(0xFFF), PC_ADRP + 4)
    add_min = capstone_insn("aarch64", a64_add_imm(0), PC_ADRP + 4)
    assert top.target == page + (2**20 - 1) * 4096 == page + form.disp_max
    assert bottom.target == page - 2**20 * 4096 == page + form.disp_min
    assert add_max.mnemonic == "add" and add_max.imm == 0xFFF
    assert add_min.imm == 0
    with pytest.raises(ValueError, match="does not fit"):
        a64_add_imm(0x1000)
    assert bottom.target + add_min.imm == lo == page - 2**32
    assert top.target + add_max.imm == hi - 1 == page + 2**32 - 1


@pytest.mark.parametrize("extreme", ["max", "min"])
def test_auipc_jalr_extremes(extreme: str) -> None:
    form = row("riscv64", "auipc+jalr")
    upper, lower = (smax(20), smax(12)) if extreme == "max" else (smin(20), smin(12))
    auipc = capstone_insn("riscv64", rv_auipc(upper), PC64)
    jalr = capstone_insn("riscv64", rv_jalr(lower), PC64 + 4)
    assert (auipc.mnemonic, jalr.mnemonic) == ("auipc", "jalr")
    assert auipc.target == PC64 + upper * 4096
    assert jalr.imm == lower
    assert auipc.target is not None
    target = auipc.target + jalr.imm
    disp = form.disp_max if extreme == "max" else form.disp_min
    assert target == PC64 + disp
    # JALR clears bit 0 of the sum: the last *jump* target is the even one below.
    assert target & ~1 == PC64 + (disp if extreme == "min" else disp - 1)
    # Written out: [-2^31 - 2^11, 2^31 - 2^12 + 2^11 - 1] (RISC-V spec 2.5, JALR).
    assert form.disp_max == 2**31 - 2**12 + 2**11 - 1
    assert form.disp_min == -(2**31) - 2**11
    for encode, value in ((rv_auipc, upper), (rv_jalr, lower)):
        with pytest.raises(ValueError, match="does not fit"):
            encode(value + (1 if extreme == "max" else -1))


@pytest.mark.parametrize("extreme", ["max", "min"])
def test_pcaddu18i_jirl_extremes(extreme: str) -> None:
    form = row("loongarch64", "pcaddu18i+jirl")
    upper, lower = (smax(20), smax(16)) if extreme == "max" else (smin(20), smin(16))
    pcadd = objdump_insn(la_pcaddu18i(upper), PC64)
    jirl = objdump_insn(la_jirl(lower), PC64 + 4)
    assert (pcadd.mnemonic, jirl.mnemonic) == ("pcaddu18i", "jirl")
    assert pcadd.target == PC64 + upper * 2**18
    assert jirl.imm == lower * 4  # printed as the byte offset
    assert pcadd.target is not None
    target = pcadd.target + jirl.imm
    disp = form.disp_max if extreme == "max" else form.disp_min
    assert target == PC64 + disp
    # Written out: si20 << 18 plus offs16 << 2.
    assert form.disp_max == (2**19 - 1) * 2**18 + (2**15 - 1) * 4 == 2**37 - 2**17 - 4
    assert form.disp_min == -(2**19) * 2**18 - 2**15 * 4 == -(2**37) - 2**17
    assert form.granule == 4
    for encode, value in ((la_pcaddu18i, upper), (la_jirl, lower)):
        with pytest.raises(ValueError, match="does not fit"):
            encode(value + (1 if extreme == "max" else -1))


MIPS_J_PARAMS = [
    pytest.param(arch, op, mnemonic, id=f"{arch}:{mnemonic}")
    for arch in ("mips64el", "mips64")
    for op, mnemonic in ((0b000010, "j"), (0b000011, "jal"))
]


@pytest.mark.parametrize("pc", [0x1FFF_FFFC, 0x7F00_1FFF_FFFC])
@pytest.mark.parametrize(("arch", "op", "mnemonic"), MIPS_J_PARAMS)
def test_mips_j_jal_reach_the_region_of_pc_plus_4(
    arch: str, op: int, mnemonic: str, pc: int
) -> None:
    form = row(arch, "j/jal")
    pack = LE if arch == "mips64el" else BE
    encode = mips_j(op, pack)
    # pc is the last word of its 256 MiB region; its delay slot (pc + 4) starts the next.
    region = (pc + 4) & ~(2**28 - 1)
    assert region == pc + 4
    first = decode_insn(arch, encode(0), pc)
    last = decode_insn(arch, encode(2**26 - 1), pc)
    assert (first.mnemonic, last.mnemonic) == (mnemonic, mnemonic)
    assert first.target == region + form.disp_min == region
    assert last.target == region + form.disp_max == region + 2**28 - 4
    assert form.targets_from(pc) == (region, region + 2**28)
    # pc's own region [region - 2^28, region) is out of reach.
    assert form.targets_from(pc)[0] > pc
    with pytest.raises(ValueError, match="does not fit"):
        encode(2**26)
    assert form.region == 2**28 and form.region_bias == 4


# --- targets_from / sources_to ------------------------------------------------------

# Aligned pcs per arch (instruction alignment; ADRP pages; MIPS region edges).
ROUND_TRIP_PCS = {
    "x86_64": [0x40_1000, 0x40_1003, PC64 + 7],
    "i386": [0x0804_8000, 0x0804_8001],
    "aarch64": [0x40_3DD0, PC_ADRP, PC64 + 0xFFC],
    "arm": [0x0201_0000, PC32 + 2],
    "ppc64le": [0x1000_0000, PC64 + 4],
    "ppc64": [0x1000_0000, PC64 + 4],
    "riscv64": [0x1_0000, PC64 + 2],
    "mips64el": [0x1FFF_FFF8, 0x1FFF_FFFC, 0x2000_0000, PC64],
    "mips64": [0x1FFF_FFF8, 0x1FFF_FFFC, 0x2000_0000, PC64],
    "s390x": [0x1_8000_0002, PC64],
    "loongarch64": [0x1_2000_0000, PC64],
}


def _form_pcs() -> list[object]:
    return [
        pytest.param(form, pc, id=f"{form.arch}:{form.name}@{pc:#x}")
        for form in REACH
        for pc in ROUND_TRIP_PCS[form.arch]
        if form.page > 1 or pc % form.granule == 0
    ]


@pytest.mark.parametrize(("form", "pc"), _form_pcs())
def test_targets_and_sources_round_trip(form: BranchForm, pc: int) -> None:
    lo, hi = form.targets_from(pc)
    assert lo < hi
    for target in (lo, hi - 1):
        src_lo, src_hi = form.sources_to(target)
        assert src_lo <= pc < src_hi, f"{target:#x} reachable from {pc:#x}"
    if form.wraps:
        assert (lo, hi) == (0, 1 << 32)
        return
    for outside in (lo - 1, hi, lo - form.granule, hi - 1 + form.granule):
        src_lo, src_hi = form.sources_to(outside)
        assert not src_lo <= pc < src_hi, f"{outside:#x} not reachable from {pc:#x}"


# Aligned and unaligned pcs, page and region edges among them: the duality is arithmetic.
DUAL_PCS = (
    2**32,
    2**32 + 2,
    2**32 + 0xFFF,
    PC64 - 4,
    PC64 + 0xFFE,
    PC_ADRP,
    0x7F00_1FFF_FFFB,
    0x7F00_1FFF_FFFC,
)


@pytest.mark.parametrize(
    "form", [pytest.param(f, id=f"{f.arch}:{f.name}") for f in REACH if not f.wraps]
)
def test_targets_from_and_sources_to_are_dual(form: BranchForm) -> None:
    """t is in targets_from(pc) exactly when pc is in sources_to(t), at and near every edge."""
    for pc in DUAL_PCS:
        page_base = pc - pc % form.page
        region = max(form.region, 1)
        edges = (
            pc + form.disp_min,
            pc + form.disp_max,
            page_base + form.disp_min,
            page_base + form.disp_max + form.page,
            (pc + form.region_bias) - (pc + form.region_bias) % region,
            (pc + form.region_bias) - (pc + form.region_bias) % region + form.region,
        )
        lo, hi = form.targets_from(pc)
        for target in {e + d for e in edges for d in range(-9, 10)}:
            src_lo, src_hi = form.sources_to(target)
            assert (lo <= target < hi) == (src_lo <= pc < src_hi), f"{pc:#x} -> {target:#x}"


@pytest.mark.parametrize(
    "case",
    [pytest.param(c, id=c.id) for c in CASES if c.page == 1 and not c.wrap32],
)
def test_targets_from_is_the_set_of_encodable_targets(case: Case) -> None:
    """Near both ends: an aligned target is in targets_from iff some field value hits it."""
    form = row(case.arch, case.form)
    lo, hi = form.targets_from(case.pc)
    for edge in (case.target(smin(case.bits)), case.target(smax(case.bits))):
        for k in range(-3, 4):
            target = edge + k * case.scale
            imm, rest = divmod(target - case.pc - case.bias, case.scale)
            encodable = rest == 0 and smin(case.bits) <= imm <= smax(case.bits)
            assert (lo <= target < hi) == encodable, f"{target:#x}"


# --- window -------------------------------------------------------------------------

USER48 = Span(0x1000, 1 << 48)
USER47 = Span(0x1_0000, 1 << 47)


@pytest.mark.parametrize(
    ("arch", "name", "anchor", "limit", "expected"),
    [
        # B/BL: sources of t are [t - (2^27 - 4), t + 2^27 + 1); the low end is negative.
        ("aarch64", "b/bl", Span(0x40_3DD0, 0x40_3DD1), USER48,
         Span(0x1000, 0x40_3DD0 + 2**27 + 1)),
        # A 1 MiB anchor high up: both ends must be reachable.
        ("aarch64", "b/bl", Span(0x7F00_0000_0000, 0x7F00_0010_0000), USER48,
         Span(0x7F00_000F_FFFF - (2**27 - 4), 0x7F00_0000_0000 + 2**27 + 1)),
        # jmp/call rel32: sources of t are [t - (2^31 + 4), t - (5 - 2^31) + 1).
        ("x86_64", "jmp/call rel32", Span(0x40_1000, 0x40_1001), USER47,
         Span(0x1_0000, 0x40_1000 - (5 - 2**31) + 1)),
        ("x86_64", "jmp/call rel32", Span(0x7F00_0000_0000, 0x7F00_0010_0000), USER47,
         Span(0x7F00_000F_FFFF - (2**31 + 4), 0x7F00_0000_0000 - (5 - 2**31) + 1)),
        # An anchor near the top of the address space: the limit cuts the high end.
        ("x86_64", "jmp/call rel32", Span(2**47 - 0x1000, 2**47 - 0xFFF), USER47,
         Span(2**47 - 0x1000 - (2**31 + 4), 2**47)),
        # ADRP: sources of t are the pcs whose page is within [-2^32, 2^32 - 4096] of
        # t's page: [page(t) - (2^32 - 4096), page(t) + 2^32 + 4096).
        ("aarch64", "adrp+add", Span(0x1_2345_6789, 0x1_2345_678A), USER48,
         Span(0x1_2345_6000 - (2**32 - 4096), 0x1_2345_6000 + 2**32 + 4096)),
        # A32 B/BL at pc + 8: sources of t are [t - 8 - (2^25 - 4), t - 8 + 2^25 + 1).
        ("arm", "b/bl (A32)", Span(0x0300_0000, 0x0300_0040), Span(0x1_0000, 0xC000_0000),
         Span(0x0300_003F - 8 - (2**25 - 4), 0x0300_0000 - 8 + 2**25 + 1)),
        # MIPS J: the 256 MiB region holding t, less the delay-slot bias.
        ("mips64el", "j/jal", Span(0x1234_5678, 0x1234_5679), Span(0x1_0000, 1 << 40),
         Span(0x1000_0000 - 4, 0x2000_0000 - 4)),
        # i386 rel32 wraps: the whole 4 GiB, cut to the limit.
        ("i386", "jmp/call rel32", Span(0x0804_8000, 0x0804_9000), Span(0x1000, 0xC000_0000),
         Span(0x1000, 0xC000_0000)),
        # RISC-V AUIPC+JALR: [t - (2^31 - 2^11 - 1), t + 2^31 + 2^11 + 1).
        ("riscv64", "auipc+jalr", Span(0x4000_0000, 0x4000_0001), Span(0x1000, 1 << 39),
         Span(0x1000, 0x4000_0000 + 2**31 + 2**11 + 1)),
        # s390x BRASL: [t - (2^32 - 2), t + 2^32 + 1).
        ("s390x", "brasl/brcl", Span(0x1_8000_0000, 0x1_8000_0002), USER47,
         Span(0x1_8000_0001 - (2**32 - 2), 0x1_8000_0000 + 2**32 + 1)),
    ],
)  # fmt: skip
def test_window(arch: str, name: str, anchor: Span, limit: Span, expected: Span) -> None:
    assert row(arch, name).window(anchor, limit) == expected


@pytest.mark.parametrize(
    ("arch", "name", "anchor", "limit"),
    [
        # rel8 reaches 256 bytes: a 300-byte anchor cannot be covered from anywhere.
        ("x86_64", "jmp/jcc rel8", Span(0x40_1000, 0x40_1000 + 300), USER47),
        # MIPS J cannot leave the region: an anchor across a 256 MiB boundary.
        ("mips64", "j/jal", Span(0x1FFF_FF00, 0x2000_0100), Span(0x1_0000, 1 << 40)),
        # The window exists but lies wholly above the limit.
        ("aarch64", "b/bl", Span(0x7F00_0000_0000, 0x7F00_0000_0001), Span(0x1000, 1 << 39)),
    ],
)  # fmt: skip
def test_window_none(arch: str, name: str, anchor: Span, limit: Span) -> None:
    assert row(arch, name).window(anchor, limit) is None


def test_window_of_a_rel8_anchor_that_just_fits() -> None:
    form = row("x86_64", "jmp/jcc rel8")
    # 256 targets: rel8 from one pc spans [pc - 126, pc + 129]; an anchor of exactly
    # 256 bytes at 0x401000 is covered only from pc = 0x401000 + 126.
    anchor = Span(0x40_1000, 0x40_1100)
    assert form.window(anchor, USER47) == Span(0x40_1000 + 126, 0x40_1000 + 127)
    assert form.window(Span(0x40_1000, 0x40_1101), USER47) is None
