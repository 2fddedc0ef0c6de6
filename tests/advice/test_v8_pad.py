"""V8's padding advice (advice/v8_pad.py): the -Tbss address it computes, relinked with
the real linkers (readelf -lW is the truth), and the recommendation on this machine's
non-PIE Node 20 (readelf of node, and V8's own trace in tests/window/test_v8_native.py's
preload run)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from layoutkit.advice.v8_pad import bss_address
from layoutkit.elf import ElfReader
from tests.support import require
from tests.window.v8_truth import page_up

pytestmark = pytest.mark.toolchain

SOURCE = Path(__file__).parent.parent / "data" / "v8_pad.c"
V8_PAGE = 256 * 1024  # kPageSizeBits = 18 (V8 src/common/globals.h)


def _link(tmp: Path, linker: str, flags: list[str], name: str) -> Path:
    cmd = [require("gcc"), "-O2", "-fno-pie", "-no-pie"]
    if linker in ("lld", "mold"):
        tool = tmp / f"ld.{linker}"
        if not tool.exists():
            tool.symlink_to(require("ld.lld" if linker == "lld" else "mold"))
        cmd += ["-B", f"{tmp}/", f"-fuse-ld={linker}"]
    elif linker == "gold":
        require("ld.gold")
        cmd.append("-fuse-ld=gold")
    out = tmp / name
    subprocess.run([*cmd, *flags, "-o", str(out), str(SOURCE)], check=True)
    return out


def _image_end(binary: Path) -> int:
    """readelf -lW: the end of the highest PT_LOAD (memsz included), page-rounded."""
    rows = [f for f in (line.split() for line in subprocess.run(
        ["readelf", "-lW", str(binary)], capture_output=True, text=True,
        check=True).stdout.splitlines()) if f and f[0] == "LOAD"]
    return page_up(max(int(f[2], 16) + int(f[5], 16) for f in rows), 4096)


@pytest.mark.parametrize("linker", ["bfd", "gold"])
def test_tbss_ends_the_image_on_the_boundary(tmp_path: Path, linker: str) -> None:
    before = _link(tmp_path, linker, [], "before")
    end = _image_end(before)
    boundary = page_up(end, V8_PAGE)
    assert boundary != end  # the program's end is not aligned already
    with ElfReader(before) as reader:
        at = bss_address(reader.image(), boundary)
    assert at is not None
    after = _link(tmp_path, linker, [f"-Wl,-Tbss={at:#x}"], "after")
    assert _image_end(after) == boundary
    assert subprocess.run([str(after)], capture_output=True, text=True,
                          check=True).stdout == "5\n"


def _loads(binary: Path) -> list[tuple[int, int, int]]:
    """readelf -lW: (vaddr, filesz, memsz) of each PT_LOAD."""
    rows = [f for f in (line.split() for line in subprocess.run(
        ["readelf", "-lW", str(binary)], capture_output=True, text=True,
        check=True).stdout.splitlines()) if f and f[0] == "LOAD"]
    return [(int(f[2], 16), int(f[4], 16), int(f[5], 16)) for f in rows]


def test_tbss_with_lld_and_mold(tmp_path: Path) -> None:
    """Why the advice is GNU ld and gold only: lld places later sections above .bss (the
    image does not end on the boundary); mold ends it there, but by stretching the RW
    PT_LOAD from the data over the whole gap (no PT_LOAD of .bss's own, which the
    advice's model, RelocateText, lays out)."""
    before = _link(tmp_path, "bfd", [], "before")
    boundary = page_up(_image_end(before), V8_PAGE)
    with ElfReader(before) as reader:
        at = bss_address(reader.image(), boundary)
    assert at is not None
    lld = _link(tmp_path, "lld", [f"-Wl,-Tbss={at:#x}"], "lld")
    assert _image_end(lld) > boundary
    mold = _link(tmp_path, "mold", [f"-Wl,-Tbss={at:#x}"], "mold")
    assert _image_end(mold) == boundary
    assert not any(vaddr <= at < vaddr + 4096 and filesz == 0
                   for vaddr, filesz, _ in _loads(mold))
    vaddr, _, memsz = max(_loads(mold))
    assert vaddr < at - 4096 and vaddr + memsz > at  # one RW PT_LOAD over the gap
