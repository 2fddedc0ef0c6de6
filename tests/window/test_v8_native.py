"""The v8 profile against the real runtime: this machine's Node 20 (npm's non-PIE x86-64
build, V8 11.3), run with ``--trace-code-range-allocation``; ground truths are readelf,
objdump, V8's own trace and the process's /proc/PID/maps."""

from __future__ import annotations

import os
import re
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from layoutkit.commands.inspect import inspect_binary
from layoutkit.commands.maps import analyse_target
from layoutkit.core.arches import by_name
from layoutkit.core.scenario import Scenario
from layoutkit.core.spans import Span
from layoutkit.elf import ElfReader
from layoutkit.window.v8 import (
    NEWEST,
    CodeRangePlacement,
    builtins_copy,
    detect_v8,
    place_code_range,
)
from tests.support import require

pytestmark = pytest.mark.toolchain

MAPS_LINE = re.compile(r"^([0-9a-f]+)-([0-9a-f]+) (\S{4}) ([0-9a-f]+) \S+ \d+\s*(.*)$")
FALLBACK = re.compile(r"=== Fallback attempt, hint=(\S+): \[(0x[0-9a-f]+), (0x[0-9a-f]+)\)")
PRINT_MAPS = "process.stdout.write(require('fs').readFileSync('/proc/self/maps', 'utf8'))"
MiB = 1 << 20


@dataclass(frozen=True)
class Run:
    hint: int
    code_range: Span
    maps: list[tuple[Span, str, int, str]]  # span, perms, offset, path

    @property
    def heap(self) -> Span:
        return next(span for span, _, _, path in self.maps if path == "[heap]")


def _node() -> str:
    node = require("node")
    version = subprocess.run([node, "-p", "process.versions.v8"], capture_output=True,
                             text=True, check=True).stdout.strip()
    if not version.startswith("11.3."):
        pytest.skip(f"{node} has V8 {version}; these tests check V8 11.3 (Node 20)")
    return node


def _run(node: str, *flags: str, env: dict[str, str] | None = None) -> Run:
    out = subprocess.run([node, *flags, "--trace-code-range-allocation", "-e", PRINT_MAPS],
                         capture_output=True, text=True, check=True,
                         env={**os.environ, **(env or {})}).stdout
    found = FALLBACK.search(out)
    assert found is not None, out[:400]
    maps = []
    for line in out.splitlines():
        m = MAPS_LINE.match(line)
        if m:
            maps.append((Span(int(m.group(1), 16), int(m.group(2), 16)), m.group(3),
                         int(m.group(4), 16), m.group(5).strip()))
    hint = 0 if found.group(1) == "(nil)" else int(found.group(1), 16)
    return Run(hint, Span(int(found.group(2), 16), int(found.group(3), 16)), maps)


@dataclass(frozen=True)
class Truth:
    """What readelf and objdump say about the binary."""

    start: int  # v8_Default_embedded_blob_code_
    size: int  # the uint32 at v8_Default_embedded_blob_code_size_
    end: int  # end of the last PT_LOAD (bss included)
    file_offset: int  # of the blob

    @property
    def region(self) -> Span:  # GetShortBuiltinsCallRegion, x86-64: 2048 MiB each way
        return Span(max(0, self.start + self.size - 2048 * MiB), self.start + 2048 * MiB)

    @property
    def bss_page_end(self) -> int:
        return _page_up(self.end, 4096)


def _readelf_blob(node: str) -> Truth:
    syms = subprocess.run(["readelf", "-sW", node], capture_output=True, text=True,
                          check=True).stdout
    values = {f[7]: int(f[1], 16) for f in (line.split() for line in syms.splitlines())
              if len(f) == 8 and f[7].startswith("v8_Default_embedded_blob_code")}
    at = values["v8_Default_embedded_blob_code_size_"]
    dump = subprocess.run(["objdump", "-s", f"--start-address={at:#x}",
                           f"--stop-address={at + 4:#x}", "-j", ".rodata", node],
                          capture_output=True, text=True, check=True).stdout
    size = int.from_bytes(bytes.fromhex(dump.strip().splitlines()[-1].split()[1]), "little")
    loads = subprocess.run(["readelf", "-lW", node], capture_output=True, text=True,
                           check=True).stdout
    rows = [f for f in (line.split() for line in loads.splitlines()) if f and f[0] == "LOAD"]
    end = max(int(f[2], 16) + int(f[5], 16) for f in rows)
    start = values["v8_Default_embedded_blob_code_"]
    offset = next(int(f[1], 16) + start - int(f[2], 16) for f in rows
                  if int(f[2], 16) <= start < int(f[2], 16) + int(f[4], 16))
    return Truth(start, size, end, offset)


