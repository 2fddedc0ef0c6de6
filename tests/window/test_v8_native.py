"""The v8 profile against the real runtime: this machine's Node 20 (npm's non-PIE x86-64
build, V8 11.3), run with ``--trace-code-range-allocation``; ground truths are readelf,
objdump, V8's own trace and the process's /proc/PID/maps."""

from __future__ import annotations

import json
import subprocess
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from layoutkit.commands.advise import advise
from layoutkit.commands.check import Settings, check_paths
from layoutkit.commands.inspect import inspect_binary
from layoutkit.commands.maps import analyse_target
from layoutkit.core.arches import by_name
from layoutkit.core.kinds import CheckFailure, CodeRangeVerdict, Status
from layoutkit.core.scenario import Scenario
from layoutkit.core.spans import Span
from layoutkit.elf import ElfReader
from layoutkit.output.checkreport import render
from layoutkit.window.v8 import (
    RULES,
    CodeRangePlacement,
    builtins_copy,
    detect_v8,
    place_code_range,
    preferred_region,
)
from tests.support import require
from tests.window.v8_truth import FALLBACK, Run, Truth, page_up, run_node
from tests.window.v8_truth import address as _address
from tests.window.v8_truth import truth as v8truth

pytestmark = pytest.mark.toolchain

V11 = RULES[1]  # V8 11.3: Node 20

MiB = 1 << 20
X64 = by_name("x86_64")
X64_RADIUS = 2048 * MiB  # kMaxPCRelativeCodeRangeInMB (src/codegen/x64/constants-x64.h)


def _node() -> str:
    node = require("node")
    version = subprocess.run([node, "-p", "process.versions.v8"], capture_output=True,
                             text=True, check=True).stdout.strip()
    if not version.startswith("11.3."):
        pytest.skip(f"{node} has V8 {version}; these tests check V8 11.3 (Node 20)")
    return node


def _run(node: str, *flags: str, env: dict[str, str] | None = None) -> Run:
    return run_node([node], *flags, env=env)


def test_detection_matches_readelf_and_node() -> None:
    node = _node()
    truth = v8truth(node)
    version = subprocess.run([node, "-p", "process.versions.v8"], capture_output=True,
                             text=True, check=True).stdout.strip()
    with ElfReader(node) as reader:
        build = detect_v8(reader)
    assert build is not None and build.blob is not None
    assert build.blob == Span(truth.start, truth.start + truth.size)
    assert build.version == version.split("-")[0]
    assert build.rule is V11


def _predict(run: Run, truth: Truth, size: int = 512 * MiB) -> CodeRangePlacement:
    """layoutkit's placement on the run's own maps (less the code range V8 then made)."""
    return place_code_range([span for span, *_ in run.maps
                             if not span.overlaps(run.code_range)],
                            truth.region(X64_RADIUS), size, V11)


def test_hint_and_placement_match_the_trace() -> None:
    """Heap far: the hint is the bss end rounded down to 256 KiB, exactly, and refused;
    heap near: the heap's end (as V8 saw it, at most today's) rounded down, refused
    unless that end was 256 KiB-aligned. Refused: the builtins are remapped where
    builtins_copy says."""
    node = _node()
    truth = v8truth(node)
    seen_far = False
    for _ in range(8):
        run = _run(node)
        placed = _predict(run, truth)
        assert run.preferred == preferred_region(X64, Span(truth.start, truth.start + truth.size))
        honoured = run.code_range.start == run.hint
        if run.heap.start >= truth.bss_page_end + 512 * MiB:
            seen_far = True
            assert run.hint == placed.hint == truth.bss_page_end & ~(256 * 1024 - 1)
            assert not placed.honoured and not honoured
        else:
            # The heap has grown since V8 read the maps: its end then was at most today's.
            assert run.heap.start & ~0x3FFFF <= run.hint <= placed.hint
        if honoured:  # the 1-in-64 case: the heap's end was 256 KiB-aligned then
            assert truth.region(X64_RADIUS).contains(run.code_range)
            assert truth.copies(run) == []
        else:
            assert not truth.region(X64_RADIUS).contains(run.code_range)
            copy = builtins_copy(X64, run.code_range, truth.size)
            assert truth.copies(run) == [copy]
    assert seen_far, "no run with the heap far above the bss in 8 runs"


