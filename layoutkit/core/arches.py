"""The architectures layoutkit knows, and how an ELF header names them.

An :class:`Arch` is identity plus the few properties every other module needs. The
reach table lives in :mod:`layoutkit.ranges`, the kernel's layout facts in
:mod:`layoutkit.window.kernel`, capstone's names in :mod:`layoutkit.read.decode`.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from layoutkit.errors import UnsupportedArchError, UsageError

KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB


PAGE = 4096


class Isa(enum.Enum):
    """The instruction-set family: what decoding and the JIT's code look like."""

    X86 = "x86"
    ARM64 = "arm64"
    ARM = "arm"
    PPC = "ppc"
    RISCV = "riscv"
    MIPS = "mips"
    S390 = "s390"
    LOONGARCH = "loongarch"


@dataclass(frozen=True)
class KernelFacts:
    """What a distribution kernel does for a 64-bit (or native 32-bit) task of the arch."""

    va_bits: int  # default user VA size
    va_choices: tuple[int, ...]  # what kernel configurations offer
    # End of user space for ``va_bits``, when it is not simply 2**va_bits.
    top_adjust: int
    # ELF_ET_DYN_BASE: where an ET_DYN with an interpreter (a PIE) goes before ASLR;
    # None means "a function of the VA size", computed as 2/3 of the mmap window.
    et_dyn_base: int | None
    mmap_min_addr: int
    mmap_rnd: int  # range of arch_mmap_rnd(): PIE load bias and mmap_base offset
    brk_rnd: int  # range of arch_randomize_brk()
    page: int  # the distribution kernel's PAGE_SIZE
    # STACK_RND_MASK (pages) for the arch's task: with ASLR on, mmap_base() widens the
    # gap below the stack by ``stack_rnd_mask << PAGE_SHIFT`` (see stack_rnd).
    stack_rnd_mask: int
    mmap_min_gap: int  # the smallest gap mmap_base() leaves below the stack (MIN_GAP)
    # An older rule for brk: (the first release with ``brk_rnd``, the range before it).
    brk_rnd_before: tuple[tuple[int, int], int] | None = None

    @property
    def stack_rnd(self) -> int:
        """Bytes of stack randomisation mmap_base() keeps free (STACK_RND_MASK << PAGE_SHIFT)."""
        return self.stack_rnd_mask * self.page

    @property
    def stack_guard_gap(self) -> int:
        """mm/mmap.c: ``stack_guard_gap = 256UL << PAGE_SHIFT`` (the kernel's default)."""
        return 256 * self.page


@dataclass(frozen=True)
class LinkFacts:
    """What the linkers do for the arch (Debian 12 toolchains, checked with the fixtures)."""

    gnu_ld_base: int  # GNU ld's default non-PIE text segment
    lld_base: int | None  # lld's default image base (None: no lld target)
    linkers: frozenset[str]  # the linkers that link it
    # Non-PIE executables above 2 GiB do not link with Debian's crt objects (32-bit
    # absolute relocations overflow, with every linker).
    low_2g: bool


@dataclass(frozen=True)
class Arch:
    """One instruction-set architecture as it appears in ELF files, with every
    per-arch fact the other modules need (a test checks every arch has each)."""

    name: str
    aliases: tuple[str, ...]
    e_machine: int  # ELF e_machine value (System V gABI, "Machine" table)
    bits: int  # ELF class: 32 or 64
    little_endian: bool
    isa: Isa
    insn_align: int  # alignment of every instruction address
    # GNU ld's default max-page-size (ELF_MAXPAGESIZE in bfd/elf*-*.c); images and
    # PT_LOADs are aligned to it, so is every base an advice may give.
    max_page_size: int
    kernel: KernelFacts
    link: LinkFacts
    # LJ_TARGET_JUMPRANGE (LuaJIT src/lj_arch.h); None: no reach-limited LuaJIT JIT.
    luajit_jumprange: int | None
    # The same since commit 68354f44 (2025-11-06), which raised MIPS to 28.
    luajit_jumprange_2025: int | None
    # capstone's (CS_ARCH_*, CS_MODE_* ...) constant names; () where capstone 5 has none.
    capstone: tuple[str, ...]
    # glibc's guard below a thread stack: max(page size, ARCH_MIN_GUARD_SIZE), 64 KiB on
    # aarch64 (sysdeps/aarch64/nptl/pthreaddef.h; the arm64 guest's maps show 64 KiB
    # ---p below every 8 MiB stack), the page elsewhere (64 KiB on ppc64).
    thread_guard: int = 4 * 1024

    def __str__(self) -> str:
        return self.name


