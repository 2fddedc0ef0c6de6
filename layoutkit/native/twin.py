"""The layout twin: the native probe linked so the kernel lays it out like a target.

To measure a binary's JIT window without running the binary, the probe is linked with a
generated GNU ld script whose ``PHDRS`` reproduce every ``PT_LOAD`` of the target: ELF
type (``ET_EXEC``, or ``ET_DYN`` with an interpreter for a PIE, whose addresses are
offsets from the load bias), ``p_vaddr``, ``p_memsz``, ``p_flags`` and ``p_align`` (the
kernel aligns a PIE's load bias to it). The file sizes may
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
from dataclasses import dataclass
from pathlib import Path

from layoutkit.core.model import ElfImage, LoadKind
from layoutkit.elf import ElfReader
from layoutkit.errors import ProbeError
from layoutkit.native.build import NATIVE_DIR, cached_build, run_tool, source_key
from layoutkit.native.probe import CFLAGS, SOURCE
from layoutkit.native.toolchain import Compiler
from layoutkit.native.twin_script import (
    ANCHOR_SECTION,
    TwinSpec,
    fallback_scripts,
    grow,
    linker_script,
    load_mismatches,
    pages_of,
)
from layoutkit.window.kernel import PAGE

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
                and all(pages_of(w) == pages_of(g) for w, g in zip(self.spec.loads, got,
                                                                 strict=True)))


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


__all__: Sequence[str] = ("ANCHOR_SECTION", "Twin", "TwinSpec", "build_twin", "linker_script",
                          "load_mismatches", "page_flags")
