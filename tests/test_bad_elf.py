"""Bad ELF input: every failure is one typed error naming the file, never a traceback.

The project rule under test: damaged, hostile or wrong-format input makes ``read_elf``
raise :class:`ElfError` / :class:`InputError` whose text starts with the path, and makes
``layoutkit inspect PATH`` print exactly one ``layoutkit: PATH: ...`` line on stderr and
exit 3, in bounded memory (every CLI run here has RLIMIT_AS = 1 GiB).

Inputs are made from the committed fixtures (fixtures/elf/<arch>/<variant>) by
truncating them or patching header fields with :mod:`struct`. The CLI runs of all the
table-driven cases are started together, a few at a time, by one module-scoped fixture
so the suite stays fast; each case then checks its own result.

Some cases reproduce bugs this suite found (and that are fixed): they stay as regressions.
"""

from __future__ import annotations

import os
import resource
import shutil
import struct
import subprocess
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from layoutkit.commands.inspect import inspect_binary
from layoutkit.core.model import Segment
from layoutkit.elf import ElfReader, read_elf
from layoutkit.errors import ElfError, InputError, LayoutkitError, UnsupportedArchError

FIXTURES = Path(__file__).parent.parent / "fixtures"
ELF_DIR = FIXTURES / "elf"
ANCHOR = "lj_vm_exit_handler"
AS_LIMIT = 1 << 30  # RLIMIT_AS of every CLI run: a read sized by a file field cannot fit
EXIT_INPUT = 3
MEMORY_FALLBACK = "a size field is absurd"  # elf.py's message for a MemoryError


# -- reading and patching fixture bytes ---------------------------------------------------

_EHDR: dict[int, dict[str, tuple[int, str]]] = {
    64: {"e_type": (16, "H"), "e_machine": (18, "H"), "e_phoff": (32, "Q"),
         "e_shoff": (40, "Q"), "e_ehsize": (52, "H"), "e_phentsize": (54, "H"),
         "e_phnum": (56, "H"), "e_shentsize": (58, "H"), "e_shnum": (60, "H"),
         "e_shstrndx": (62, "H")},
    32: {"e_type": (16, "H"), "e_machine": (18, "H"), "e_phoff": (28, "I"),
         "e_shoff": (32, "I"), "e_ehsize": (40, "H"), "e_phentsize": (42, "H"),
         "e_phnum": (44, "H"), "e_shentsize": (46, "H"), "e_shnum": (48, "H"),
         "e_shstrndx": (50, "H")},
}
_PHDR: dict[int, dict[str, tuple[int, str]]] = {
    64: {"p_type": (0, "I"), "p_flags": (4, "I"), "p_offset": (8, "Q"), "p_vaddr": (16, "Q"),
         "p_paddr": (24, "Q"), "p_filesz": (32, "Q"), "p_memsz": (40, "Q"),
         "p_align": (48, "Q")},
    32: {"p_type": (0, "I"), "p_offset": (4, "I"), "p_vaddr": (8, "I"), "p_paddr": (12, "I"),
         "p_filesz": (16, "I"), "p_memsz": (20, "I"), "p_flags": (24, "I"),
         "p_align": (28, "I")},
}
_SHDR: dict[int, dict[str, tuple[int, str]]] = {
    64: {"sh_name": (0, "I"), "sh_type": (4, "I"), "sh_flags": (8, "Q"), "sh_addr": (16, "Q"),
         "sh_offset": (24, "Q"), "sh_size": (32, "Q"), "sh_link": (40, "I"),
         "sh_info": (44, "I"), "sh_addralign": (48, "Q"), "sh_entsize": (56, "Q")},
    32: {"sh_name": (0, "I"), "sh_type": (4, "I"), "sh_flags": (8, "I"), "sh_addr": (12, "I"),
         "sh_offset": (16, "I"), "sh_size": (20, "I"), "sh_link": (24, "I"),
         "sh_info": (28, "I"), "sh_addralign": (32, "I"), "sh_entsize": (36, "I")},
}
_ENTSIZE = {64: (56, 64), 32: (32, 40)}  # (e_phentsize, e_shentsize)
PT_LOAD, PT_DYNAMIC, PT_INTERP, PT_NOTE = 1, 2, 3, 4


def fixture_path(rel: str) -> Path:
    return ELF_DIR / rel


def have(rel: str) -> bool:
    return fixture_path(rel).is_file()


