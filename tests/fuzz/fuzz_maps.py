"""Fuzz harness: the maps reader and the ``maps`` use case on a listing.

One input is one saved /proc/PID/maps listing: :func:`~layoutkit.read.maps.read_maps_file`,
:func:`~layoutkit.commands.maps.analyse_maps` (the files a listing names are read when
they exist here: the fixtures' listings name fixtures/elf) and the text and JSON
renderings. Seeds: every listing in fixtures/maps, and listings of the JIT harness's
ELF seeds (``/jit/NAME``, read through a path map): a V8 with its remapped builtins, a
PHP with opcache's ``/dev/zero (deleted)`` rw-s/r-xs pair.
"""

from __future__ import annotations

from layoutkit.commands.maps import analyse_maps
from layoutkit.errors import UsageError
from layoutkit.output import document
from layoutkit.output.text import maps_lines
from layoutkit.read.maps import read_maps_file
from tests.fuzz.fuzz_jit import built
from tests.fuzz.harness import FEW_RUNS, FIXTURES, check, scratch_file

NAME = "maps"
# The JIT seeds as a listing names them; read from where fuzz_jit.built() put them.
JIT_ROOT = "/jit"
V8_MAPS = """\
00400000-00401000 r-xp 00000000 08:01 1001 /jit/v8
01000000-01021000 rw-p 00000000 00:00 0 [heap]
7f0000000000-7f001ffc0000 ---p 00000000 00:00 0
7f001ffc0000-7f001ffc1000 r-xp 00000140 08:01 1001 /jit/v8
7f001ffc1000-7f0020000000 ---p 00000000 00:00 0
7ffff7ff9000-7ffff7ffd000 r--p 00000000 00:00 0 [vvar]
7ffffffde000-7ffffffff000 rw-p 00000000 00:00 0 [stack]
"""
OPCACHE_MAPS = """\
00400000-00401000 r-xp 00000000 08:01 1002 /jit/php
01000000-01021000 rw-p 00000000 00:00 0 [heap]
40000000-48000000 rw-s 00000000 00:01 4242 /dev/zero (deleted)
48000000-4c000000 r-xs 08000000 00:01 4242 /dev/zero (deleted)
7ffffffde000-7ffffffff000 rw-p 00000000 00:00 0 [stack]
"""


def seeds() -> dict[str, bytes]:
    found = {p.name: p.read_bytes() for p in sorted((FIXTURES / "maps").glob("*.maps"))}
    found.update({"v8-remapped-builtins.maps": V8_MAPS.encode(),
                  "php-opcache-pair.maps": OPCACHE_MAPS.encode()})
    return found


def exercise(path: str) -> None:
    maps = read_maps_file(path)
    # The JIT seeds are built (gcc) only for a listing that names them.
    named = any(m.path.startswith(JIT_ROOT + "/") for m in maps.mappings if m.path)
    paths = ((JIT_ROOT, str(built()["v8"].parent)),) if named else ()
    try:
        result = analyse_maps(maps, FEW_RUNS, path_map=paths)
    except UsageError:  # no mapped file readable here names the arch
        result = analyse_maps(maps, FEW_RUNS, arch_name="aarch64", path_map=paths)
    "\n".join(maps_lines(result))
    document.dumps(document.maps_json(result))


def one_input(data: bytes) -> None:
    path = scratch_file(NAME)
    path.write_bytes(data)
    check(lambda: exercise(str(path)))