def _page_up(value: int, align: int) -> int:
    return -(-value // align) * align


def test_detection_matches_readelf_and_node() -> None:
    node = _node()
    truth = _readelf_blob(node)
    version = subprocess.run([node, "-p", "process.versions.v8"], capture_output=True,
                             text=True, check=True).stdout.strip()
    with ElfReader(node) as reader:
        build = detect_v8(reader)
    assert build is not None and build.blob is not None
    assert build.blob == Span(truth.start, truth.start + truth.size)
    assert build.version == version.split("-")[0]
    assert build.rule is NEWEST


def _predict(run: Run, truth: Truth, size: int = 512 * MiB) -> CodeRangePlacement:
    """layoutkit's placement on the run's own maps (less the code range V8 then made)."""
    return place_code_range([span for span, *_ in run.maps
                             if not span.overlaps(run.code_range)],
                            truth.region, size, NEWEST)


def _copies(run: Run, truth: Truth) -> list[Span]:
    """r-x mappings of node's file at the blob's offset, away from node's own image."""
    return [span for span, perms, offset, path in run.maps
            if perms == "r-xp" and offset == truth.file_offset and path.endswith("node")
            and span.start != truth.start]


def test_hint_and_placement_match_the_trace() -> None:
    """Heap far: the hint is the bss end rounded down to 256 KiB, exactly; heap near: the
    heap's end rounded down; refused either way, and the builtins are remapped where
    builtins_copy says."""
    node = _node()
    truth = _readelf_blob(node)
    seen_far = False
    for _ in range(8):
        run = _run(node)
        placed = _predict(run, truth)
        if run.heap.start >= truth.bss_page_end + 512 * MiB:
            seen_far = True
            assert run.hint == placed.hint == truth.bss_page_end & ~(256 * 1024 - 1)
        else:
            # V8 saw the heap smaller than now: its end then is at or below today's.
            assert run.heap.start & ~0x3FFFF <= run.hint <= placed.hint
        assert not placed.honoured and run.code_range.start != run.hint
        assert not truth.region.contains(run.code_range)
        copy = builtins_copy(by_name("x86_64"), run.code_range, truth.size)
        assert _copies(run, truth) == [copy]
    assert seen_far, "no run with the heap far above the bss in 8 runs"


def test_max_old_space_size_moves_nothing_but_the_remap() -> None:
    """--max-old-space-size under 2048: the same refused hint, the same far code range,
    but no remapped builtins (short builtin calls off)."""
    node = _node()
    truth = _readelf_blob(node)
    bss_hint = truth.bss_page_end & ~(256 * 1024 - 1)
    for flags, remapped in (((), True), (("--max-old-space-size=1024",), False),
                            (("--max-old-space-size=4096",), True)):
        for _ in range(8):
            run = _run(node, *flags)
            if run.hint == bss_hint:
                break
        else:
            pytest.fail(f"{flags}: no run with the heap far above the bss in 8 runs")
        assert not truth.region.contains(run.code_range)
        assert bool(_copies(run, truth)) is remapped


@pytest.fixture(scope="module")
def fill_so(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A preload that maps PROT_NONE over [FILL_SPAN) before node starts (without
    MAP_FIXED: MAP_FIXED_NOREPLACE fails instead of replacing; the child aborts then)."""
    cc = require("cc")
    out = tmp_path_factory.mktemp("fill") / "fill.so"
    source = Path(__file__).parent.parent / "data" / "v8_fill.c"
    subprocess.run([cc, "-shared", "-fPIC", "-O2", "-o", str(out), str(source)], check=True)
    return out


def test_padding_the_bss_to_256k_gets_the_code_range_near(fill_so: Path) -> None:
    """The advice: end the image on a 256 KiB boundary. A preloaded mapping stands in for
    the padding; with the heap far, V8's hint is honoured and no builtins are remapped."""
    node = _node()
    truth = _readelf_blob(node)
    lo = truth.bss_page_end
    hi = _page_up(lo, 256 * 1024)
    env = {"LD_PRELOAD": str(fill_so), "FILL_SPAN": f"{lo:x}-{hi:x}"}
    seen_far = False
    for _ in range(10):
        run = _run(node, env=env)
        placed = _predict(run, truth)
        fits = run.heap.start >= hi + 512 * MiB + 256 * 1024 - 4096
        assert placed.honoured is fits
        if fits:
            seen_far = True
            assert run.hint == placed.hint == hi
            assert run.code_range == placed.placed == Span(hi, hi + 512 * MiB)
            assert placed.near and truth.region.contains(run.code_range)
            assert _copies(run, truth) == []
            break
        assert run.code_range.start != run.hint and _copies(run, truth)
    assert seen_far, "no run with the heap far above the bss in 10 runs"


def test_inspect_predicts_the_far_heap_hint() -> None:
    node = _node()
    truth = _readelf_blob(node)
    result = inspect_binary(node, Scenario())
    assert result.profile == "v8"
    hint = truth.bss_page_end & ~(256 * 1024 - 1)
    assert any(f"hint {hint:#x}" in note and "refused" in note for note in result.notes)
    smaller = inspect_binary(node, Scenario(code_range=128 * MiB))
    assert smaller.jit.profile.sizemcode == 128 * MiB


def test_maps_finds_the_code_range_of_a_live_node() -> None:
    node = _node()
    proc = subprocess.Popen([node, "--trace-code-range-allocation", "-e",
                             "setTimeout(() => {}, 20000)"], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        line = ""
        while "Fallback" not in line:
            line = proc.stdout.readline()
        found = FALLBACK.search(line)
        assert found is not None
        time.sleep(0.5)
        result = analyse_target(str(proc.pid))
    finally:
        proc.kill()
        proc.wait()
    assert result.profile == "v8"
    assert any(f"code range [{found.group(2)}, {found.group(3)})" in note
               for note in result.notes)