class ElfBytes:
    """A mutable copy of an ELF file with the header accessors the cases need."""

    def __init__(self, data: bytes) -> None:
        self.data = bytearray(data)
        self.bits = 64 if self.data[4] == 2 else 32
        self.endian = "<" if self.data[5] == 1 else ">"

    @classmethod
    def load(cls, rel: str) -> ElfBytes:
        return cls(fixture_path(rel).read_bytes())

    def _get(self, pos: int, code: str) -> int:
        value: int = struct.unpack_from(self.endian + code, self.data, pos)[0]
        return value

    def _put(self, pos: int, code: str, value: int) -> None:
        struct.pack_into(self.endian + code, self.data, pos, value)

    def header(self, field: str) -> int:
        return self._get(*_EHDR[self.bits][field])

    def set_header(self, field: str, value: int) -> None:
        pos, code = _EHDR[self.bits][field]
        self._put(pos, code, value)

    def phdr_pos(self, index: int, field: str) -> int:
        return self.header("e_phoff") + index * _ENTSIZE[self.bits][0] + _PHDR[self.bits][field][0]

    def phdr(self, index: int, field: str) -> int:
        return self._get(self.phdr_pos(index, field), _PHDR[self.bits][field][1])

    def set_phdr(self, index: int, field: str, value: int) -> None:
        self._put(self.phdr_pos(index, field), _PHDR[self.bits][field][1], value)

    def shdr_pos(self, index: int, field: str) -> int:
        return self.header("e_shoff") + index * _ENTSIZE[self.bits][1] + _SHDR[self.bits][field][0]

    def shdr(self, index: int, field: str) -> int:
        return self._get(self.shdr_pos(index, field), _SHDR[self.bits][field][1])

    def set_shdr(self, index: int, field: str, value: int) -> None:
        self._put(self.shdr_pos(index, field), _SHDR[self.bits][field][1], value)

    def segment(self, p_type: int, nth: int = 0) -> int:
        """Index of the ``nth`` program header of type ``p_type``."""
        found = [i for i in range(self.header("e_phnum")) if self.phdr(i, "p_type") == p_type]
        return found[nth]

    def section(self, name: str) -> int:
        """Index of the section called ``name``."""
        names = self.shdr(self.header("e_shstrndx"), "sh_offset")
        for index in range(self.header("e_shnum")):
            start = names + self.shdr(index, "sh_name")
            if self.data[start:self.data.index(0, start)] == name.encode():
                return index
        raise KeyError(name)

    def word_size(self) -> int:
        return self.bits // 8

    def write(self, path: Path) -> Path:
        path.write_bytes(bytes(self.data))
        return path


def sectionless(rel: str) -> ElfBytes:
    """``rel`` with its section header table dropped (valid: sections are optional)."""
    elf = ElfBytes.load(rel)
    for field in ("e_shoff", "e_shnum", "e_shstrndx"):
        elf.set_header(field, 0)
    return elf


# -- the CLI, as a subprocess -------------------------------------------------------------

@dataclass(frozen=True)
class CliResult:
    returncode: int | None  # None: killed after the timeout
    stdout: str
    stderr: str


def _limit_memory() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (AS_LIMIT, AS_LIMIT))


def _cli_env() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("LAYOUTKIT_DEBUG", None)  # --debug's envvar would turn errors into tracebacks
    return env


def cli_command(path: Path | str) -> list[str]:
    return [sys.executable, "-m", "layoutkit", "inspect", str(path)]


def run_cli_many(paths: Sequence[Path | str], *, timeout: float = 120) -> list[CliResult]:
    """``layoutkit inspect`` on every path, a few processes at a time, each under RLIMIT_AS."""
    jobs = max(2, min(8, (os.cpu_count() or 1) + 1))
    results: list[CliResult | None] = [None] * len(paths)
    waiting = list(enumerate(paths))
    running: list[tuple[int, subprocess.Popen[str]]] = []
    while waiting or running:
        while waiting and len(running) < jobs:
            index, path = waiting.pop(0)
            proc = subprocess.Popen(
                cli_command(path), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                env=_cli_env(), preexec_fn=_limit_memory,  # noqa: PLW1509 (no threads here)
            )
            running.append((index, proc))
        index, proc = running.pop(0)
        try:
            out, err = proc.communicate(timeout=timeout)
            results[index] = CliResult(proc.returncode, out, err)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
            results[index] = CliResult(None, out, err)
    return [r if r is not None else CliResult(None, "", "") for r in results]


def assert_cli_rejects(result: CliResult, path: Path | str) -> None:
    """Exit 3, nothing on stdout, one ``layoutkit: PATH: ...`` line on stderr."""
    assert result.returncode is not None, f"timed out; stderr: {result.stderr}"
    assert "Traceback" not in result.stderr, result.stderr
    assert result.returncode == EXIT_INPUT, (result.returncode, result.stderr)
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"layoutkit: {path}:"), lines[0]
    assert MEMORY_FALLBACK not in lines[0], "a read sized by a file field hit RLIMIT_AS"


