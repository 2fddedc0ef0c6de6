"""The layout twin: the native probe linked so the kernel lays it out like a target.

To measure a binary's JIT window without running the binary, the probe is linked with a
generated GNU ld script whose ``PHDRS`` reproduce every ``PT_LOAD`` of the target: ELF
type (``ET_EXEC``, or ``ET_DYN`` with an interpreter for a PIE, whose addresses are
offsets from the load bias), ``p_vaddr``, ``p_memsz`` and ``p_flags``. The file sizes may
differ (padding is file-backed in read-only segments and zero-fill in writable ones), but
every segment ends where the target's ends, so the bss end, and with it the start of the
brk heap, is the target's. The kernel therefore places the twin's image and heap exactly
where it would place the target's.

The twin's executable holds only the C runtime start files, a ``main`` that calls the
probe, and ``probe_anchor``, placed at the target's anchor address: the probe reports
the address of ``probe_anchor`` as its own code, so the window it scans is the target's,
under ASLR too. The probe itself (its code and its megabytes of static buffers, which
no target's bss could hold) lives in ``liblkprobe.so``, loaded from the mmap area, far
from a non-PIE image; ``probe_anchor`` in the executable interposes the library's.

A static PIE has no loader to load ``liblkprobe.so``: its twin is a static PIE too,
linked ``-static-pie`` with static libc and ``preload.c`` built in (``-DLK_TWIN``). At the
twin's start the probe forks; the copy scans around the twin's code and writes the
preload report to ``$LAYOUTKIT_PROBE_OUT`` (``twin_report.py``). Its libc and the probe
must fit inside the target's segments (a real static PIE carries the same libc).

Twins are cached under ``$XDG_CACHE_HOME/layoutkit/twin`` (``build.cached_build``), keyed
by the generated linker script (the target's type, segments and anchor), the probe
source and the compiler.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from layoutkit.core.arches import Arch
from layoutkit.core.model import ElfImage, LoadKind, Perm, Segment
from layoutkit.elf import ElfReader
from layoutkit.errors import ProbeError
from layoutkit.native.build import NATIVE_DIR, cached_build, run_tool, source_key
from layoutkit.native.probe import CFLAGS, SOURCE
from layoutkit.native.toolchain import Compiler
from layoutkit.window.kernel import PAGE

ANCHOR_SECTION = ".lk_anchor"
PRELOAD_SOURCE = NATIVE_DIR / "preload.c"

# The executable's own code: probe_anchor sits in a section of its own so the linker
# script can put it at the target's anchor; the exported definition interposes the one
# in liblkprobe.so (probe.c takes its address through the GOT when built -fPIC).
STUB = """\
extern int lk_probe_main(int, char **);
__attribute__((noinline, used, section(".lk_anchor"))) int probe_anchor(int x) {
    return x * 3 + 1;
}
int main(int argc, char **argv) { return lk_probe_main(argc, argv); }
"""

# The stub's code is not padded to a function alignment (GCC: "-falign-functions=1 ...
# means that functions are not aligned"), so probe_anchor can stand at the target's exact
# anchor, at any address the ISA allows (1 on x86, 4 on arm64 and ppc64).
STUB_FLAGS = ("-O2", "-falign-functions=1")

# A static PIE's twin: no loader, no library. preload.c is linked in and forks at the
# twin's start (its constructor); the copy scans around the twin's code and writes the
# preload report (LK_TWIN: buffers mapped in the copy, out of the image).
STATIC_STUB = """\
__attribute__((noinline, used, section(".lk_anchor"))) int probe_anchor(int x) {
    return x * 3 + 1;
}
int main(void) { return 0; }
"""
PRELOAD_FLAGS = ("-std=c11", "-O2", "-Wall", "-Wextra", "-fPIE", "-DLK_TWIN")
STATIC_LINK_FLAGS = ("-fuse-ld=bfd", "-Wl,--build-id=none", "-Wl,-z,norelro",
                     "-Wl,--hash-style=gnu", "-Wl,--no-eh-frame-hdr",
                     "-Wl,--spare-dynamic-tags=0")

# The probe as a library: its main renamed, so the twin's own main calls it.
LIB_FLAGS = ("-fPIC", "-shared", "-Dmain=lk_probe_main")
# GNU ld only (the script uses its PHDRS); no note, RELRO or eh_frame_hdr segment of the
# twin's own; no spare DT_NULL entries after .dynamic's own (GNU ld reserves 5 by default:
# ld/ld.texi, --spare-dynamic-tags), so the twin's .dynamic fits where lld's own did;
# liblkprobe.so found beside the twin ($ORIGIN), wherever the cache is.
LINK_FLAGS = ("-fuse-ld=bfd", "-Wl,--build-id=none", "-Wl,-z,norelro",
              "-Wl,--hash-style=gnu", "-Wl,--no-eh-frame-hdr", "-Wl,--spare-dynamic-tags=0",
              "-Wl,-rpath,$ORIGIN")

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
_RODATA = (".rodata", ".eh_frame_hdr", ".eh_frame", ".gcc_except_table")
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


@dataclass(frozen=True)
class Twin:
    spec: TwinSpec
    path: Path  # the twin executable
    library: Path | None  # liblkprobe.so beside it (None: a static-PIE twin)
    image: ElfImage  # the twin as read back

    @property
    def reports_to_file(self) -> bool:
        """True for a static-PIE twin: ``preload.c`` built in, it forks at its start and
        its copy writes the preload report to ``$LAYOUTKIT_PROBE_OUT`` (no handshake)."""
        return self.library is None

    def mismatches(self) -> list[str]:
        """PT_LOADs of the twin that differ from the target's (empty when it is exact, or
        when it is :attr:`grown`: the same pages, the same flags, the same end)."""
        exact = load_mismatches(self.spec.loads, self.image.loads, self.spec.kind)
        return [] if exact and self.grown else exact

    @property
    def grown(self) -> bool:
        """The twin's PT_LOADs cover the target's pages, not its exact bytes: some grew
        to the edges of their pages (:func:`grow`) to hold the twin's own sections."""
        got = tuple(sorted((s for s in self.image.loads if s.memsz), key=lambda s: s.vaddr))
        return (bool(load_mismatches(self.spec.loads, got, self.spec.kind))
                and not load_mismatches(grow(self.spec.loads), got, self.spec.kind)
                and all(_pages(w) == _pages(g) for w, g in zip(self.spec.loads, got,
                                                                 strict=True)))


