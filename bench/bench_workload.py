"""The real-LuaJIT workload in the arm64 guest: N threads vs measured mcode allocation aborts.

For each LuaJIT generation (``luajit-2.1``: Debian's libluajit-5.1.a; ``luajit-2025``:
LuaJIT 2.1 from lupa's sdist) and ASLR on and off, the static non-PIE workload linked at
0x400000 runs in Debian's arm64 kernel under qemu-system (TCG) with the brk heap grown by
64 MiB, ``--runs`` times per N, one guest boot per (generation, ASLR). Each boot starts
with a timing run: what one mmap/munmap at a taken hint costs in the guest. The table
(markdown) is written to ``--out``, with an empty column for the replay's predicted
p5..p95 band of aborts per run, for the issue 11 comparison.

    python3 bench/bench_workload.py [--runs 2] [--out bench/results/calibration-arm64.md]
        [--point luajit-2.1:on:16,64,128 ...] [--retries 3] [--jobs 2]
        [--keep DIR] [--from DIR]

``--jobs 2`` boots two guests at once (each qemu TCG uses one host core). ``--keep DIR``
saves each boot's measurements (one JSON file per point, without the maps) as soon as
that boot ends; ``--from DIR`` writes the table from saved boots instead of booting, so
that a long sweep can be run one point at a time and tabulated once; a ``--point`` given
with ``--from`` may name some of the N of a saved boot (the others then come from another
boot, for example one with more runs).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from layoutkit.core.spans import Span
from layoutkit.errors import ProbeError
from layoutkit.native import workload as wl
from layoutkit.native.toolchain import Runner

ARCH = "aarch64"
HEAP_MIB = 64
MMAP_PAIRS = 2000
# The longest boots first, so that --jobs 2 finishes them together.
DEFAULT_POINTS = ("luajit-2025:on:32,64,128", "luajit-2025:off:4,16,64",
                  "luajit-2.1:on:16,64,128,192", "luajit-2.1:off:4,8,16,64")
OUT = Path(__file__).resolve().parent / "results" / "calibration-arm64.md"
# What the rows after the advice replaced (this file as of commit 8092c7e): the advice as
# it was before its recommendations had to keep every protection (issue 12).
REMEASURED = (
    "The rows with a link other than `default` were re-measured with the advice as "
    "`layoutkit advise` gives it now, which keeps every protection (issue 12): its first "
    "recommendation with `--states 160` on the luajit-2.1 workload, with `--states 32` on "
    "the luajit-2025 one (from 64 states it finds no change that keeps them under a 1% "
    "chance of an abort, exit 1; with 1 or 32 it gives these flags). They replace "
    "rows measured with the earlier advice, `-Wl,-Ttext-segment=0x3e20000 "
    "-Wl,-Tbss=0x7c30000` (luajit-2.1) and `-Wl,-Ttext-segment=0x4010000 "
    "-Wl,-Tbss=0x8020000` (luajit-2025), which GNU ld links into a single RWE PT_LOAD "
    "without GNU_RELRO (`readelf -lW`: PT_LOAD RWE 0x3e20000, RW 0x7c30000; and RWE "
    "0x4010000, RW 0x8020000). What changed: "
    "`-Wl,-z,separate-code` is added, which restores W^X and RELRO; its padding moves the "
    "code, and with it the anchor (lj_vm_exit_handler) and the JIT window, one 64 KiB page "
    "up (0x3e253f8 to 0x3e351b8; 0x401540c to 0x40251cc), and .bss with them. Measured "
    "then, ASLR on, 2 runs each, aborts per run: luajit-2.1 N=192: 0 0, N=256: 112 107; "
    "luajit-2025 N=64: 10 26.")

# Rows re-measured with more runs in a later boot (issue 11, point 6): the point of that
# boot and what the earlier boot measured at the same N (this file as of commit 22fabc6).
RESAMPLED = ("luajit-2025:off:1,2,3",
             "The rows of luajit-2025, link default, ASLR off, at N=1, 2 and 3 were "
             "re-measured in a later boot with more runs each: 8 runs per N could not place "
             "the N from which at least half of the runs abort. They replace that group's "
             "first boot's rows at these N (its N=4 row stays), whose aborts per run were: "
             "N=1: 0 0 0 1 0 1 0 0, N=2: 0 1 0 0 0 0 0 1, N=3: 1 1 1 0 0 0 1 1.")


@dataclass(frozen=True)
class Point:
    generation: wl.Generation
    aslr: wl.Aslr
    threads: tuple[int, ...]
    ldflags: tuple[str, ...] = ()  # added to the link (an advise recommendation)

    @property
    def link(self) -> str:
        """The table's link cell: ``default``, or the added flags."""
        return f"`{' '.join(self.ldflags)}`" if self.ldflags else "default"


