"""OpenResty's LuaJIT (``luajit2``): recognised by its exports, its allocator by release.

OpenResty's fork adds ``lua_setexdata``/``lua_getexdata`` (and their ``2`` variants) to
the C API (openresty/luajit2 src/lj_api.c, tested by t/exdata.t); upstream LuaJIT has
none of them, so a binary or library that defines them holds OpenResty's LuaJIT. It runs
upstream's mcode allocator with ``maxmcode`` 40960 KiB (src/lj_jit.h, JIT_PARAMDEF, at
commit 0fcdf129331a47f5aba0b40bb5c412abfa51bc3a), and which allocator depends on the
release: v2.1-20260311 and later carry LuaJIT's 2025 allocator (68354f44), older ones the
2017-2025 one.

The release is read from the LuaJIT version string. OpenResty kept "LuaJIT 2.1.0-beta3"
until its 2023 releases (src/luajit.h, ``#define OPENRESTY_LUAJIT``; Debian's luajit2
2.1-20230119 prints it), then took upstream's rolling versions, "LuaJIT 2.1.<commit time>"
(.relver expanded by ``git archive``) or "LuaJIT 2.1.ROLLING" in a git checkout without it.
"""

from __future__ import annotations

import re
from datetime import datetime, timezone

from layoutkit.elf import ElfReader
from layoutkit.read import bulk
from layoutkit.window.profiles import ALLOC_2025, Generation

PROFILE = "luajit-openresty"  # the 2017-2025 allocator (profiles.PROFILES)
PROFILE_2025 = "luajit-openresty-2025"  # the 2025 allocator (profiles.VARIANTS)

# The exports that only OpenResty's fork has (openresty/luajit2 src/lua.h).
EXPORTS = ("lua_setexdata", "lua_getexdata", "lua_setexdata2", "lua_getexdata2")
# 2026-03-11 00:00 UTC: the first OpenResty release with the 2025 allocator.
RELEASE_2025 = int(datetime(2026, 3, 11, tzinfo=timezone.utc).timestamp())

# A commit time is 9 or 10 digits until 2286; a longer run of digits is no date (and
# datetime could not show it): such a string is not taken for a version.
_VERSION = re.compile(rb"LuaJIT 2\.1\.(0-beta[0-9]+|[0-9]{9,10}(?![0-9])|ROLLING)")


def _day(stamp: int) -> str:
    return datetime.fromtimestamp(stamp, tz=timezone.utc).strftime("%Y-%m-%d")


def openresty_exports(reader: ElfReader) -> tuple[str, ...]:
    """The OpenResty-only exports ``reader``'s ELF defines (in .dynsym or .symtab)."""
    found = []
    for name in EXPORTS:
        symbol = reader.symbol(name)
        if symbol is not None:
            found.append(f"{name} ({symbol.table})")
    return tuple(found)


def classify_release(version: str | None, evidence: str) -> Generation:
    """The allocator of an OpenResty build whose LuaJIT version string is ``version``
    (None: none found). ``evidence`` says how OpenResty was recognised."""
    match = _VERSION.search(version.encode()) if version else None
    if match is None:
        return Generation(PROFILE, f"{evidence}; no LuaJIT 2.1 version string: assuming a "
                          "release before v2.1-20260311 (the 2017-2025 allocator)", "low")
    shown = match.group(0).decode()
    tail = match.group(1).decode()
    if tail.startswith("0-beta"):
        return Generation(PROFILE, f"{evidence}; version string {shown!r}: a release before "
                          "the rolling versions (2023), so before v2.1-20260311: the "
                          "2017-2025 allocator", "high")
    if tail == "ROLLING":
        return Generation(PROFILE, f"{evidence}; version string {shown!r} carries no date: "
                          "assuming a release before v2.1-20260311 (the 2017-2025 "
                          "allocator)", "low")
    stamp = int(tail)
    if stamp >= RELEASE_2025:
        return Generation(PROFILE_2025, f"{evidence}; version string {shown!r} (built from "
                          f"a tree of {_day(stamp)}, at or after v2.1-20260311): the 2025 "
                          "allocator", "high")
    if stamp < ALLOC_2025:
        return Generation(PROFILE, f"{evidence}; version string {shown!r} (a tree of "
                          f"{_day(stamp)}, before LuaJIT's 2025 allocator existed): the "
                          "2017-2025 allocator", "high")
    return Generation(PROFILE, f"{evidence}; version string {shown!r} (a tree of "
                      f"{_day(stamp)}, after LuaJIT's 68354f44 but before v2.1-20260311): "
                      "the 2017-2025 allocator", "medium")


def openresty_generation(reader: ElfReader) -> Generation | None:
    """OpenResty's allocator generation for the ELF behind ``reader`` (its version string
    streamed from the open file), or None when it defines none of OpenResty's exports."""
    exports = openresty_exports(reader)
    if not exports:
        return None
    return classify_release(version_string(reader),
                            "OpenResty's LuaJIT: exports " + ", ".join(exports))


def version_string(reader: ElfReader) -> str | None:
    """The first LuaJIT 2.1 version string in the file behind ``reader``."""
    stream = reader.raw_stream()
    for hit in bulk.find_all(stream, 0, reader.image().file_size, b"LuaJIT 2.1."):
        stream.seek(hit)
        match = _VERSION.match(stream.read(40))
        if match:
            return match.group(0).decode()
    return None
