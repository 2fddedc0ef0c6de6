"""ELF files into :mod:`layoutkit.core.model` values: the only module that imports elftools.

Every pyelftools failure is caught here and re-raised as :class:`ElfError` naming the
file. Nothing is read in a size taken from the file before that size has been checked
against the file's real length, so a hostile header cannot make layoutkit allocate
gigabytes; large tables are scanned in chunks (:mod:`layoutkit.read.bulk`).
"""

from __future__ import annotations

import os
import struct
from collections.abc import Callable, Iterator
from types import TracebackType
from typing import Any, BinaryIO, TypeVar

from elftools.common.exceptions import ELFError as _PyElfError
from elftools.common.utils import struct_parse
from elftools.elf.elffile import ELFFile
from elftools.elf.sections import SymbolTableSection

from layoutkit.boundary import reading
from layoutkit.core import arches
from layoutkit.core.model import ElfImage, LoadKind, Perm, Section, Segment, Symbol
from layoutkit.core.text import shown
from layoutkit.errors import ElfError
from layoutkit.read import bulk
from layoutkit.read.files import READ_FAULTS, find_build_id, identify, open_binary

# What pyelftools (and the struct module under it) raise on damaged input.
_PARSE_ERRORS = (_PyElfError, struct.error, EOFError, ValueError, KeyError, IndexError,
                 AssertionError, UnicodeDecodeError, OverflowError, OSError)

# Caps on what is read whole from a file (anything larger is not a sane ELF).
_MAX_INTERP = 4096  # PATH_MAX
_MAX_NOTES = 1 << 20
_MAX_DYNAMIC = 1 << 20
_MAX_STRING = 4096
_MAX_COMMENT = 1 << 16
_MAX_ALIGN = 1 << 30  # real images use 4 KiB to 64 KiB (2 MiB for huge-page builds)

# Header sizes by ELF class (System V gABI): e_ehsize, e_phentsize, e_shentsize, sym size.
_SIZES = {32: (52, 32, 40, 16), 64: (64, 56, 64, 24)}
# No kernel has user space above 2^57 (x86-64 LA57; arm64 52-bit; riscv Sv57).
_USER_LIMIT_BITS = 57

T = TypeVar("T")

DF_1_PIE = 0x08000000  # binutils include/elf/common.h
SHN_UNDEF = 0
SHN_ABS = 0xFFF1
SHN_COMMON = 0xFFF2
_SPECIAL_SHNDX = {"SHN_UNDEF": SHN_UNDEF, "SHN_ABS": SHN_ABS, "SHN_COMMON": SHN_COMMON}