@dataclass(frozen=True)
class Group:
    """One guest boot: its points' runs and the mmap cost measured first."""

    point: Point
    runs: dict[int, list[wl.WorkloadRun]]
    cost: wl.MmapCost
    kernel: str
    luajit: str
    source: str
    boot_s: float


def parse_point(text: str) -> Point:
    try:
        generation, aslr, threads, *flags = text.split(":", 3)
        return Point(wl.Generation(generation), wl.Aslr(aslr),
                     tuple(int(n) for n in threads.split(",")),
                     tuple(flags[0].split()) if flags else ())
    except ValueError as e:
        raise SystemExit(f"--point {text}: expected GENERATION:on|off:N,N,...[:LDFLAGS] "
                         f"({e})") from e


def measure(point: Point, runs: int, retries: int) -> Group:
    exe = wl.build_workload(point.generation, ARCH, point.ldflags)
    arglists: list[list[str]] = [["--mmap-bench", str(MMAP_PAIRS)]]
    for n in point.threads:
        arglists += [wl.workload_args(point.generation, n, arch=ARCH, aslr=point.aslr,
                                      heap_mib=HEAP_MIB, retries=retries)] * runs
    start = time.monotonic()
    results, kernel = wl.run_in_guest(exe, arglists, timeout=7200)
    cost = results[0]
    assert isinstance(cost, wl.MmapCost)
    by_n: dict[int, list[wl.WorkloadRun]] = {n: [] for n in point.threads}
    for run in results[1:]:
        assert isinstance(run, wl.WorkloadRun)
        by_n[run.threads].append(run)
    luajit = next(iter(by_n.values()))[0].luajit
    return Group(point, by_n, cost, kernel, luajit, exe.luajit.source,
                 time.monotonic() - start)


def save(group: Group, folder: Path) -> None:
    """One boot's measurements as JSON (the final maps of each N's first run only)."""
    def run(r: wl.WorkloadRun, first: bool) -> dict[str, object]:
        doc = dataclasses.asdict(r)
        doc.update(maps=r.maps if first else "", aslr=r.aslr.value, runner=r.runner.value)
        return doc
    doc = {"point": _spec(group.point), "kernel": group.kernel, "luajit": group.luajit,
           "source": group.source, "boot_s": group.boot_s,
           "cost": dataclasses.asdict(group.cost),
           "runs": {str(n): [run(r, i == 0) for i, r in enumerate(rs)]
                    for n, rs in group.runs.items()}}
    folder.mkdir(parents=True, exist_ok=True)
    name = re.sub(r"[^\w.,=+-]", "_", _spec(group.point))
    (folder / f"{name}.json").write_text(json.dumps(doc))


def load(path: Path) -> Group:
    doc = json.loads(path.read_text())

    def run(d: dict[str, object]) -> wl.WorkloadRun:
        fields = dict(d)
        brk = fields["brk"]
        assert isinstance(brk, dict)
        states = fields["states"]
        assert isinstance(states, list)
        mappings = fields["jit_mappings"]
        assert isinstance(mappings, list)
        fields.update(aslr=wl.Aslr(fields["aslr"]), runner=Runner(fields["runner"]),
                      brk=Span(**brk), jit_mappings=tuple(Span(**m) for m in mappings),
                      states=tuple(wl.StateCounts(**s) for s in states))
        return wl.WorkloadRun(**fields)  # type: ignore[arg-type]

    return Group(parse_point(doc["point"]),
                 {int(n): [run(r) for r in rs] for n, rs in doc["runs"].items()},
                 wl.MmapCost(**doc["cost"]), doc["kernel"], doc["luajit"], doc["source"],
                 doc["boot_s"])


