"""The allocator replay in text and JSON, the same block in every judging command."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from layoutkit.core.kinds import ReplayVerdict
from layoutkit.core.scenario import ABORT_LIMIT
from layoutkit.core.units import format_size

if TYPE_CHECKING:  # annotations only: rendering loads no analysis module
    from layoutkit.window.accounting import Accounting
    from layoutkit.window.forecast import Forecast
    from layoutkit.window.replay import ReplayResult, Spread

def _pct(share: float) -> str:
    return f"{100 * share:.1f}%"


def _num(value: float) -> str:
    return f"{value:.2f}".rstrip("0").rstrip(".") if value != int(value) else str(int(value))


def replay_lines(fc: Forecast, indent: str = "") -> Iterator[str]:
    """The replay's figures (or why there is none), one fact a line."""
    r = fc.result
    if r is None:
        yield f"{indent}Replay: none: {fc.reason}"
        return
    yield (f"{indent}Replay ({r.profile}, {r.states} state(s), {r.runs} runs, seed {r.seed}, "
           f"ASLR {'on' if r.aslr else 'off'}: {fc.aslr_how}):")
    pad = indent + "  "
    yield f"{pad}kernel:      {r.kernel}"
    a = r.aborts
    yield (f"{pad}aborts:      p(at least one trace abort) {_pct(r.p_abort)}; per run mean "
           f"{_num(a.mean)}, p5 {_num(a.p5)}, p50 {_num(a.p50)}, p95 {_num(a.p95)}, max "
           f"{_num(a.max)}; states that saw one {_num(r.states_aborted)} per run")
    yield (f"{pad}areas:       {_num(r.areas_placed)} placed per run, {_num(r.far_areas)} far "
           "(outside the first range, 2025)")
    yield (f"{pad}syscalls:    {r.syscalls_per_area:.2f} mmap+munmap per area; warm-up in them "
           f"{1e3 * r.warmup_seconds:.3f} ms per run at {1e6 * r.syscall_seconds:.1f} us per "
           "call (see the notes)")
    if r.safe_states is not None:
        what = ("more states the process can add" if fc.approximation else "states")
        found = fc.search
        how = "" if found is None else (
            f"; {'none tried up to the limit' if found.unsafe is None else found.unsafe} at or "
            f"over it; {found.evaluations} replays on the same runs, from {found.start}")
        yield (f"{pad}safe:        up to {r.safe_states} {what} with p(abort) < "
               f"{_pct(ABORT_LIMIT)}{how}")
    for note in (*r.notes, *((fc.approximation,) if fc.approximation else ())):
        yield f"{pad}note:        {note}"


def replay_summary(fc: Forecast) -> str:
    """The replay in one line (advise's recommendations; the full block is printed for
    the current layout, with the kernel, seed and notes they share)."""
    r = fc.result
    if r is None:
        return f"none: {fc.reason}"
    safe = "" if r.safe_states is None else f", safe states {r.safe_states}"
    return (f"p(abort) {_pct(r.p_abort)}, aborts per run mean {_num(r.aborts.mean)} "
            f"(p95 {_num(r.aborts.p95)}){safe}, {r.syscalls_per_area:.2f} mmap+munmap per "
            f"area, {_num(r.far_areas)} far areas")


def replay_verdict(fc: Forecast, limit: float = ABORT_LIMIT) -> str:
    """The verdict line the replay gives (what inspect and maps judge on)."""
    r, verdict = fc.result, fc.verdict(limit)
    if r is None or verdict is None:
        return f"Verdict: no replay ({fc.reason}): see the worst case below"
    safe = ("" if r.safe_states is None
            else f"; up to {r.safe_states} stay under {_pct(ABORT_LIMIT)}")
    if verdict is ReplayVerdict.OK:
        return (f"Verdict: ok: {r.states} state(s): traces abort in {_pct(r.p_abort)} of "
                f"{r.runs} runs (< {_pct(limit)}){safe}")
    return (f"Verdict: aborts: {r.states} state(s): traces abort in {_pct(r.p_abort)} of "
            f"{r.runs} runs (>= {_pct(limit)}), {_num(r.aborts.mean)} per run{safe}")


def worst_line(acc: Accounting) -> str:
    """The worst case over ASLR (slot arithmetic), its own line."""
    cap = acc.capacity
    return (f"Worst case over ASLR: {cap.verdict}: {cap.states_fit} state(s) of "
            f"{format_size(cap.mcode_per_state)} fit in {acc.free_slots} free slots, "
            f"{cap.states_requested} requested")


def _spread(s: Spread) -> dict[str, float]:
    return {"mean": s.mean, "p5": s.p5, "p50": s.p50, "p95": s.p95, "max": s.max}


def result_json(r: ReplayResult, fc: Forecast) -> dict[str, Any]:
    return {
        "profile": r.profile,
        "runs": r.runs,
        "seed": r.seed,
        "kernel": r.kernel,
        "aslr": r.aslr,
        "aslr_how": fc.aslr_how,
        "states": r.states,
        "retries": r.retries,
        "heap": r.heap,
        "p_abort": r.p_abort,
        "aborts": _spread(r.aborts),
        "states_aborted": {"mean": r.states_aborted},
        "syscalls_per_area": {"mean": r.syscalls_per_area},
        "warmup_seconds": {"mean": r.warmup_seconds, "per_call": r.syscall_seconds},
        "areas_placed": {"mean": r.areas_placed},
        "far_areas": {"mean": r.far_areas},
        "safe_states": r.safe_states,
        "safe_limit": ABORT_LIMIT,
        "safe_search": None if fc.search is None else {
            "unsafe_states": fc.search.unsafe, "evaluations": fc.search.evaluations,
            "start": fc.search.start},
        "notes": list(r.notes),
        "approximation": fc.approximation,
    }


def replay_json(fc: Forecast, limit: float = ABORT_LIMIT) -> dict[str, Any]:
    """``replay`` (null without one), ``replay_reason`` and ``replay_verdict``."""
    verdict = fc.verdict(limit)
    return {
        "replay": None if fc.result is None else result_json(fc.result, fc),
        "replay_reason": fc.reason,
        "replay_verdict": None if verdict is None else verdict.value,
    }
