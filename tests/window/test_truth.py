"""layoutkit against what the real kernel does: x86-64 fixtures and Debian's luajit, live.

The ground truth is the kernel's own /proc/PID/maps (copied by the fixture program, or
read here from outside), what the programs print (the address of lj_vm_exit_handler,
every JIT area they were given) and the readelf oracles. Maps lines are split here
with a regex of their own, not with layoutkit's parser.
"""

from __future__ import annotations

import functools
import json
import os
import platform
import re
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from click.testing import CliRunner

from layoutkit.cli import cli
from layoutkit.commands.inspect import inspect_binary
from layoutkit.commands.maps import analyse_maps
from layoutkit.core.arches import by_name
from layoutkit.read.maps import parse_maps
from layoutkit.window.kernel import KernelConfig
from layoutkit.window.profiles import jit_window
from tests.support import ELF_DIR, FIXTURES, oracle, require

pytestmark = [
    pytest.mark.toolchain,  # runs real programs natively (the fixtures, Debian's luajit)
    pytest.mark.skipif(sys.platform != "linux" or platform.machine() != "x86_64",
                       reason="runs x86-64 programs natively on a Linux kernel"),
]

SZ = 64 * 1024  # the fixtures' and LuaJIT's (sizemcode) area size
PAGE = 4096
RUNS = 5  # ASLR runs per binary
X86_64 = by_name("x86_64")
U64 = (1 << 64) - 1
RANGE_X64 = (1 << 30) - (1 << 21)  # lj_mcode.c: (1u << (LJ_TARGET_JUMPRANGE-1)) - (1u << 21)

_LINE = re.compile(r"([0-9a-f]+)-([0-9a-f]+) (\S{4}) ([0-9a-f]+) \S+ (\d+) *(.*)")


@dataclass(frozen=True)
class Line:
    """One line of /proc/PID/maps, split here."""

    start: int
    end: int
    perms: str
    offset: int
    inode: int
    path: str


def split_maps(text: str) -> list[Line]:
    lines = []
    for raw in text.splitlines():
        match = _LINE.fullmatch(raw)
        assert match, raw
        start, end, perms, offset, inode, path = match.groups()
        lines.append(Line(int(start, 16), int(end, 16), perms, int(offset, 16), int(inode),
                          path.rstrip(" ")))
    return lines


def anonymous_rx(lines: list[Line]) -> list[tuple[int, int]]:
    """Anonymous r-x mappings (no path, inode 0), adjacent ones merged."""
    spans: list[tuple[int, int]] = []
    for line in lines:
        if line.perms.startswith("r-x") and line.inode == 0 and not line.path:
            if spans and spans[-1][1] == line.start:
                spans[-1] = (spans[-1][0], line.end)
            else:
                spans.append((line.start, line.end))
    return spans


def merged(areas: list[int]) -> list[tuple[int, int]]:
    spans: list[tuple[int, int]] = []
    for start in sorted(areas):
        if spans and spans[-1][1] == start:
            spans[-1] = (spans[-1][0], start + SZ)
        else:
            spans.append((start, start + SZ))
    return spans


def luajit21_accepts(p: int, anchor: int) -> bool:
    """lj_mcode.c (2017..2025): target = lj_vm_exit_handler & ~0xffff; an area is kept iff
    ``(uintptr_t)p + sz - target < range || target - (uintptr_t)p < range``."""
    target = anchor & ~0xFFFF
    return ((p + SZ - target) & U64) < RANGE_X64 or ((target - p) & U64) < RANGE_X64


def host_mmap_min_addr() -> int:
    return int(Path("/proc/sys/vm/mmap_min_addr").read_text())


def readelf_symbol(binary: Path, name: str) -> int:
    for row in oracle(binary, "s").splitlines():
        cols = row.split()
        if len(cols) == 8 and cols[7] == name:
            return int(cols[1], 16)
    raise AssertionError(name)


def first_load(binary: Path) -> int:
    """p_vaddr of the PT_LOAD at file offset 0 (readelf -lW oracle)."""
    for row in oracle(binary, "l").splitlines():
        cols = row.split()
        if cols[:1] == ["LOAD"] and int(cols[1], 16) == 0:
            return int(cols[2], 16)
    raise AssertionError("no LOAD at offset 0")


# --- the x86-64 fixtures, run for real ---------------------------------------------------


