"""The maps model against real captures and live processes."""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import pytest

from layoutkit.core.model import Perm
from layoutkit.read.maps import MappingKind, parse_maps, read_maps_file, read_process_maps
from tests.support import ELF_DIR, MAPS_DIR, oracle

CAPTURES = sorted(MAPS_DIR.glob("*.maps"))


def meta(capture: Path) -> dict[str, object]:
    data = json.loads(capture.with_name(capture.stem + ".meta.json").read_text())
    assert isinstance(data, dict)
    return data


@pytest.mark.parametrize("capture", CAPTURES, ids=lambda p: p.stem)
def test_every_line_of_a_real_capture_parses_exactly(capture: Path) -> None:
    maps = read_maps_file(str(capture))
    lines = [line for line in capture.read_text().splitlines() if line.strip()]
    assert len(maps.mappings) == len(lines)
    for mapping, line in zip(maps.mappings, lines, strict=True):
        # Independent split of the kernel's format: fields separated by single spaces,
        # the path after the padding.
        span, perms, offset, device, inode, *rest = line.split(" ", 5)
        start, end = (int(x, 16) for x in span.split("-"))
        assert (mapping.start, mapping.end) == (start, end)
        assert mapping.perms.rwx() == perms[:3]
        assert mapping.shared == (perms[3] == "s")
        assert (mapping.offset, mapping.device, mapping.inode) == (
            int(offset, 16), device, int(inode))
        # The padding goes, a path's own trailing blanks stay.
        path = rest[0].lstrip(" ") if rest else ""
        assert mapping.path + (" (deleted)" if mapping.deleted else "") == path


@pytest.mark.parametrize("capture", [c for c in CAPTURES if meta(c).get("jit_areas")
                                     and "host-view" not in c.stem],
                         ids=lambda p: p.stem)
def test_jit_areas_the_program_made_are_anonymous_executable(capture: Path) -> None:
    maps = read_maps_file(str(capture))
    areas = meta(capture)["jit_areas"]
    assert isinstance(areas, list) and areas
    for area in areas:
        address = int(area["address"], 16)
        holder = [m for m in maps.mappings if address in m.span]
        assert len(holder) == 1
        assert holder[0].kind is MappingKind.ANONYMOUS
        assert Perm.X in holder[0].perms


# The host's view of a qemu-user process shows qemu as the executable: leave it out.
@pytest.mark.parametrize("capture", [c for c in CAPTURES if "fixture_binary" in meta(c)
                                     and "host-view" not in c.stem], ids=lambda p: p.stem)
def test_executable_is_found_in_a_saved_listing(capture: Path) -> None:
    maps = read_maps_file(str(capture))
    binary = str(meta(capture)["fixture_binary"])
    assert maps.executable is not None and maps.executable.endswith(binary)
    assert all(m.kind is MappingKind.EXECUTABLE for m in maps.mappings if m.path == maps.executable)


def test_awkward_paths_survive() -> None:
    maps = read_maps_file(str(MAPS_DIR / "x86_64-mapfiles.maps"))
    paths = {(m.path.rsplit("/", 1)[-1], m.deleted) for m in maps.mappings}
    assert ("file with spaces.bin", False) in paths
    assert ("deleted.bin", True) in paths
    deleted = [m for m in maps.mappings if m.path.endswith("/deleted.bin")]
    assert deleted and all(m.kind is MappingKind.DELETED for m in deleted)
    assert any(m.shared for m in maps.mappings if m.path.endswith("file with spaces.bin"))


def test_threads_capture_has_stacks_and_arenas() -> None:
    maps = read_maps_file(str(MAPS_DIR / "x86_64-threads8.maps"))
    assert len(maps.by_kind(MappingKind.STACK)) == 1  # only the main thread's is named
    # glibc reserves 64 MiB per malloc arena (HEAP_MAX_SIZE on 64-bit, malloc/arena.c):
    # each shows as a small rw- part followed by a ---p rest within a 64 MiB run.
    anon = maps.by_kind(MappingKind.ANONYMOUS)
    assert any(m.perms == Perm.NONE for m in anon)


