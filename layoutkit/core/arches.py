"""The architectures layoutkit knows, and how an ELF header names them.

An :class:`Arch` is identity plus the few properties every other module needs. The
reach table lives in :mod:`layoutkit.ranges`, the kernel's layout facts in
:mod:`layoutkit.window.kernel`, capstone's names in :mod:`layoutkit.read.decode`.
"""

from __future__ import annotations

from dataclasses import dataclass

from layoutkit.errors import UnsupportedArchError, UsageError

KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB


@dataclass(frozen=True)
class Arch:
    """One instruction-set architecture as it appears in ELF files."""

    name: str
    aliases: tuple[str, ...]
    e_machine: int  # ELF e_machine value (System V gABI, "Machine" table)
    bits: int  # ELF class: 32 or 64
    little_endian: bool
    insn_align: int  # alignment of every instruction address
    # GNU ld's default max-page-size (ELF_MAXPAGESIZE in bfd/elf*-*.c); images and
    # PT_LOADs are aligned to it, so is every base an advice may give.
    max_page_size: int

    def __str__(self) -> str:
        return self.name


# e_machine values: System V gABI (https://www.sco.com/developers/gabi/latest/ch4.eheader.html)
# and binutils include/elf/common.h (EM_LOONGARCH 258, EM_RISCV 243).
# max page sizes: binutils bfd/elf64-x86-64.c (0x1000), elfnn-aarch64.c (0x10000),
# elf32-arm.c (0x10000), elf64-ppc.c (0x10000), elfnn-riscv.c (0x1000), elf64-s390.c
# (0x1000), elfxx-mips.c via elf64-mips.c/elfn32 (0x10000), elfnn-loongarch.c (0x10000),
# elf32-i386.c (0x1000).
ARCHES: tuple[Arch, ...] = (
    Arch("x86_64", ("amd64", "x64", "x86-64"), 62, 64, True, 1, 4 * KiB),
    Arch("i386", ("x86", "i686", "ia32"), 3, 32, True, 1, 4 * KiB),
    Arch("aarch64", ("arm64",), 183, 64, True, 4, 64 * KiB),
    Arch("arm", ("arm32", "armhf", "armel"), 40, 32, True, 2, 64 * KiB),
    Arch("ppc64le", ("ppc64el", "powerpc64le"), 21, 64, True, 4, 64 * KiB),
    Arch("ppc64", ("powerpc64",), 21, 64, False, 4, 64 * KiB),
    Arch("riscv64", ("riscv",), 243, 64, True, 2, 4 * KiB),
    Arch("mips64el", ("mips64le",), 8, 64, True, 4, 64 * KiB),
    Arch("mips64", (), 8, 64, False, 4, 64 * KiB),
    Arch("s390x", ("s390",), 22, 64, False, 2, 4 * KiB),
    Arch("loongarch64", ("loong64", "loongarch"), 258, 64, True, 4, 64 * KiB),
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