def program_headers(point: Point) -> str:
    """The measured binary's protections as ``readelf -lW`` lists them: each PT_LOAD's
    flags and address, whether one is both writable and executable, GNU_RELRO and
    GNU_STACK. Read from the cached build (the very binary the guest ran)."""
    readelf = shutil.which("readelf")
    if readelf is None:
        raise SystemExit("readelf (binutils) is needed to show the relinked workload's "
                         "program headers")
    exe = wl.build_workload(point.generation, ARCH, point.ldflags).executable
    out = subprocess.run([readelf, "-lW", str(exe)], capture_output=True, text=True,
                         check=True).stdout
    loads, relro, stack = [], "no GNU_RELRO", "no GNU_STACK"
    for line in out.splitlines():
        words = line.split()
        if len(words) < 8 or not words[1].startswith("0x"):
            continue
        # Type Offset VirtAddr PhysAddr FileSiz MemSiz Flg Align; Flg may hold spaces.
        flags = " ".join(words[6:-1])
        if words[0] == "LOAD":
            loads.append((flags, int(words[2], 16)))
        elif words[0] == "GNU_RELRO":
            relro = f"GNU_RELRO {flags} at {int(words[2], 16):#x}+{int(words[5], 16):#x}"
        elif words[0] == "GNU_STACK":
            stack = f"GNU_STACK {flags}"
    wx = [f"{a:#x}" for f, a in loads if "W" in f and "E" in f]
    return (f"`readelf -lW`: PT_LOAD {', '.join(f'{f} {a:#x}' for f, a in loads)} ("
            + (f"W and E at once: {', '.join(wx)}" if wx else "none both W and E: W^X")
            + f"); {relro}; {stack}")


def _mean(values: Sequence[float]) -> str:
    return f"{statistics.fmean(values):.1f}"


