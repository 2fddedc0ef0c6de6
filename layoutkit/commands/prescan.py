"""The cheap first look of ``layoutkit check``: one memory-mapped pass over a file's
string tables and data that shows, without parsing it, that it can hold no JIT evidence
(LuaJIT's VM symbol names, DT_NEEDED on libluajit, its version string; PHP's executor
and opcache's extension entry)."""

from __future__ import annotations

import mmap
import os
import struct

from layoutkit.commands.collect import ELF_MAGIC

# Byte strings without which a file cannot hold JIT evidence: the VM symbol names and
# DT_NEEDED names with "luajit" (in string tables), the version string (in data); PHP's
# executor and opcache.so's extension entry (symbol names); V8's embedded blob
# (v8_Default_embedded_blob_code_ in .strtab, Isolate::embedded_blob_code in .dynstr).
# A file that has none of them is "n/a" after one memory-mapped pass, without parsing it.
_IN_STRINGS: tuple[bytes, ...] = (b"lj_vm_", b"luajit", b"LuaJIT 2.", b"execute_ex",
                                  b"zend_extension_entry", b"embedded_blob_code")
_IN_DATA: tuple[bytes, ...] = (b"LuaJIT 2.",)
_NOT_LOADED = {1: "a relocatable object", 4: "a core dump"}  # e_type ET_REL, ET_CORE
SHT_STRTAB, SHT_NOBITS = 3, 8
SHF_ALLOC, SHF_EXECINSTR = 0x2, 0x4
# Every runtime check knows, with the evidence it looks for.
NO_JIT = ("no JIT target: no LuaJIT or OpenResty luajit2 (VM symbols, version string, "
          "libluajit dependency), PHP opcache (execute_ex, zend_extension_entry) or V8 "
          "(embedded_blob_code symbols)")


def _scan_ranges(data: mmap.mmap, size: int) -> list[tuple[int, int, tuple[bytes, ...]]] | None:
    """File ranges where LuaJIT evidence can lie (with the strings to look for there),
    or None when the headers are damaged.

    Symbol and DT_NEEDED names live in string tables, the version string in allocated
    data; machine code (SHF_EXECINSTR), .bss and debug sections are skipped. Without
    section headers the whole file is scanned. Damaged headers: None (ElfReader says
    what is wrong).
    """
    cls, order = data[4], data[5]
    if cls not in (1, 2) or order not in (1, 2):
        return None
    end = "<" if order == 1 else ">"
    ehdr = struct.Struct(end + ("HHIIIIIHHHHHH" if cls == 1 else "HHIQQQIHHHHHH"))
    if size < 16 + ehdr.size:
        return None
    (_type, _machine, _version, _entry, phoff, shoff, _flags, _ehsize, phentsize, phnum,
     shentsize, shnum, _shstrndx) = ehdr.unpack_from(data, 16)
    if phoff + phnum * phentsize > size or shoff + shnum * shentsize > size:
        return None
    if shoff == 0 or shnum == 0:
        return [(0, size, _IN_STRINGS)]
    shdr = struct.Struct(end + ("IIIIII" if cls == 1 else "IIQQQQ"))
    if shentsize < shdr.size:
        return None
    ranges: list[tuple[int, int, tuple[bytes, ...]]] = []
    for index in range(shnum):
        _name, kind, flags, _addr, offset, length = shdr.unpack_from(
            data, shoff + index * shentsize)
        if offset >= size:
            continue
        if kind == SHT_STRTAB:
            ranges.append((offset, min(size, offset + length), _IN_STRINGS))
        elif kind != SHT_NOBITS and flags & SHF_ALLOC and not flags & SHF_EXECINSTR:
            ranges.append((offset, min(size, offset + length), _IN_DATA))
    return ranges


def prescan(path: str) -> str | None:
    """The n/a reason when a file cheaply shows it hosts no JIT target, else None.

    One memory-mapped pass over the string tables and data (memory stays flat); the
    ELF and section headers are bounds-checked, so a truncated file goes on to the
    full reader and is reported as an error. None means: read it in full.
    """
    with open(path, "rb") as stream:
        size = os.fstat(stream.fileno()).st_size
        if size < 64:
            return None
        try:
            data = mmap.mmap(stream.fileno(), 0, access=mmap.ACCESS_READ)
        except (OSError, ValueError):
            return None  # no room to map it (the worker's limit): the full reader streams
        with data:
            if data[:4] != ELF_MAGIC:
                return None
            e_type = int.from_bytes(data[16:18], "big" if data[5] == 2 else "little")
            if e_type in _NOT_LOADED:
                return f"{_NOT_LOADED[e_type]}: not loaded as it is, so no JIT window to judge"
            ranges = _scan_ranges(data, size)
            if ranges is None:
                return None
            for start, stop, needles in ranges:
                if any(data.find(needle, start, stop) != -1 for needle in needles):
                    return None
    return NO_JIT