@dataclass(frozen=True)
class JitRun:
    anchor: int  # what the program printed
    areas: tuple[tuple[int, int], ...]  # (got, requested) of every area it kept
    maps_text: str  # its own /proc/self/maps, copied after mapping the areas
    lines: tuple[Line, ...]

    def load_bias(self, binary: Path) -> int:
        """Where the kernel mapped ``binary``'s offset 0, minus that segment's p_vaddr."""
        path = os.path.realpath(binary)
        starts = [m.start for m in self.lines if m.path == path and m.offset == 0]
        assert len(starts) == 1, (path, self.maps_text)
        return starts[0] - first_load(binary)

    @property
    def heap(self) -> int | None:
        starts = [m.start for m in self.lines if m.path == "[heap]"]
        return starts[0] if starts else None


@functools.cache
def jit_runs(variant: str) -> tuple[JitRun, ...]:
    runs = []
    for _ in range(RUNS):
        proc = subprocess.run([str(ELF_DIR / "x86_64" / variant), "jit", "4"],
                              capture_output=True, text=True, timeout=30, check=True)
        head: list[str] = []
        rows = proc.stdout.splitlines()
        while rows and not _LINE.fullmatch(rows[0]):
            head.append(rows.pop(0))
        printed = re.fullmatch(r"lj_vm_exit_handler (0x[0-9a-f]+)", head[0])
        assert printed, head
        areas = tuple((int(m.group(1), 16), int(m.group(2), 16))
                      for m in map(re.compile(r"area (0x[0-9a-f]+) requested (0x[0-9a-f]+)")
                                   .fullmatch, head) if m)
        assert len(areas) == 4, head
        text = "\n".join(rows) + "\n"
        runs.append(JitRun(int(printed.group(1), 16), areas, text, tuple(split_maps(text))))
    return tuple(runs)


@pytest.mark.parametrize("variant", ["nopie", "pie"])
def test_prediction_contains_what_the_kernel_did(variant: str) -> None:
    binary = ELF_DIR / "x86_64" / variant
    symbol = readelf_symbol(binary, "lj_vm_exit_handler")
    result = inspect_binary(binary)
    pred = result.prediction
    assert pred.heap_start is not None
    limit = KernelConfig.for_arch(X86_64, mmap_min_addr=host_mmap_min_addr()).user_space
    biases = set()
    for run in jit_runs(variant):
        bias = run.load_bias(binary)
        biases.add(bias)
        # The program's own view of the anchor agrees with the oracle and the real bias.
        assert run.anchor == bias + symbol
        # The load address the kernel chose lies in the predicted range.
        assert pred.bias_range[0] <= bias <= pred.bias_range[1], hex(bias)
        assert bias % PAGE == 0
        # The brk heap, relative to the image, is where the model puts it: after the
        # bss, moved up by less than the brk randomisation.
        if run.heap is not None:
            offset = run.heap - bias
            assert pred.heap_start[0] - result.bias <= offset <= pred.heap_start[1] - result.bias
        # Every area the kernel gave at the requested hint is inside LuaJIT's window
        # around the real anchor, and LuaJIT's own test would keep it.
        jw = jit_window("luajit-2.1", X86_64, run.anchor, limit)
        for got, requested in run.areas:
            assert got == requested  # at most one miss, then the hints are honoured
            assert jw.usable.start <= got and got + SZ <= jw.usable.end
            assert luajit21_accepts(got, run.anchor)
    if variant == "nopie":
        assert biases == {0}
        assert pred.bias_range == (0, 0)
        assert result.runtime_anchor.start == symbol
    elif Path("/proc/sys/kernel/randomize_va_space").read_text().strip() != "0":
        assert len(biases) > 1  # ASLR moved it between runs


def test_nopie_heap_start_is_in_the_predicted_range() -> None:
    pred = inspect_binary(ELF_DIR / "x86_64" / "nopie").prediction
    assert pred.heap_start is not None
    heaps = [run.heap for run in jit_runs("nopie")]
    assert all(h is not None for h in heaps)
    for heap in heaps:
        assert heap is not None
        assert pred.heap_start[0] <= heap <= pred.heap_start[1], hex(heap)


def test_pie_heap_start_is_in_the_predicted_range() -> None:
    pred = inspect_binary(ELF_DIR / "x86_64" / "pie").prediction
    assert pred.heap_start is not None
    for run in jit_runs("pie"):
        assert run.heap is not None
        assert pred.heap_start[0] <= run.heap <= pred.heap_start[1], hex(run.heap)


