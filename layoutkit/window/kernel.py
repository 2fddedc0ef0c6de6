"""What the Linux kernel does with a process's address space, per architecture.

This module holds the kernel facts as data (each with the source it comes from) and a
:class:`KernelConfig` that a user can override field by field. It answers where user
space ends, what the lowest mappable address is, and where a position-independent
image is put before randomisation.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from layoutkit.core.arches import Arch, GiB
from layoutkit.core.model import ElfImage, LoadKind
from layoutkit.core.scenario import KernelOverrides
from layoutkit.core.spans import Span, align_down
from layoutkit.errors import ElfError, UsageError


@dataclass(frozen=True)
class KernelDefaults:
    """Per-arch facts for a 64-bit (or native 32-bit) task with a distribution kernel."""

    va_bits: int  # default user VA size
    va_choices: tuple[int, ...]  # what kernel configurations offer
    # End of user space for ``va_bits``, when it is not simply 2**va_bits.
    top_adjust: int
    # ELF_ET_DYN_BASE: where an ET_DYN with an interpreter (a PIE) goes before ASLR;
    # None means "a function of the VA size", computed as 2/3 of the mmap window.
    et_dyn_base: int | None
    mmap_min_addr: int


PAGE = 4096

# Sources, per arch (Linux v6.1 unless said):
# x86_64: TASK_SIZE_MAX = (1 << 47) - PAGE_SIZE (arch/x86/include/asm/page_64_types.h);
#   57 with LA57 but only for hints above 2^47. ELF_ET_DYN_BASE = DEFAULT_MAP_WINDOW / 3 * 2
#   (arch/x86/include/asm/elf.h). Debian's amd64 kernels set
#   CONFIG_DEFAULT_MMAP_MIN_ADDR=65536 (the kernel's own default is 4096).
# i386: TASK_SIZE = PAGE_OFFSET = 0xC0000000 with VMSPLIT_3G; ELF_ET_DYN_BASE 0x400000
#   for ia32 tasks since v4.13 (commit eab09532d400, arch/x86/include/asm/elf.h).
# aarch64: TASK_SIZE_64 = 1 << VA_BITS; VA_BITS 39/42/47/48/52 (arch/arm64/Kconfig);
#   ELF_ET_DYN_BASE = 2 * DEFAULT_MAP_WINDOW_64 / 3 (arch/arm64/include/asm/elf.h);
#   mmap_min_addr 4096 measured in Debian's linux-image-cloud-arm64 6.1 (facts.md §7).
# arm: TASK_SIZE = PAGE_OFFSET - 16 MiB = 0xBF000000 (arch/arm/include/asm/memory.h);
#   ELF_ET_DYN_BASE = TASK_SIZE / 3 * 2 (arch/arm/include/asm/elf.h).
# ppc64: TASK_SIZE_USER64 = 128 TiB (TASK_SIZE_128TB, asm/task_size_64.h, hash and
#   radix default map window); ELF_ET_DYN_BASE 0x100000000 (arch/powerpc/include/asm/elf.h).
# riscv64: Sv39 TASK_SIZE 2^38, Sv48 2^47, Sv57 2^56 (arch/riscv/include/asm/pgtable.h);
#   mmap stays below 2^47 unless a hint asks higher (v6.6+); ELF_ET_DYN_BASE =
#   (DEFAULT_MAP_WINDOW / 3) * 2 (arch/riscv/include/asm/elf.h).
# mips64: TASK_SIZE64 = 0x10000000000 (2^40) with 4K/16K pages (asm/processor.h);
#   ELF_ET_DYN_BASE = TASK_SIZE / 3 * 2 (arch/mips/include/asm/elf.h). [check: 48-bit
#   configurations exist with 64K pages]
# s390x: 4 TiB (3-level) grows to 8 PiB (2^53) on demand (arch/s390/mm/pgalloc.c
#   crst_table_upgrade); ELF_ET_DYN_BASE 0x100000000 (commit a73dc5370e15,
#   arch/s390/include/asm/elf.h).
# loongarch64: VA bits 47 with 16 KiB pages and 3 levels (Debian's loong64 config)
#   [check]; ELF_ET_DYN_BASE = TASK_SIZE / 3 * 2 (arch/loongarch/include/asm/elf.h).
_DEFAULTS: dict[str, KernelDefaults] = {
    "x86_64": KernelDefaults(47, (47, 57), -PAGE, None, 65536),
    "i386": KernelDefaults(32, (32,), -GiB, 0x400000, 65536),
    "aarch64": KernelDefaults(48, (39, 42, 47, 48, 52), 0, None, 4096),
    "arm": KernelDefaults(32, (32,), -(GiB + 16 * 1024 * 1024), None, 4096),
    "ppc64le": KernelDefaults(47, (47, 52), 0, 0x100000000, 65536),
    "ppc64": KernelDefaults(47, (47, 52), 0, 0x100000000, 65536),
    "riscv64": KernelDefaults(47, (38, 47, 56), 0, None, 4096),
    "mips64el": KernelDefaults(40, (40, 48), 0, None, 4096),
    "mips64": KernelDefaults(40, (40, 48), 0, None, 4096),
    "s390x": KernelDefaults(42, (42, 53), 0, 0x100000000, 4096),
    "loongarch64": KernelDefaults(47, (39, 47), 0, None, 4096),
}


def defaults(arch: Arch) -> KernelDefaults:
    return _DEFAULTS[arch.name]


@dataclass(frozen=True)
class KernelConfig:
    """The kernel configuration a layout is judged under."""

    arch: Arch
    va_bits: int
    mmap_min_addr: int

    @classmethod
    def for_arch(
        cls, arch: Arch, *, va_bits: int | None = None, mmap_min_addr: int | None = None
    ) -> KernelConfig:
        """Defaults for ``arch``, with the given fields overridden (and checked)."""
        base = defaults(arch)
        config = cls(arch, base.va_bits, base.mmap_min_addr)
        if va_bits is not None:
            if va_bits not in base.va_choices:
                choices = ", ".join(map(str, base.va_choices))
                raise UsageError(f"--va-bits {va_bits} is not a {arch} configuration ({choices})")
            config = replace(config, va_bits=va_bits)
        if mmap_min_addr is not None:
            if mmap_min_addr < 0 or mmap_min_addr >= config.user_top:
                raise UsageError(f"--mmap-min-addr {mmap_min_addr:#x} is outside user space")
            config = replace(config, mmap_min_addr=mmap_min_addr)
        return config

    @classmethod
    def under(cls, arch: Arch, overrides: KernelOverrides) -> KernelConfig:
        """Defaults for ``arch`` with a scenario's kernel overrides applied."""
        return cls.for_arch(arch, va_bits=overrides.va_bits,
                            mmap_min_addr=overrides.mmap_min_addr)

    @property
    def user_top(self) -> int:
        """First address above user space (TASK_SIZE)."""
        return (1 << self.va_bits) + defaults(self.arch).top_adjust

    @property
    def user_space(self) -> Span:
        """Where an unprivileged process can map anything: ``[mmap_min_addr, TASK_SIZE)``."""
        return Span(self.mmap_min_addr, self.user_top)

    def pie_base(self, max_align: int) -> int:
        """Load bias of a PIE before randomisation: ELF_ET_DYN_BASE, aligned as the kernel does.

        fs/binfmt_elf.c (v5.10+) aligns the bias down to the largest PT_LOAD p_align
        (``maximum_alignment``), at least a page.
        """
        base = defaults(self.arch).et_dyn_base
        if base is None:
            # 2/3 of the default mmap window, as each arch's ELF_ET_DYN_BASE says.
            window = min(self.user_top, 1 << min(self.va_bits, 48))
            base = window // 3 * 2
        return align_down(base, max(PAGE, max_align))

    @property
    def mmap_base(self) -> int:
        """Top of the top-down mmap area with ASLR off.

        mm/util.c mmap_base() (and arch/x86/mm/mmap.c): gap = RLIMIT_STACK + guard, at
        least 128 MiB; with the default 8 MiB stack the gap is the 128 MiB minimum.
        """
        return align_down(self.user_top - MMAP_GAP_MIN, PAGE)

    def nominal_bias(self, image: ElfImage) -> tuple[int, str]:
        """Load bias of ``image`` with ASLR off, and how it was derived.

        fs/binfmt_elf.c load_elf_binary: ET_EXEC at its link address; ET_DYN with an
        interpreter at ELF_ET_DYN_BASE aligned to the largest p_align, minus the first
        PT_LOAD's page; ET_DYN without one (static PIE) goes where mmap puts it, the top
        of the mmap area, as the loader puts the first shared object.
        """
        first = min(seg.vaddr for seg in image.loads)
        span = image.image_span
        if span is not None and span.size >= self.user_top - self.mmap_min_addr:
            raise ElfError(f"the image spans {span.size:#x} bytes: more than {self.arch} "
                           f"user space with {self.va_bits}-bit VA", path=image.path)
        align = max(PAGE, image.max_align)
        if image.load_kind is LoadKind.EXEC:
            return 0, "link address (fixed)"
        if image.load_kind is LoadKind.PIE:
            base = self.pie_base(image.max_align)
            return base - align_down(first, PAGE), "ELF_ET_DYN_BASE, ASLR off"
        size = span.size if span else 0
        base = align_down(max(0, self.mmap_base - size), align)
        return base - align_down(first, PAGE), "top of the mmap area, ASLR off"


