"""The layout twin: the probe linked so its PT_LOAD segments are a target's.

Oracle: GNU readelf -lW of the twin and of the target agree on every PT_LOAD
(p_vaddr, p_memsz, flags); file sizes may differ.
"""

from __future__ import annotations

import re
import subprocess
from dataclasses import replace
from pathlib import Path

import pytest

from layoutkit.advice.candidates import synthetic_image
from layoutkit.core.arches import by_name
from layoutkit.elf import ElfReader
from layoutkit.errors import ProbeError
from layoutkit.native.toolchain import TARGETS, host_arch
from layoutkit.native.twin import ANCHOR_SECTION, TwinSpec, build_twin, linker_script
from layoutkit.window.anchor import find_anchor
from tests.support import ELF_DIR, require

_LOAD = re.compile(r"^\s*LOAD\s+(0x[0-9a-f]+)\s+(0x[0-9a-f]+)\s+0x[0-9a-f]+\s+(0x[0-9a-f]+)\s+"
                   r"(0x[0-9a-f]+)\s+([RWE ]{3})\s+(0x[0-9a-f]+)$", re.M)


@pytest.fixture(autouse=True)
def _private_cache(tmp_path_factory: pytest.TempPathFactory,
                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path_factory.getbasetemp() / "cache"))


def loads(path: Path) -> list[tuple[int, int, str]]:
    """(p_vaddr, p_memsz, flags) of every PT_LOAD, as GNU readelf prints them."""
    text = subprocess.run([require("readelf"), "-lW", str(path)], capture_output=True,
                          text=True, check=True, env={"LC_ALL": "C"}).stdout
    return [(int(m[2], 16), int(m[4], 16), m[5]) for m in _LOAD.finditer(text)]


def compiler(arch: str) -> None:
    if by_name(arch) == host_arch():
        require("cc")
    else:
        require(f"{TARGETS[by_name(arch).name].triplet}-gcc")


def spec_of(path: Path) -> TwinSpec:
    with ElfReader(path) as reader:
        image = reader.image()
        anchor = find_anchor(reader)
    return TwinSpec.of(image, anchor.span.start)


@pytest.mark.parametrize("name", ["aarch64/nopie", "aarch64/pie", "aarch64/nopie-bfd-textseg",
                                  "aarch64/nopie-mold-base", "x86_64/nopie", "x86_64/pie",
                                  "x86_64/nopie-mold-base"])
@pytest.mark.toolchain
def test_twin_reproduces_every_pt_load(name: str) -> None:
    target = ELF_DIR / name
    compiler(target.parent.name)
    spec = spec_of(target)
    twin = build_twin(spec)
    assert loads(twin.path) == loads(target)
    assert twin.mismatches() == []
    # The twin's probe_anchor stands exactly where the target's anchor is.
    section = twin.image.section(ANCHOR_SECTION)
    assert section is not None and section.addr == spec.anchor
    assert twin.image.e_type == ("ET_DYN" if name.endswith("/pie") else "ET_EXEC")
    # Built once: the second call is the cached twin.
    assert build_twin(spec).path == twin.path


@pytest.mark.toolchain
def test_twin_of_an_advised_layout_moves_the_bss_segment() -> None:
    """-Tbss layout (advise's relocate-text): a third, bss-only PT_LOAD far above."""
    compiler("aarch64")
    spec = spec_of(ELF_DIR / "aarch64/nopie")
    rw = spec.loads[1]
    split = (replace(rw, memsz=rw.filesz),
             replace(rw, vaddr=0x8040000, offset=0, filesz=0, memsz=rw.memsz - rw.filesz))
    moved = replace(spec, loads=(spec.loads[0], *split))
    twin = build_twin(moved)
    assert loads(twin.path) == [(0x400000, 0x42cc, "R E"), (0x41fde8, 0x2b8, "RW "),
                                (0x8040000, 0x18, "RW ")]


@pytest.mark.toolchain
def test_target_segments_too_small_for_the_twin() -> None:
    compiler("aarch64")
    image = synthetic_image(by_name("aarch64"), "bfd")
    code, rw = image.loads
    tiny = replace(image, segments=(code, replace(rw, memsz=0x20, filesz=0x10)))
    spec = TwinSpec.of(tiny, code.vaddr + code.memsz // 2)
    with pytest.raises(ProbeError, match="do not fit inside the target's segments"):
        build_twin(spec)


def test_no_twin_for_a_shared_library() -> None:
    with pytest.raises(ProbeError, match="no twin for a shared library"):
        spec_of(ELF_DIR / "aarch64/libanchor.so")


def test_linker_script_places_every_segment() -> None:
    spec = spec_of(ELF_DIR / "x86_64/nopie")
    script = linker_script(spec)
    assert script.count("PT_LOAD") == len(spec.loads) == 4
    assert "lk_load0 PT_LOAD FILEHDR PHDRS FLAGS(4);" in script
    assert f". = {spec.anchor:#x};" in script
    last = spec.loads[-1]
    end = last.vaddr + last.memsz
    assert f".lk_pad3 (NOLOAD) : {{ . += {end:#x} - lk_pad3; }} :lk_load3" in script