def test_kinds_of_a_plain_listing() -> None:
    text = (
        "00400000-00401000 r-xp 00000000 08:01 42  /usr/bin/prog\n"
        "00401000-00402000 rw-p 00001000 08:01 42  /usr/bin/prog\n"
        "01000000-01021000 rw-p 00000000 00:00 0   [heap]\n"
        "7f0000000000-7f0000001000 r-xp 00000000 00:00 0 \n"
        "7f0000001000-7f0000002000 rw-p 00000000 00:00 0   [anon:glibc malloc]\n"
        "7f1000000000-7f1000010000 r-xp 00000000 08:01 7   /lib/x86_64-linux-gnu/libc.so.6\n"
        "7f2000000000-7f2000001000 r--p 00000000 08:01 8   /usr/share/locale/locale-archive\n"
        "7ffc00000000-7ffc00021000 rw-p 00000000 00:00 0   [stack]\n"
        "7ffc00100000-7ffc00102000 r-xp 00000000 00:00 0   [vdso]\n"
        "ffffffffff600000-ffffffffff601000 --xp 00000000 00:00 0   [vsyscall]\n"
    )
    maps = parse_maps(text)
    assert [m.kind for m in maps.mappings] == [
        MappingKind.EXECUTABLE, MappingKind.EXECUTABLE, MappingKind.HEAP,
        MappingKind.ANONYMOUS, MappingKind.ANONYMOUS, MappingKind.LIBRARY, MappingKind.FILE,
        MappingKind.STACK, MappingKind.VDSO, MappingKind.VDSO,
    ]
    assert maps.mappings[-1].start == 0xFFFFFFFFFF600000
    assert maps.mappings[4].path == "[anon:glibc malloc]"
    assert maps.executable == "/usr/bin/prog"


def _page_spans_from_readelf(binary: Path) -> list[tuple[int, int]]:
    """PT_LOAD spans rounded out to 4 KiB pages, from the committed readelf -lW text."""
    spans = []
    for line in oracle(binary, "l").splitlines():
        cols = line.split()
        if cols and cols[0] == "LOAD":
            vaddr, memsz = int(cols[2], 16), int(cols[5], 16)
            spans.append((vaddr & ~0xFFF, (vaddr + memsz + 0xFFF) & ~0xFFF))
    return spans


@pytest.mark.skipif(os.uname().machine != "x86_64", reason="runs the x86-64 fixture natively")
def test_live_process_matches_the_kernel_and_readelf() -> None:
    binary = ELF_DIR / "x86_64" / "nopie"
    proc = subprocess.Popen([str(binary), "wait"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            text=True)
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline()
        assert first == f"pid {proc.pid}\n"
        kernel_text = Path(f"/proc/{proc.pid}/maps").read_text()
        maps = read_process_maps(proc.pid)
    finally:
        assert proc.stdin is not None
        proc.stdin.close()
        proc.wait(timeout=10)
    assert maps.executable == str(binary.resolve())
    assert len(maps.mappings) == len(kernel_text.splitlines())
    image = [m for m in maps.mappings if m.kind is MappingKind.EXECUTABLE]
    # Every PT_LOAD (readelf's numbers) is covered exactly by the image's mappings.
    covered: list[tuple[int, int]] = []
    for m in image:
        if covered and covered[-1][1] == m.start:
            covered[-1] = (covered[-1][0], m.end)
        else:
            covered.append((m.start, m.end))
    merged: list[tuple[int, int]] = []
    for lo, hi in _page_spans_from_readelf(binary):
        if merged and merged[-1][1] >= lo:
            merged[-1] = (merged[-1][0], max(hi, merged[-1][1]))
        else:
            merged.append((lo, hi))
    file_backed_end = max(hi for _, hi in covered)
    assert covered[0][0] == merged[0][0] == 0x400000
    assert file_backed_end <= merged[-1][1]


def test_process_that_exited_is_a_clear_error() -> None:
    proc = subprocess.Popen(["true"])
    proc.wait()
    with pytest.raises(Exception, match=re.escape(f"pid {proc.pid}")) as info:
        read_process_maps(proc.pid)
    assert type(info.value).__name__ == "MapsError"