# e_machine values: System V gABI (https://www.sco.com/developers/gabi/latest/ch4.eheader.html)
# and binutils include/elf/common.h (EM_LOONGARCH 258, EM_RISCV 243).
# max page sizes: binutils bfd/elf64-x86-64.c (0x1000), elfnn-aarch64.c (0x10000),
# elf32-arm.c (0x10000), elf64-ppc.c (0x10000), elfnn-riscv.c (0x1000), elf64-s390.c
# (0x1000), elfxx-mips.c via elf64-mips.c/elfn32 (0x10000), elfnn-loongarch.c (0x10000),
# elf32-i386.c (0x1000).
#
# Kernel facts, per arch (Linux v6.1 unless said):
# x86_64: TASK_SIZE_MAX = (1 << 47) - PAGE_SIZE (arch/x86/include/asm/page_64_types.h);
#   57 with LA57 but only for hints above 2^47. ELF_ET_DYN_BASE = DEFAULT_MAP_WINDOW / 3 * 2
#   (arch/x86/include/asm/elf.h). Debian's amd64 kernels set
#   CONFIG_DEFAULT_MMAP_MIN_ADDR=65536 (the kernel's own default is 4096).
# i386: TASK_SIZE = PAGE_OFFSET = 0xC0000000 with VMSPLIT_3G; ELF_ET_DYN_BASE 0x400000
#   for ia32 tasks since v4.13 (commit eab09532d400, arch/x86/include/asm/elf.h).
# aarch64: TASK_SIZE_64 = 1 << VA_BITS; VA_BITS 39/42/47/48/52 (arch/arm64/Kconfig);
#   ELF_ET_DYN_BASE = 2 * DEFAULT_MAP_WINDOW_64 / 3 (arch/arm64/include/asm/elf.h);
#   mmap_min_addr 4096 read from /proc/sys/vm/mmap_min_addr in Debian's
#   linux-image-cloud-arm64 6.1 under qemu-system (tests/native/test_qemu_system.py).
# arm: TASK_SIZE = PAGE_OFFSET - 16 MiB = 0xBF000000 (arch/arm/include/asm/memory.h);
#   ELF_ET_DYN_BASE = TASK_SIZE / 3 * 2 (arch/arm/include/asm/elf.h).
# ppc64: TASK_SIZE_USER64 = 128 TiB (TASK_SIZE_128TB, asm/task_size_64.h, hash and
#   radix default map window); ELF_ET_DYN_BASE 0x100000000 (arch/powerpc/include/asm/elf.h).
# riscv64: Sv39 TASK_SIZE 2^38, Sv48 2^47, Sv57 2^56 (arch/riscv/include/asm/pgtable.h);
#   mmap stays below 2^47 unless a hint asks higher (v6.6+); ELF_ET_DYN_BASE =
#   (DEFAULT_MAP_WINDOW / 3) * 2 (arch/riscv/include/asm/elf.h).
# mips64: TASK_SIZE64 = 0x10000000000 (2^40) with 4K/16K pages (asm/processor.h);
#   ELF_ET_DYN_BASE = TASK_SIZE / 3 * 2 (arch/mips/include/asm/elf.h). 48-bit
#   configurations exist with 64K pages (unconfirmed: not offered as the default).
# s390x: 4 TiB (3-level) grows to 8 PiB (2^53) on demand (arch/s390/mm/pgalloc.c
#   crst_table_upgrade); ELF_ET_DYN_BASE 0x100000000 (commit a73dc5370e15,
#   arch/s390/include/asm/elf.h).
# loongarch64: VA bits 47 with 16 KiB pages and 3 levels (Debian's loong64 config,
#   unconfirmed); ELF_ET_DYN_BASE = TASK_SIZE / 3 * 2 (arch/loongarch/include/asm/elf.h).
# ASLR ranges: mmap (1 << mmap_rnd_bits) pages. Debian's defaults: x86-64
# CONFIG_ARCH_MMAP_RND_BITS=28 (arch/x86/Kconfig min 28); arm64 18 (read from
# /proc/sys/vm/mmap_rnd_bits in Debian's cloud-arm64 6.1 guest); riscv64 18
# (arch/riscv/Kconfig min); ppc64 14 with 64 KiB pages (arch/powerpc/Kconfig min) = 1 GiB;
# the others take 18 (unconfirmed). brk: arch_randomize_brk() randomize_page(mm->brk,
# SZ_1G) on 64-bit (arch/arm64/kernel/process.c, mm/util.c generic, arch/x86/kernel/
# process.c since v6.9, commit 44c76825d6ee; x86 used SZ_32M before: brk_rnd_before);
# SZ_32M for 32-bit tasks; ppc64 brk_rnd() 1 GiB (arch/powerpc/kernel/process.c).
# The gap mmap_base() leaves below the stack (Linux v6.1 mm/util.c, the generic one used
# by arm64, arm, powerpc, riscv, mips and loongarch; arch/x86/mm/mmap.c and
# arch/s390/mm/mmap.c have their own with the same rule): RLIMIT_STACK + stack_guard_gap
# (256 pages, mm/mmap.c), plus STACK_RND_MASK << PAGE_SHIFT when the task randomises,
# clamped to [MIN_GAP, STACK_TOP / 6 * 5]; MIN_GAP is 128 MiB (SZ_128M), s390's gap_min
# 32 MiB (arch/s390/mm/mmap.c as of v5.10; later kernels clamp to SZ_128M). STACK_RND_MASK
# (pages): x86-64 0x3fffff (16 GiB), i386 and compat tasks 0x7ff (arch/x86/include/asm/
# elf.h __STACK_RND_MASK); arm64 0x3ffff >> (PAGE_SHIFT - 12) (1 GiB; compat 0x7ff >> ..,
# arch/arm64/include/asm/elf.h); powerpc the same (arch/powerpc/include/asm/elf.h: 1 GiB
# for 64-bit, 8 MiB for 32-bit tasks); riscv64 the same (arch/riscv/include/asm/elf.h);
# s390x MMAP_RND_MASK 0x3ff80 (compat 0x7ff, arch/s390/include/asm/elf.h); arm, mips and
# loongarch define none: mm/util.c's fallback 0x7ff >> (PAGE_SHIFT - 12) (8 MiB). Pages
# are 4 KiB but for ppc64 (64 KiB); loongarch64 is kept at 4 KiB like its mmap_rnd (a
# 16 KiB-page kernel has a 4 MiB guard gap and the same 8 MiB of stack randomisation).
#
# Link facts: GNU ld's TEXT_START_ADDR (binutils ld/emulparams/*), checked with the
# fixtures (s390x is 0x1000000 for bfd, not gold's 0x80000000); lld's defaultImageBase
# (lld/ELF/Arch/*.cpp); which linkers link the arch, measured with Debian 12's.
#
# LJ_TARGET_JUMPRANGE (LuaJIT src/lj_arch.h): x64 31, ARM 25, ARM64 27, MIPS 27 (28 since
# 68354f44); s390x 32 only in the openresty/luajit2 fork; no ppc64 JIT (PPC is 32-bit
# only), none for riscv64 or loongarch64 upstream; i386 reaches all of 4 GiB.
_GIB = 1 << 30
_ALL = frozenset({"bfd", "gold", "lld", "mold"})


