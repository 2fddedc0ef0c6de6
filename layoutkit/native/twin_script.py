"""The layout twin's GNU ld script: the target's PT_LOADs as ``PHDRS``, the twin's own
sections placed inside them (twin.py builds and checks the twin).

Where the twin's own sections go is a choice among placements (:data:`VARIANTS`): the
default, then header material with the read-only data, .dynamic late or apart, and as a
last resort every segment grown to its pages (:func:`grow`). GNU ld's manual (ld/ld.texi,
"PHDRS Command", "Output Section Address") describes the script's statements.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

from layoutkit.core.arches import Arch
from layoutkit.core.model import ElfImage, LoadKind, Perm, Segment
from layoutkit.errors import ProbeError
from layoutkit.window.kernel import PAGE

ANCHOR_SECTION = ".lk_anchor"

# Input sections by what they are, as GNU ld's default scripts group them.
_HEAD = (".interp", ".note.gnu.property", ".note.gnu.build-id", ".note.ABI-tag", ".note*",
         ".hash", ".gnu.hash", ".dynsym", ".dynstr", ".gnu.version", ".gnu.version_d",
         ".gnu.version_r", ".rela.dyn", ".rela.plt", ".rel.dyn", ".rel.plt")
_CODE = (".init", ".plt", ".plt.got", ".plt.sec", ".iplt", ".text", ".fini")
# On PPC64 .plt and .iplt are tables of addresses the loader writes (SHT_NOBITS, flags
# WA: binutils ld/emulparams/elf64ppc.sh puts them after .got), not code: in the R E
# segment ld.so faults writing them.
_WRITABLE_PLT = {"ppc64le": (".plt", ".iplt"), "ppc64": (".plt", ".iplt")}
# Symbols the arch's crt objects expect the linker script to define: riscv64's crt1.o
# loads gp from __global_pointer$, which GNU ld's default script sets near the small
# data (binutils ld/emulparams/elf32lriscv-defs.sh, OTHER_END_SYMBOLS / SDATA_START).
_DATA_SYMBOLS = {"riscv64": "PROVIDE(__global_pointer$ = . + 0x800);"}
# MIPS code reaches its GOT through $gp, 16-bit offsets from _gp, which GNU ld's default
# script sets 0x7ff0 past the start of the GOT (mips64el-linux-gnuabi64-ld --verbose:
# "HIDDEN (_gp = ALIGN (16) + 0x7ff0)" right before .got); without it crtbegin.o's
# R_MIPS_GOT_DISP relocations do not fit.
_GOT_SYMBOLS = {"mips64el": "HIDDEN(_gp = ALIGN(16) + 0x7ff0);"}
_RODATA = (".rodata", ".eh_frame_hdr", ".eh_frame", ".gcc_except_table")
# Input sections taken by their name alone: ".got.*" would take .got.plt into the .got
# output section, and s390x's GNU ld then asserts that the GOT pointer lies at or below
# .got.plt (binutils bfd/elf-s390-common.c, s390_gotplt_offset); GNU ld's default
# scripts keep them apart (ld --verbose: ".got : { *(.got) *(.igot) }").
_WHOLE = ("COMMON", ".got")
_BSS = (".sbss", ".bss")
# Static glibc's own sections (the default script leaves them orphans; GNU ld defines
# __start_/__stop_ symbols for them by name): code, RELRO data, and zero-fill.
_GLIBC_CODE = "__libc_freeres_fn"
_GLIBC_DATA = ("__libc_subfreeres", "__libc_IO_vtables", "__libc_atexit")
_GLIBC_BSS = "__libc_freeres_ptrs"


@dataclass(frozen=True)
class TwinSpec:
    """The layout a twin reproduces (link-time addresses; a PIE's are offsets)."""

    arch: Arch
    kind: LoadKind  # EXEC, PIE or STATIC_PIE
    loads: tuple[Segment, ...]  # the target's PT_LOADs, in address order
    anchor: int  # link-time address of the anchor
    source: str  # what the layout comes from (a path, or "path with <advice>")

    @classmethod
    def of(cls, image: ElfImage, anchor: int, source: str | None = None) -> TwinSpec:
        """The layout of ``image`` (a real binary or one advise rewrote)."""
        if image.load_kind not in (LoadKind.EXEC, LoadKind.PIE, LoadKind.STATIC_PIE):
            raise ProbeError(f"no twin for a {image.load_kind.describe()}: a twin reproduces "
                             "an executable (ET_EXEC, a PIE, a static PIE)", path=image.path)
        loads = tuple(sorted((s for s in image.loads if s.memsz), key=lambda s: s.vaddr))
        return cls(image.arch, image.load_kind, loads, anchor, source or image.path)


def pages_of(seg: Segment) -> tuple[int, int]:
    start, end = seg.vaddr // PAGE * PAGE, -(-(seg.vaddr + seg.memsz) // PAGE) * PAGE
    return start, end


def grow(loads: Sequence[Segment]) -> tuple[Segment, ...]:
    """Every PT_LOAD stretched to the edges of its pages where no neighbour shares them:
    the kernel maps whole pages, so the mapped layout is the same, and the twin's own
    .dynamic fits where lld's first writable segment is smaller than it (riscv64: 0x170
    bytes against the twin's 0x190). The
    first keeps its start (the ELF header), the last its end (the brk heap follows)."""
    out: list[Segment] = []
    for i, seg in enumerate(loads):
        start, end = pages_of(seg)
        start = seg.vaddr if i == 0 else max(start, loads[i - 1].vaddr + loads[i - 1].memsz)
        end = seg.vaddr + seg.memsz if i == len(loads) - 1 else min(end, loads[i + 1].vaddr)
        added = seg.vaddr - start
        out.append(replace(seg, vaddr=start, offset=seg.offset - added,
                           memsz=end - start, filesz=min(seg.filesz + added, end - start)))
    return tuple(out)


def load_mismatches(want: Sequence[Segment], got: Sequence[Segment], kind: LoadKind) -> list[str]:
    """Differences in ``PT_LOAD`` vaddr, memsz, flags, align (and count) between two
    images (the kernel aligns a PIE's load bias to the largest p_align: fs/binfmt_elf.c,
    maximum_alignment)."""
    got = sorted((s for s in got if s.memsz), key=lambda s: s.vaddr)
    found = []
    if len(want) != len(got):
        found.append(f"{len(got)} PT_LOAD segment(s), the target has {len(want)}")
    for i, (w, g) in enumerate(zip(want, got, strict=False)):
        for what, a, b in (("p_vaddr", w.vaddr, g.vaddr), ("p_memsz", w.memsz, g.memsz),
                           ("p_flags", w.raw_flags & 7, g.raw_flags & 7),
                           ("p_align", w.align, g.align)):
            if a != b:
                found.append(f"PT_LOAD {i}: {what} {b:#x}, the target's is {a:#x}")
    return found


def _segment_name(i: int) -> str:
    return f"lk_load{i}"


def _flags_text(seg: Segment) -> str:
    return (Perm.from_p_flags(seg.raw_flags)).rwx()


def linker_script(spec: TwinSpec, *, code_after_anchor: bool = False,
                  head_with_rodata: bool = False, dynamic_late: bool = False,
                  grown: bool = False, dynamic_apart: bool = False) -> str:
    """A GNU ld script whose PT_LOADs are ``spec.loads`` exactly.

    Header material (.interp, dynamic symbols, relocations) goes into the first segment
    (``head_with_rodata``: into the read-only segment after the code, for a first
    segment that holds little more than the ELF headers, as GNU ld's -z separate-code
    leaves it), code into the executable segment that holds the anchor
    (``probe_anchor`` at the anchor; ``.text`` before it, or with ``code_after_anchor``
    after it), read-only data into the first read-only segment after it (else the code
    segment), .dynamic, the init arrays and .data.rel.ro into the first writable segment
    after the code (``dynamic_late``: with the GOT, .data and .bss in the last one with
    file contents, for lld's and mold's small first writable segment; ``dynamic_apart``:
    .dynamic alone in the first, the init arrays and .data.rel.ro with the GOT, for lld's
    first writable segment that holds the twin's .dynamic but no more), the GOT, .data
    and .bss into the last writable segment with file contents (``grown``: every
    segment first stretched to its pages, :func:`grow`). Every segment is then padded
    to its end; a writable segment's padding is zero-fill (NOLOAD), so its end is the
    target's bss end.

    A static PIE has no PT_INTERP, and a PT_TLS and the symbols static glibc's start-up
    code looks for (``__init_array_start`` ..., as GNU ld's default script provides
    them), and glibc's own named sections placed with their kind.
    """
    static = spec.kind is LoadKind.STATIC_PIE
    loads = grow(spec.loads) if grown else spec.loads
    if not loads:
        raise ProbeError("the target has no PT_LOAD segment", path=spec.source)
    first = loads[0]
    if first.vaddr % PAGE:
        raise ProbeError(f"the first PT_LOAD starts at {first.vaddr:#x}, not on a page: the "
                         "twin's ELF header could not lie at its start", path=spec.source)
    code = next((i for i, s in enumerate(loads)
                 if Perm.X in s.flags and s.vaddr <= spec.anchor < s.vaddr + s.memsz), None)
    if code is None:
        raise ProbeError(f"the anchor {spec.anchor:#x} is in no executable PT_LOAD",
                         path=spec.source)
    rodata = next((i for i in range(code + 1, len(loads))
                   if loads[i].flags == Perm.R), code)
    writable = [i for i, s in enumerate(loads) if Perm.W in s.flags]
    if not writable:
        raise ProbeError("the target has no writable PT_LOAD: the twin's .dynamic and .got "
                         "need one", path=spec.source)
    # .dynamic and the init arrays go into the first writable segment (lld and mold make
    # it the small RELRO one), the GOT, .data and .bss into the last with file contents.
    # A writable first segment (static glibc's orphan __libc_freeres_ptrs under -Tbss,
    # or the RWE segment GNU ld merges) holds none of it: the first one after the code.
    data = next((i for i in writable if i > max(code, rodata)), writable[0])
    rw = next((i for i in reversed(writable) if loads[i].filesz), data)
    if dynamic_late:
        data = rw
    if rodata < code or data < max(code, rodata):
        raise ProbeError("segment order not supported for a twin (the writable segment "
                         "must follow the code and read-only data)", path=spec.source)

    def collect(names: Sequence[str], keep: bool = False) -> str:
        parts = [f"*({n})" if n.endswith("*") or n in _WHOLE else f"*({n} {n}.*)"
                 for n in names]
        return " ".join(f"KEEP({p})" if keep else p for p in parts)

    lines = ["ENTRY(_start)", "PHDRS", "{", "  lk_phdr PT_PHDR PHDRS;"]
    if not static:
        lines.append("  lk_interp PT_INTERP;")
    for i, seg in enumerate(loads):
        head = " FILEHDR PHDRS" if i == 0 else ""
        lines.append(f"  {_segment_name(i)} PT_LOAD{head} FLAGS({seg.raw_flags & 7});")
    lines.append("  lk_dynamic PT_DYNAMIC;")
    if static:
        lines.append("  lk_tls PT_TLS;")
    lines += ["  lk_stack PT_GNU_STACK FLAGS(6);", "}",
              "SECTIONS", "{", f"  . = {first.vaddr:#x} + SIZEOF_HEADERS;"]

    def out(name: str, names: Sequence[str], seg: int, *, extra: str = "",
            keep: bool = False, noload: bool = False) -> None:
        kind = " (NOLOAD)" if noload else ""
        lines.append(f"  {name}{kind} : {{ {collect(names, keep)} }} :{_segment_name(seg)}"
                     + extra)

    def pad(i: int) -> None:
        seg = loads[i]
        end = seg.vaddr + seg.memsz
        if i not in (0, code, rodata, data, rw):  # nothing of the twin's own: all padding
            body = (f"{{ . += {seg.memsz:#x}; }}" if Perm.W in seg.flags
                    else f"{{ . += {seg.memsz - 1:#x}; BYTE(0) }}")
            kind = " (NOLOAD)" if Perm.W in seg.flags else ""
            lines.append(f"  .lk_pad{i} {seg.vaddr:#x}{kind} : {body} :{_segment_name(i)}")
            return
        # A writable segment ends in zero-fill (its bss); the others in file-backed
        # bytes, so no read-only segment has memsz > filesz.
        if Perm.W in seg.flags:
            # Up to the end, or nothing when the twin's sections fill the segment to it
            # (inside an output section "." is an offset: the start is a symbol).
            lines.append(f"  lk_pad{i} = .;")
            lines.append(f"  .lk_pad{i} (NOLOAD) : {{ . += {end:#x} - lk_pad{i}; }} "
                         f":{_segment_name(i)}")
        else:
            lines.append(f"  .lk_pad{i} {end - 1:#x} : {{ BYTE(0) }} :{_segment_name(i)}")

    def start(i: int) -> None:
        lines.append(f"  . = {loads[i].vaddr:#x};")

    def code_sections(i: int, names: Sequence[str]) -> None:
        for name in names:
            if name in _WRITABLE_PLT.get(spec.arch.name, ()):
                continue  # a data table there: it goes with the GOT below
            out(name, [name], i, keep=name in (".init", ".fini"))
        if static and ".text" in names:
            out(_GLIBC_CODE, [_GLIBC_CODE], i, keep=True)

    def init_arrays(i: int) -> None:
        for name in (".preinit_array", ".init_array", ".fini_array"):
            if not static:
                out(name, [name], i, keep=True)
                continue
            # GNU ld's default script (ld --verbose): the bounds static glibc runs.
            sym = name.lstrip(".")
            lines.append(f"  {name} : {{ PROVIDE_HIDDEN(__{sym}_start = .); "
                         f"KEEP(*(SORT_BY_INIT_PRIORITY({name}.*))) KEEP(*({name})) "
                         f"PROVIDE_HIDDEN(__{sym}_end = .); }} :{_segment_name(i)}")

    tls = " :lk_tls" if static else ""

    def header_material(i: int) -> None:
        if not static:
            out(".interp", [".interp"], i, extra=" :lk_interp")
        for name in _HEAD[1:]:  # one output section each: DT_* entries name them
            out(name.rstrip("*"), [name], i)

    head_at = rodata if head_with_rodata and rodata not in (0, code) else 0
    if head_at == 0:
        header_material(0)
    after = (".text", ".fini") if code_after_anchor else ()
    for i in range(len(loads)):
        if i:
            start(i)
            if i == code and spec.anchor != loads[i].vaddr:
                # One byte pins the segment's start: the first input section's alignment
                # would otherwise move it (mold's ppc64le code segment starts at 0x...ab0,
                # the twin's .init would at 0x...ac0).
                lines.append(f"  .lk_start{i} : {{ BYTE(0) }} :{_segment_name(i)}")
        if i == head_at and i:
            header_material(i)
        if i == code:
            code_sections(i, [n for n in _CODE if n not in after])
            lines.append(f"  . = {spec.anchor:#x};")
            out(ANCHOR_SECTION, [ANCHOR_SECTION], i, keep=True)
            code_sections(i, after)
        if i == rodata:
            for name in _RODATA:
                out(name, [name], i)
        if i == (rw if dynamic_apart else data):
            out(".tdata", [".tdata"], i, extra=tls)
            out(".tbss", [".tbss"], i, extra=tls)
            init_arrays(i)
            out(".data.rel.ro", [".data.rel.ro"], i)
        if i == data:
            out(".dynamic", [".dynamic"], i, extra=" :lk_dynamic")
        if i == rw:
            if spec.arch.name in _GOT_SYMBOLS:
                lines.append(f"  {_GOT_SYMBOLS[spec.arch.name]}")
            for name in (".got", ".got.plt", ".toc", ".opd", ".branch_lt",
                         *_WRITABLE_PLT.get(spec.arch.name, ())):
                out(name, [name], i)
            if spec.arch.name in _DATA_SYMBOLS:
                lines.append(f"  {_DATA_SYMBOLS[spec.arch.name]}")
            out(".data", [".data", ".sdata", ".tm_clone_table"], i)
            if static:
                for name in _GLIBC_DATA:
                    out(name, [name], i, keep=True)
            out(".bss", [*_BSS, "COMMON"], i, noload=True)
            if static:
                out(_GLIBC_BSS, [_GLIBC_BSS], i, noload=True)
        pad(i)
    if static:
        lines.append("  _end = .; PROVIDE(end = .);")  # static glibc reads it
    lines += ["  /DISCARD/ : { *(.note.GNU-stack) *(.gnu_debuglink) *(.gnu.lto_*) }", "}"]
    return "\n".join(lines) + "\n"


VARIANTS = ({"head_with_rodata": True}, {"dynamic_late": True},
            {"head_with_rodata": True, "dynamic_late": True}, {"dynamic_apart": True},
            {"head_with_rodata": True, "dynamic_apart": True}, {"grown": True},
            {"grown": True, "dynamic_late": True},
            {"grown": True, "head_with_rodata": True, "dynamic_late": True})


def fallback_scripts(spec: TwinSpec, first: str) -> list[str]:
    """The other placements of the twin's own sections, tried in order when its header
    material or .dynamic overruns a small target segment (GNU ld -z separate-code leaves
    a first segment of a few hundred bytes; lld's first writable one is often smaller
    than the twin's .dynamic)."""
    out: list[str] = []
    for variant in VARIANTS:
        text = linker_script(spec, **variant)
        if text != first and text not in out:
            out.append(text)
    return out


__all__: Sequence[str] = ("ANCHOR_SECTION", "VARIANTS", "TwinSpec", "fallback_scripts", "grow",
                          "linker_script", "load_mismatches", "pages_of")