MMAP_GAP_MIN = 128 << 20  # mm/util.c: MIN_GAP (128 MiB)


@dataclass(frozen=True)
class Aslr:
    """Per-arch randomisation ranges (bytes) of a 64-bit (or native 32-bit) task."""

    mmap_rnd: int  # range of arch_mmap_rnd(): PIE load bias and mmap_base offset
    brk_rnd: int  # range of arch_randomize_brk()


# mmap: (1 << mmap_rnd_bits) pages. Debian's defaults: x86-64 CONFIG_ARCH_MMAP_RND_BITS=28
# (arch/x86/Kconfig min 28); arm64 18 (measured in Debian's cloud-arm64 6.1 guest,
# /proc/sys/vm/mmap_rnd_bits, facts.md §7); riscv64 18 (arch/riscv/Kconfig min);
# ppc64 14 with 64 KiB pages (arch/powerpc/Kconfig min) = 1 GiB; others [check].
# brk: arch_randomize_brk() randomize_page(mm->brk, SZ_1G) on 64-bit (arm64
# process.c, mm/util.c generic, x86 process.c since v6.9; x86 used SZ_32M before);
# SZ_32M for 32-bit tasks; ppc64 brk_rnd() 1 GiB.
_ASLR: dict[str, Aslr] = {
    "x86_64": Aslr((1 << 28) * PAGE, 1 << 30),
    "i386": Aslr((1 << 8) * PAGE, 32 << 20),
    "aarch64": Aslr((1 << 18) * PAGE, 1 << 30),
    "arm": Aslr((1 << 8) * PAGE, 32 << 20),
    "ppc64le": Aslr((1 << 14) * 65536, 1 << 30),
    "ppc64": Aslr((1 << 14) * 65536, 1 << 30),
    "riscv64": Aslr((1 << 18) * PAGE, 1 << 30),
    "mips64el": Aslr((1 << 18) * PAGE, 1 << 30),
    "mips64": Aslr((1 << 18) * PAGE, 1 << 30),
    "s390x": Aslr((1 << 18) * PAGE, 1 << 30),
    "loongarch64": Aslr((1 << 18) * PAGE, 1 << 30),
}


def aslr(arch: Arch) -> Aslr:
    return _ASLR[arch.name]