def test_max_old_space_size_moves_nothing_but_the_remap() -> None:
    """--max-old-space-size under 2048: the same refused hint, the same far code range,
    but no remapped builtins (short builtin calls off)."""
    node = _node()
    truth = v8truth(node)
    bss_hint = truth.bss_page_end & ~(256 * 1024 - 1)
    for flags, remapped in (((), True), (("--max-old-space-size=1024",), False),
                            (("--max-old-space-size=4096",), True)):
        for _ in range(8):
            run = _run(node, *flags)
            if run.hint == bss_hint:
                break
        else:
            pytest.fail(f"{flags}: no run with the heap far above the bss in 8 runs")
        assert not truth.region(X64_RADIUS).contains(run.code_range)
        assert bool(truth.copies(run)) is remapped


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
    truth = v8truth(node)
    lo = truth.bss_page_end
    hi = page_up(lo, 256 * 1024)
    env = {"LD_PRELOAD": str(fill_so), "FILL_SPAN": f"{lo:x}-{hi:x}"}
    seen_far = False
    for _ in range(10):
        run = _run(node, env=env)
        placed = _predict(run, truth)
        honoured = run.code_range.start == run.hint
        if run.heap.start >= hi + 512 * MiB:  # the gap above the padding holds the range
            assert run.hint == placed.hint == hi
            fits = run.heap.start >= hi + 512 * MiB + 256 * 1024 - 4096
            assert placed.honoured is fits is honoured
        if honoured and run.hint == hi:
            seen_far = True
            assert run.code_range == placed.placed == Span(hi, hi + 512 * MiB)
            assert placed.near and truth.region(X64_RADIUS).contains(run.code_range)
            assert truth.copies(run) == []
            break
        # Heap near: refused unless its end was 256 KiB-aligned when V8 looked.
        assert truth.copies(run) == ([] if honoured else
                                     [builtins_copy(X64, run.code_range, truth.size)])
    assert seen_far, "no run with the heap far above the bss in 10 runs"


def test_inspect_predicts_the_far_heap_hint() -> None:
    node = _node()
    truth = v8truth(node)
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
    assert result.v8 is not None
    if int(found.group(2), 16) == _address(found.group(1)):
        # The rare honoured hint (a heap whose end was 256 KiB-aligned): no remap; the
        # range is found as reserved, within the window.
        assert result.v8.copy is None
        assert result.v8.code_range == Span(int(found.group(2), 16), int(found.group(3), 16))
        assert result.v8.verdict is CodeRangeVerdict.NEAR
    else:
        assert result.v8.code_range == Span(int(found.group(2), 16), int(found.group(3), 16))
        assert any(f"code range [{found.group(2)}, {found.group(3)})" in note
                   for note in result.notes)
        assert result.exit_code == 1  # builtins remapped: a finding


def test_check_fails_node20_by_v8s_rule() -> None:
    """check: the accounting alone finds room (two 512 MiB areas fit), V8's own rule
    does not (the hint is refused in the worst case): V8's own failure kind, reported
    under V8's SARIF rule and as the JUnit failure's type."""
    node = _node()
    truth = v8truth(node)
    summary = check_paths([node], Settings(), jobs=1)
    (result,) = summary.results
    assert result.status is Status.FAIL and result.failures == (CheckFailure.V8_CODE_RANGE,)
    assert result.profile == "v8" and result.evidence is not None
    assert f"hint {truth.bss_page_end & ~(256 * 1024 - 1):#x}" in result.reason
    sarif = json.loads(render(summary, Settings(), "sarif"))
    (found,) = sarif["runs"][0]["results"]
    rules = sarif["runs"][0]["tool"]["driver"]["rules"]
    assert rules[found["ruleIndex"]]["id"] == found["ruleId"] == "LK002"
    assert found["properties"]["failures"] == ["v8_code_range"]
    junit = ET.fromstring(render(summary, Settings(), "junit"))
    (failure,) = junit.iter("failure")
    assert failure.get("type") == "v8_code_range"


def test_advise_names_v8s_own_rule() -> None:
    """advise's first recommendation is V8's rule's: -Tbss so that .bss (readelf's size)
    ends the image on the next 256 KiB boundary after its last page (readelf's last
    PT_LOAD); the hint it gives is the one test_padding_the_bss_to_256k_gets_the_code_
    range_near sees honoured by the real node."""
    node = _node()
    truth = v8truth(node)
    result = advise(node)
    notes = result.notes
    padded = page_up(truth.bss_page_end, 256 * 1024)
    first = result.recommendations[0]
    (flag,) = first.flags
    assert flag.startswith("-Wl,-Tbss=")
    sections = subprocess.run(["readelf", "-SW", node], capture_output=True, text=True,
                              check=True).stdout
    bss_size = next(int(line.split()[5], 16) for line in sections.splitlines()
                    if " .bss " in line)
    at = int(flag.removeprefix("-Wl,-Tbss="), 16)
    assert page_up(at + bss_size, 4096) == padded
    refused = truth.bss_page_end & ~(256 * 1024 - 1)
    assert f"the hint {refused:#x} lands on the image's last page and is refused" in \
        first.reasons[0]
    assert f"the hint {padded:#x} is honoured whenever the brk heap is far" in \
        first.reasons[1]
    assert not any("v8: advice:" in n for n in notes)  # a recommendation, not a note
    assert any("max-old-space-size does not move the code range" in n for n in notes)
