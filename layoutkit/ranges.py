"""Branch reach per architecture, as data, and the windows it implies.

Every form states the displacement range of its encoded target *relative to the
instruction's own address* (any pipeline bias such as ARM's pc+8 or x86's next-ip is
folded in), inclusive at both ends, exactly as the encoding allows. From that follow
two half-open spans: the targets one instruction can reach, and the instruction
addresses from which a target can be reached. The tests assemble the extreme encoding
of each form, decode it with capstone (objdump for LoongArch, which capstone 5 lacks)
and check both ends against this table.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from layoutkit.core.arches import Arch
from layoutkit.core.spans import Span, align_down, clamp


class FormKind(Enum):
    """What role a branch form plays for a JIT."""

    DIRECT = "direct"  # the unconditional direct branch/call a JIT emits to static code
    CONDITIONAL = "conditional"  # conditional or compact branches
    FAR = "far"  # a multi-instruction or page-relative sequence with long reach
    REGION = "region"  # not PC-relative: any target inside an aligned region


@dataclass(frozen=True)
class BranchForm:
    """One PC-relative branch or reference encoding and its exact reach.

    ``disp_min``/``disp_max`` bound ``target - pc`` (inclusive) for an instruction at
    ``pc``. ``page`` > 1 marks a page-relative form (ADRP, PCADDU18I pairs are not):
    ``pc`` is aligned down to ``page`` before the displacement is added, and every byte
    of the target page is addressable. ``region`` > 0 marks MIPS J/JAL: the target is
    anywhere in the ``region``-aligned block holding ``pc + region_bias``. ``wraps``
    marks i386 rel32, which wraps modulo 2**32 and so reaches every address.
    """

    arch: str
    name: str
    kind: FormKind
    disp_min: int
    disp_max: int
    granule: int = 1  # alignment of encodable targets
    page: int = 1
    region: int = 0
    region_bias: int = 0
    wraps: bool = False
    data: bool = False  # also forms data addresses (RIP-relative, ADRP, AUIPC)
    note: str = ""

    @property
    def reach(self) -> int:
        """Bytes spanned by the reachable targets (the last one counted with its granule)."""
        if self.wraps:
            return 1 << 32
        if self.region:
            return self.region
        return self.disp_max - self.disp_min + max(self.granule, self.page)

    def targets_from(self, pc: int) -> tuple[int, int]:
        """Half-open ``[lo, hi)`` of the addresses an instruction at ``pc`` can reach.

        The bounds are arithmetic (they can be negative or beyond the address space);
        :meth:`window` clips them.
        """
        if self.wraps:
            return 0, 1 << 32
        if self.region:
            block = align_down(pc + self.region_bias, self.region)
            return block, block + self.region
        base = align_down(pc, self.page)
        return base + self.disp_min, base + self.disp_max + self.page

    def sources_to(self, target: int) -> tuple[int, int]:
        """Half-open ``[lo, hi)`` of instruction addresses from which ``target`` is reachable."""
        if self.wraps:
            return 0, 1 << 32
        if self.region:
            block = align_down(target, self.region)
            return block - self.region_bias, block + self.region - self.region_bias
        page = align_down(target, self.page)
        return page - self.disp_max, page - self.disp_min + self.page

    def window(self, anchor: Span, limit: Span) -> Span | None:
        """Where code must lie so that it can branch to every address of ``anchor``.

        The intersection of :meth:`sources_to` of the anchor's first and last byte, cut
        to ``limit`` (the user address space). None when nothing is left.
        """
        lo1, hi1 = self.sources_to(anchor.start)
        lo2, hi2 = self.sources_to(anchor.end - 1)
        return clamp(max(lo1, lo2), min(hi1, hi2), limit)


D, C, F, R = FormKind.DIRECT, FormKind.CONDITIONAL, FormKind.FAR, FormKind.REGION

# Sources: the ISA manuals named per arch below; each displacement is the signed
# immediate's range times its scale, plus the pc bias of the encoding.
REACH: tuple[BranchForm, ...] = (
    # Intel SDM vol. 2A, JMP/CALL/Jcc: rel32/rel8 are added to the address of the next
    # instruction (E9/E8 cd: 5 bytes; 0F 8x cd: 6 bytes; EB/7x cb: 2 bytes). RIP-relative
    # disp32 (vol. 2A §2.2.1.6) is relative to the next instruction too; the form below
    # is the 7-byte `lea r64, [rip + disp32]` (REX.W 8D /r).
    BranchForm("x86_64", "jmp/call rel32", D, 5 - 2**31, 5 + 2**31 - 1),
    BranchForm("x86_64", "jcc rel32", C, 6 - 2**31, 6 + 2**31 - 1),
    BranchForm("x86_64", "jmp/jcc rel8", C, 2 - 128, 2 + 127),
    BranchForm("x86_64", "lea [rip+disp32]", F, 7 - 2**31, 7 + 2**31 - 1, data=True,
               note="RIP-relative data reference, 7-byte form"),
    # i386: rel32 arithmetic is modulo 2^32 (SDM vol. 2A, JMP: "EIP <- EIP + rel32",
    # truncated to 32 bits), so every address of a 32-bit process is reachable.
    BranchForm("i386", "jmp/call rel32", D, 5 - 2**31, 5 + 2**31 - 1, wraps=True),
    BranchForm("i386", "jmp/jcc rel8", C, 2 - 128, 2 + 127),
    # Arm ARM DDI 0487 (A64): B/BL imm26*4; B.cond/CBZ/CBNZ/LDR (literal) imm19*4;
    # TBZ/TBNZ imm14*4; ADR imm21 (bytes); ADRP imm21*4096 from pc & ~0xfff.
    BranchForm("aarch64", "b/bl", D, -(2**27), 2**27 - 4, granule=4),
    BranchForm("aarch64", "b.cond/cbz/ldr-literal", C, -(2**20), 2**20 - 4, granule=4),
    BranchForm("aarch64", "tbz/tbnz", C, -(2**15), 2**15 - 4, granule=4),
    BranchForm("aarch64", "adr", F, -(2**20), 2**20 - 1, data=True),
    BranchForm("aarch64", "adrp+add", F, -(2**32), 2**32 - 4096, granule=4096, page=4096,
               data=True, note="page-relative: ADRP then ADD/LDR with the low 12 bits"),
    # Arm ARM DDI 0406C: A32 B/BL imm24*4 relative to pc+8 (A8.8.18, A8.8.25);
    # T32 B.W (T4) and BL imm25 (S:I1:I2:imm10:imm11:'0') relative to pc+4;
    # T32 B<c>.W (T3) imm21 (S:J2:J1:imm6:imm11:'0') relative to pc+4.
    BranchForm("arm", "b/bl (A32)", D, 8 - 2**25, 8 + 2**25 - 4, granule=4),
    BranchForm("arm", "b.w/bl (T32)", D, 4 - 2**24, 4 + 2**24 - 2, granule=2,
               note="Thumb-2"),
    BranchForm("arm", "b<c>.w (T32)", C, 4 - 2**20, 4 + 2**20 - 2, granule=2,
               note="Thumb-2"),
    # Power ISA v3.1 Book I §2.4: b/bl LI (24 bits)*4, bc BD (14 bits)*4, from the
    # instruction's own address when AA=0.
    BranchForm("ppc64le", "b/bl", D, -(2**25), 2**25 - 4, granule=4),
    BranchForm("ppc64le", "bc", C, -(2**15), 2**15 - 4, granule=4),
    BranchForm("ppc64", "b/bl", D, -(2**25), 2**25 - 4, granule=4),
    BranchForm("ppc64", "bc", C, -(2**15), 2**15 - 4, granule=4),
    # RISC-V unprivileged ISA 20191213 §2.5: JAL imm20*2; Bxx imm12*2; AUIPC imm20<<12
    # plus JALR's signed imm12: [-2^31 - 2^11, 2^31 - 2^12 + 2^11 - 1].
    BranchForm("riscv64", "jal", D, -(2**20), 2**20 - 2, granule=2),
    BranchForm("riscv64", "beq/bne/...", C, -(2**12), 2**12 - 2, granule=2),
    BranchForm("riscv64", "auipc+jalr", F, -(2**31) - 2**11, 2**31 - 2**11 - 1, data=True,
               note="two instructions (AUIPC+ADDI/LD form data addresses alike)"),
    # MIPS64 vol. II-A: J/JAL keep the upper bits of the delay slot's address (pc+4)
    # and replace the low 28 (instr_index*4): a 256 MiB-aligned region. B/BEQ/BAL
    # offset16*4 relative to pc+4.
    BranchForm("mips64el", "j/jal", R, 0, 2**28 - 4, granule=4, region=2**28, region_bias=4,
               note="any target in the 256 MiB region of pc+4"),
    BranchForm("mips64el", "b/beq/bal", C, 4 - 2**17, 4 + 2**17 - 4, granule=4),
    BranchForm("mips64", "j/jal", R, 0, 2**28 - 4, granule=4, region=2**28, region_bias=4,
               note="any target in the 256 MiB region of pc+4"),
    BranchForm("mips64", "b/beq/bal", C, 4 - 2**17, 4 + 2**17 - 4, granule=4),
    # z/Architecture Principles of Operation SA22-7832: BRASL/BRCL (RIL-b/c) I2 is a
    # signed 32-bit count of halfwords; BRAS/BRC (RI-b/c) a signed 16-bit count.
    BranchForm("s390x", "brasl/brcl", D, -(2**32), 2**32 - 2, granule=2),
    BranchForm("s390x", "bras/brc", C, -(2**16), 2**16 - 2, granule=2),
    # LoongArch Reference Manual vol. 1 v1.10 §2.2.6: B/BL offs26*4; BEQZ/BNEZ
    # offs21*4; BEQ/BNE/BLT... offs16*4; PCADDU18I si20<<18 then JIRL offs16*4.
    BranchForm("loongarch64", "b/bl", D, -(2**27), 2**27 - 4, granule=4),
    BranchForm("loongarch64", "beqz/bnez", C, -(2**22), 2**22 - 4, granule=4),
    BranchForm("loongarch64", "beq/bne/blt/...", C, -(2**17), 2**17 - 4, granule=4),
    BranchForm("loongarch64", "pcaddu18i+jirl", F, -(2**37) - 2**17, 2**37 - 2**17 - 4,
               granule=4, note="two instructions"),
)

def forms(arch: Arch) -> tuple[BranchForm, ...]:
    """The reach table rows of ``arch``, direct branch first."""
    return tuple(form for form in REACH if form.arch == arch.name)


def default_form(arch: Arch) -> BranchForm:
    """The direct branch/call a JIT uses to reach static code (the first DIRECT or REGION row)."""
    for form in forms(arch):
        if form.kind in (FormKind.DIRECT, FormKind.REGION):
            return form
    raise LookupError(f"no direct branch form for {arch}")  # the table has one per arch


# Where no PC-relative data form is in the table (PPC64 addresses data TOC-relative,
# MIPS through %hi/%lo or the GOT, s390x LARL, LoongArch PCALAU12I), code is assumed to
# reach data within +-2 GiB, the medium code models' bound: the conservative choice.
DATA_REACH_FALLBACK = 2**31


def data_reach(arch: Arch) -> int:
    """How far above the code PC-relative data references reach (bytes past the pc)."""
    ups = [form.targets_from(0)[1] for form in forms(arch) if form.data]
    return max(ups, default=DATA_REACH_FALLBACK)


def form_by_name(arch: Arch, name: str) -> BranchForm | None:
    for form in forms(arch):
        if form.name == name:
            return form
    return None
