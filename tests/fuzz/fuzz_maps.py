"""Fuzz harness: the maps reader and the ``maps`` use case on a listing.

One input is one saved /proc/PID/maps listing: :func:`~layoutkit.read.maps.read_maps_file`,
:func:`~layoutkit.commands.maps.analyse_maps` (the files a listing names are read when
they exist here: the fixtures' listings name fixtures/elf) and the text and JSON
renderings. Seeds: every listing in fixtures/maps.
"""

from __future__ import annotations

from layoutkit.commands.maps import analyse_maps
from layoutkit.errors import UsageError
from layoutkit.output import document
from layoutkit.output.text import maps_lines
from layoutkit.read.maps import read_maps_file
from tests.fuzz.harness import FEW_RUNS, FIXTURES, check, scratch_file

NAME = "maps"


def seeds() -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((FIXTURES / "maps").glob("*.maps"))}


def exercise(path: str) -> None:
    maps = read_maps_file(path)
    try:
        result = analyse_maps(maps, FEW_RUNS)
    except UsageError:  # no mapped file readable here names the arch
        result = analyse_maps(maps, FEW_RUNS, arch_name="aarch64")
    "\n".join(maps_lines(result))
    document.dumps(document.maps_json(result))


def one_input(data: bytes) -> None:
    path = scratch_file(NAME)
    path.write_bytes(data)
    check(lambda: exercise(str(path)))