def _pages(seg: Segment) -> tuple[int, int]:
    start, end = seg.vaddr // PAGE * PAGE, -(-(seg.vaddr + seg.memsz) // PAGE) * PAGE
    return start, end


def grow(loads: Sequence[Segment]) -> tuple[Segment, ...]:
    """Every PT_LOAD stretched to the edges of its pages where no neighbour shares them:
    the kernel maps whole pages, so the mapped layout is the same, and the twin's own
    .dynamic and GOT fit where lld's first writable segment is smaller than them. The
    first keeps its start (the ELF header), the last its end (the brk heap follows)."""
    out: list[Segment] = []
    for i, seg in enumerate(loads):
        start, end = _pages(seg)
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
        parts = [f"*({n})" if n.endswith("*") or n == "COMMON" else f"*({n} {n}.*)"
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


def _too_small(stderr: str) -> str | None:
    """GNU ld's complaint when the twin's sections overrun a target segment."""
    if "backwards" in stderr or "overlap" in stderr:
        return "the twin's own code and data do not fit inside the target's segments"
    return None


def _run(argv: list[str], what: str) -> None:
    run_tool(argv, what, diagnose=_too_small)


def build_twin(spec: TwinSpec) -> Twin:
    """The twin of ``spec``, built once and cached; its PT_LOADs are checked. A static
    PIE's twin carries static libc: when its code does not fit before the anchor, it
    goes after it."""
    if spec.kind is LoadKind.STATIC_PIE:
        try:
            return _build(spec, linker_script(spec))
        except ProbeError:
            return _build(spec, linker_script(spec, code_after_anchor=True))
    return _build(spec, linker_script(spec))


def page_flags(spec: TwinSpec) -> tuple[str, ...]:
    """GNU ld gives a PT_LOAD the maximum page size as p_align (``-z max-page-size``):
    the target's, when its PT_LOADs share one page-sized power of two (GNU ld, gold, lld
    and mold all make them equal)."""
    aligns = {s.align for s in spec.loads}
    align = aligns.pop() if len(aligns) == 1 else 0
    return (f"-Wl,-z,max-page-size={align:#x}",) if align >= PAGE and not align & (align - 1) \
        else ()


def _build(spec: TwinSpec, script: str) -> Twin:
    compiler = Compiler.for_arch(spec.arch)
    static = spec.kind is LoadKind.STATIC_PIE
    if static:
        key = [source_key(PRELOAD_SOURCE), STATIC_STUB.encode(), script.encode(),
               " ".join((*PRELOAD_FLAGS, *STUB_FLAGS, *STATIC_LINK_FLAGS,
                         *page_flags(spec))).encode()]
        outputs = ["twin"]
    else:
        key = [source_key(SOURCE), STUB.encode(), script.encode(),
               *(t.encode() for t in fallback_scripts(spec, script)),  # tried by _link
               " ".join((*CFLAGS, *LIB_FLAGS, *STUB_FLAGS, *LINK_FLAGS,
                         *page_flags(spec))).encode()]
        outputs = ["twin", "liblkprobe.so"]
    link = _link_static if static else _link
    folder = cached_build("twin", "twin", compiler, key,
                          lambda work: link(spec, script, compiler.path, work), outputs)
    exe = folder / "twin"
    with ElfReader(exe) as reader:
        image = reader.image()
    twin = Twin(spec, exe, None if static else folder / "liblkprobe.so", image)
    wrong = twin.mismatches()
    if wrong:
        raise ProbeError(f"the twin does not reproduce the target's layout: {'; '.join(wrong)}",
                         path=spec.source)
    return twin


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


def _link(spec: TwinSpec, script_text: str, cc: str, work: Path) -> None:
    """Build liblkprobe.so and the twin in ``work``; the twin finds the library beside
    itself (``$ORIGIN``), so the folder can be renamed into the cache. When the twin's
    own sections do not fit the target's segments, the other placements are tried
    (:func:`fallback_scripts`) before giving up with the first complaint."""
    try:
        _link_with(spec, script_text, cc, work)
        return
    except ProbeError as first:
        if _too_small(str(first)) is None:
            raise
        for again in fallback_scripts(spec, script_text):
            try:
                _link_with(spec, again, cc, work)
                return
            except ProbeError:
                continue  # the next placement; the first complaint is the one reported
        raise


def _link_with(spec: TwinSpec, script_text: str, cc: str, work: Path) -> None:
    lib = work / "liblkprobe.so"
    _run([cc, *CFLAGS, *LIB_FLAGS, "-o", str(lib), str(SOURCE)],
         f"building liblkprobe.so for {spec.arch}")
    stub = work / "stub.c"
    stub.write_text(STUB)
    script = work / "twin.ld"
    script.write_text(script_text)
    pie = ["-fPIE", "-pie"] if spec.kind is LoadKind.PIE else ["-fno-pie", "-no-pie"]
    _run([cc, *STUB_FLAGS, *pie, "-o", str(work / "twin"), str(stub), "-Wl,-T," + str(script),
          *LINK_FLAGS, *page_flags(spec), f"-L{work}", "-llkprobe"],
         f"linking the twin of {spec.source}")


def _link_static(spec: TwinSpec, script_text: str, cc: str, work: Path) -> None:
    """A static-PIE twin: the stub and ``preload.c`` (-DLK_TWIN) linked -static-pie."""
    probe = work / "preload.o"
    _run([cc, *PRELOAD_FLAGS, "-c", "-o", str(probe), str(PRELOAD_SOURCE)],
         f"building the twin's probe for {spec.arch}")
    stub = work / "stub.c"
    stub.write_text(STATIC_STUB)
    script = work / "twin.ld"
    script.write_text(script_text)
    _run([cc, *STUB_FLAGS, "-fPIE", "-static-pie", "-o", str(work / "twin"), str(stub),
          str(probe), "-Wl,-T," + str(script), *STATIC_LINK_FLAGS, *page_flags(spec)],
         f"linking the twin of {spec.source}")


__all__: Sequence[str] = ("Twin", "TwinSpec", "build_twin", "linker_script",
                          "load_mismatches", "page_flags")