def table(groups: Sequence[Group], retries: int, jobs: int) -> list[str]:
    lines = [
        "# Calibration: the real LuaJIT workload in the arm64 guest (issue 11, point 5)",
        "",
        "Static, non-PIE arm64 workload linked at 0x400000 (GNU ld default), N threads each "
        "with its own `lua_State` compiling big traces (one 64 KiB area each, one trace and one "
        "area request per call of a new function) until it holds maxmcode/sizemcode "
        "areas (luajit-2.1: 8, luajit-2025: 32) or has seen more than "
        f"{retries} allocation aborts; brk heap grown by {HEAP_MIB} MiB before the threads "
        "start. Run in Debian's arm64 kernel under qemu-system TCG (one vCPU), as uid 65534.",
        "",
        REMEASURED,
        "",
        *([RESAMPLED[1], ""] if any(_spec(g.point) == RESAMPLED[0] for g in groups) else []),
        "- link: `default` (GNU ld's defaults), or the flags added to the link (the top "
        "recommendation of `layoutkit advise` on the default-linked workload, as it is "
        "given since its recommendations keep every protection (issue 12): with "
        "`-Wl,-z,separate-code`, .bss one 64 KiB page higher; the relinked binary's program "
        "headers are listed with its boot below)",
        "- aborts: LJ_TRERR_MCODEAL trace aborts with room left under maxmcode (no area "
        "found in range), per run: mean / min / max",
        "- per run: the aborts of each run at that N, in run order",
        "- states aborted: states that saw at least one such abort (mean per run)",
        "- areas: mcode areas held at the end (= anonymous r-x bytes in the workload's own "
        "/proc/self/maps / 64 KiB), mean per run",
        "- other aborts: trace aborts for any other reason, mean per run (their messages "
        "are listed under the table)",
        "- mmap calls: LuaJIT's mmap calls (mcode and its allocator), mean per run",
        "- wall: seconds from starting the threads to joining them, in the guest (TCG), mean",
        "- replay p5..p95: the model replay's predicted band of aborts per run and its mean "
        "(bench/bench_calibrate.py), how many measured runs lie inside it, and whether "
        "their mean does",
        "",
    ]
    for g in groups:
        lines.append(f"- {g.point.generation.value}, link {g.point.link}: {g.luajit}, from "
                     f"{g.source}; kernel "
                     f"{g.kernel}; ASLR {g.point.aslr.value}: one mmap at a taken hint "
                     f"{g.cost.mmap_ns / 1000:.0f} us, one munmap "
                     f"{g.cost.munmap_ns / 1000:.0f} us ({g.cost.pairs} pairs, "
                     f"{g.cost.moved} moved); the boot took {g.boot_s:.0f} s"
                     + (f"; {program_headers(g.point)}" if g.point.ldflags else ""))
    lines += ["", "| N | generation | ASLR | link | runs | aborts mean | min | max | per run "
              "| states aborted | areas | other aborts | mmap calls | wall s | replay p5..p95 |",
              "|---:|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    reasons: dict[str, int] = {}
    for g in groups:
        for n, rs in g.runs.items():
            aborts = [r.alloc_aborts for r in rs]
            lines.append(
                f"| {n} | {g.point.generation.value} | {g.point.aslr.value} | "
                f"{g.point.link} | {len(rs)} | "
                f"{_mean(aborts)} | {min(aborts)} | {max(aborts)} | "
                f"{' '.join(str(a) for a in aborts)} | "
                f"{_mean([r.states_aborted for r in rs])} | {_mean([r.areas for r in rs])} | "
                f"{_mean([sum(s.other_aborts for s in r.states) for r in rs])} | "
                f"{_mean([r.mmap_calls for r in rs])} | "
                f"{_mean([r.wall_ns / 1e9 for r in rs])} |  |")
            for r in rs:
                for state in r.states:
                    for part in filter(None, state.other_reasons.split("; ")):
                        why, _, count = part.rpartition(": ")
                        key = f"{g.point.generation.value}, {g.point.link}, N={n}: {why}"
                        reasons[key] = reasons.get(key, 0) + int(count)
    lines += ["", "Other aborts seen (all runs of a point):", ""]
    lines += [f"- {key}: {count}" for key, count in sorted(reasons.items())] or ["- none"]
    # One command per number of runs (a boot runs each of its N that many times).
    by_runs: dict[int, list[Group]] = {}
    for g in groups:
        by_runs.setdefault(len(next(iter(g.runs.values()))), []).append(g)
    lines.append("")
    for runs, some in by_runs.items():
        specs = " ".join(f"--point '{_spec(g.point)}'" if g.point.ldflags
                         else f"--point {_spec(g.point)}" for g in some)
        lines.append(f"Reproduce: `python3 bench/bench_workload.py --runs {runs} --retries "
                     f"{retries} --jobs {jobs} {specs}`")
    lines.append("")
    return lines


def _saved_boot(point: Point, saved: Sequence[Group]) -> Group | None:
    """The saved boot of ``point``: the one measured with exactly its N, else one of the
    same generation, ASLR and link that measured them all, restricted to them (so that
    some N of a boot can be tabulated from it and others from a later boot)."""
    exact = next((g for g in saved if g.point == point), None)
    if exact is not None:
        return exact
    for g in saved:
        if (dataclasses.replace(g.point, threads=point.threads) == point
                and set(point.threads) <= set(g.runs)):
            return dataclasses.replace(g, point=point,
                                       runs={n: g.runs[n] for n in point.threads})
    return None


def _spec(point: Point) -> str:
    flags = f":{' '.join(point.ldflags)}" if point.ldflags else ""
    return (f"{point.generation.value}:{point.aslr.value}:"
            + ",".join(str(n) for n in point.threads) + flags)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--retries", type=int, default=3)
    parser.add_argument("--point", action="append", type=parse_point)
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--jobs", type=int, default=1)
    parser.add_argument("--keep", type=Path, help="save each boot's measurements here")
    parser.add_argument("--from", dest="saved", type=Path,
                        help="tabulate the boots saved here (by --keep) instead of booting")
    options = parser.parse_args()
    points = options.point or [parse_point(p) for p in DEFAULT_POINTS]
    if options.saved:
        saved = [load(f) for f in sorted(options.saved.glob("*.json"))]
        found = {p: g for p in points if (g := _saved_boot(p, saved)) is not None}
        missing = [_spec(p) for p in points if p not in found]
        if missing:
            raise SystemExit(f"--from {options.saved}: no saved boot for {', '.join(missing)}")
        groups = [found[p] for p in points]
        text = "\n".join(table(groups, options.retries, options.jobs))
        options.out.write_text(text)
        print(text)
        return 0
    for point in points:  # build (and fetch) once, before any concurrent boot
        wl.build_workload(point.generation, ARCH, point.ldflags)

    def one(point: Point) -> Group | str:
        try:
            group = measure(point, options.runs, options.retries)
        except ProbeError as e:  # keep the other boots' results
            print(f"{_spec(point)}: {e}", file=sys.stderr, flush=True)
            return f"{_spec(point)}: {e}"
        if options.keep:
            save(group, options.keep)
        for n, rs in group.runs.items():
            print(f"{_spec(point).rsplit(':', 1)[0]} N={n}: aborts "
                  f"{[r.alloc_aborts for r in rs]}, areas {[r.areas for r in rs]}, "
                  f"wall {[round(r.wall_ns / 1e9, 1) for r in rs]} s", flush=True)
        return group

    with ThreadPoolExecutor(max_workers=options.jobs) as pool:
        done = list(pool.map(one, points))
    groups = [g for g in done if isinstance(g, Group)]
    failed = [g for g in done if isinstance(g, str)]
    lines = table(groups, options.retries, options.jobs)
    lines += [f"Failed: {f}" for f in failed]
    text = "\n".join(lines)
    options.out.parent.mkdir(parents=True, exist_ok=True)
    options.out.write_text(text)
    print(text)
    return 4 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
