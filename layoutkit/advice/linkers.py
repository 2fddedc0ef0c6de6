"""Linkers: which one made a binary, their defaults, and the flags each accepts.

Facts (binutils ld/ldlang.c and ld.texi for -Ttext-segment/-Tbss, lld/ELF/Driver.cpp for
--image-base; measured by the fixture builds, fixtures/README.md):
GNU ld (bfd) and gold move a whole non-PIE image with ``-Ttext-segment=ADDR``; lld
rejects that flag ("use --image-base") and, like mold, takes ``--image-base=ADDR``.
``-Tbss=ADDR`` gives .bss (and so the brk heap after it) its own PT_LOAD far from the
code with bfd and gold only: lld 14 moves every later section after .bss too, and
mold 1.10 stretches the RW segment over the gap (a 1 GiB bss), so neither is advised.
"""

from __future__ import annotations

from dataclasses import dataclass

from layoutkit.core.arches import Arch
from layoutkit.core.model import ElfImage
from layoutkit.errors import UsageError

LINKERS = ("bfd", "gold", "lld", "mold")

# The per-arch defaults (GNU ld's and lld's bases, which linkers link the arch) are on
# the arch value (core/arches.py, LinkFacts); mold 1.10 links non-PIE at 0x200000 on
# every arch (measured with the fixtures).
MOLD_BASE = 0x200000


@dataclass(frozen=True)
class LinkerGuess:
    name: str
    evidence: str


def detect(image: ElfImage) -> LinkerGuess:
    """The linker that made ``image``, from the marks linkers leave."""
    for text in image.comment:
        if text.startswith("Linker:") and "LLD" in text:
            return LinkerGuess("lld", f".comment says {text!r}")
        if text.startswith("mold "):
            return LinkerGuess("mold", f".comment says {text!r}")
    if image.section(".note.gnu.gold-version") is not None:
        return LinkerGuess("gold", "a .note.gnu.gold-version section")
    return LinkerGuess("bfd", "no lld, mold or gold mark (GNU ld leaves none)")


def check(linker: str, arch: Arch) -> None:
    if linker not in LINKERS:
        raise UsageError(f"unknown linker {linker!r} (known: {', '.join(LINKERS)})")
    if linker not in arch.link.linkers:
        raise UsageError(f"{linker} does not link {arch} (Debian 12 toolchains)")


def default_base(linker: str, arch: Arch) -> int:
    if linker == "mold":
        return MOLD_BASE
    if linker == "lld" and arch.link.lld_base is not None:
        return arch.link.lld_base
    return arch.link.gnu_ld_base


def fuse_ld(linker: str) -> list[str]:
    """How gcc picks the linker (bfd is gcc's default)."""
    return [] if linker == "bfd" else [f"-fuse-ld={linker}"]


def base_flags(linker: str, base: int) -> list[str]:
    if linker in ("bfd", "gold"):
        return [f"-Wl,-Ttext-segment={base:#x}"]
    return [f"-Wl,--image-base={base:#x}"]


def pie_flags(static: bool) -> tuple[str, ...]:
    """How gcc links a PIE: ``-static -pie`` gives gcc 12 an ET_EXEC (the -static wins),
    so a static program needs ``-static-pie`` (measured: advice/safety_table.py)."""
    return ("-fPIE", "-static-pie") if static else ("-fPIE", "-pie")


def separate_bss_supported(linker: str) -> bool:
    return linker in ("bfd", "gold")


def snippets(flags: list[str]) -> dict[str, str]:
    """The flags for common build systems."""
    joined = " ".join(flags)
    quoted = ", ".join(f"'{f}'" for f in flags)
    dquoted = ", ".join(f'"{f}"' for f in flags)
    return {
        "LDFLAGS": f'LDFLAGS="$LDFLAGS {joined}"',
        "cmake": f"target_link_options(TARGET PRIVATE {joined})",
        "meson": f"executable(..., link_args : [{quoted}])",
        "bazel": f"cc_binary(..., linkopts = [{dquoted}])",
    }