class ElfReader:
    """An open ELF file. Use as a context manager; :meth:`image` gives the summary."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = os.fspath(path)
        self._stream = open_binary(self.path)
        try:
            with reading("ELF file", self.path):
                self._size = os.fstat(self._stream.fileno()).st_size
                head = self._first_bytes()
                why = identify(head)
                if why:
                    raise ElfError(why, path=self.path)
                self._check_ident(head)
                self._stream.seek(0)
                self._elf = self._guard("ELF header", lambda: ELFFile(self._stream))
                self._guard("ELF header", self._check_header)
                self._image = self._guard("headers", self._build)
        except BaseException:
            self._stream.close()
            raise

    def __enter__(self) -> ElfReader:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        self._stream.close()

    # -- errors --------------------------------------------------------------------------

    def _fail(self, message: str) -> ElfError:
        return ElfError(message, path=self.path)

    def _guard(self, what: str, build: Callable[[], T]) -> T:
        """Run ``build`` and turn every parser failure into :class:`ElfError` naming
        ``what`` was being read (the parser's own words are kept as the cause only)."""
        try:
            return build()
        except ElfError:
            raise
        except MemoryError:
            raise self._fail("damaged ELF: a size field is absurd") from None
        except _PARSE_ERRORS as e:
            raise self._fail(f"damaged ELF: the {what} cannot be parsed "
                             f"(a field points outside the file or holds an impossible "
                             f"value)") from e

    def _first_bytes(self) -> bytes:
        """The identification bytes (e_ident); a read the kernel refuses is bad input."""
        try:
            return self._stream.read(16)
        except OSError as e:
            why = READ_FAULTS.get(e.errno or 0, "the kernel refuses to read it")
            raise self._fail(f"cannot read the file: {why}") from None

    def _check_ident(self, head: bytes) -> None:
        """EI_CLASS and EI_DATA (System V gABI, "ELF Identification")."""
        if len(head) < 6:
            raise self._fail(f"truncated: {self._size} bytes, shorter than the ELF header")
        if head[4] not in (1, 2):
            raise self._fail(f"EI_CLASS is {head[4]:#04x}: not 1 (ELFCLASS32) or "
                             "2 (ELFCLASS64)")
        if head[5] not in (1, 2):
            raise self._fail(f"EI_DATA is {head[5]:#04x}: not 1 (little-endian) or "
                             "2 (big-endian)")

    def _check_range(self, what: str, offset: int, size: int) -> None:
        if offset < 0 or size < 0 or offset + size > self._size:
            raise self._fail(
                f"{shown(what)} [{offset:#x}, {offset + size:#x}) lies outside the file "
                f"({self._size} bytes)"
            )

    def _read(self, what: str, offset: int, size: int, cap: int) -> bytes:
        if size > cap:
            raise self._fail(f"{shown(what)} is {size} bytes, more than the {cap} a sane "
                             "ELF has")
        self._check_range(what, offset, size)
        self._stream.seek(offset)
        return self._stream.read(size)

    # -- header --------------------------------------------------------------------------

    def _check_header(self) -> None:
        hdr = self._elf.header
        bits = self._elf.elfclass
        ehsize, phentsize, shentsize, _ = _SIZES[bits]
        if self._size < ehsize:
            raise self._fail(f"truncated: {self._size} bytes, shorter than the ELF header")
        if hdr["e_phnum"]:
            if hdr["e_phentsize"] != phentsize:
                raise self._fail(f"e_phentsize is {hdr['e_phentsize']}, not {phentsize} "
                                 f"(the size of an ELF{bits} program header)")
            self._check_range("program header table", hdr["e_phoff"], hdr["e_phnum"] * phentsize)
        if hdr["e_shoff"] and hdr["e_shentsize"] != shentsize:
            # Checked before the count: e_shnum 0 means "read the count from section 0".
            raise self._fail(f"e_shentsize is {hdr['e_shentsize']}, not {shentsize} "
                             f"(the size of an ELF{bits} section header)")
        shnum = self._section_count()
        if shnum:
            self._check_range("section header table", hdr["e_shoff"], shnum * shentsize)
            if self._elf["e_shstrndx"] != 0 and self._elf.get_shstrndx() >= shnum:
                raise self._fail("e_shstrndx points past the section header table")

    def _section_count(self) -> int:
        hdr = self._elf.header
        if hdr["e_shoff"] == 0:
            return 0
        # e_shnum == 0 with a table present means "count in section 0's sh_size".
        _, _, shentsize, _ = _SIZES[self._elf.elfclass]
        self._check_range("section header table", hdr["e_shoff"], shentsize)
        count: int = self._guard("section header table", self._elf.num_sections)
        return count

    # -- building the image --------------------------------------------------------------

    def _build(self) -> ElfImage:
        elf = self._elf
        bits = elf.elfclass
        arch = arches.from_elf(self._machine_number(), bits, elf.little_endian, path=self.path)
        e_type = elf["e_type"]
        if e_type not in ("ET_EXEC", "ET_DYN"):
            what = {"ET_REL": "a relocatable object (.o)", "ET_CORE": "a core dump"}.get(
                e_type, f"of type {e_type}")
            raise self._fail(f"{what}: only executables and shared libraries are loadable")
        segments = tuple(self._segments())
        if not any(seg.type == "PT_LOAD" for seg in segments):
            raise self._fail("no PT_LOAD segment: nothing would be mapped")
        sections = tuple(self._sections())
        interpreter = self._interpreter(segments)
        needed, soname, flags_1, dt_flags = self._dynamic(segments)
        if e_type == "ET_EXEC":
            kind = LoadKind.EXEC
        elif interpreter is not None:
            kind = LoadKind.PIE
        elif flags_1 & DF_1_PIE:
            kind = LoadKind.STATIC_PIE
        else:
            kind = LoadKind.SHARED
        return ElfImage(
            path=self.path,
            file_size=self._size,
            arch=arch,
            bits=bits,
            little_endian=elf.little_endian,
            e_machine=self._machine_number(),
            e_type=e_type,
            load_kind=kind,
            entry=elf["e_entry"],
            interpreter=interpreter,
            segments=segments,
            sections=sections,
            build_id=self._build_id(segments, sections),
            needed=needed,
            soname=soname,
            has_symtab=any(s.type == "SHT_SYMTAB" for s in sections),
            has_dynsym=any(s.type == "SHT_DYNSYM" for s in sections),
            comment=self._comment(sections),
            dt_flags=dt_flags,
            dt_flags_1=flags_1,
        )

    def _machine_number(self) -> int:
        # pyelftools names known machines; the raw number is at offset 18 either way.
        self._stream.seek(18)
        raw = self._stream.read(2)
        return int.from_bytes(raw, "little" if self._elf.little_endian else "big")

    def _segments(self) -> Iterator[Segment]:
        limit = 1 << min(self._elf.elfclass, _USER_LIMIT_BITS)
        for index in range(self._elf.num_segments()):
            header = self._elf._get_segment_header(index)
            ptype = header["p_type"]
            name = ptype if isinstance(ptype, str) else f"{ptype:#x}"
            segment = Segment(
                type=name,
                vaddr=header["p_vaddr"],
                memsz=header["p_memsz"],
                offset=header["p_offset"],
                filesz=header["p_filesz"],
                flags=Perm.from_p_flags(header["p_flags"]),
                raw_flags=header["p_flags"],
                align=header["p_align"],
            )
            if name == "PT_LOAD":
                if segment.vaddr + segment.memsz > limit:
                    raise self._fail(
                        f"PT_LOAD #{index} at {segment.vaddr:#x} of {segment.memsz:#x} bytes "
                        f"runs past any user address space (2^{min(self._elf.elfclass, 57)})")
                if segment.filesz > segment.memsz:
                    raise self._fail(f"PT_LOAD #{index} has p_filesz > p_memsz")
                if segment.align > _MAX_ALIGN:
                    raise self._fail(f"PT_LOAD #{index} has p_align {segment.align:#x}: "
                                     "no kernel loads an image aligned beyond 1 GiB")
            yield segment

    def _names_table(self, count: int) -> tuple[int, int] | None:
        """File offset and size of the section name table (e_shstrndx), checked."""
        if not count or not self._elf["e_shstrndx"]:
            return None
        index = self._elf.get_shstrndx()
        header = self._elf._get_section_header(index)
        offset, size = header["sh_offset"], header["sh_size"]
        self._check_range(f"section name table (section #{index})", offset, size)
        return offset, size

    def _section_name(self, index: int, header: Any, names: tuple[int, int] | None) -> str:
        if not index or names is None:
            return ""
        if header["sh_name"] >= names[1]:
            raise self._fail(f"section #{index} sh_name {header['sh_name']:#x} lies outside "
                             f"the section name table ({names[1]} bytes)")
        length = min(_MAX_STRING, names[1] - header["sh_name"])
        data = self._read("section name table", names[0] + header["sh_name"], length,
                          _MAX_STRING)
        return data.split(b"\0", 1)[0].decode("utf-8", "surrogateescape")

    def _sections(self) -> Iterator[Section]:
        limit = 1 << min(self._elf.elfclass, _USER_LIMIT_BITS)
        count = self._section_count()
        names = self._names_table(count)
        for index in range(count):
            header = self._elf._get_section_header(index)
            stype = header["sh_type"]
            section = Section(
                name=self._section_name(index, header, names),
                type=stype if isinstance(stype, str) else f"{stype:#x}",
                addr=header["sh_addr"],
                offset=header["sh_offset"],
                size=header["sh_size"],
                flags=header["sh_flags"],
            )
            if section.alloc and section.addr + section.size > limit:
                raise self._fail(
                    f"section #{index} {shown(section.name, 60)} (SHF_ALLOC) at "
                    f"{section.addr:#x} of {section.size:#x} bytes runs past any user "
                    f"address space (2^{min(self._elf.elfclass, _USER_LIMIT_BITS)})")
            yield section

    def _interpreter(self, segments: tuple[Segment, ...]) -> str | None:
        for seg in segments:
            if seg.type == "PT_INTERP":
                data = self._read("PT_INTERP", seg.offset, seg.filesz, _MAX_INTERP)
                return data.split(b"\0", 1)[0].decode("utf-8", "replace")
        return None

    def _vaddr_to_offset(self, segments: tuple[Segment, ...], vaddr: int) -> int | None:
        for seg in segments:
            if seg.type == "PT_LOAD" and seg.vaddr <= vaddr < seg.vaddr + seg.filesz:
                return seg.offset + vaddr - seg.vaddr
        return None

    def _string_at(self, what: str, table: int, table_size: int, index: int) -> str:
        if index >= table_size:
            raise self._fail(f"{what} string offset {index} lies outside its table")
        length = min(_MAX_STRING, table_size - index)
        data = self._read(what, table + index, length, _MAX_STRING)
        return data.split(b"\0", 1)[0].decode("utf-8", "replace")

    def _dynamic(self, segments: tuple[Segment, ...]
                 ) -> tuple[tuple[str, ...], str | None, int, int]:
        """DT_NEEDED names, DT_SONAME, DT_FLAGS_1 and DT_FLAGS from PT_DYNAMIC."""
        dyn = next((seg for seg in segments if seg.type == "PT_DYNAMIC"), None)
        if dyn is None:
            return (), None, 0, 0
        struct_dyn = self._elf.structs.Elf_Dyn
        entry = struct_dyn.sizeof()
        self._read("PT_DYNAMIC", dyn.offset, dyn.filesz, _MAX_DYNAMIC)  # bounds check
        tags: list[tuple[str | int, int]] = []
        for n in range(dyn.filesz // entry):
            tag = struct_parse(struct_dyn, self._stream, stream_pos=dyn.offset + n * entry)
            if tag["d_tag"] == "DT_NULL":
                break
            tags.append((tag["d_tag"], tag["d_val"]))
        values = dict(tags)
        strtab, strsz = values.get("DT_STRTAB"), values.get("DT_STRSZ", 0)
        names = [v for t, v in tags if t == "DT_NEEDED"]
        soname_index = values.get("DT_SONAME")
        flags_1 = int(values.get("DT_FLAGS_1", 0))
        flags = int(values.get("DT_FLAGS", 0))
        if not names and soname_index is None:
            return (), None, flags_1, flags
        table = None if strtab is None else self._vaddr_to_offset(segments, strtab)
        if table is None:
            raise self._fail("DT_STRTAB does not point into the file")
        self._check_range("dynamic string table", table, strsz)
        needed = tuple(self._string_at("DT_NEEDED", table, strsz, i) for i in names)
        soname = (None if soname_index is None
                  else self._string_at("DT_SONAME", table, strsz, soname_index))
        return needed, soname, flags_1, flags

    def _build_id(self, segments: tuple[Segment, ...], sections: tuple[Section, ...]) -> str | None:
        regions = [(s.offset, s.filesz) for s in segments if s.type == "PT_NOTE"]
        regions += [(s.offset, s.size) for s in sections if s.type == "SHT_NOTE"]
        for offset, size in regions:
            data = self._read("note", offset, size, _MAX_NOTES)
            found = find_build_id(data, self._elf.little_endian)
            if found is not None:
                return found
        return None

    def _comment(self, sections: tuple[Section, ...]) -> tuple[str, ...]:
        comment = next((s for s in sections if s.name == ".comment"), None)
        if comment is None or comment.type == "SHT_NOBITS":
            return ()
        data = self._read(".comment", comment.offset, comment.size, _MAX_COMMENT)
        parts = (p.decode("utf-8", "replace").strip() for p in data.split(b"\0"))
        return tuple(dict.fromkeys(p for p in parts if p))

    # -- public --------------------------------------------------------------------------

    def image(self) -> ElfImage:
        """The summary of this file (built once, when the reader opened it)."""
        return self._image

    def symbols(self, name: str) -> list[Symbol]:
        """Every entry called ``name`` in ``.symtab`` and ``.dynsym`` (LOCAL and HIDDEN too)."""
        with reading("ELF file", self.path):
            return self._guard("symbol tables", lambda: list(self._lookup(name)))

    def symbol(self, name: str) -> Symbol | None:
        """The defined symbol ``name`` (``.symtab`` preferred), or None."""
        for sym in self.symbols(name):
            if sym.defined:
                return sym
        return None

    def raw_stream(self) -> BinaryIO:
        """The open file, for whole-file byte scans (a version string): the caller seeks
        before it reads. One open file per command, however many readers need it."""
        return self._stream

    def read_vaddr(self, vaddr: int, size: int) -> bytes:
        """``size`` file-backed bytes of the image at link-time address ``vaddr``."""
        for seg in self._image.loads:
            if seg.vaddr <= vaddr and vaddr + size <= seg.vaddr + seg.filesz:
                return self._read("segment data", seg.offset + vaddr - seg.vaddr, size, 1 << 24)
        raise self._fail(f"[{vaddr:#x}, {vaddr + size:#x}) is not file-backed in any PT_LOAD")

    def _lookup(self, name: str) -> Iterator[Symbol]:
        sym_size = _SIZES[self._elf.elfclass][3]
        needle = name.encode() + b"\0"
        tables = [(i, s) for i, s in enumerate(self._image.sections)
                  if s.type in ("SHT_SYMTAB", "SHT_DYNSYM")]
        tables.sort(key=lambda pair: pair[1].type != "SHT_SYMTAB")
        for index, table in tables:
            # The raw header is checked before pyelftools builds the section from it.
            header = self._elf._get_section_header(index)
            link, entsize = header["sh_link"], header["sh_entsize"]
            what = shown(table.name, 60) or f"section #{index}"
            if not 0 < link < len(self._image.sections):
                raise self._fail(f"{what} sh_link is {link}: no section of the "
                                 f"{len(self._image.sections)} is its string table")
            strtab = self._image.sections[link]
            if entsize != sym_size:
                raise self._fail(f"{what} sh_entsize is {entsize}, not {sym_size} (the size "
                                 f"of an ELF{self._elf.elfclass} symbol)")
            self._check_range(table.name, table.offset, table.size)
            self._check_range(strtab.name or "string table", strtab.offset, strtab.size)
            section = self._elf.get_section(index)
            assert isinstance(section, SymbolTableSection)
            offsets = bulk.find_all(self._stream, strtab.offset, strtab.size, needle)
            hits = bulk.match_u32(self._stream, table.offset, table.size // sym_size, sym_size,
                                  set(offsets), little_endian=self._elf.little_endian)
            for hit in hits:
                entry = section.get_symbol(hit).entry
                shndx = entry["st_shndx"]
                self._check_symbol(name, table.name, entry)
                yield Symbol(
                    name=name,
                    value=entry["st_value"],
                    size=entry["st_size"],
                    type=str(entry["st_info"]["type"]).removeprefix("STT_"),
                    binding=str(entry["st_info"]["bind"]).removeprefix("STB_"),
                    visibility=str(entry["st_other"]["visibility"]).removeprefix("STV_"),
                    shndx=_SPECIAL_SHNDX.get(shndx, 0xFFFF) if isinstance(shndx, str) else shndx,
                    table=".symtab" if table.type == "SHT_SYMTAB" else ".dynsym",
                )


    def _check_symbol(self, name: str, table: str, entry: Any) -> None:
        """A defined symbol (not absolute, not TLS) lies in the loaded image or at its end."""
        if entry["st_shndx"] in ("SHN_UNDEF", "SHN_ABS", "SHN_COMMON") or \
                entry["st_info"]["type"] == "STT_TLS":
            return
        value: int = entry["st_value"]
        loads = self._image.loads
        lo = min(seg.vaddr for seg in loads)
        hi = max(seg.vaddr + seg.memsz for seg in loads)
        if not lo <= value <= hi:
            raise self._fail(f"symbol {shown(name, 60)} in {table}: st_value {value:#x} lies "
                             f"outside the loaded image [{lo:#x}, {hi:#x})")


def read_elf(path: str | os.PathLike[str]) -> ElfImage:
    """The :class:`ElfImage` of ``path`` (the file is closed again)."""
    with ElfReader(path) as reader:
        return reader.image()
