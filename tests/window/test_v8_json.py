"""The ``v8`` object of ``inspect`` and ``maps`` JSON against this machine's Node 20 (npm's
non-PIE x86-64 build, V8 11.3): readelf and od for the builtins, V8's own
``--trace-code-range-allocation`` for the code range of a live process."""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from click.testing import CliRunner

from layoutkit.cli import cli
from layoutkit.core.spans import Span
from tests.output.test_schemas import assert_renames_caught, assert_valid
from tests.support import require
from tests.window.v8_truth import FALLBACK
from tests.window.v8_truth import address as _address
from tests.window.v8_truth import truth as v8truth

pytestmark = pytest.mark.toolchain

MiB = 1 << 20
X64_RADIUS = 2048 * MiB  # kMaxPCRelativeCodeRangeInMB (src/codegen/x64/constants-x64.h)
V8_PAGE = 256 * 1024  # kPageSizeBits = 18 (src/common/globals.h)
MAPS_LINE = re.compile(r"^([0-9a-f]+)-([0-9a-f]+) (\S{4}) ([0-9a-f]+) \S+ \d+\s*(.*)$")


def _node() -> tuple[str, str]:
    node = require("node")
    version = subprocess.run([node, "-p", "process.versions.v8"], capture_output=True,
                             text=True, check=True).stdout.strip()
    if not version.startswith("11.3."):
        pytest.skip(f"{node} has V8 {version}; these tests check V8 11.3 (Node 20)")
    return node, version.split("-")[0]


def _json(*args: str) -> tuple[int, dict[str, Any]]:
    result = CliRunner().invoke(cli, [args[0], "--format", "json", *args[1:]])
    doc: dict[str, Any] = json.loads(result.stdout)
    return result.exit_code, doc


def test_inspect_v8_object_matches_readelf() -> None:
    node, version = _node()
    truth = v8truth(node)
    _, doc = _json("inspect", node, "--runs", "20")
    assert_valid(doc)
    v8 = doc["v8"]
    assert v8["version"] == version and v8["rule"] == "v8-11.3"
    assert (int(v8["builtins_start"], 16), int(v8["builtins_end"], 16)) == (
        truth.start, truth.start + truth.size)
    region = truth.region(X64_RADIUS)
    assert (int(v8["window_start"], 16), int(v8["window_end"], 16)) == (region.start,
                                                                         region.end)
    assert v8["code_range_size"] == 512 * MiB  # kMaximalCodeRangeSize, V8 11.x x64
    far = v8["cases"][0]
    # Heap far: the gap above the bss page, rounded down to 256 KiB, lands on that page.
    assert int(far["hint"], 16) == truth.bss_page_end & ~(V8_PAGE - 1)
    assert int(far["request_end"], 16) == int(far["hint"], 16) + 512 * MiB + V8_PAGE - 4096
    assert far["honoured"] is False and far["near"] is False
    assert far["code_range_start"] is None
    # Heap near: honoured only when the heap's end is 256 KiB-aligned (4 KiB steps).
    assert 0 < v8["near_probability"] <= 4096 / V8_PAGE
    assert v8["verdict"] == "far" and "remapped" in v8["cost"]
    assert v8["remapped_builtins"] is None and v8["code_range_how"] is None
    _, smaller = _json("inspect", node, "--runs", "20", "--code-range", "128M")
    assert smaller["v8"]["code_range_size"] == 128 * MiB
    assert_renames_caught(doc)


def test_inspect_v8_is_null_without_v8() -> None:
    _, doc = _json("inspect", "--runs", "20")  # the bundled LuaJIT sample
    assert doc["v8"] is None


@contextmanager
def _live_node(node: str, *flags: str) -> Iterator[tuple[int, Span, int]]:
    """A node that stays up: its pid, the code range V8 traced and the hint it asked."""
    proc = subprocess.Popen([node, *flags, "--trace-code-range-allocation", "-e",
                             "setTimeout(() => {}, 20000)"], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        line = ""
        while "Fallback" not in line:
            line = proc.stdout.readline()
        found = FALLBACK.search(line)
        assert found is not None
        time.sleep(0.5)
        yield (proc.pid, Span(int(found.group(2), 16), int(found.group(3), 16)),
               _address(found.group(1)))
    finally:
        proc.kill()
        proc.wait()


def _copies(pid: int, node: str, offset: int, blob: int) -> list[tuple[Span, int]]:
    """From /proc/PID/maps: r-x mappings of node's file at the blob's offset, away from
    its image (V8's remapped builtins)."""
    real = os.path.realpath(node)
    out = []
    with open(f"/proc/{pid}/maps") as maps:
        for line in maps:
            m = MAPS_LINE.match(line)
            if (m and m.group(3) == "r-xp" and int(m.group(4), 16) == offset
                    and m.group(5) == real and int(m.group(1), 16) != blob):
                out.append((Span(int(m.group(1), 16), int(m.group(2), 16)), offset))
    return out


def test_maps_v8_object_of_a_live_node() -> None:
    """Short builtin calls on: the code range V8 traced, given back by its remapped
    builtins (or, for the 1-in-64 honoured hint, found as reserved and near)."""
    node, version = _node()
    truth = v8truth(node)
    with _live_node(node) as (pid, code_range, hint):
        code, doc = _json("maps", str(pid), "--runs", "20")
        copies = _copies(pid, node, truth.file_offset, truth.start)
    assert_valid(doc)
    v8 = doc["v8"]
    assert v8["version"] == version and v8["rule"] == "v8-11.3" and v8["cases"] == []
    assert (int(v8["code_range_start"], 16), int(v8["code_range_end"], 16)) == (
        code_range.start, code_range.end)
    if code_range.start == hint:
        assert copies == [] and v8["remapped_builtins"] is None
        assert v8["code_range_how"] == "reservation" and v8["verdict"] == "near"
        return
    assert len(copies) == 1
    remapped = v8["remapped_builtins"]
    assert (Span(int(remapped["start"], 16), int(remapped["end"], 16)),
            remapped["file_offset"]) == copies[0]
    assert v8["code_range_how"] == "remapped builtins" and v8["verdict"] == "far"
    assert code == 1


def test_maps_finds_the_reserved_code_range_without_remap() -> None:
    """--max-old-space-size under 2048: short builtin calls off, no copy of the builtins;
    the code range is found from its reservation in the maps and judged far."""
    node, _ = _node()
    truth = v8truth(node)
    for _ in range(8):
        with _live_node(node, "--max-old-space-size=1024") as (pid, code_range, hint):
            code, doc = _json("maps", str(pid), "--runs", "20")
            copies = _copies(pid, node, truth.file_offset, truth.start)
        if code_range.start != hint:
            break
    else:
        pytest.fail("the hint was honoured in 8 runs")
    assert_valid(doc)
    assert copies == []
    v8 = doc["v8"]
    assert v8["remapped_builtins"] is None and v8["code_range_how"] == "reservation"
    assert (int(v8["code_range_start"], 16), int(v8["code_range_end"], 16)) == (
        code_range.start, code_range.end)
    assert not truth.region(X64_RADIUS).contains(code_range)
    assert v8["verdict"] == "far" and "through a register" in v8["cost"]
    assert code == 1