def assert_names_file(err: LayoutkitError, path: Path | str, words: str = "") -> None:
    assert err.path == str(path)
    assert str(err).startswith(f"{path}: "), str(err)
    assert words.lower() in err.message.lower(), err.message
    assert MEMORY_FALLBACK not in err.message


# -- the cases ----------------------------------------------------------------------------

Builder = Callable[[Path], Path]  # writes the input into a directory, returns the path


@dataclass(frozen=True)
class NotElf:
    name: str
    build: Builder
    error: type[InputError]
    words: str


def _bytes_file(name: str, data: bytes) -> Builder:
    def build(where: Path) -> Path:
        path = where / name
        path.write_bytes(data)
        return path
    return build


def _directory(where: Path) -> Path:
    path = where / "a-directory"
    path.mkdir()
    return path


def _missing(where: Path) -> Path:
    return where / "does-not-exist"


_MACHO = struct.pack("<IiiIIII", 0xFEEDFACF, 0x01000007, 3, 2, 0, 0, 0) + bytes(4)
_PE = b"MZ\x90\x00" + bytes(56) + struct.pack("<I", 64) + b"PE\0\0" + bytes(20)
_AR = b"!<arch>\n" + b"foo.o/          0           0     0     644     4         `\n" + b"\0" * 4

NOT_ELF = [
    NotElf("text", _bytes_file("notes.txt", b"hello, world\nnot a binary\n"), ElfError,
           "not an ELF"),
    NotElf("empty", _bytes_file("empty", b""), ElfError, "empty"),
    NotElf("directory", _directory, InputError, "directory"),
    NotElf("missing", _missing, InputError, "no such file"),
    NotElf("mach-o", _bytes_file("a.out-macho", _MACHO), ElfError, "Mach-O"),
    NotElf("pe", _bytes_file("prog.exe", _PE), ElfError, "PE"),
    NotElf("shell-script", _bytes_file("run.sh", b"#!/bin/sh\nexec true\n"), ElfError,
           "script"),
    NotElf("ar-archive", _bytes_file("libfoo.a", _AR), ElfError, "ar archive"),
    NotElf("elf-magic-only", _bytes_file("magic", b"\x7fELF"), ElfError, ""),
]


@dataclass(frozen=True)
class Hostile:
    """A fixture with some header fields patched."""

    name: str
    fixture: str
    patch: Callable[[ElfBytes], None]
    words: str = ""  # expected in the error message
    error: type[ElfError] = ElfError
    # The damage is in a table read_elf does not read (symbols): read_elf may succeed,
    # but a symbol lookup and `layoutkit inspect` (which looks up the anchor) must fail.
    lazy: bool = False


def _load(i: int = 1) -> Callable[[ElfBytes], int]:
    """The i-th PT_LOAD (the code segment in the fixtures)."""
    return lambda e: e.segment(PT_LOAD, i)


def _set_ph(ptype: int, field: str, value: Callable[[ElfBytes], int], nth: int = 0
            ) -> Callable[[ElfBytes], None]:
    return lambda e: e.set_phdr(e.segment(ptype, nth), field, value(e))


def _set_sh(name: str, field: str, value: Callable[[ElfBytes], int]
            ) -> Callable[[ElfBytes], None]:
    return lambda e: e.set_shdr(e.section(name), field, value(e))


def _set_eh(field: str, value: Callable[[ElfBytes], int]) -> Callable[[ElfBytes], None]:
    return lambda e: e.set_header(field, value(e))


def _const(value: int) -> Callable[[ElfBytes], int]:
    return lambda e: value


def _past_eof(e: ElfBytes) -> int:
    return len(e.data) + 0x100


def _shnum_in_section0(e: ElfBytes) -> None:
    e.set_header("e_shnum", 0)  # extended numbering: the count is section 0's sh_size
    e.set_shdr(0, "sh_size", 1 << 60)


def _shstrndx_in_section0(e: ElfBytes) -> None:
    e.set_header("e_shstrndx", 0xFFFF)  # SHN_XINDEX: the index is section 0's sh_link
    e.set_shdr(0, "sh_link", 70000)


def _ident(index: int, value: int) -> Callable[[ElfBytes], None]:
    def patch(e: ElfBytes) -> None:
        e.data[index] = value
    return patch


def _load_memsz_overflow(e: ElfBytes) -> None:
    index = e.segment(PT_LOAD, 1)
    top = 1 << e.bits
    e.set_phdr(index, "p_vaddr", top - 0x1000)
    e.set_phdr(index, "p_memsz", 0x2000)
    e.set_phdr(index, "p_filesz", 0x1000)


def _filesz_over_memsz(e: ElfBytes) -> None:
    index = e.segment(PT_LOAD, 1)
    e.set_phdr(index, "p_filesz", e.phdr(index, "p_memsz") + 1)


