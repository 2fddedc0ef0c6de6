"""Maps listings at and past the limits: linear time, bounded memory, early refusal."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from layoutkit.commands.maps import analyse_maps
from layoutkit.errors import MapsError
from layoutkit.output import document
from layoutkit.read import maps as maps_module
from layoutkit.read.maps import MAX_LINE, read_maps_file

HEAD = "00400000-00405000 r-xp 00000000 fe:00 4242 /usr/local/bin/jit-server\n"


def jit_listing(path: Path, count: int) -> Path:
    """``count`` anonymous r-x mappings of 8 KiB with 8 KiB holes (the bench's shape)."""
    rows = [f"{0x10000000 + i * 0x4000:08x}-{0x10002000 + i * 0x4000:08x} r-xp 00000000 "
            "00:00 0\n" for i in range(count)]
    path.write_text(HEAD + "".join(rows))
    return path


def test_path_of_path_max_is_normal(tmp_path: Path) -> None:
    name = "/" + "d" * 4095
    path = tmp_path / "long.maps"
    path.write_text(HEAD + f"10000000-10001000 r--p 00000000 fe:00 9 {name}\n")
    assert read_maps_file(str(path)).mappings[1].path == name


def test_line_past_the_limit_is_refused_where_it_starts(tmp_path: Path) -> None:
    path = tmp_path / "huge.maps"
    with path.open("w") as out:
        out.write(HEAD + HEAD.replace("00400000-00405000", "00500000-00505000"))
        out.write("10000000-10001000 r--p 00000000 fe:00 9 /" + "x" * (8 << 20) + "\n")
    with pytest.raises(MapsError) as info:
        read_maps_file(str(path))
    assert (info.value.line, info.value.message) == (3, (
        f"line longer than {MAX_LINE} bytes: not a maps line (a path is at most "
        "PATH_MAX, 4096 bytes)"))


def test_too_many_lines_is_refused_at_the_first_one_past(tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(maps_module, "MAX_LINES", 1000)
    assert len(read_maps_file(str(jit_listing(tmp_path / "ok.maps", 999))).mappings) == 1000
    with pytest.raises(MapsError) as info:
        read_maps_file(str(jit_listing(tmp_path / "over.maps", 1000)))
    assert info.value.message.startswith("more than 1000 lines: not a maps listing")


def _cpu_seconds(path: Path) -> float:
    start = time.process_time()
    maps = read_maps_file(str(path))
    result = analyse_maps(maps, arch_name="x86_64")
    document.dumps(document.maps_json(result))
    assert len(result.jit_areas) == len(maps.mappings) - 1
    return time.process_time() - start


def test_time_is_linear_in_the_listing(tmp_path: Path) -> None:
    """Eight times the mappings cost about eight times the CPU time (a quadratic step
    would cost 64 times): 8,191 against 65,528 JIT mappings, best of two."""
    small = jit_listing(tmp_path / "small.maps", 8191)
    large = jit_listing(tmp_path / "large.maps", 65528)
    ratio = min(_cpu_seconds(large) for _ in range(2)) / min(_cpu_seconds(small)
                                                             for _ in range(2))
    assert ratio < 14, ratio
