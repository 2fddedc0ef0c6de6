"""What the Linux kernel does with a process's address space, per architecture.

The per-arch kernel facts are data on the arch value (``Arch.kernel``, sourced in
core/arches.py); this module holds the :class:`KernelConfig` a user can override field
by field, and the rules built on it. It answers where user
space ends, what the lowest mappable address is, and where a position-independent
image is put before randomisation.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from layoutkit.core.arches import Arch, KernelFacts
from layoutkit.core.model import ElfImage, LoadKind
from layoutkit.core.scenario import KernelCapture, KernelOverrides, release_version
from layoutkit.core.spans import Span, align_down, align_up
from layoutkit.errors import ElfError, UsageError

PAGE = 4096


def defaults(arch: Arch) -> KernelFacts:
    """The arch's kernel facts (sources beside the table in core/arches.py)."""
    return arch.kernel


@dataclass(frozen=True)
class KernelConfig:
    """The kernel configuration a layout is judged under."""

    arch: Arch
    va_bits: int
    mmap_min_addr: int
    release: str | None = None  # the kernel release, where one was seen (a runner, a host)
    source: str = "the arch's defaults"  # where the values come from
    mmap_rnd_bits: int | None = None  # vm.mmap_rnd_bits where read; None: the arch's
    randomize_va_space: int = 2  # kernel.randomize_va_space (2: the distributions' default)
    legacy_va_layout: bool = False  # vm.legacy_va_layout

    @classmethod
    def resolve(cls, arch: Arch, overrides: KernelOverrides, *,
                host: KernelCapture | None = None) -> KernelConfig:
        """The kernel a command judges under, for an ``arch`` binary: a capture given
        with --kernel-file, else a release given with --kernel (its rules, the arch's
        defaults), else ``host`` (this machine, read by read/host.py) when its arch is
        ``arch``, else the arch's defaults; --va-bits and --mmap-min-addr apply on top."""
        capture = overrides.capture
        if capture is not None and capture.machine != arch.name:
            raise UsageError(f"{capture.source} describes a {capture.machine} kernel, the "
                             f"input is {arch}")
        if capture is None and overrides.release is None and host is not None \
                and host.machine == arch.name:
            capture = host
        config = cls.under(arch, overrides)
        if capture is not None:
            config = replace(config, release=capture.release, source=capture.source,
                             mmap_rnd_bits=capture.mmap_rnd_bits,
                             randomize_va_space=capture.randomize_va_space,
                             legacy_va_layout=capture.legacy_va_layout)
            if overrides.mmap_min_addr is None:
                config = replace(config, mmap_min_addr=capture.mmap_min_addr)
        elif overrides.release is not None:
            config = replace(config, release=overrides.release,
                             source=config.source.replace(
                                 f"{arch}'s defaults",
                                 f"--kernel {overrides.release} rules, {arch}'s defaults"))
        return config

    @classmethod
    def for_arch(
        cls, arch: Arch, *, va_bits: int | None = None, mmap_min_addr: int | None = None
    ) -> KernelConfig:
        """Defaults for ``arch``, with the given fields overridden (and checked)."""
        base = defaults(arch)
        given = [name for name, value in (("--va-bits", va_bits),
                                          ("--mmap-min-addr", mmap_min_addr))
                 if value is not None]
        source = f"{arch}'s defaults" + (f", {' and '.join(given)} given" if given else "")
        config = cls(arch, base.va_bits, base.mmap_min_addr, source=source)
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
    def mmap_rnd(self) -> int:
        """Range of ``arch_mmap_rnd()``: a PIE's load bias and the mmap base move by it
        (``mmap_rnd_bits`` bits of pages, mm/util.c, where the kernel's value was read)."""
        if self.mmap_rnd_bits is not None:
            return (1 << self.mmap_rnd_bits) * PAGE
        return self.arch.kernel.mmap_rnd

    @property
    def brk_rnd(self) -> int:
        """Bytes over which ``arch_randomize_brk()`` spreads the heap start under this
        kernel: its release's rule when the release is known, else a current kernel's.
        One page (offset 0) under randomize_va_space < 2: fs/binfmt_elf.c calls
        arch_randomize_brk() only when ``randomize_va_space > 1``."""
        if self.randomize_va_space < 2:
            return PAGE
        version = release_version(self.release)
        before = self.arch.kernel.brk_rnd_before
        if before is not None and version is not None and version < before[0]:
            return before[1]
        return self.arch.kernel.brk_rnd

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

    def mmap_gap(self, *, randomize: bool) -> int:
        """The gap mmap_base() leaves between STACK_TOP and the top of the mmap area.

        mm/util.c mmap_base() (v6.1; arch/x86/mm/mmap.c and arch/s390/mm/mmap.c the same
        rule): RLIMIT_STACK + stack_guard_gap, plus the stack's randomisation range
        (STACK_RND_MASK << PAGE_SHIFT) when the task randomises, clamped to
        [MIN_GAP, STACK_TOP / 6 * 5]. With the default 8 MiB stack and ASLR off that is
        MIN_GAP; with ASLR on the stack's range dominates (x86-64: 16 GiB).
        """
        facts = self.arch.kernel
        gap = STACK_RLIMIT + facts.stack_guard_gap + (facts.stack_rnd if randomize else 0)
        return min(max(gap, facts.mmap_min_gap), self.user_top // 6 * 5)

    def mmap_top(self, *, randomize: bool, rnd: int = 0) -> int:
        """mmap_base(): ``PAGE_ALIGN(STACK_TOP - gap - rnd)``, ``rnd`` the arch_mmap_rnd()
        draw (0 with ASLR off; with it on, the highest the base can be)."""
        return align_up(self.user_top - self.mmap_gap(randomize=randomize) - rnd, PAGE)

    @property
    def mmap_base(self) -> int:
        """Top of the top-down mmap area with ASLR off (``setarch -R``)."""
        return self.mmap_top(randomize=False)

    def top_of_mmap_bias(self, image: ElfImage, base: int) -> int:
        """Load bias of an image mapped first below an mmap base of ``base``: the top-down
        search takes the highest fit, aligned to the largest p_align (fs/binfmt_elf.c)."""
        first = min(seg.vaddr for seg in image.loads)
        span = image.image_span
        size = span.size if span else 0
        align = max(PAGE, image.max_align)
        return align_down(max(0, base - size), align) - align_down(first, PAGE)

    def nominal_bias(self, image: ElfImage, *, randomize: bool = False) -> tuple[int, str]:
        """Load bias of ``image`` with ASLR off, and how it was derived; with
        ``randomize``, the lowest (PIE) or highest (top of the mmap area) bias ASLR gives.

        fs/binfmt_elf.c load_elf_binary: ET_EXEC at its link address; ET_DYN with an
        interpreter at ELF_ET_DYN_BASE aligned to the largest p_align, minus the first
        PT_LOAD's page (ASLR adds arch_mmap_rnd() on top); ET_DYN without one (static
        PIE) goes where mmap puts it, the top of the mmap area, as the loader puts the
        first shared object. That top is lower with ASLR on even before its random
        offset: mmap_base() keeps the stack's randomisation range free (mmap_gap).
        """
        first = min(seg.vaddr for seg in image.loads)
        span = image.image_span
        if span is not None and span.size >= self.user_top - self.mmap_min_addr:
            raise ElfError(f"the image spans {span.size:#x} bytes: more than {self.arch} "
                           f"user space with {self.va_bits}-bit VA", path=image.path)
        if image.load_kind is LoadKind.EXEC:
            return 0, "link address (fixed)"
        if image.load_kind is LoadKind.PIE:
            base = self.pie_base(image.max_align)
            return base - align_down(first, PAGE), "ELF_ET_DYN_BASE, ASLR off"
        if randomize:
            return (self.top_of_mmap_bias(image, self.mmap_top(randomize=True)),
                    "top of the mmap area with ASLR, before its random offset")
        return self.top_of_mmap_bias(image, self.mmap_base), "top of the mmap area, ASLR off"


# RLIMIT_STACK's default, 8 MiB (include/uapi/linux/resource.h _STK_LIM): the gap
# mmap_base() leaves is computed from it.
STACK_RLIMIT = 8 << 20


__all__ = ["PAGE", "KernelConfig", "defaults", "release_version"]
