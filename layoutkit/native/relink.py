"""``advise --prove``: link a small program of the user's shape (static or dynamic,
PIE or not, the arch, the linker) with each recommendation's flags and measure the
protections of what the linker really produced (read through elf.py). Nothing is run.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from layoutkit.advice.candidates import Advice, Recommendation
from layoutkit.advice.safety import Protections, Safety, Shape, Source
from layoutkit.elf import ElfReader
from layoutkit.errors import ProbeError
from layoutkit.native.build import NATIVE_DIR, run_tool
from layoutkit.native.toolchain import Compiler

SOURCE = NATIVE_DIR / "shape.c"
LINKER_TOOLS = {"lld": ("ld.lld", "lld"), "mold": ("ld.mold", "mold")}  # name, package


@dataclass(frozen=True)
class Relink:
    """One program linked: what it is and what it carries."""

    flags: tuple[str, ...]
    protections: Protections
    first_load: int  # p_vaddr of its first PT_LOAD


def shape_flags(shape: Shape, before: Protections) -> list[str]:
    """The flags that make a program of ``shape`` with ``before``'s BIND_NOW."""
    flags = {Shape.STATIC: ["-static", "-fno-pie", "-no-pie"],
             Shape.DYNAMIC: ["-fno-pie", "-no-pie"], Shape.PIE: ["-fPIE", "-pie"],
             Shape.STATIC_PIE: ["-fPIE", "-static-pie"]}[shape]
    return [*flags, *(["-Wl,-z,now"] if before.bind_now else [])]


def _linker_dir(work: Path, linker: str) -> list[str]:
    """gcc 12 finds ld.lld / ld.mold for -fuse-ld only through -B DIR."""
    if linker not in LINKER_TOOLS:
        return []
    name, package = LINKER_TOOLS[linker]
    found = shutil.which(name) or shutil.which(package)
    if found is None:
        raise ProbeError(f"--prove needs {name}: apt-get install {package}")
    (work / name).symlink_to(found)
    return ["-B", f"{work}/"]


def link(compiler: Compiler, work: Path, name: str, flags: Sequence[str]) -> Relink:
    out = work / name
    run_tool([compiler.path, "-O2", *flags, "-o", str(out), str(SOURCE)],
             f"linking a program with {' '.join(flags)}")
    with ElfReader(out) as reader:
        image = reader.image()
    span = image.image_span
    return Relink(tuple(flags), Protections.measure(image), span.start if span else 0)


def prove(advice: Advice, allow_weaker: bool = False) -> Advice:
    """``advice`` with every link-time recommendation's safety measured on a relink; one
    the relink shows weaker is dropped with the reason (``allow_weaker``: kept, marked)."""
    compiler = Compiler.for_arch(advice.arch, cross=True)
    shape = Shape.DYNAMIC if advice.synthetic else Shape.of(advice.image)
    first = next((r for r in advice.recommendations if r.safety), None)
    before = first.safety.before if first and first.safety else Protections.measure(
        advice.image)
    base = shape_flags(shape, before)
    with tempfile.TemporaryDirectory(prefix="layoutkit-prove-") as tmp:
        work = Path(tmp)
        recs: list[Recommendation] = []
        notes = list(advice.notes)
        extra = _linker_dir(work, advice.linker)
        for n, rec in enumerate(advice.recommendations):
            if rec.safety is None or not rec.flags:
                recs.append(rec)
                continue
            pie = any(f in ("-pie", "-static-pie") for f in rec.flags)
            shape_part = [f for f in base if not (pie and f in ("-fno-pie", "-no-pie",
                                                                "-static"))]
            try:
                built = link(compiler, work, f"rec{n}", [*shape_part, *extra, *rec.flags])
            except ProbeError as e:
                recs.append(replace(rec, safety=replace(rec.safety, notes=(
                    *rec.safety.notes, f"--prove: the relink failed: {e}"))))
                continue
            measured = Safety(rec.safety.before, built.protections, rec.safety.added,
                              Source.MEASURED, (
                                  *rec.safety.notes,
                                  f"--prove: a {shape} {advice.arch} program linked with "
                                  f"{compiler.path} {' '.join([*shape_part, *rec.flags])}: "
                                  f"first PT_LOAD at {built.first_load:#x}"))
            if measured.weaker and not rec.safety.weaker and not allow_weaker:
                lost = ", ".join(p.value for p in measured.lost)
                notes.append(f"no {rec.kind} with {rec.linker}: --prove measured that "
                             f"{' '.join(rec.flags)} loses {lost} on a {shape} program")
                continue
            recs.append(replace(rec, safety=measured))
    return replace(advice, recommendations=tuple(recs), notes=tuple(notes))


__all__: Sequence[str] = ("Relink", "link", "prove", "shape_flags")