@pytest.mark.parametrize("variant", ["nopie", "pie"])
def test_analyse_maps_reads_anchor_bias_and_jit_areas(variant: str) -> None:
    binary = ELF_DIR / "x86_64" / variant
    for number, run in enumerate(jit_runs(variant)):
        analysis = analyse_maps(parse_maps(run.maps_text, source=f"{variant} run {number}"))
        assert analysis.anchor.span.start == run.anchor
        assert analysis.anchor.how_found.value == "symbol"
        assert analysis.anchor_object == os.path.realpath(binary)
        assert analysis.bias == run.load_bias(binary)
        # Adjacent areas merge into one mapping: count bytes.
        spans = [(a.span.start, a.span.end) for a in analysis.jit_areas]
        assert sum(end - start for start, end in spans) == 4 * SZ
        assert spans == merged([got for got, _ in run.areas]) == anonymous_rx(list(run.lines))


def test_uselib_anchor_is_found_in_the_library() -> None:
    lib = ELF_DIR / "x86_64" / "libanchor.so"
    symbol = readelf_symbol(lib, "lj_vm_exit_handler")
    limit = KernelConfig.for_arch(X86_64, mmap_min_addr=host_mmap_min_addr()).user_space
    for number, run in enumerate(jit_runs("uselib")):
        lib_bias = run.load_bias(lib)
        assert run.anchor == lib_bias + symbol
        analysis = analyse_maps(parse_maps(run.maps_text, source=f"uselib run {number}"))
        assert analysis.anchor_object == os.path.realpath(lib)
        assert analysis.bias == lib_bias
        assert analysis.anchor.span.start == run.anchor
        assert sum(a.span.size for a in analysis.jit_areas) == 4 * SZ
        jw = jit_window("luajit-2.1", X86_64, run.anchor, limit)
        for got, requested in run.areas:
            if got == requested:  # the program gives up hinting after 256 misses
                assert jw.usable.start <= got and got + SZ <= jw.usable.end
                assert luajit21_accepts(got, run.anchor)


# --- Debian's luajit, live ---------------------------------------------------------------


@dataclass(frozen=True)
class LiveLuajit:
    exe: str
    output: dict[str, str]  # the script's "key value" lines (the last of each key)
    traces: tuple[tuple[int, int], ...]  # (mcode address, size) of every trace
    kernel_maps: str  # /proc/PID/maps, read here
    doc: dict[str, object]  # layoutkit maps PID --format json
    returncode: int


@pytest.fixture(scope="module")
def live_luajit() -> Iterator[LiveLuajit]:
    luajit = require("luajit")
    script = FIXTURES / "src" / "jit-heavy.lua"
    with subprocess.Popen([luajit, str(script)], stdin=subprocess.PIPE,
                          stdout=subprocess.PIPE, text=True) as proc:
        watchdog = threading.Timer(60, proc.kill)
        watchdog.start()
        try:
            assert proc.stdout is not None
            output: dict[str, str] = {}
            traces = []
            for line in proc.stdout:
                key, _, value = line.rstrip("\n").partition(" ")
                if key == "trace":
                    fields = value.split()  # "<n> mcode 0x... size <bytes>"
                    traces.append((int(fields[2], 16), int(fields[4])))
                output[key] = value
                if key == "ready":
                    break
            assert "ready" in output, output
            before = Path(f"/proc/{proc.pid}/maps").read_text()
            run = subprocess.run([sys.executable, "-m", "layoutkit", "maps", str(proc.pid),
                                  "--format", "json"], capture_output=True, text=True,
                                 timeout=120, check=False)
            after = Path(f"/proc/{proc.pid}/maps").read_text()
        finally:
            watchdog.cancel()
            proc.kill()
    assert before == after  # the process was blocked on stdin throughout
    assert run.returncode in (0, 1), run.stderr
    doc = json.loads(run.stdout)
    assert isinstance(doc, dict)
    yield LiveLuajit(os.path.realpath(luajit), output, tuple(traces), before, doc,
                     run.returncode)


def _dict(doc: dict[str, object], key: str) -> dict[str, object]:
    value = doc[key]
    assert isinstance(value, dict)
    return value


def _hex(value: object) -> int:
    assert isinstance(value, str) and value.startswith("0x")
    return int(value, 16)


