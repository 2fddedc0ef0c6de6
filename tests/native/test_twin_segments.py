"""Twins of what the linker really emits: for every fixture executable and for every
advised relink of tests/advice/test_advise.py, GNU readelf -lW of the twin and of the
real binary list the same PT_LOADs: the same pages (what the kernel maps) and flags,
byte for byte where the twin did not have to grow a segment to hold its own sections.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from layoutkit.core.model import LoadKind
from layoutkit.elf import ElfReader
from layoutkit.errors import ProbeError
from layoutkit.native.toolchain import TARGETS, host_arch
from layoutkit.native.twin import TwinSpec, build_twin
from layoutkit.window.anchor import HowFound, find_anchor
from tests.advice.test_advise import CASES, Builder, case_id
from tests.support import binary_id, fixture_binaries, require

_LOAD = re.compile(r"^\s*LOAD\s+0x[0-9a-f]+\s+(0x[0-9a-f]+)\s+0x[0-9a-f]+\s+0x[0-9a-f]+\s+"
                   r"(0x[0-9a-f]+)\s+([RWE ]{3})\s+", re.M)
PAGE = 4096


@pytest.fixture(autouse=True)
def _private_cache(tmp_path_factory: pytest.TempPathFactory,
                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path_factory.getbasetemp() / "cache"))


def readelf_loads(path: Path) -> list[tuple[int, int, str]]:
    """(p_vaddr, p_memsz, flags) of every non-empty PT_LOAD, as GNU readelf prints them."""
    text = subprocess.run([require("readelf"), "-lW", str(path)], capture_output=True,
                          text=True, check=True, env={"LC_ALL": "C"}).stdout
    return [(int(v, 16), int(m, 16), f) for v, m, f in _LOAD.findall(text) if int(m, 16)]


def pages(rows: list[tuple[int, int, str]]) -> list[tuple[int, int, str]]:
    return [(v // PAGE * PAGE, -(-(v + m) // PAGE) * PAGE, f) for v, m, f in rows]


# Twins the toolchains cannot build yet, with what stops them (each also fails on main
# before this test existed); strict, so a fix shows up here.
KNOWN = {
    "mips64el/nopie": "crtbegin.o: relocation truncated to fit: R_MIPS_GOT_DISP",
    "mips64el/pie": "crtbeginS.o: relocation truncated to fit: R_MIPS_GOT_DISP",
    "s390x/nopie": "GNU ld 2.40: assertion fail bfd/elf-s390-common.c:71",
    "s390x/pie": "GNU ld 2.40: assertion fail bfd/elf-s390-common.c:71",
}


def twinnable() -> list[object]:
    """The fixture executables a twin reproduces: executables and PIEs (not shared
    libraries or static PIEs) whose anchor is a symbol (a stripped one needs --anchor:
    its fallback, the executable segment's start, is where its ELF header lies)."""
    out: list[object] = []
    for path in fixture_binaries():
        with ElfReader(path) as reader:
            kind = reader.image().load_kind
            found = find_anchor(reader).how_found
        if kind in (LoadKind.EXEC, LoadKind.PIE) and found is HowFound.SYMBOL:
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
    assert [f for _, _, f in got] == [f for _, _, f in real]
    # The model shifts the fixture's image; a relink may move sections by a few bytes
    # within their pages (test_advise.py), never across one.
    assert pages(got) == pages(real)
    assert anchor // PAGE == twin.spec.anchor // PAGE


def find_anchor_of(path: str) -> int:
    with ElfReader(path) as reader:
        return find_anchor(reader).span.start



@pytest.mark.toolchain
def test_lld_twin_grows_to_the_pages_and_verify_says_so() -> None:
    """lld's first writable PT_LOAD of x86_64/nopie-lld-base is 0x1a0 bytes at
    0x500060c0 (readelf oracle), smaller than the twin's .dynamic: the twin's covers the
    same page from its start, and verify states it."""
    import json
    import os
    import sys

    from tests.support import ELF_DIR, ROOT, oracle

    target = ELF_DIR / "x86_64" / "nopie-lld-base"
    assert "LOAD           0x0040c0 0x00000000500060c0" in oracle(target, "l")
    compiler_for("x86_64")
    with ElfReader(target) as reader:
        spec = TwinSpec.of(reader.image(), find_anchor(reader).span.start)
    twin = build_twin(spec)
    assert twin.grown
    got = readelf_loads(twin.path)
    assert (got[2][0], got[2][0] + got[2][1]) == (0x50006000, 0x50007000)
    if host_arch().name != "x86_64":
        return
    done = subprocess.run([sys.executable, "-m", "layoutkit", "verify", str(target), "--runs",
                           "1", "--format", "json"], capture_output=True, text=True,
                          check=False, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 0, done.stdout + done.stderr
    assert any(n.startswith("the twin's own .dynamic and GOT did not fit")
               for n in json.loads(done.stdout)["notes"])