X64, X64_SO, X64_PIE = "x86_64/nopie", "x86_64/libanchor.so", "x86_64/pie"
I686, S390X = "i686/nopie", "s390x/nopie"  # ELF32 little-endian, ELF64 big-endian

HOSTILE = [
    Hostile("phoff-past-eof", X64, _set_eh("e_phoff", _past_eof), "outside the file"),
    Hostile("phoff-past-eof-be", S390X, _set_eh("e_phoff", _past_eof), "outside the file"),
    Hostile("phoff-past-eof-elf32", I686, _set_eh("e_phoff", _past_eof), "outside the file"),
    Hostile("shoff-past-eof", X64, _set_eh("e_shoff", _past_eof), "outside the file"),
    Hostile("phnum-ffff", X64, _set_eh("e_phnum", _const(0xFFFF)), "program header table"),
    Hostile("phnum-ffff-elf32", I686, _set_eh("e_phnum", _const(0xFFFF)),
            "program header table"),
    Hostile("shnum-ffff", X64, _set_eh("e_shnum", _const(0xFFFF)), "section header table"),
    Hostile("shnum-extended-2**60", X64, _shnum_in_section0, "section header table"),
    Hostile("phentsize-32", X64, _set_eh("e_phentsize", _const(32)), "e_phentsize"),
    Hostile("phentsize-0", X64, _set_eh("e_phentsize", _const(0)), "e_phentsize"),
    Hostile("shentsize-40", X64, _set_eh("e_shentsize", _const(40)), "e_shentsize"),
    Hostile("shentsize-0xffff", X64, _set_eh("e_shentsize", _const(0xFFFF)), ""),
    Hostile("shstrndx-out-of-range", X64, _set_eh("e_shstrndx", _const(200)), "e_shstrndx"),
    Hostile("shstrndx-xindex-out-of-range", X64, _shstrndx_in_section0, "e_shstrndx"),
    Hostile("ei-class-3", X64, _ident(4, 3), "EI_CLASS"),
    Hostile("ei-data-0", X64, _ident(5, 0), "EI_DATA"),
    Hostile("load-memsz-2**63", X64, _set_ph(PT_LOAD, "p_memsz", _const(1 << 63), nth=1)),
    Hostile("load-vaddr-memsz-overflow", X64, _load_memsz_overflow, "address space"),
    Hostile("load-vaddr-memsz-overflow-be", S390X, _load_memsz_overflow, "address space"),
    Hostile("load-vaddr-memsz-overflow-elf32", I686, _load_memsz_overflow, "address space"),
    Hostile("load-filesz-over-memsz", X64, _filesz_over_memsz, "p_filesz > p_memsz"),
    Hostile("load-align-2**63-pie", X64_PIE,
            _set_ph(PT_LOAD, "p_align", _const(1 << 63), nth=1)),
    Hostile("load-memsz-2**62-shared", X64_SO,
            _set_ph(PT_LOAD, "p_memsz", _const(1 << 62), nth=1)),
    Hostile("interp-2**40", X64, _set_ph(PT_INTERP, "p_filesz", _const(1 << 40)), "PT_INTERP"),
    Hostile("interp-4GiB-elf32", I686, _set_ph(PT_INTERP, "p_filesz", _const(0xFFFFFFFF)),
            "PT_INTERP"),
    Hostile("interp-past-eof", X64, _set_ph(PT_INTERP, "p_offset", _past_eof), "PT_INTERP"),
    Hostile("dynamic-2**40", X64, _set_ph(PT_DYNAMIC, "p_filesz", _const(1 << 40)),
            "PT_DYNAMIC"),
    Hostile("dynamic-2**63-offset", X64, _set_ph(PT_DYNAMIC, "p_offset", _const(1 << 63)),
            "PT_DYNAMIC"),
    Hostile("note-2**32", X64, _set_ph(PT_NOTE, "p_filesz", _const(1 << 32)), "note"),
    Hostile("note-2**32-be", S390X, _set_ph(PT_NOTE, "p_filesz", _const(1 << 32)), "note"),
    Hostile("comment-size-2**60", X64, _set_sh(".comment", "sh_size", _const(1 << 60)),
            ".comment"),
    Hostile("symtab-size-2**60", X64, _set_sh(".symtab", "sh_size", _const(1 << 60)),
            lazy=True),
    Hostile("strtab-size-2**60", X64, _set_sh(".strtab", "sh_size", _const(1 << 60)),
            "outside the file", lazy=True),
    Hostile("symtab-link-out-of-range", X64, _set_sh(".symtab", "sh_link", _const(500)),
            lazy=True),
    Hostile("shstrtab-offset-2**62", X64, lambda e: e.set_shdr(
        e.header("e_shstrndx"), "sh_offset", 1 << 62)),
    Hostile("machine-0x1234", X64, _set_eh("e_machine", _const(0x1234)), "unsupported machine",
            error=UnsupportedArchError),
    Hostile("machine-0x1234-be", S390X, _set_eh("e_machine", _const(0x1234)),
            "unsupported machine", error=UnsupportedArchError),
    Hostile("type-rel", X64, _set_eh("e_type", _const(1)), "relocatable"),
    Hostile("type-core", X64, _set_eh("e_type", _const(4)), "core dump"),
    Hostile("type-0xfe00", X64, _set_eh("e_type", _const(0xFE00)), "only executables"),
]


