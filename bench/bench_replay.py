"""The allocator replay's speed: 1000 runs of 500 states on the arm64 window, per generation.

Replays the bundled sample (an AArch64 non-PIE executable at 0x400000 with
lj_vm_exit_handler) with ASLR on and the default heap, with the compiled engine
(layoutkit/window/_replay.c, the default) and, in the same run, with the numpy engine it
replaced (layoutkit/window/replay_engine.py, the reference). Prints per engine the best
wall and CPU seconds of ``--repeat`` replays, the rate in area requests per second, the
speed-up, and the statistics side by side with the difference in standard errors, so
that a faster replay can be seen not to change them. Target (issue 11, point 7): under
2 s for each generation on this machine. On a shared machine read the CPU seconds.

``--drawn`` makes the numpy reference draw every hint (no closed-form shortcut for
luajit-2.1); ``--reference-runs`` shrinks the reference (the 2025 allocator takes it
about 40 s at full size); ``--reference-runs 0`` skips it.

    python3 bench/bench_replay.py [--runs 1000] [--states 500] [--repeat 3] [--drawn]
        [--reference-runs N] [--profiles luajit-2.1,luajit-2017,luajit-2025]
"""

from __future__ import annotations

import argparse
import math
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from layoutkit.core.model import ElfImage
from layoutkit.core.spans import Span
from layoutkit.elf import ElfReader
from layoutkit.window.anchor import find_anchor
from layoutkit.window.kernel import KernelConfig
from layoutkit.window.profiles import JitWindow, window_for_span
from layoutkit.window.replay import (
    EngineKind,
    Outcome,
    ReplayParams,
    engine_kind,
    simulate,
)

SAMPLE = Path(__file__).resolve().parent.parent / "layoutkit" / "samples" / "aarch64-nopie"
TARGET = 2.0


def timed(image: ElfImage, kernel: KernelConfig, jit: JitWindow, bias: int,
          params: ReplayParams, repeat: int) -> tuple[float, float, Outcome]:
    """Best wall and CPU seconds of ``repeat`` replays, and the outcome."""
    walls, cpus = [], []
    for _ in range(repeat):
        wall, cpu = time.perf_counter(), time.process_time()
        out = simulate(image, kernel, jit, bias, params)
        walls.append(time.perf_counter() - wall)
        cpus.append(time.process_time() - cpu)
    return min(walls), min(cpus), out


def stats(out: Outcome) -> dict[str, np.ndarray]:
    aborts = out.aborts.sum(axis=1)
    return {"p_abort": (aborts > 0).astype(np.float64), "aborts/run": aborts,
            "states aborted": (out.aborts > 0).sum(axis=1),
            "calls/area": out.syscalls / out.placed.clip(1), "areas placed": out.placed,
            "far areas": out.far}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=1000)
    ap.add_argument("--states", type=int, default=500)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--drawn", action="store_true",
                    help="the numpy reference draws every hint (no shortcut)")
    ap.add_argument("--reference-runs", type=int, default=None,
                    help="runs of the numpy reference (default --runs; 0: none)")
    ap.add_argument("--profiles", default="luajit-2.1,luajit-2017,luajit-2025")
    args = ap.parse_args()
    with ElfReader(SAMPLE) as reader:
        image = reader.image()
        anchor = find_anchor(reader)
    kernel = KernelConfig.for_arch(image.arch)
    bias, _ = kernel.nominal_bias(image)
    runtime = Span(anchor.span.start + bias, anchor.span.end + bias)
    params = ReplayParams(states=args.states, runs=args.runs)
    ref_runs = args.runs if args.reference_runs is None else args.reference_runs
    ref_params = replace(params, runs=max(1, ref_runs), engine=EngineKind.NUMPY,
                         closed_form=not args.drawn)
    print(f"{SAMPLE.name}: {args.runs} runs x {args.states} states, ASLR on, seed "
          f"{params.seed}, retries {params.retries}; engine {engine_kind(params).value}, "
          f"reference numpy{' (every hint drawn)' if args.drawn else ''} on "
          f"{ref_runs} runs")
    for name in args.profiles.split(","):
        jit = window_for_span(name, image.arch, runtime, kernel.user_space)
        wall, cpu, out = timed(image, kernel, jit, bias, params, args.repeat)
        requests = int(out.placed.sum() + out.aborts.sum())
        verdict = "ok" if cpu < TARGET else f"over the {TARGET:.0f} s target"
        print(f"  {name}: {engine_kind(params).value} best of {args.repeat}: {wall:.2f} s "
              f"wall, {cpu:.2f} s CPU, {requests / cpu / 1e6:.2f} M area requests per CPU "
              f"second ({requests} requests): {verdict}")
        new = stats(out)
        if ref_runs:
            rwall, rcpu, ref = timed(image, kernel, jit, bias, ref_params, 1)
            rreq = int(ref.placed.sum() + ref.aborts.sum())
            print(f"  {'':{len(name)}s}  numpy: {rwall:.2f} s wall, {rcpu:.2f} s CPU, "
                  f"{rreq / rcpu / 1e6:.2f} M area requests per CPU second; the compiled "
                  f"engine is {(requests / cpu) / (rreq / rcpu):.1f}x faster")
            old = stats(ref)
        print(f"    {'statistic':16s} {'compiled':>10s}" +
              (f" {'numpy':>10s} {'diff/se':>8s}" if ref_runs else ""))
        for key, x in new.items():
            line = f"    {key:16s} {float(x.mean()):10.3f}"
            if ref_runs:
                y = old[key]
                se = math.sqrt(float(x.var()) / x.size + float(y.var()) / y.size)
                diff = float(x.mean() - y.mean())
                z = diff / se if se else (0.0 if diff == 0 else math.inf)
                line += f" {float(y.mean()):10.3f} {z:8.2f}"
            print(line)


if __name__ == "__main__":
    main()
