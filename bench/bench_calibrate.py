"""The replay against the real LuaJIT: predicted band vs measured aborts, per row.

Reads the measured rows of ``bench/results/calibration-arm64.md`` (written by
``bench/bench_workload.py``: the real workload in Debian's arm64 kernel), replays the same
scenario with layoutkit's model (``layoutkit.window.replay``) on the very workload binary
that was measured (static, non-PIE at 0x400000, from the same LuaJIT build), and fills
the table's replay column with the predicted p5..p95 band of aborts per run and whether
the measured mean lies in it. Prints the comparison and the agreement (issue 11, point 6:
measured inside the band in at least 80% of the rows; the N where aborts start within 15%).

    python3 bench/bench_calibrate.py [--runs 300] [--seed 1] [--table PATH] [--dry-run]

The scenario is the workload's: brk heap grown 64 MiB before the threads start, each state
asking again ``--retries`` times after an abort (the workload's default, 3), one vCPU
(glibc's arena cap), the guest kernel's release (arm64: brk randomised over 1 GiB).
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

from layoutkit.core.arches import by_name
from layoutkit.elf import ElfReader
from layoutkit.native import workload as wl
from layoutkit.window.anchor import find_anchor
from layoutkit.window.kernel import KernelConfig
from layoutkit.window.profiles import window_for_span
from layoutkit.window.replay import ReplayParams, ReplayResult, replay
from layoutkit.window.replay_model import HeapTiming

TABLE = Path(__file__).resolve().parent / "results" / "calibration-arm64.md"
ARCH = "aarch64"
HEAP = 64 << 20
RETRIES = 3  # bench_workload.py's default: aborts tolerated per state before it stops
CORES = 1  # the guest has one vCPU
GUEST_MMAP_MIN_ADDR = 4096  # read in the guest (tests/native/test_qemu_system.py)
ROW = re.compile(r"^\| (?P<n>\d+) \| (?P<gen>luajit-[0-9.]+) \| (?P<aslr>on|off) \| "
                 r"(?P<runs>\d+) \| (?P<mean>[0-9.]+) \| (?P<min>\d+) \| (?P<max>\d+) \|")
KERNEL = re.compile(r"kernel (?P<release>[0-9][^;]*);")


@dataclass(frozen=True)
class Row:
    line: int  # index in the table's lines
    states: int
    profile: str
    aslr: bool
    mean: float
    low: int
    high: int


def rows(lines: list[str]) -> list[Row]:
    found = []
    for i, line in enumerate(lines):
        m = ROW.match(line)
        if m:
            found.append(Row(i, int(m["n"]), m["gen"], m["aslr"] == "on", float(m["mean"]),
                             int(m["min"]), int(m["max"])))
    return found


def predict(row: Row, release: str | None, runs: int, seed: int) -> ReplayResult:
    workload = wl.build_workload(row.profile, ARCH)  # cached: the binary that was measured
    with ElfReader(workload.executable) as reader:
        image = reader.image()
        anchor = find_anchor(reader)
    kernel = replace(KernelConfig.for_arch(by_name(ARCH), mmap_min_addr=GUEST_MMAP_MIN_ADDR),
                     release=release, source="the arm64 guest's kernel")
    jit = window_for_span(row.profile, image.arch, anchor.span, kernel.user_space)
    params = ReplayParams(states=row.states, heap=HEAP, heap_timing=HeapTiming.BEFORE,
                          runs=runs, seed=seed, retries=RETRIES, aslr=row.aslr, cores=CORES)
    return replay(image, kernel, jit, 0, params, search=False)


def onset(points: list[tuple[int, float]]) -> int | None:
    """The smallest N whose mean aborts per run is at least 1."""
    return min((n for n, mean in points if mean >= 1), default=None)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=300)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--table", type=Path, default=TABLE)
    parser.add_argument("--dry-run", action="store_true", help="print, do not rewrite")
    args = parser.parse_args()
    lines = args.table.read_text().splitlines()
    kernel = next((m["release"] for line in lines if (m := KERNEL.search(line))), None)
    measured = rows(lines)
    if not measured:
        print(f"{args.table}: no measured rows", file=sys.stderr)
        return 2
    inside = 0
    groups: dict[tuple[str, bool], list[tuple[int, float, float]]] = {}
    print(f"{'N':>4} {'generation':12} {'ASLR':4} {'measured mean (min-max)':>24} "
          f"{'replay p5..p95 (mean)':>24}  in band  seconds")
    for row in measured:
        start = time.perf_counter()
        res = predict(row, kernel, args.runs, args.seed)
        took = time.perf_counter() - start
        ok = res.aborts.p5 <= row.mean <= res.aborts.p95
        inside += ok
        groups.setdefault((row.profile, row.aslr), []).append(
            (row.states, row.mean, res.aborts.mean))
        band = f"{res.aborts.p5:.0f}..{res.aborts.p95:.0f} ({res.aborts.mean:.1f})"
        print(f"{row.states:>4} {row.profile:12} {'on' if row.aslr else 'off':4} "
              f"{f'{row.mean:.1f} ({row.low}-{row.high})':>24} {band:>24}  "
              f"{'yes' if ok else 'NO':7}  {took:.1f}")
        cells = lines[row.line].rstrip().rstrip("|").rstrip().split("|")
        cells[-1] = f" {band}, {'in' if ok else 'out'} "
        lines[row.line] = "|".join(cells) + "|"
    share = inside / len(measured)
    summary = [f"Replay (layoutkit.window.replay, {args.runs} runs, seed {args.seed}, retries "
               f"{RETRIES}, heap {HEAP >> 20} MiB before the threads, {CORES} vCPU): measured "
               f"mean inside the predicted p5..p95 band in {inside} of {len(measured)} rows "
               f"({share:.0%}; issue 11 asks 80%)."]
    for (profile, aslr), points in sorted(groups.items()):
        real = onset([(n, m) for n, m, _ in points])
        model = onset([(n, p) for n, _, p in points])
        summary.append(f"- {profile}, ASLR {'on' if aslr else 'off'}: aborts start at "
                       f"N={real} measured, N={model} replayed (of the N measured)")
    print("\n".join(summary))
    if not args.dry_run:
        marker = "Replay (layoutkit.window.replay"
        lines = [line for line in lines if not line.startswith(marker)
                 and not (line.startswith("- luajit-") and "aborts start at" in line)]
        at = next(i for i, line in enumerate(lines) if line.startswith("Other aborts seen"))
        lines[at:at] = [*summary, ""]
        args.table.write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