@dataclass(frozen=True)
class SymtabCase:
    """Damage confined to .symtab/.strtab: ``ElfReader.symbol`` must raise ElfError."""

    name: str
    fixture: str
    patch: Callable[[ElfBytes], None]
    words: str = ""


def _sym_size(e: ElfBytes) -> int:
    return 24 if e.bits == 64 else 16


SYMTAB = [
    SymtabCase("symtab-entsize-0", X64, _set_sh(".symtab", "sh_entsize", _const(0))),
    SymtabCase("symtab-entsize-16", X64, _set_sh(".symtab", "sh_entsize", _const(16)),
               "sh_entsize"),
    SymtabCase("symtab-entsize-25", X64, _set_sh(".symtab", "sh_entsize", _const(25))),
    SymtabCase("symtab-entsize-24-elf32", I686, _set_sh(".symtab", "sh_entsize", _const(24))),
    SymtabCase("symtab-beyond-eof", X64,
               _set_sh(".symtab", "sh_offset", lambda e: len(e.data) - 0x100),
               "outside the file"),
    SymtabCase("symtab-beyond-eof-be", S390X,
               _set_sh(".symtab", "sh_offset", lambda e: len(e.data) - 0x100),
               "outside the file"),
    SymtabCase("symtab-size-2**55-entries", X64,
               _set_sh(".symtab", "sh_size", lambda e: _sym_size(e) << 55), "outside the file"),
    SymtabCase("symtab-link-to-itself", X64,
               lambda e: e.set_shdr(e.section(".symtab"), "sh_link", e.section(".symtab"))),
    SymtabCase("strtab-beyond-eof", X64, _set_sh(".strtab", "sh_offset", _past_eof),
               "outside the file"),
    SymtabCase("strtab-beyond-eof-elf32", I686, _set_sh(".strtab", "sh_offset", _past_eof),
               "outside the file"),
    SymtabCase("strtab-size-2**60", X64, _set_sh(".strtab", "sh_size", _const(1 << 60)),
               "outside the file"),
]


