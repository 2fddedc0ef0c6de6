"""The ELF model against readelf's own output for every committed fixture."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from layoutkit.core.model import LoadKind
from layoutkit.elf import ElfReader, read_elf
from tests.support import binary_id, fixture_binaries, oracle

BINARIES = fixture_binaries()

# readelf -lW program header rows (binutils 2.40): the Flg column is three characters
# (R, W, E or blanks).
_PHDR = re.compile(
    r"^\s+(\S+)\s+0x([0-9a-f]+) 0x([0-9a-f]+) 0x([0-9a-f]+) 0x([0-9a-f]+) 0x([0-9a-f]+) "
    r"([R ][W ][E ]) (?:0x)?([0-9a-f]+)$"
)
# readelf names without the PT_ prefix; a few are cut or renamed.
_TYPE_NAMES = {"GNU_EH_FRAME": "PT_GNU_EH_FRAME", "RISCV_ATTRIBUT": "PT_RISCV_ATTRIBUTES",
               "EXIDX": "PT_ARM_EXIDX", "ABIFLAGS": "PT_MIPS_ABIFLAGS"}


def test_there_are_fixtures() -> None:
    arches = {p.parent.name for p in BINARIES}
    assert {"x86_64", "aarch64", "riscv64", "ppc64le"} <= arches


def readelf_phdrs(binary: Path) -> list[tuple[str, int, int, int, int, int, str, int]]:
    rows = []
    for line in oracle(binary, "l").splitlines():
        match = _PHDR.match(line)
        if match:
            kind, off, vaddr, _paddr, filesz, memsz, flg, align = match.groups()
            rows.append((kind, int(off, 16), int(vaddr, 16), int(filesz, 16), int(memsz, 16),
                         int(align, 16), flg, 0))
    return rows


@pytest.mark.parametrize("binary", BINARIES, ids=binary_id)
def test_program_headers_match_readelf(binary: Path) -> None:
    image = read_elf(binary)
    expected = readelf_phdrs(binary)
    assert len(image.segments) == len(expected) > 0
    for seg, (kind, off, vaddr, filesz, memsz, align, flg, _) in zip(
            image.segments, expected, strict=True):
        assert (seg.offset, seg.vaddr, seg.filesz, seg.memsz, seg.align) == (
            off, vaddr, filesz, memsz, align)
        assert "".join(c if seg.raw_flags & b else " " for c, b in
                       (("R", 4), ("W", 2), ("E", 1))) == flg
        want = _TYPE_NAMES.get(kind, f"PT_{kind}")
        if not kind.startswith(("LOOS", "LOPROC", "0x")):
            assert seg.type == want


def readelf_header(binary: Path) -> dict[str, str]:
    fields = {}
    for line in oracle(binary, "h").splitlines():
        key, sep, value = line.partition(":")
        if sep:
            fields[key.strip()] = value.strip()
    return fields


_MACHINES = {"Advanced Micro Devices X86-64": "x86_64", "AArch64": "aarch64",
             "RISC-V": "riscv64", "PowerPC64": "ppc64", "Intel 80386": "i386", "ARM": "arm",
             "IBM S/390": "s390x", "MIPS R3000": "mips64", "LoongArch": "loongarch64"}


@pytest.mark.parametrize("binary", BINARIES, ids=binary_id)
def test_header_matches_readelf(binary: Path) -> None:
    image = read_elf(binary)
    fields = readelf_header(binary)
    assert f"ELF{image.bits}" == fields["Class"]
    assert ("little" if image.little_endian else "big") in fields["Data"]
    assert image.entry == int(fields["Entry point address"], 16)
    family = _MACHINES[fields["Machine"]]
    assert image.arch.name.startswith(family.rstrip("64") if family == "ppc64" else family)
    # binutils 2.40 tells PIE from shared object by DF_1_PIE, as layoutkit does.
    kind = fields["Type"]
    expected = {
        "EXEC (Executable file)": {LoadKind.EXEC},
        "DYN (Position-Independent Executable file)": {LoadKind.PIE, LoadKind.STATIC_PIE},
        "DYN (Shared object file)": {LoadKind.SHARED},
    }[kind]
    assert image.load_kind in expected
    if image.load_kind is LoadKind.STATIC_PIE:
        assert image.interpreter is None
    if image.load_kind is LoadKind.PIE:
        assert image.interpreter is not None


_SECTION = re.compile(
    r"^\s+\[\s*(\d+)\]\s+(.*?)\s+(\S+)\s+([0-9a-f]{8,16}) ([0-9a-f]{6,}) ([0-9a-f]{6,}) "
)


@pytest.mark.parametrize("binary", BINARIES, ids=binary_id)
def test_sections_match_readelf(binary: Path) -> None:
    image = read_elf(binary)
    rows = [m.groups() for m in map(_SECTION.match, oracle(binary, "S").splitlines()) if m]
    assert len(image.sections) == len(rows)
    for section, (_num, name, _type, addr, off, size) in zip(image.sections, rows, strict=True):
        assert (section.addr, section.offset, section.size) == (
            int(addr, 16), int(off, 16), int(size, 16))
        assert section.name == name


@pytest.mark.parametrize("binary", BINARIES, ids=binary_id)
def test_build_id_needed_soname_interp(binary: Path) -> None:
    image = read_elf(binary)
    notes = oracle(binary, "n")
    found = re.search(r"Build ID: ([0-9a-f]+)", notes)
    assert image.build_id == (found.group(1) if found else None)
    dynamic = oracle(binary, "d")
    assert list(image.needed) == re.findall(r"\(NEEDED\)\s+Shared library: \[([^]]+)\]", dynamic)
    soname = re.search(r"\(SONAME\)\s+Library soname: \[([^]]+)\]", dynamic)
    assert image.soname == (soname.group(1) if soname else None)
    interp = re.search(r"\[Requesting program interpreter: ([^]]+)\]", oracle(binary, "l"))
    assert image.interpreter == (interp.group(1) if interp else None)


# Num: Value Size Type Bind Vis [ppc64 <localentry>] Ndx Name [(version)]
_SYMBOL = re.compile(
    r"^\s*\d+: ([0-9a-f]+)\s+(\S+)\s+(\S+)\s+(\S+)\s+(\S+)\s+(?:\[[^]]*\]\s+)?(\S+)\s+(\S+)"
)


def readelf_symbols(binary: Path, name: str) -> dict[str, list[tuple[int, int, str, str, str]]]:
    """Rows for ``name`` per table, from ``readelf -sW`` (Num Value Size Type Bind Vis Ndx Name)."""
    tables: dict[str, list[tuple[int, int, str, str, str]]] = {}
    current = ""
    for line in oracle(binary, "s").splitlines():
        head = re.match(r"Symbol table '([^']+)'", line)
        if head:
            current = head.group(1)
            tables.setdefault(current, [])
            continue
        row = _SYMBOL.match(line)
        # .dynsym names get "@VERSION" from the version sections; .symtab names are
        # stored whole (bfd writes "printf@GLIBC_2.17" there), so compare exactly.
        shown = row.group(7) if row else ""
        if row and (shown.split("@")[0] if current == ".dynsym" else shown) == name:
            value, size, kind, bind, vis = row.group(1, 2, 3, 4, 5)
            size_int = int(size, 0) if size.startswith("0x") else int(size)
            tables[current].append((int(value, 16), size_int, kind, bind, vis))
    return tables


@pytest.mark.parametrize("binary", BINARIES, ids=binary_id)
@pytest.mark.parametrize("name", ["lj_vm_exit_handler", "lj_vm_asm_begin", "main", "printf"])
def test_symbols_match_readelf(binary: Path, name: str) -> None:
    expected = readelf_symbols(binary, name)
    with ElfReader(binary) as reader:
        found = reader.symbols(name)
    got: dict[str, list[tuple[int, int, str, str, str]]] = {}
    for sym in found:
        got.setdefault(sym.table, []).append(
            (sym.value, sym.size, sym.type, sym.binding, sym.visibility))
    assert {t: rows for t, rows in got.items()} == {t: r for t, r in expected.items() if r}


def test_hidden_anchor_is_local_or_hidden_in_symtab() -> None:
    # LuaJIT src/vm_*.dasc emit it .globl + .hidden (src/host/buildvm_asm.c), so it is
    # never exported in .dynsym.
    for binary in BINARIES:
        if binary.name.endswith("stripped"):
            continue
        rows = readelf_symbols(binary, "lj_vm_exit_handler")
        assert rows.get(".dynsym", []) == []
