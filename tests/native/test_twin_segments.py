"""Twins of what the linker really emits: for every fixture executable and for every
advised relink of tests/advice/test_advise.py (and of the static fixtures' advice),
GNU readelf -lW of the twin and of the real binary list the same PT_LOADs: count,
p_vaddr, p_memsz, flags and p_align byte for byte, or the same pages (what the kernel
maps) where the twin had to grow a segment to hold its own sections (:data:`GROWN`).
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from layoutkit.advice.candidates import Recommendation
from layoutkit.commands.advise import advise
from layoutkit.commands.inspect import inspect_binary
from layoutkit.core.model import LoadKind
from layoutkit.core.scenario import Scenario
from layoutkit.elf import ElfReader
from layoutkit.errors import ProbeError
from layoutkit.native.toolchain import TARGETS, host_arch
from layoutkit.native.twin import TwinSpec, build_twin
from layoutkit.window.anchor import HowFound, find_anchor
from tests.advice.test_advise import CASES, Builder, case_id, only
from tests.support import ELF_DIR, ROOT, binary_id, fixture_binaries, oracle, require

_LOAD = re.compile(r"^\s*LOAD\s+0x[0-9a-f]+\s+(0x[0-9a-f]+)\s+0x[0-9a-f]+\s+0x[0-9a-f]+\s+"
                   r"(0x[0-9a-f]+)\s+([RWE ]{3})\s+(0x[0-9a-f]+)$", re.M)
PAGE = 4096


@pytest.fixture(autouse=True)
def _private_cache(tmp_path_factory: pytest.TempPathFactory,
                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path_factory.getbasetemp() / "cache"))


Load = tuple[int, int, str, int]


def readelf_loads(path: Path) -> list[Load]:
    """(p_vaddr, p_memsz, flags, p_align) of every non-empty PT_LOAD, as GNU readelf
    prints them."""
    text = subprocess.run([require("readelf"), "-lW", str(path)], capture_output=True,
                          text=True, check=True, env={"LC_ALL": "C"}).stdout
    return [(int(v, 16), int(m, 16), f, int(a, 16)) for v, m, f, a in _LOAD.findall(text)
            if int(m, 16)]


def pages(rows: list[Load]) -> list[tuple[int, int, str, int]]:
    return [(v // PAGE * PAGE, -(-(v + m) // PAGE) * PAGE, f, a) for v, m, f, a in rows]


# The fixture static PIEs are anchor.c and static libc: the twin's static libc and
# preload.c (-DLK_TWIN) need 0x19c0 (x86-64) and 0x1920 (arm64) bytes more writable data
# than the target's segment holds up to its bss end, which the twin must keep; preload.c's
# own buffers are 6.5 KiB of it (nm -S), and with them cut to 16 bytes the libc functions
# it calls still need 0x100 and 0x80 more (GNU ld: "cannot move location counter
# backwards"). A static PIE with more of libc in it (LuaJIT's) is twinned.
_STATIC_PIE = "the twin's writable data overruns the target's bss end (static libc + probe)"
# Twins that cannot be built, with what stops them; strict, so a fix shows up here.
KNOWN = {
    "aarch64/static-pie": _STATIC_PIE,
    "x86_64/static-pie": _STATIC_PIE,
}
# Twins that cover the target's pages but not its bytes: the first writable PT_LOAD of
# riscv64/nopie-lld-base is 0x170 bytes (readelf oracle), the twin's .dynamic alone 0x190;
# the mips64el fixtures' only writable PT_LOAD is 0x150 and 0x160 bytes, less than the
# twin's .dynamic and MIPS GOT.
GROWN = {"riscv64/nopie-lld-base", "mips64el/nopie", "mips64el/pie"}


def twinnable() -> list[object]:
    """The fixture executables a twin reproduces: executables, PIEs and static PIEs
    (not shared libraries) whose anchor is a symbol (a stripped one needs --anchor: its
    fallback, the executable segment's start, is where its ELF header lies)."""
    out: list[object] = []
    for path in fixture_binaries():
        with ElfReader(path) as reader:
            kind = reader.image().load_kind
            found = find_anchor(reader).how_found
        if kind in (LoadKind.EXEC, LoadKind.PIE, LoadKind.STATIC_PIE) \
                and found is HowFound.SYMBOL:
            why = KNOWN.get(binary_id(path))
            marks = [pytest.mark.xfail(reason=why, strict=True, raises=ProbeError)] if why else []
            out.append(pytest.param(path, id=binary_id(path), marks=marks))
    return out


def compiler_for(arch_name: str) -> None:
    from layoutkit.core.arches import by_name

    arch = by_name(arch_name)
    require("cc" if arch == host_arch() else f"{TARGETS[arch.name].triplet}-gcc")


def compare(twin_path: Path, target: Path, grown: bool) -> None:
    want, got = readelf_loads(target), readelf_loads(twin_path)
    assert pages(got) == pages(want)
    if not grown:
        assert got == want
    else:  # the last PT_LOAD keeps its end: the brk heap starts where the target's does
        assert got[-1][0] + got[-1][1] == want[-1][0] + want[-1][1]


@pytest.mark.toolchain
@pytest.mark.parametrize("target", twinnable())
def test_twin_of_every_fixture_is_its_pt_loads(target: Path) -> None:
    with ElfReader(target) as reader:
        image = reader.image()
        anchor = find_anchor(reader)
    compiler_for(image.arch.name)
    twin = build_twin(TwinSpec.of(image, anchor.span.start))
    assert twin.grown == (binary_id(target) in GROWN)
    compare(twin.path, target, twin.grown)


@pytest.fixture(scope="module")
def builder(tmp_path_factory: pytest.TempPathFactory) -> Builder:
    return Builder(tmp_path_factory.mktemp("twin-relinks"))


# Advised layouts whose twin differs from the real relink, and why (strict: a fix shows).
KNOWN_ADVISED = {
    ("riscv64", "bfd", "pie"): "MakePie moves the non-PIE image to 0; the real riscv64 PIE's "
                               "code is a page longer",
    ("riscv64", "lld", "pie"): "MakePie moves the non-PIE image to 0; the real riscv64 PIE's "
                               "code is a page longer",
}


def advised_cases() -> list[object]:
    return [pytest.param(c, id=case_id(c), marks=[pytest.mark.xfail(
        reason=KNOWN_ADVISED[c], strict=True)] if c in KNOWN_ADVISED else [])
        for c in CASES]


@pytest.mark.toolchain
@pytest.mark.parametrize("case", advised_cases())
def test_twin_of_every_advised_relink_is_its_pt_loads(builder: Builder,
                                                      case: tuple[str, str, str]) -> None:
    """The twin of the advised layout (what verify --advice measures) against the
    binary the linker really made with the advised flags."""
    adv, rec, binary = builder.built(case)
    assert rec.edit is not None
    with ElfReader(binary) as reader:
        anchor = find_anchor(reader).span.start
    twin = build_twin(TwinSpec.of(rec.edit.apply(adv.image),
                                  rec.edit.address(adv.image, find_anchor_of(adv.image.path))))
    real = readelf_loads(binary)
    got = readelf_loads(twin.path)
    assert [f for _, _, f, _ in got] == [f for _, _, f, _ in real]
    # The model shifts the fixture's image; a relink may move sections by a few bytes
    # within their pages (test_advise.py), never across one.
    assert pages(got) == pages(real)
    assert anchor // PAGE == twin.spec.anchor // PAGE


def find_anchor_of(path: str) -> int:
    with ElfReader(path) as reader:
        return find_anchor(reader).span.start


def section_of(path: Path, name: str) -> tuple[int, int]:
    """Address and size of section ``name`` (readelf -SW)."""
    text = subprocess.run([require("readelf"), "-SW", str(path)], capture_output=True,
                          text=True, check=True, env={"LC_ALL": "C"}).stdout
    found = re.search(rf"\s{re.escape(name)}\s+\S+\s+([0-9a-f]+)\s+[0-9a-f]+\s+([0-9a-f]+)\s",
                      text)
    assert found, f"no {name} in {path}"
    return int(found[1], 16), int(found[2], 16)


@pytest.mark.toolchain
def test_lld_twin_is_exact_with_its_dynamic_in_the_small_first_writable_segment() -> None:
    """lld's first writable PT_LOAD of x86_64/nopie-lld-base is 0x1a0 bytes at 0x500060c0
    (the committed readelf oracle): the twin's own .dynamic (no spare tags) fills it
    exactly, the rest of its writable data goes with the GOT, and every PT_LOAD is the
    target's byte for byte."""
    target = ELF_DIR / "x86_64" / "nopie-lld-base"
    view = oracle(target, "l")
    assert "LOAD           0x0040c0 0x00000000500060c0 0x00000000500060c0 0x0001a0 0x0001a0 RW " \
        in view
    compiler_for("x86_64")
    with ElfReader(target) as reader:
        spec = TwinSpec.of(reader.image(), find_anchor(reader).span.start)
    twin = build_twin(spec)
    assert not twin.grown and twin.mismatches() == []
    assert readelf_loads(twin.path) == readelf_loads(target)
    assert section_of(twin.path, ".dynamic") == (0x500060C0, 0x1A0)


@pytest.mark.qemu_user
def test_a_grown_twin_is_said_by_verify() -> None:
    """riscv64/nopie-lld-base's first writable PT_LOAD (0x170 bytes) cannot hold the
    twin's .dynamic: the twin covers the target's pages and verify (one run under
    qemu-user) says so."""
    import json
    import os
    import sys

    target = ELF_DIR / "riscv64" / "nopie-lld-base"
    compiler_for("riscv64")
    require("qemu-riscv64")
    done = subprocess.run([sys.executable, "-m", "layoutkit", "verify", str(target), "--runs",
                           "1", "--runner", "qemu-user", "--format", "json"],
                          capture_output=True, text=True, check=False, cwd=ROOT,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode in (0, 1), done.stdout + done.stderr
    assert any(n.startswith("the twin's own .dynamic and GOT did not fit")
               for n in json.loads(done.stdout)["notes"])


# The static fixtures' advice, relinked: (arch, kind). The static-PIE relink carries the
# fixture's small writable data, which the twin's static libc and probe overrun.
STATIC_CASES = [(arch, kind) for arch in ("x86_64", "aarch64")
                for kind in ("rebase", "relocate-text", "pie")]


def static_relink(builder: Builder, arch: str, kind: str) -> tuple[Path, Recommendation]:
    """anchor.c linked -static (-static-pie for pie) with the flags advise gives the
    static fixture; the advice's recommendation with it."""
    rec = only(advise(str(ELF_DIR / arch / "static")), kind)
    out = builder.root / f"{arch}-static-{kind}"
    if not out.exists():
        pie = kind == "pie"
        shape = [] if pie else ["-static", "-no-pie"]
        done = subprocess.run([builder.cc(arch), *shape, *rec.flags,
                               str(builder.obj(arch, "pie" if pie else "nopie")), "-o", str(out)],
                              capture_output=True, text=True, check=False)
        assert done.returncode == 0, done.stderr
    return out, rec


def relinks() -> list[object]:
    out: list[object] = [pytest.param(("advise", c), id=case_id(c)) for c in CASES]
    for arch, kind in STATIC_CASES:
        marks = [pytest.mark.xfail(reason=_STATIC_PIE, strict=True, raises=ProbeError)] \
            if kind == "pie" else []
        out.append(pytest.param(("static", (arch, kind)), id=f"{arch}-static-{kind}",
                                marks=marks))
    return out


@pytest.mark.toolchain
@pytest.mark.parametrize("which", relinks())
def test_twin_of_every_real_advised_relink_is_exact(
        builder: Builder, which: tuple[str, tuple[str, ...]]) -> None:
    """The twin built from the binary the linker really made with the advised flags
    (GNU ld's merged or writable first segments, lld's small RELRO segment, -Tbss's
    own bss segment): its PT_LOADs are the relink's, count, p_vaddr, p_memsz, flags and
    p_align, as readelf prints them."""
    origin, case = which
    if origin == "advise":
        _, _, binary = builder.built(case)  # type: ignore[arg-type]
    else:
        binary, _ = static_relink(builder, case[0], case[1])
    with ElfReader(binary) as reader:
        image = reader.image()
        anchor = find_anchor(reader).span.start
    compiler_for(image.arch.name)
    twin = build_twin(TwinSpec.of(image, anchor, str(binary)))
    assert not twin.grown
    compare(twin.path, binary, grown=False)


@pytest.mark.toolchain
@pytest.mark.parametrize("case", [c for c in STATIC_CASES if c[1] != "pie"],
                         ids=["-".join(c) for c in STATIC_CASES if c[1] != "pie"])
def test_twin_of_the_static_advice_is_the_relink(builder: Builder,
                                                 case: tuple[str, str]) -> None:
    """What verify --advice builds for a static fixture (the twin of the advice's edit
    of the fixture) against the relink with the advised flags: the same PT_LOAD count,
    flags and p_align, and the same pages."""
    binary, rec = static_relink(builder, *case)
    assert rec.edit is not None
    target = ELF_DIR / case[0] / "static"
    with ElfReader(target) as reader:
        image = reader.image()
        anchor = find_anchor(reader).span.start
    compiler_for(case[0])
    twin = build_twin(TwinSpec.of(rec.edit.apply(image), rec.edit.address(image, anchor)))
    real, got = readelf_loads(binary), readelf_loads(twin.path)
    assert [(f, a) for _, _, f, a in got] == [(f, a) for _, _, f, a in real]
    assert pages(got) == pages(real)


@pytest.mark.toolchain
@pytest.mark.parametrize("align", [0x4000, 0x200000])
def test_twin_keeps_the_targets_p_align(builder: Builder, align: int) -> None:
    """An arm64 PIE linked with -z max-page-size (16 KiB pages; 2 MiB, which the kernel
    also aligns a PIE's load bias to: fs/binfmt_elf.c, maximum_alignment): the twin's
    PT_LOADs carry the same p_align as readelf shows for the target."""
    out = builder.root / f"pie-align-{align:#x}"
    done = subprocess.run([builder.cc("aarch64"), "-pie", f"-Wl,-z,max-page-size={align:#x}",
                           str(builder.obj("aarch64", "pie")), "-o", str(out)],
                          capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    want = readelf_loads(out)
    assert {a for _, _, _, a in want} == {align}
    with ElfReader(out) as reader:
        spec = TwinSpec.of(reader.image(), find_anchor(reader).span.start)
    twin = build_twin(spec)
    assert readelf_loads(twin.path) == want


@pytest.mark.toolchain
@pytest.mark.parametrize("arch", ["x86_64", "aarch64"])
def test_the_pie_advice_of_a_static_program_is_a_static_pie(builder: Builder,
                                                              arch: str) -> None:
    """advise gives a static program -static-pie: the layout it predicts and verify
    --advice pie twins is a static PIE as the relink is (ET_DYN, no PT_INTERP, readelf),
    with its PT_LOAD count and flags, placed in the mmap area, not a PIE at
    ELF_ET_DYN_BASE; its figures are inspect's on the real relink."""
    binary, rec = static_relink(builder, arch, "pie")
    assert rec.edit is not None
    with ElfReader(ELF_DIR / arch / "static") as reader:
        laid = rec.edit.apply(reader.image())
    view = subprocess.run([require("readelf"), "-hlW", str(binary)], capture_output=True,
                          text=True, check=True, env={"LC_ALL": "C"}).stdout
    assert re.search(r"Type:\s+DYN ", view) and "INTERP" not in view
    assert laid.load_kind is LoadKind.STATIC_PIE and laid.interpreter is None
    assert laid.e_type == "ET_DYN"
    assert [f for _, _, f, _ in readelf_loads(binary)] == \
        [("R" if s.raw_flags & 4 else " ") + ("W" if s.raw_flags & 2 else " ")
         + ("E" if s.raw_flags & 1 else " ") for s in laid.loads]
    # What advise predicted for it is what inspect says of the real static PIE (main
    # modelled a PIE at ELF_ET_DYN_BASE with its heap after it: 31666 slots on x86-64,
    # where the relink has 32546).
    built = inspect_binary(binary, Scenario(jit=advise(str(ELF_DIR / arch / "static")).profile))
    assert rec.worst is not None
    assert built.prediction.worst.free_slots == rec.worst.free_slots
    assert built.prediction.worst.jit.window == rec.worst.jit.window
