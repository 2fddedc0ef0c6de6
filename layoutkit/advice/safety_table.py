"""What advise's flags do to an executable's protections, per linker, program shape,
arch and edit: measured on real relinks with Debian 12's toolchains (GNU ld 2.40, gold
1.16, LLD 14.0.6, mold 1.10.1, cross gcc 12), so that advise needs no toolchain.
tests/advice/test_safety_table.py relinks every row and checks it against readelf.

Only the exceptions are written down; every other (linker, shape, arch, edit) measured
here keeps all the protections of the default link (:func:`effect` says which rows were
measured at all). The causes, each seen with ``readelf -lW`` on the relink:

- GNU ld, static, -Tbss, where ld's default is -z noseparate-code (every arch but
  x86-64: ld/configure.tgt and ld.texi "-z separate-code"): the orphan placement of the
  sections -Tbss leaves behind puts text, rodata and data in one RWE PT_LOAD, and
  PT_GNU_RELRO is dropped. ``-z separate-code`` keeps R E / R / RW and RELRO.
- With -Tbss a static glibc's NOBITS ``__libc_freeres_ptrs`` lands in the first
  PT_LOAD (ELF headers, notes, .rela.plt), which becomes RW: no W+X, but stated.
- gold, static, arm64, -Tbss: "relocation overflow in R_AARCH64_TLSLE_ADD_TPREL_HI12"
  (libc.a malloc.o): it does not link. gold knows no ``-z separate-code``.
- ``-pie`` with ``-static`` gives gcc 12 an ET_EXEC (not a PIE): a static program
  needs ``-static-pie`` (linkers.pie_flags); gold does not link it ("--no-dynamic-
  linker: unknown option"), and Debian's ppc64el libc has no rcrt1.o.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from layoutkit.advice.safety import Protection, Shape
from layoutkit.core.kinds import AdviceKind

SEPARATE_CODE = ("-Wl,-z,separate-code",)
MEASURED_ARCHES = ("aarch64", "x86_64", "ppc64le")
MEASURED_SHAPES = (Shape.STATIC, Shape.DYNAMIC)
FREERES_NOTE = ("the first PT_LOAD (ELF headers, notes, .rela.plt) becomes RW: static "
                "glibc's NOBITS __libc_freeres_ptrs lands in it")


@dataclass(frozen=True)
class Effect:
    """What one flag set does on one (linker, shape, arch, edit), as measured."""

    links: bool  # False: the flags do not link this shape (``failure`` says why)
    lost: frozenset[Protection]  # what the flags alone lose against the default link
    keep: tuple[str, ...] | None  # flags that keep everything (None: none does)
    notes: tuple[str, ...] = ()
    failure: str = ""


KEEPS = Effect(True, frozenset(), ())
_MERGED = frozenset({Protection.W_XOR_X, Protection.RELRO, Protection.SEPARATE})

# (linker, shape, arch, edit) -> effect, where it is not KEEPS.
EXCEPTIONS: dict[tuple[str, Shape, str, AdviceKind], Effect] = {
    ("bfd", Shape.STATIC, "aarch64", AdviceKind.RELOCATE_TEXT):
        Effect(True, _MERGED, SEPARATE_CODE, (FREERES_NOTE,)),
    ("bfd", Shape.STATIC, "ppc64le", AdviceKind.RELOCATE_TEXT):
        Effect(True, _MERGED, SEPARATE_CODE, (FREERES_NOTE,)),
    ("bfd", Shape.STATIC, "x86_64", AdviceKind.RELOCATE_TEXT):
        Effect(True, frozenset(), (), (FREERES_NOTE,)),
    ("gold", Shape.STATIC, "aarch64", AdviceKind.RELOCATE_TEXT):
        Effect(False, frozenset(), None, failure=(
            "gold 1.16 does not link it: relocation overflow in "
            "R_AARCH64_TLSLE_ADD_TPREL_HI12 (libc.a malloc.o)")),
    **{("gold", Shape.STATIC, arch, AdviceKind.PIE):
       Effect(False, frozenset(), None, failure=(
           "gold 1.16 cannot link -static-pie (--no-dynamic-linker: unknown option)"))
       for arch in MEASURED_ARCHES},
    **{(linker, Shape.STATIC, "ppc64le", AdviceKind.PIE):
       Effect(False, frozenset(), None, failure=(
           "Debian 12's ppc64el libc has no rcrt1.o: -static-pie does not link"))
       for linker in ("bfd", "lld", "mold")},
}


def effect(linker: str, shape: Shape, arch: str, kind: AdviceKind) -> Effect | None:
    """The measured effect, or None where nothing was measured (another arch, a PIE)."""
    if arch not in MEASURED_ARCHES or shape not in MEASURED_SHAPES:
        return None
    return EXCEPTIONS.get((linker, shape, arch, kind), KEEPS)


__all__: Sequence[str] = ("EXCEPTIONS", "KEEPS", "MEASURED_ARCHES", "MEASURED_SHAPES",
                          "SEPARATE_CODE", "Effect", "effect")