def _kernel(va: int, choices: tuple[int, ...], top: int, dyn: int | None, min_addr: int,
            rnd_bits: int, brk: int, stack_mask: int, page: int = PAGE,
            brk_before: tuple[tuple[int, int], int] | None = None,
            min_gap: int = 128 * MiB) -> KernelFacts:
    return KernelFacts(va, choices, top, dyn, min_addr, (1 << rnd_bits) * page, brk, page,
                       stack_mask, min_gap, brk_before)


def _link(gnu: int, lld: int | None, linkers: frozenset[str], low_2g: bool = False,
          ) -> LinkFacts:
    return LinkFacts(gnu, lld, linkers, low_2g)


ARCHES: tuple[Arch, ...] = (
    Arch("x86_64", ("amd64", "x64", "x86-64"), 62, 64, True, Isa.X86, 1, 4 * KiB,
         _kernel(47, (47, 57), -PAGE, None, 65536, 28, _GIB, 0x3FFFFF,
                 brk_before=((6, 9), 32 * MiB)),
         _link(0x400000, 0x200000, _ALL, low_2g=True), 31, 31, ("CS_ARCH_X86", "CS_MODE_64")),
    Arch("i386", ("x86", "i686", "ia32"), 3, 32, True, Isa.X86, 1, 4 * KiB,
         _kernel(32, (32,), -_GIB, 0x400000, 65536, 8, 32 * MiB, 0x7FF),
         _link(0x08048000, 0x400000, _ALL), None, None, ("CS_ARCH_X86", "CS_MODE_32")),
    Arch("aarch64", ("arm64",), 183, 64, True, Isa.ARM64, 4, 64 * KiB,
         _kernel(48, (39, 42, 47, 48, 52), 0, None, 4096, 18, _GIB, 0x3FFFF),
         _link(0x400000, 0x200000, _ALL), 27, 27, ("CS_ARCH_ARM64", "CS_MODE_ARM"),
         thread_guard=64 * KiB),
    Arch("arm", ("arm32", "armhf", "armel"), 40, 32, True, Isa.ARM, 2, 64 * KiB,
         _kernel(32, (32,), -(_GIB + 16 * MiB), None, 4096, 8, 32 * MiB, 0x7FF),
         _link(0x10000, 0x10000, _ALL), 25, 25, ("CS_ARCH_ARM", "CS_MODE_ARM")),
    Arch("ppc64le", ("ppc64el", "powerpc64le"), 21, 64, True, Isa.PPC, 4, 64 * KiB,
         _kernel(47, (47, 52), 0, 0x100000000, 65536, 14, _GIB, 0x3FFFF >> 4, page=64 * KiB),
         _link(0x10000000, 0x10000000, _ALL), None, None,
         ("CS_ARCH_PPC", "CS_MODE_64", "CS_MODE_LITTLE_ENDIAN"),
         thread_guard=64 * KiB),
    Arch("ppc64", ("powerpc64",), 21, 64, False, Isa.PPC, 4, 64 * KiB,
         _kernel(47, (47, 52), 0, 0x100000000, 65536, 14, _GIB, 0x3FFFF >> 4, page=64 * KiB),
         _link(0x10000000, 0x10000000, _ALL), None, None,
         ("CS_ARCH_PPC", "CS_MODE_64", "CS_MODE_BIG_ENDIAN"),
         thread_guard=64 * KiB),
    Arch("riscv64", ("riscv",), 243, 64, True, Isa.RISCV, 2, 4 * KiB,
         _kernel(47, (38, 47, 56), 0, None, 4096, 18, _GIB, 0x3FFFF),
         _link(0x10000, 0x10000, frozenset({"bfd", "lld", "mold"}), low_2g=True), None, None,
         ("CS_ARCH_RISCV", "CS_MODE_RISCV64", "CS_MODE_RISCVC")),
    Arch("mips64el", ("mips64le",), 8, 64, True, Isa.MIPS, 4, 64 * KiB,
         _kernel(40, (40, 48), 0, None, 4096, 18, _GIB, 0x7FF),
         _link(0x120000000, 0x10000, frozenset({"bfd", "lld"})), 27, 28,
         ("CS_ARCH_MIPS", "CS_MODE_MIPS64", "CS_MODE_LITTLE_ENDIAN")),
    Arch("mips64", (), 8, 64, False, Isa.MIPS, 4, 64 * KiB,
         _kernel(40, (40, 48), 0, None, 4096, 18, _GIB, 0x7FF),
         _link(0x120000000, 0x10000, frozenset({"bfd", "lld"})), 27, 28,
         ("CS_ARCH_MIPS", "CS_MODE_MIPS64", "CS_MODE_BIG_ENDIAN")),
    Arch("s390x", ("s390",), 22, 64, False, Isa.S390, 2, 4 * KiB,
         _kernel(42, (42, 53), 0, 0x100000000, 4096, 18, _GIB, 0x3FF80, min_gap=32 * MiB),
         _link(0x1000000, None, frozenset({"bfd", "gold", "mold"})), 32, 32,
         ("CS_ARCH_SYSZ", "CS_MODE_BIG_ENDIAN")),
    Arch("loongarch64", ("loong64", "loongarch"), 258, 64, True, Isa.LOONGARCH, 4, 64 * KiB,
         _kernel(47, (39, 47), 0, None, 4096, 18, _GIB, 0x7FF),
         _link(0x120000000, None, frozenset({"bfd", "lld", "mold"})), None, None, ()),
)

_BY_NAME = {name: arch for arch in ARCHES for name in (arch.name, *arch.aliases)}


def arch_names() -> list[str]:
    """Canonical names, in table order (for help texts and choices)."""
    return [arch.name for arch in ARCHES]


def by_name(name: str) -> Arch:
    """The arch called ``name`` (or one of its aliases, any case)."""
    try:
        return _BY_NAME[name.lower()]
    except KeyError:
        known = ", ".join(arch_names())
        raise UsageError(f"unknown architecture {name!r} (known: {known})") from None


def from_elf(e_machine: int, bits: int, little_endian: bool, *, path: str | None = None) -> Arch:
    """The arch of an ELF header, or :class:`UnsupportedArchError`."""
    candidates = [a for a in ARCHES if a.e_machine == e_machine and a.bits == bits]
    if len(candidates) > 1:
        candidates = [a for a in candidates if a.little_endian == little_endian]
    if not candidates:
        raise UnsupportedArchError(
            f"unsupported machine: e_machine {e_machine} in a {bits}-bit "
            f"{'little' if little_endian else 'big'}-endian ELF",
            path=path,
        )
    return candidates[0]
