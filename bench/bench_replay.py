"""The allocator replay's speed: 1000 runs of 500 states on the arm64 window, per generation.

Replays the bundled sample (an AArch64 non-PIE executable at 0x400000 with
lj_vm_exit_handler) with ASLR on and the default heap, prints wall and CPU seconds per
replay, the rate in area requests per second, and the statistics, so that a change that
speeds it up can be seen not to change them. Target (issue 11, point 7): under 2 s for
luajit-2.1 on this machine. ``--drawn`` turns the closed-form shortcut off (every hint
drawn and looked up): the statistics must agree, only the time differs.

    python3 bench/bench_replay.py [--runs 1000] [--states 500] [--repeat 3] [--drawn]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from layoutkit.core.spans import Span
from layoutkit.elf import ElfReader
from layoutkit.window.anchor import find_anchor
from layoutkit.window.kernel import KernelConfig
from layoutkit.window.profiles import window_for_span
from layoutkit.window.replay import ReplayParams, simulate

SAMPLE = Path(__file__).resolve().parent.parent / "layoutkit" / "samples" / "aarch64-nopie"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=1000)
    ap.add_argument("--states", type=int, default=500)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--drawn", action="store_true", help="draw every hint (no shortcut)")
    ap.add_argument("--profiles", default="luajit-2.1,luajit-2025")
    args = ap.parse_args()
    with ElfReader(SAMPLE) as reader:
        image = reader.image()
        anchor = find_anchor(reader)
    kernel = KernelConfig.for_arch(image.arch)
    bias, _ = kernel.nominal_bias(image)
    runtime = Span(anchor.span.start + bias, anchor.span.end + bias)
    params = ReplayParams(states=args.states, runs=args.runs, closed_form=not args.drawn)
    print(f"{SAMPLE.name}: {args.runs} runs x {args.states} states, ASLR on, seed "
          f"{params.seed}, retries {params.retries}")
    for name in args.profiles.split(","):
        jit = window_for_span(name, image.arch, runtime, kernel.user_space)
        walls, cpus = [], []
        for _ in range(args.repeat):
            wall, cpu = time.perf_counter(), time.process_time()
            out = simulate(image, kernel, jit, bias, params)
            walls.append(time.perf_counter() - wall)
            cpus.append(time.process_time() - cpu)
        requests = int(out.placed.sum() + out.aborts.sum())
        best = min(walls)
        verdict = "ok" if best < 2.0 else "over the 2 s target"
        print(f"  {name:12s} best {best:.2f} s wall ({min(cpus):.2f} s CPU) of "
              f"{args.repeat}: {requests / best / 1e6:.2f} M area requests/s "
              f"({requests} requests): {verdict}")
        aborts = out.aborts.sum(axis=1)
        print(f"  {'':12s} p_abort {float((aborts > 0).mean()):.3f}, aborts/run mean "
              f"{float(aborts.mean()):.1f}, calls/area "
              f"{float((out.syscalls / out.placed.clip(1)).mean()):.2f}, far areas/run "
              f"{float(out.far.mean()):.1f}")


if __name__ == "__main__":
    main()
