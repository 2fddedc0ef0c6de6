"""``layoutkit verify``'s text and JSON: the twin's runs side by side with the accounting
of their own maps and the kernel model's range."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

from layoutkit.commands.verify import Figures, Verification
from layoutkit.core.spans import Span
from layoutkit.core.units import format_size
from layoutkit.native.compare import Cause
from layoutkit.output.document import document, flags_text, hexa, segment_json, span_json


def verdict(v: Verification) -> str:
    return "ok" if v.ok else "failed: " + "; ".join(v.failures)


def _figures_json(fig: Figures) -> dict[str, Any]:
    return {"free_bytes": fig.free_bytes, "free_slots": fig.free_slots,
            "largest_free": span_json(fig.largest_free)}


def verification_json(v: Verification) -> dict[str, Any]:
    """The ``verify`` command's JSON document."""
    worst = v.worst_run
    ctx = worst.result.context
    return document("verify", {
        "target": v.target, "advice": v.advice, "arch": v.twin.spec.arch.name,
        "twin": str(v.twin.path), "twin_loads": [segment_json(s) for s in v.twin.image.loads],
        "runner": v.runner.value,
        "kernel": {"release": v.kernel.release, "va_bits": v.kernel.va_bits,
                   "mmap_min_addr": hexa(v.kernel.mmap_min_addr),
                   "source": v.kernel.how},
        "profile": v.profile, "window": span_json(ctx.jit.usable),
        "predicted": _figures_json(Figures.of_accounting(worst.predicted)),
        "measured": _figures_json(worst.measured),
        "model": {"worst": v.model.worst.free_slots, "best": v.model.best.free_slots,
                  "worst_free_bytes": v.model.worst.free_bytes,
                  "best_free_bytes": v.model.best.free_bytes},
        "runs": [{"anchor": hexa(r.result.context.anchor), "bias": hexa(r.bias),
                  "counts": r.result.counts.as_dict(), "probe_ns": r.result.probe_ns,
                  "predicted": _figures_json(Figures.of_accounting(r.predicted)),
                  "measured": _figures_json(r.measured), "states_fit": r.states_fit,
                  "leaked_mappings": r.result.context.leaked}
                 for r in v.runs],
        "difference": {
            "free_slots": worst.measured.free_slots - worst.predicted.free_slots,
            "unexplained": sum(r.unexplained for r in v.runs),
            "slots": [{"run": i + 1, "slot": hexa(d.slot), "probe": d.probe.value,
                       "model_free": d.model_free, "reason": d.cause.value}
                      for i, r in enumerate(v.runs) for d in r.differences],
        },
        "checks": {"agrees": v.agrees, "within_model": v.contained,
                   "capacity": v.capacity_ok, "states": v.states},
        "infidelities": list(ctx.infidelities),
        "notes": list(v.notes),
        "verdict": verdict(v),
    })


def _largest(span: Span | None) -> str:
    return "-" if span is None else f"{format_size(span.size)} at {span.start:#x}"


def verification_lines(v: Verification) -> Iterator[str]:
    """The ``verify`` command's text output, verdict last."""
    spec = v.twin.spec
    ctx = v.worst_run.result.context
    yield f"Target:      {v.target} ({spec.arch}, {spec.kind.describe()})"
    if v.advice:
        yield f"Advice:      {v.advice}"
    yield (f"Twin:        {v.twin.path}: {len(spec.loads)} PT_LOAD segment(s) as the "
           "target's (vaddr, memsz, flags)")
    for seg in spec.loads:
        yield (f"  LOAD  {seg.vaddr:#x}  memsz {seg.memsz:#x}  "
               f"{flags_text(seg)}  end {seg.vaddr + seg.memsz:#x}")
    low = "unknown" if v.kernel.mmap_min_addr is None else f"{v.kernel.mmap_min_addr:#x}"
    yield (f"Runner:      {v.runner}; kernel {v.kernel.release}, va_bits {v.kernel.va_bits}, "
           f"mmap_min_addr {low} ({v.kernel.how})")
    for note in ctx.infidelities:
        yield f"Runner note: {note}"
    yield (f"Window:      {v.profile} {ctx.jit.usable} ({format_size(ctx.jit.usable.size)}) "
           f"around {ctx.anchor:#x}")
    yield "Runs:"
    yield "  Run  Anchor              Free  EEXIST  Moved  EPERM  Probe      Predicted  Measured"
    for n, r in enumerate(v.runs, 1):
        c = r.result.counts
        probe = f"{r.result.probe_ns / 1e6:.2f} ms"
        yield (f"  {n:<4} {r.result.context.anchor:<#18x}  {c.free:<5} {c.eexist:<7} "
               f"{c.moved:<6} {c.eperm:<6} {probe:<10} "
               f"{r.predicted.free_slots:<10} {r.measured.free_slots}")
    worst = v.worst_run
    pred = Figures.of_accounting(worst.predicted)
    rows = (("free slots", str(pred.free_slots), str(worst.measured.free_slots),
             str(v.model.worst.free_slots), str(v.model.best.free_slots)),
            ("free bytes", format_size(pred.free_bytes), format_size(worst.measured.free_bytes),
             format_size(v.model.worst.free_bytes), format_size(v.model.best.free_bytes)),
            ("largest free", _largest(pred.largest_free), _largest(worst.measured.largest_free),
             _largest(v.model.worst.largest_free), _largest(v.model.best.largest_free)))
    yield "Side by side (the run with the fewest free slots):"
    yield f"  {'':<13} {'own maps':<22} {'measured':<22} {'model worst':<22} model best"
    for name, own, meas, lo, hi in rows:
        yield f"  {name:<13} {own:<22} {meas:<22} {lo:<22} {hi}"
    diffs = [(k, d) for k, r in enumerate(v.runs, 1) for d in r.differences]
    yield (f"Differences: {len(diffs)} slot(s) over {len(v.runs)} run(s), "
           f"{sum(d.cause is Cause.UNEXPLAINED for _, d in diffs)} unexplained")
    for k, d in diffs[:20]:
        side = "free in the maps, not to the probe" if d.model_free else "free to the probe only"
        yield f"  run {k}  {d.slot:#x}  {d.probe.value}  {side}: {d.cause}"
    if len(diffs) > 20:
        yield f"  ... {len(diffs) - 20} more (--format json lists them all)"
    for note in v.notes:
        yield f"Note:        {note}"
    yes = {True: "yes", False: "NO"}
    yield (f"Checks:      (a) agrees with its own maps: {yes[v.agrees]}; (b) inside the "
           f"model's range [{v.model.worst.free_slots}, {v.model.best.free_slots}]: "
           f"{yes[v.contained]}; capacity ({v.states} state(s)): "
           f"{min(r.states_fit for r in v.runs)} fit: {yes[v.capacity_ok]}")
    yield f"Verdict:     {verdict(v)}"


__all__: Sequence[str] = ("verdict", "verification_json", "verification_lines")