def _truncation_points(rel: str, full: bool) -> list[int]:
    """Header boundaries of ``rel`` (and, with ``full``, points inside them too)."""
    elf = ElfBytes.load(rel)
    size = len(elf.data)
    phoff, phnum = elf.header("e_phoff"), elf.header("e_phnum")
    shoff, shnum = elf.header("e_shoff"), elf.header("e_shnum")
    phent, shent = _ENTSIZE[elf.bits]
    ehsize = elf.header("e_ehsize")
    points = {16, ehsize - 1, ehsize, phoff + phent * phnum, shoff + 1, size - 1}
    points |= {phoff + phent * k for k in (1, phnum - 1)}
    if full:
        points |= set(range(17))
        points |= {phoff + phent * k for k in range(phnum + 1)}
        points |= {phoff + phent // 2, phoff + phent * phnum - 1}
        points |= {shoff, shoff + shent // 2, shoff + shent * (shnum // 2), size - shent}
        points |= {size // 8, size // 4, size // 2, 3 * size // 4}
    return sorted(p for p in points if 0 <= p < size)


def _sectionless_points(rel: str) -> list[int]:
    """The last byte of each segment layoutkit reads, and the end of the last PT_LOAD.

    Cutting before a segment's last byte loses data read_elf needs (PT_INTERP,
    PT_DYNAMIC, PT_NOTE) or data it does not read (PT_LOAD contents); cutting after the
    last PT_LOAD loses nothing the variant still refers to.
    """
    elf = sectionless(rel)
    points: set[int] = set()
    last_load = 0
    for index in range(elf.header("e_phnum")):
        p_type = elf.phdr(index, "p_type")
        end = elf.phdr(index, "p_offset") + elf.phdr(index, "p_filesz")
        if p_type in (PT_LOAD, PT_DYNAMIC, PT_INTERP, PT_NOTE):
            points.add(end - 1)
        if p_type == PT_LOAD:
            last_load = max(last_load, end)
    points |= {last_load, (last_load + len(elf.data)) // 2}
    return sorted(p for p in points if 0 < p < len(elf.data))


@dataclass(frozen=True)
class Truncation:
    name: str
    fixture: str
    size: int
    headerless: bool  # the section-less variant, which survives losing its tail


def _truncations() -> list[Truncation]:
    cases: list[Truncation] = []
    for rel, full in ((X64, True), (I686, False), (S390X, False)):
        if have(rel):
            cases += [Truncation(f"{rel}@{n}", rel, n, False)
                      for n in _truncation_points(rel, full)]
    if have(X64):
        cases += [Truncation(f"{X64}-sectionless@{n}", X64, n, True)
                  for n in _sectionless_points(X64)]
    return cases


TRUNCATIONS = _truncations()


def _patched(rel: str, name: str, patch: Callable[[ElfBytes], None]) -> Builder:
    def build(where: Path) -> Path:
        elf = ElfBytes.load(rel)
        patch(elf)
        return elf.write(where / name.replace("/", "_"))
    return build


def _truncated(case: Truncation) -> Builder:
    def build(where: Path) -> Path:
        elf = sectionless(case.fixture) if case.headerless else ElfBytes.load(case.fixture)
        path = where / case.name.replace("/", "_")
        path.write_bytes(bytes(elf.data[:case.size]))
        return path
    return build


def _all_builders() -> dict[str, Builder]:
    builders: dict[str, Builder] = {f"notelf-{c.name}": c.build for c in NOT_ELF}
    for h in HOSTILE:
        if have(h.fixture):
            builders[f"hostile-{h.name}"] = _patched(h.fixture, h.name, h.patch)
    for s in SYMTAB:
        if have(s.fixture):
            builders[f"symtab-{s.name}"] = _patched(s.fixture, s.name, s.patch)
    for t in TRUNCATIONS:
        builders[f"truncate-{t.name}"] = _truncated(t)
    return builders


class Built:
    """Every table-driven input with its CLI result, made on first use, group by group.

    A group ("notelf", "hostile", "symtab", "truncate": the case name up to its first
    dash) is written and its CLI runs started together the first time one of its cases
    is asked for, so ``-k`` on a few cases does not pay for all of them.
    """

    def __init__(self, where: Path) -> None:
        self._where = where
        self._builders = _all_builders()
        self._done: dict[str, tuple[Path, CliResult]] = {}

    def __getitem__(self, name: str) -> tuple[Path, CliResult]:
        if name not in self._done:
            group = name.split("-", 1)[0]
            todo = {n: b for n, b in self._builders.items()
                    if n.split("-", 1)[0] == group and n not in self._done}
            paths = {n: build(self._where) for n, build in todo.items()}
            results = run_cli_many(list(paths.values()))
            for (n, path), result in zip(paths.items(), results, strict=True):
                self._done[n] = (path, result)
        return self._done[name]


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Built:
    return Built(tmp_path_factory.mktemp("bad-elf"))


def _marks(fixture: str | None) -> list[pytest.MarkDecorator]:
    marks = []
    if fixture is not None and not have(fixture):
        marks.append(pytest.mark.skip(reason=f"fixture {fixture} not present yet"))
    return marks


def _segments_of(rel: str, headerless: bool, where: Path) -> tuple[Segment, ...]:
    elf = sectionless(rel) if headerless else ElfBytes.load(rel)
    return read_elf(elf.write(where / "untruncated")).segments


# -- not ELF at all -----------------------------------------------------------------------

@pytest.mark.parametrize("case", [pytest.param(c, id=c.name) for c in NOT_ELF])
def test_not_elf(case: NotElf, built: Built) -> None:
    path, cli = built[f"notelf-{case.name}"]
    with pytest.raises(case.error) as info:
        read_elf(path)
    assert_names_file(info.value, path, case.words)
    assert_cli_rejects(cli, path)


def test_unreadable_file(tmp_path: Path) -> None:
    """Mode 000: "permission denied". Root reads anything, so the reader drops privileges.

    The brief's recipe, ``setpriv --reuid=65534``, cannot start this interpreter when it
    lives under /root (mode 700), so as root the reader keeps uid 0 but loses the two
    capabilities that bypass file modes (CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH) from its
    bounding set: a root-owned mode-000 file is then unreadable to it, as to anyone.
    """
    where = tmp_path / "shared"
    where.mkdir()
    where.chmod(0o755)
    path = where / "secret"
    path.write_bytes(fixture_path(X64).read_bytes() if have(X64) else b"\x7fELF")
    path.chmod(0)
    prefix: list[str] = []
    if os.geteuid() == 0:
        setpriv = shutil.which("setpriv")
        if setpriv is None:
            pytest.skip("setpriv (util-linux) is needed to drop root's file capabilities")
        prefix = [setpriv, "--bounding-set=-dac_override,-dac_read_search", "--"]
    elif os.access(path, os.R_OK):
        pytest.skip("chmod 000 does not restrict this user")
    script = ("import sys\nfrom layoutkit.elf import read_elf\n"
              "from layoutkit.errors import LayoutkitError\n"
              "try:\n    read_elf(sys.argv[1])\nexcept LayoutkitError as e:\n"
              "    print(type(e).__name__); print(e); sys.exit(3)\n")
    lib = subprocess.run([*prefix, sys.executable, "-c", script, str(path)],
                         capture_output=True, text=True, env=_cli_env(), timeout=60, check=False)
    if prefix and lib.returncode not in (0, EXIT_INPUT) and not lib.stdout:
        pytest.skip(f"could not drop capabilities: {lib.stderr.strip()[-300:]}")
    assert lib.stdout.splitlines() == ["InputError", f"{path}: permission denied"], lib
    cli = subprocess.run([*prefix, *cli_command(path)], capture_output=True, text=True,
                         env=_cli_env(), timeout=60, check=False,
                         preexec_fn=_limit_memory)
    assert_cli_rejects(CliResult(cli.returncode, cli.stdout, cli.stderr), path)
    assert cli.stderr == f"layoutkit: {path}: permission denied\n"


def test_fifo_is_refused_without_blocking(tmp_path: Path) -> None:
    """A named pipe with no writer: refuse it ("not a regular file"), do not wait on it."""
    path = tmp_path / "pipe"
    os.mkfifo(path)
    [result] = run_cli_many([path], timeout=3)
    assert result.returncode is not None, "layoutkit inspect blocked opening a FIFO"
    assert_cli_rejects(result, path)


def test_character_device_is_refused() -> None:
    with pytest.raises(InputError) as info:
        read_elf("/dev/null")
    assert_names_file(info.value, "/dev/null", "not a regular file")


# -- truncated fixtures -------------------------------------------------------------------

@pytest.mark.parametrize("case", [pytest.param(t, id=t.name) for t in TRUNCATIONS])
def test_truncated(case: Truncation, built: Built, tmp_path: Path) -> None:
    """Cut short anywhere: ElfError, or (only sections lost) the very same segments."""
    path, cli = built[f"truncate-{case.name}"]
    try:
        image = read_elf(path)
    except ElfError as err:
        assert_names_file(err, path)
        assert_cli_rejects(cli, path)
        return
    assert image.segments == _segments_of(case.fixture, case.headerless, tmp_path)
    assert image.file_size == case.size
    assert "Traceback" not in cli.stderr, cli.stderr
    assert cli.returncode in (0, EXIT_INPUT), cli
    if cli.returncode == EXIT_INPUT:
        assert_cli_rejects(cli, path)


def test_truncation_points_cover_the_headers() -> None:
    """The parametrization above really cuts inside each table (guards the point lists)."""
    if not have(X64):
        pytest.skip(f"fixture {X64} not present yet")
    elf = ElfBytes.load(X64)
    cuts = {t.size for t in TRUNCATIONS if t.fixture == X64 and not t.headerless}
    assert set(range(17)) <= cuts
    phoff, phnum = elf.header("e_phoff"), elf.header("e_phnum")
    assert {phoff + 56 * k for k in range(phnum + 1)} <= cuts
    assert elf.header("e_shoff") + 32 in cuts
    assert any(t.headerless for t in TRUNCATIONS)


def test_sectionless_variant_is_valid(tmp_path: Path) -> None:
    """The section-less variant the truncations use reads like the original."""
    if not have(X64):
        pytest.skip(f"fixture {X64} not present yet")
    image = read_elf(sectionless(X64).write(tmp_path / "sectionless"))
    assert image.segments == read_elf(fixture_path(X64)).segments
    assert image.sections == ()
    assert not image.has_symtab


# -- hostile header fields ----------------------------------------------------------------

@pytest.mark.parametrize(
    "case", [pytest.param(h, id=h.name, marks=_marks(h.fixture)) for h in HOSTILE])
def test_hostile_header(case: Hostile, built: Built) -> None:
    path, cli = built[f"hostile-{case.name}"]
    if case.lazy:
        try:
            read_elf(path)
        except ElfError as err:
            assert_names_file(err, path, case.words)
        else:
            with ElfReader(path) as reader, pytest.raises(ElfError) as info:
                reader.symbol(ANCHOR)
            assert_names_file(info.value, path, case.words)
    else:
        with pytest.raises(case.error) as info:
            read_elf(path)
        assert type(info.value) is case.error
        assert_names_file(info.value, path, case.words)
    assert_cli_rejects(cli, path)


@pytest.mark.parametrize(
    "case", [pytest.param(s, id=s.name, marks=_marks(s.fixture)) for s in SYMTAB])
def test_hostile_symbol_table(case: SymtabCase, built: Built) -> None:
    """read_elf does not read symbols (it may succeed); the lookup and the CLI must fail."""
    path, cli = built[f"symtab-{case.name}"]
    with ElfReader(path) as reader, pytest.raises(ElfError) as info:
        reader.symbol(ANCHOR)
    assert_names_file(info.value, path, case.words)
    assert_cli_rejects(cli, path)


def test_patched_fixtures_are_otherwise_valid() -> None:
    """The fixtures the cases patch read cleanly, and have the anchor the CLI looks up."""
    for rel in sorted({h.fixture for h in HOSTILE} | {s.fixture for s in SYMTAB}):
        if not have(rel):
            continue
        with ElfReader(fixture_path(rel)) as reader:
            symbol = reader.symbol(ANCHOR)
        assert symbol is not None, rel
        assert symbol.table == ".symtab"


# -- fuzzing ------------------------------------------------------------------------------

FUZZ_FIXTURES = [rel for rel in (
    "x86_64/nopie", "x86_64/libanchor.so", "aarch64/pie", "ppc64le/nopie", "riscv64/pie",
    "s390x/nopie",  # big-endian
    "i686/nopie", "armhf/pie",  # ELF32
) if have(rel)]

_FIXTURE_BYTES: dict[str, bytes] = {}


def _fixture_bytes(rel: str) -> bytes:
    if rel not in _FIXTURE_BYTES:
        _FIXTURE_BYTES[rel] = fixture_path(rel).read_bytes()
    return _FIXTURE_BYTES[rel]


def _fuzz_regions(rel: str) -> list[tuple[int, int]]:
    """[start, end) byte ranges worth mutating: the first 4 KiB and both header tables."""
    elf = ElfBytes(_fixture_bytes(rel))
    phent, shent = _ENTSIZE[elf.bits]
    phoff, shoff = elf.header("e_phoff"), elf.header("e_shoff")
    regions = [(0, min(4096, len(elf.data))),
               (phoff, phoff + phent * elf.header("e_phnum")),
               (shoff, shoff + shent * elf.header("e_shnum"))]
    return [(lo, min(hi, len(elf.data))) for lo, hi in regions if lo < min(hi, len(elf.data))]


Mutation = tuple[str, tuple[tuple[int, int], ...]]


@st.composite
def mutations(draw: st.DrawFn) -> Mutation:
    rel = draw(st.sampled_from(FUZZ_FIXTURES))
    offsets = st.one_of(*(st.integers(lo, hi - 1) for lo, hi in _fuzz_regions(rel)))
    edits = draw(st.lists(st.tuples(offsets, st.integers(0, 255)), min_size=1, max_size=24))
    return rel, tuple(edits)


def _known_bug_examples() -> Iterator[Mutation]:
    """One-byte edits that hit each bug found earlier (regressions for the fuzz test)."""
    if have(X64):
        elf = ElfBytes.load(X64)
        # was a bug: the high byte of .shstrtab's sh_offset -> 0x40.. (2**62 and up).
        yield X64, ((elf.shdr_pos(elf.header("e_shstrndx"), "sh_offset") + 7, 0x40),)
        # was a bug: .symtab's sh_size no longer a multiple of sh_entsize.
        size_pos = elf.shdr_pos(elf.section(".symtab"), "sh_size")
        yield X64, ((size_pos, (elf.shdr(elf.section(".symtab"), "sh_size") + 1) & 0xFF),)
    if have(X64_SO):
        elf = ElfBytes.load(X64_SO)
        # was a bug: the second PT_LOAD's p_memsz -> about 2**62.
        yield X64_SO, ((elf.phdr_pos(elf.segment(PT_LOAD, 1), "p_memsz") + 7, 0x40),)


@pytest.fixture(scope="module")
def scratch(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fuzz-elf")


def _fuzz_body(scratch: Path, case: Mutation) -> None:
    rel, edits = case
    data = bytearray(_fixture_bytes(rel))
    for offset, value in edits:
        data[offset] = value
    path = scratch / "mutant"
    path.write_bytes(bytes(data))
    try:
        read_elf(path)
        with ElfReader(path) as reader:
            reader.symbol(ANCHOR)
        inspect_binary(path)
    except LayoutkitError as err:
        assert err.path == str(path), str(err)
        assert MEMORY_FALLBACK not in str(err)


@pytest.mark.skipif(not FUZZ_FIXTURES, reason="no ELF fixtures present yet")
@settings(max_examples=200, deadline=None, derandomize=True, database=None)
@given(case=mutations())
def test_fuzz_mutated_fixtures(scratch: Path, case: Mutation) -> None:
    """Random byte edits in headers: the only exceptions allowed are LayoutkitError."""
    _fuzz_body(scratch, case)


for _example in _known_bug_examples():
    test_fuzz_mutated_fixtures = example(case=_example)(test_fuzz_mutated_fixtures)
