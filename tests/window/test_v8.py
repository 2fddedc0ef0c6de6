"""The v8 profile's rules on explicit layouts. The x86-64 numbers are those of a real run
of this machine's Node 20.20.2 (npm's non-PIE build, V8 11.3.244.8): its image ends at
0x5689000 (readelf -lW: last PT_LOAD 0x563aec8 + 0x4dfc8), its embedded builtins are
[0x18c4000, +0x191ac0) (readelf -sW, objdump of v8_Default_embedded_blob_code_size_);
with the brk heap at 0x3fca6000, ``--trace-code-range-allocation`` printed
``Fallback attempt, hint=0x5680000: [0x7fb51b7c0000, 0x7fb53b7c0000)`` and its maps held
the remapped builtins at 7fb53b600000-7fb53b792000 (file offset 0x14c4000).
tests/window/test_v8_native.py checks the same against fresh runs."""

from __future__ import annotations

import pytest

from layoutkit.core.arches import by_name
from layoutkit.core.spans import Span
from layoutkit.errors import UsageError
from layoutkit.window.profiles import PROFILES, window_for_span
from layoutkit.window.v8 import (
    NEWEST,
    RULES,
    V8,
    V8_PAGE,
    builtins_copy,
    free_ranges_within,
    place_code_range,
    rule_for,
    short_call_region,
)

MiB = 1 << 20
GiB = 1 << 30
X64 = by_name("x86_64")
ARM64 = by_name("aarch64")
BLOB = Span(0x18C4000, 0x18C4000 + 0x191AC0)
IMAGE = [Span(0x400000, 0xB71000), Span(0xB72000, 0x25FE000), Span(0x2600000, 0x5689000)]
HEAP_FAR = Span(0x3FCA6000, 0x3FF69000)
ABOVE = Span(0x7FB53C021000, 0x7FB540000000)  # a mapping of the mmap area
V10, V11, V13 = RULES


def test_rule_by_version() -> None:
    assert rule_for((10, 2)) is V10
    assert rule_for((11, 2)) is V10
    assert rule_for((11, 3)) is V11
    assert rule_for((12, 4)) is V11
    assert rule_for((13, 6)) is V13
    assert rule_for(None) is NEWEST is V13
    assert V13.near_isas == frozenset()
    assert V11.code_range(X64) == 512 * MiB and V10.code_range(X64) == 128 * MiB
    assert PROFILES["v8"] is V8


def test_short_call_region_of_node20() -> None:
    # The trace's "Preferred region: [(nil), 0x818c0000)" is this rounded down to 256 KiB.
    region = short_call_region(X64, BLOB)
    assert region == Span(0, 0x818C4000)
    assert region.end & ~(V8_PAGE - 1) == 0x818C0000
    jit = window_for_span(V8, X64, BLOB, Span(0x10000, 0x7FFFFFFFF000))
    assert jit.window == Span(0x10000, 0x818C4000)
    assert jit.profile.sizemcode == 512 * MiB


def test_node20_far_heap_hint_is_refused_by_the_bss_page() -> None:
    placed = place_code_range([*IMAGE, HEAP_FAR, ABOVE], short_call_region(X64, BLOB),
                              512 * MiB, V11)
    assert placed.gap == Span(0x5689000, 0x3FCA6000)
    assert placed.hint == 0x5680000
    assert placed.request == Span(0x5680000, 0x5680000 + 512 * MiB + 252 * 1024)
    assert placed.blocker == IMAGE[-1]  # the page holding the end of .bss
    assert not placed.honoured and not placed.near


def test_v8_10_2_takes_the_gap_as_it_is() -> None:
    placed = place_code_range([*IMAGE, HEAP_FAR, ABOVE], short_call_region(X64, BLOB),
                              128 * MiB, V10)
    assert placed.hint == 0x5689000 and placed.honoured and placed.near
    assert placed.placed == Span(0x5689000, 0x5689000 + 128 * MiB)


def test_near_heap_hint_lands_on_the_heap() -> None:
    heap = Span(0x997A000, 0x9B81000)  # a heap 0x7000 short of a 256 KiB boundary
    placed = place_code_range([*IMAGE, heap, ABOVE], short_call_region(X64, BLOB),
                              512 * MiB, V11)
    assert placed.gap is not None and placed.gap.start == 0x9B81000
    assert placed.hint == 0x9B80000 and placed.blocker == heap


def test_last_gap_is_not_visited() -> None:
    # OS::GetFreeMemoryRangesWithin reads maps lines: only gaps below a mapping count.
    assert free_ranges_within(IMAGE, Span(0, 4 * GiB), 512 * MiB) == []
    assert free_ranges_within([*IMAGE, Span(3 * GiB, 3 * GiB + 4096)], Span(0, 4 * GiB),
                              512 * MiB) == [Span(0x5689000, 3 * GiB)]


@pytest.mark.parametrize(("shift", "near"), [(0, False), (0x3000, False), (0x16000, True)])
def test_pie_hint_sticks_out_below_the_window(shift: int, near: bool) -> None:
    """A PIE under V8 11.3: the first gap starts at the window's start, which the
    rounding moves below the window unless it is (within a page of) 256 KiB-aligned."""
    bias = 0x555555554000 + shift
    blob = BLOB.shifted(bias)
    image = [s.shifted(bias) for s in IMAGE]
    region = short_call_region(X64, blob)
    placed = place_code_range([*image, Span(0x7FFFF7FF0000, 0x7FFFF8000000)], region,
                              512 * MiB, V11)
    assert placed.honoured
    assert placed.near is near
    assert placed.hint == (-(-region.start // 4096) * 4096) & ~(V8_PAGE - 1)


def test_builtins_copy_of_the_run() -> None:
    code_range = Span(0x7FB51B7C0000, 0x7FB53B7C0000)
    assert builtins_copy(X64, code_range, 0x191AC0) == Span(0x7FB53B600000, 0x7FB53B792000)


def test_arm64_code_range_never_fits_the_window() -> None:
    """arm64: 128 MiB each way (kMaxPCRelativeCodeRangeInMB) around the blob, a 256 MiB
    code range (V8 11.3 without pointer compression): never within reach, always remapped
    (when short builtin calls are on)."""
    blob = Span(0x1800000, 0x1990000)
    region = short_call_region(ARM64, blob)
    assert region == Span(0, 0x1800000 + 128 * MiB)
    placed = place_code_range([Span(0x400000, 0x5000000), Span(1 << 40, (1 << 40) + 4096)],
                              region, V11.code_range(ARM64), V11)
    assert placed.gap is None and not placed.near
    assert builtins_copy(ARM64, Span(1 << 39, (1 << 39) + 256 * MiB), 0x190000).start == \
        (1 << 39) + 128 * MiB - 0x1C0000  # RoundUp(0x190000, 256 KiB)


def test_code_range_option() -> None:
    assert V8.with_code_range(128 * MiB).window(X64, BLOB.start, Span(0, 1 << 47)) \
        .profile.sizemcode == 128 * MiB
    with pytest.raises(UsageError, match="kMinimumCodeRangeSize"):
        V8.with_code_range(MiB)
    with pytest.raises(UsageError, match="--code-range applies to --jit v8"):
        PROFILES["luajit-2.1"].with_code_range(128 * MiB)
    with pytest.raises(UsageError, match="x86-64 and arm64"):
        V8.window(by_name("riscv64"), 0x10000, Span(0, 1 << 38))
