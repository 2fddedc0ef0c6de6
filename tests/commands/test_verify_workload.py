"""``layoutkit verify --workload luajit``: the real LuaJIT against the replay's band.

One native x86-64 point (issue 11, point 5: keep it short): LuaJIT 2.1 with 2 states in
the static non-PIE workload at 0x400000. Its window, +-1022 MiB around lj_vm_exit_handler,
holds 32,000 slots and the brk heap takes 1,024 of them at most, so both states get their
maxmcode / sizemcode = 512 KiB / 64 KiB = 8 areas (LuaJIT's JIT_P_maxmcode and
JIT_P_sizemcode defaults, src/lj_jit.h) without an abort; the workload's own maps say the
same (tests/native/test_workload.py checks its counts against them).
"""

from __future__ import annotations

import json
import platform
import random

import numpy as np
import pytest
from click.testing import CliRunner

from layoutkit.cli import cli
from layoutkit.commands.verify_workload import Band, Figure
from tests.support import require


def _run(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(cli, ["verify", *args])
    return result.exit_code, result.stdout, result.stderr


@pytest.mark.toolchain
@pytest.mark.skipif(platform.machine() != "x86_64", reason="x86-64 host only")
def test_native_point_inside_the_band() -> None:
    for tool in ("gcc", "make", "apt-get", "dpkg-deb"):
        require(tool)
    code, out, _ = _run("--workload", "luajit", "--states", "2", "--replay-runs", "100",
                        "--format", "json")
    doc = json.loads(out)
    print(json.dumps(doc["bands"], indent=1))
    assert (doc["profile"], doc["luajit"], doc["runner"]) == (
        "luajit-2.1", "LuaJIT 2.1.0-beta3", "native")
    bands = {b["figure"]: b for b in doc["bands"]}
    assert bands["aborts"]["measured"] == 0
    assert bands["areas held"]["measured"] == 2 * 8
    # The replay of an empty window: no abort in any run, every area held.
    assert (bands["aborts"]["p5"], bands["aborts"]["p95"]) == (0, 0)
    assert (bands["areas held"]["p5"], bands["areas held"]["p95"]) == (16, 16)
    # Each area is one mmap at least; a miss adds one.
    assert bands["area mmap calls"]["measured"] >= 16 and bands["area mmap calls"]["p5"] >= 16
    assert doc["verdict"] == ("ok" if all(b["inside"] for b in doc["bands"]) else "outside")
    assert code == (0 if doc["verdict"] == "ok" else 1)


@pytest.mark.parametrize(("args", "message"), [
    (("--workload", "luajit", "--jit", "luajit-2017"),
     "--jit luajit-2017: the workload embeds luajit-2.1, luajit-2025"),
    (("--workload", "luajit", "--runner", "qemu-user"),
     "--runner qemu-user: the workload runs natively or in the qemu-system guest"),
    (("--workload", "luajit", "--mcode", "128K"),
     "--mcode: the workload asks for the profile's maxmcode"),
    (("some-binary", "--workload", "luajit"),
     "--workload luajit runs its own binary: leave out some-binary"),
    ((), "verify needs a BINARY, or --workload luajit"),
])
def test_usage_errors_are_one_line(args: tuple[str, ...], message: str) -> None:
    code, out, err = _run(*args)
    assert (code, out, err) == (2, "", f"layoutkit: {message}\n")


def test_band_percentiles_are_numpys() -> None:
    rng = random.Random(7)
    values = [float(rng.randrange(40)) for _ in range(301)]
    band = Band.of(Figure.ABORTS, 3, values)
    p5, p50, p95 = np.percentile(values, [5, 50, 95])
    assert (band.p5, band.p50, band.p95) == pytest.approx((p5, p50, p95))
    assert band.mean == pytest.approx(float(np.mean(values)))
    assert band.inside == (p5 <= 3 <= p95)
