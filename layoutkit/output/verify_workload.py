"""``layoutkit verify --workload``'s text and JSON: the real LuaJIT's figures against the
replay's bands."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from layoutkit.commands.verify_workload import Band, WorkloadVerdict, WorkloadVerification
from layoutkit.core.units import format_size
from layoutkit.output.document import document


def _band_json(b: Band) -> dict[str, Any]:
    return {"figure": b.figure.value, "measured": b.measured, "mean": b.mean, "p5": b.p5,
            "p50": b.p50, "p95": b.p95, "inside": b.inside}


def workload_json(v: WorkloadVerification) -> dict[str, Any]:
    """The ``verify --workload`` command's JSON document."""
    return document("verify-workload", {
        "workload": "luajit", "profile": v.generation, "luajit": v.luajit, "source": v.source,
        "executable": str(v.executable), "arch": v.arch.name, "runner": v.runner.value,
        "states": v.states, "aslr": v.aslr, "heap": v.heap, "retries": v.retries,
        "replay": {"runs": v.runs, "seed": v.seed, "kernel": v.kernel},
        "bands": [_band_json(b) for b in v.bands],
        "verdict": v.verdict.value,
        "notes": list(v.notes),
    })


def workload_lines(v: WorkloadVerification) -> Iterator[str]:
    yield f"Workload:  {v.luajit} ({v.source}), profile {v.generation}"
    yield f"Runner:    {v.runner.value}, {v.arch}"
    yield f"Kernel:    {v.kernel}"
    yield (f"Scenario:  {v.states} states, ASLR {'on' if v.aslr else 'off'}, brk grown "
           f"{format_size(v.heap)} before the threads, {v.retries} requests again per state")
    yield f"Replay:    {v.runs} runs, seed {v.seed}"
    yield ""
    yield f"  {'figure':<16} {'measured':>9} {'replay p5':>10} {'p50':>8} {'p95':>8} {'mean':>9}"
    for b in v.bands:
        yield (f"  {b.figure.value:<16} {b.measured:>9} {b.p5:>10.1f} {b.p50:>8.1f} {b.p95:>8.1f} "
               f"{b.mean:>9.2f}  {'inside' if b.inside else 'OUTSIDE'}")
    yield ""
    for note in v.notes:
        yield f"Note: {note}"
    outside = [b.figure.value for b in v.bands if not b.inside]
    if v.verdict is WorkloadVerdict.OK:
        yield "Verdict: ok: every measured figure is inside the replay's p5..p95 band"
    else:
        yield f"Verdict: outside the replay's p5..p95 band: {', '.join(outside)}"