def test_live_luajit_jit_areas_are_the_kernels(live_luajit: LiveLuajit) -> None:
    lines = split_maps(live_luajit.kernel_maps)
    kernel = anonymous_rx(lines)
    assert kernel, "luajit mapped no JIT area"
    # Every trace's machine code (jit.util.tracemc) lies in one of those mappings.
    assert live_luajit.traces
    for address, size in live_luajit.traces:
        assert any(s <= address and address + size <= e for s, e in kernel), hex(address)
    areas = live_luajit.doc["jit_areas"]
    assert isinstance(areas, list)
    reported = [(_hex(a["start"]), _hex(a["end"])) for a in areas]
    assert reported == kernel
    total = sum(e - s for s, e in kernel)
    assert live_luajit.doc["jit_bytes"] == total
    assert total % SZ == 0  # sizemcode 64 KiB areas


def test_live_luajit_areas_are_inside_the_reported_window(live_luajit: LiveLuajit) -> None:
    window = _dict(live_luajit.doc, "window")
    assert window["profile"] == "luajit-2.1"
    lo, hi = _hex(window["start"]), _hex(window["end"])
    ulo, uhi = _hex(window["usable_start"]), _hex(window["usable_end"])
    handler = int(live_luajit.output["exit_handler"], 16)  # decoded by the script itself
    for start, end in anonymous_rx(split_maps(live_luajit.kernel_maps)):
        assert lo <= start and end <= hi
        assert ulo <= start and end <= uhi
        for p in range(start, end, SZ):
            assert luajit21_accepts(p, handler), hex(p)


def test_live_luajit_generation_anchor_and_exit_code(live_luajit: LiveLuajit) -> None:
    doc = live_luajit.doc
    assert live_luajit.output["version"] == "LuaJIT 2.1.0-beta3"
    generation = _dict(doc, "generation")
    assert generation["detected"] == "luajit-2.1"
    assert "2.1.0-beta3" in str(generation["evidence"])
    # luajit is stripped: its one r-xp file mapping is its code; the exit handler the
    # script decoded from exit stub 0 lies in it.
    code = [m for m in split_maps(live_luajit.kernel_maps)
            if m.path == live_luajit.exe and m.perms.startswith("r-x")]
    assert len(code) == 1
    handler = int(live_luajit.output["exit_handler"], 16)
    assert code[0].start <= handler < code[0].end
    anchor = _dict(doc, "anchor")
    assert anchor["object"] == live_luajit.exe
    if anchor["how_found"] == "jit-code":
        # Recovered from the live JIT code (reading /proc/PID/mem): the very address
        # LuaJIT's own exit stubs jump to.
        assert _hex(anchor["address"]) == handler
    else:
        assert anchor["how_found"] == "executable-segment"
        assert (_hex(anchor["address"]), _hex(anchor["end"])) == (code[0].start, code[0].end)
    verdict = _dict(doc, "capacity")["verdict"]
    assert live_luajit.returncode == (0 if verdict == "ok" else 1)


def test_saved_luajit_listing_falls_back_to_the_executable_segment(
        live_luajit: LiveLuajit, tmp_path: Path) -> None:
    saved = tmp_path / "luajit.maps"
    saved.write_text(live_luajit.kernel_maps)
    result = CliRunner().invoke(cli, ["maps", str(saved), "--format", "json"])
    doc = json.loads(result.stdout)
    code = [m for m in split_maps(live_luajit.kernel_maps)
            if m.path == live_luajit.exe and m.perms.startswith("r-x")]
    assert len(code) == 1
    anchor = doc["anchor"]
    assert anchor["how_found"] == "executable-segment"
    assert anchor["object"] == live_luajit.exe
    assert (_hex(anchor["address"]), _hex(anchor["end"])) == (code[0].start, code[0].end)
    assert doc["generation"]["detected"] == "luajit-2.1"
    assert "2.1.0-beta3" in doc["generation"]["evidence"]
    assert [(_hex(a["start"]), _hex(a["end"])) for a in doc["jit_areas"]] == \
        anonymous_rx(split_maps(live_luajit.kernel_maps))
    # The conservative window must reach the whole code span: every area is inside it.
    window = doc["window"]
    for start, end in anonymous_rx(split_maps(live_luajit.kernel_maps)):
        assert _hex(window["start"]) <= start and end <= _hex(window["end"])
    assert result.exit_code == (0 if doc["capacity"]["verdict"] == "ok" else 1)
