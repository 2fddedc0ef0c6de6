"""``layoutkit probe``'s text and JSON: the probe's own scan or replay, and the probe
inside a running program (``probe -- CMD``)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

from layoutkit.commands.probe import ProbeReport
from layoutkit.core.units import format_size
from layoutkit.native.compare import Cause, Difference
from layoutkit.native.guest.program import GuestProgramResult
from layoutkit.native.preload import ProgramResult
from layoutkit.native.protocol import Outcome, ProbeContext, ReplayResult, ScanResult, ScanVerdict
from layoutkit.output.document import document, hexa, span_json, window_json


def differences_json(diffs: Sequence[Difference]) -> list[dict[str, Any]]:
    return [{"slot": hexa(d.slot), "probe": d.probe.value, "model_free": d.model_free,
             "reason": d.cause.value} for d in diffs]


def _context_json(ctx: ProbeContext) -> dict[str, Any]:
    return {
        "arch": ctx.arch.name, "runner": ctx.runner.value, "profile": ctx.jit.profile.name,
        "anchor": hexa(ctx.anchor), "self_anchor": hexa(ctx.self_anchor),
        "anchor_source": ctx.anchor_source,
        "window": span_json(ctx.jit.window), "usable": span_json(ctx.jit.usable),
        "page_size": ctx.page_size, "rlimit_as": ctx.rlimit_as, "vm_size": ctx.vm_size,
        "as_headroom": ctx.as_headroom, "mmap_min_addr": ctx.mmap_min_addr,
        "leaked_mappings": ctx.leaked, "infidelities": list(ctx.infidelities),
    }


def probe_json(report: ProbeReport) -> dict[str, Any]:
    """The ``probe`` command's JSON document (scan or replay)."""
    result = report.result
    body = _context_json(result.context)
    if isinstance(result, ScanResult):
        body.update({
            "mode": "scan", "verdict": result.verdict.value, "slot": result.slot,
            "slots": len(result.outcomes), "counts": result.counts.as_dict(),
            "free_runs": [span_json(r) for r in result.free_runs],
            "strategy": result.strategy, "mmap_calls": result.mmap_calls,
            "probe_ns": result.probe_ns,
            "model_differences": differences_json(report.differences),
            "maps": result.context.maps_before,
        })
    else:
        body.update({
            "mode": "replay", "threads": result.threads,
            "threads_started": result.threads_started,
            "areas_per_thread": result.areas_per_thread, "area_size": result.area_size,
            "allocations": result.allocations,
            "failed_allocations": result.failed_allocations, "fallbacks": result.fallbacks,
            "attempts": result.attempts, "failed_attempts": result.failed_attempts,
            "retries": result.retries, "placed": result.placed, "syscalls": result.syscalls,
            "far_areas": result.far_areas,
            "ns_per_allocation": result.ns_per_allocation, "ns_max": result.ns_max,
            "wall_ns": result.wall_ns,
            "per_thread": [{"attempts": t.attempts, "failed_attempts": t.failed_attempts,
                            "failed_allocations": t.failed_allocations, "ns": t.ns}
                           for t in result.per_thread],
            "areas": [hexa(a.start) for a in result.areas()],
            "maps": result.context.maps_before,
        })
    return document("probe", body)


_SCAN_VERDICTS = {
    ScanVerdict.FULL: "window full: no free slot",
    ScanVerdict.RLIMIT_AS: "RLIMIT_AS forbids the mappings (the window itself is not full)",
    ScanVerdict.HINTS_ONLY: "this runner ignores MAP_FIXED_NOREPLACE: taken and free slots "
                            "cannot be told apart exactly ('moved')",
}


def _model_line(diffs: Sequence[Difference]) -> str:
    unexplained = sum(d.cause is Cause.UNEXPLAINED for d in diffs)
    return (f"Model:       {len(diffs)} slot(s) differ from layoutkit's accounting of the "
            f"same maps ({unexplained} unexplained)")


def _scan_lines(result: ScanResult, diffs: Sequence[Difference]) -> Iterator[str]:
    yield (f"Slots:       {len(result.outcomes)} of {format_size(result.slot)}: "
           + ", ".join(f"{o.key} {result.counts.count(o)}" for o in Outcome
                       if result.counts.count(o) or o in (Outcome.FREE, Outcome.EEXIST)))
    yield (f"Probing:     {result.probe_ns / 1e6:.3f} ms, {result.mmap_calls} mmap calls "
           f"({result.strategy})")
    yield "Free runs:"
    for run in result.free_runs:
        yield f"  {run.start:#x}-{run.end:#x}  {format_size(run.size)}"
    yield _model_line(diffs)


def _scan_verdict(result: ScanResult) -> str:
    if result.verdict is ScanVerdict.OK:
        return f"ok: {format_size(result.free_bytes)} free"
    return _SCAN_VERDICTS[result.verdict]


def _replay_lines(result: ReplayResult) -> Iterator[str]:
    yield (f"Replay:      {result.threads_started}/{result.threads} threads x "
           f"{result.areas_per_thread} areas of {format_size(result.area_size)}, taking "
           f"turns; {result.retries} requests again per state after an abort")
    yield (f"Attempts:    {result.attempts} mmap calls, {result.failed_attempts} failed; "
           f"{result.failed_allocations} of {result.allocations} allocations failed"
           + (f", {result.fallbacks} new ranges from mmap(NULL)" if result.fallbacks else ""))
    per_area = result.syscalls / result.placed if result.placed else 0.0
    yield (f"Placed:      {result.placed} areas"
           + (f" ({result.far_areas} in far ranges)" if result.far_areas else "")
           + f", {result.syscalls} mmap/munmap calls ({per_area:.2f} per area)")
    yield (f"Time:        {result.ns_per_allocation / 1e3:.1f} us per allocation, "
           f"max {result.ns_max / 1e3:.1f} us, wall {result.wall_ns / 1e6:.3f} ms")


def _replay_verdict(result: ReplayResult) -> str:
    if not result.all_started:
        return "threads could not start (RLIMIT_AS or memory)"
    if result.failed_allocations:
        return (f"{result.failed_allocations} allocation(s) failed: each aborted a trace "
                f"and flushed its state's areas")
    return "ok: every area was placed inside the window"


def probe_lines(report: ProbeReport) -> Iterator[str]:
    """The ``probe`` command's text output, readelf-like, verdict last."""
    result = report.result
    ctx = result.context
    yield f"Probe:       {ctx.arch} on {ctx.runner}, profile {ctx.jit.profile.name}"
    yield f"Anchor:      {ctx.anchor:#x} ({ctx.anchor_source})"
    yield (f"Window:      {ctx.jit.window}  usable {ctx.jit.usable} "
           f"({format_size(ctx.jit.usable.size)})")
    limit = "unlimited" if ctx.rlimit_as is None else format_size(ctx.rlimit_as)
    low = "unknown" if ctx.mmap_min_addr is None else f"{ctx.mmap_min_addr:#x}"
    yield (f"Process:     VmSize {format_size(ctx.vm_size)}, RLIMIT_AS {limit}, "
           f"mmap_min_addr {low}")
    for note in ctx.infidelities:
        yield f"Runner note: {note}"
    if isinstance(result, ScanResult):
        yield from _scan_lines(result, report.differences)
        verdict = _scan_verdict(result)
    else:
        yield from _replay_lines(result)
        verdict = _replay_verdict(result)
    yield f"Leaks:       {'LEAKED MAPPINGS' if ctx.leaked else 'none (maps after == before)'}"
    yield f"Verdict:     {verdict}"


# --- probe -- CMD -----------------------------------------------------------------------

def _guest_json(guest: GuestProgramResult | None) -> dict[str, Any]:
    """Where ``probe -- CMD`` ran: this machine (preload), or the qemu-system guest
    (preload, or a static program's layout twin) and its kernel."""
    if guest is None:
        return {"runner": "native", "measured_through": "preload", "twin": None,
                "guest_kernel": None}
    facts, image = guest.guest.facts, guest.guest.kernel
    return {"runner": "qemu-system", "measured_through": guest.through.value,
            "twin": None if guest.twin is None else str(guest.twin.path),
            "guest_kernel": {"release": facts.release, "package": image.package,
                             "version": image.version, "va_bits": facts.va_bits,
                             "page_size": facts.page_size,
                             "mmap_min_addr": hexa(facts.mmap_min_addr)}}


def program_json(result: ProgramResult | GuestProgramResult) -> dict[str, Any]:
    """The ``probe -- CMD`` JSON document (natively, or in the qemu-system guest)."""
    guest = result if isinstance(result, GuestProgramResult) else None
    result = guest.result if guest is not None else result
    assert isinstance(result, ProgramResult)
    a = result.analysis
    jit = result.scan.context.jit
    free_bytes, free_slots, big = result.measured
    return document("probe", {
        "mode": "program", "command": list(result.command), "when": result.when,
        "pid": result.program_pid, "arch": a.arch.name, "profile": jit.profile.name,
        "anchor": {"name": a.anchor.name, "address": hexa(a.anchor.span.start),
                   "source": a.anchor.how_found.value, "detail": a.anchor.detail},
        "anchor_object": a.anchor_object, "bias": hexa(a.bias),
        "window": span_json(jit.window), "usable": span_json(jit.usable),
        "scanned": span_json(result.scanned), "slot": result.scan.slot,
        "measured": {"free_bytes": free_bytes, "free_slots": free_slots,
                     "largest_free": span_json(big)},
        "model": window_json(a.accounting),
        "jit_areas": [{**(span_json(j.span) or {}), "distance": j.distance,
                       "inside_window": a.accounting.jit.usable.contains(j.span)}
                      for j in a.jit_areas],
        "mmap_calls": result.mmap_calls, "probe_ns": result.probe_ns,
        "model_differences": differences_json(result.differences),
        "notes": list(result.notes), "program_status": result.program_status,
        "maps": result.scan.context.maps_before, **_guest_json(guest),
    })


def program_lines(result: ProgramResult | GuestProgramResult) -> Iterator[str]:
    """The ``probe -- CMD`` text output (natively, or in the qemu-system guest), verdict
    last."""
    guest = result if isinstance(result, GuestProgramResult) else None
    result = guest.result if guest is not None else result
    assert isinstance(result, ProgramResult)
    a = result.analysis
    jit = result.scan.context.jit
    free_bytes, free_slots, big = result.measured
    status = result.program_status
    yield (f"Program:     {' '.join(result.command)} (pid {result.program_pid}, "
           f"--when {result.when})")
    if guest is None:
        yield (f"Probe:       {a.arch} preload copy (pid {result.child_pid}), "
               f"profile {jit.profile.name}")
    else:
        facts = guest.guest.facts
        yield (f"Runner:      qemu-system; kernel {facts.release} ({guest.guest.kernel.package} "
               f"{guest.guest.kernel.version}), va_bits {facts.va_bits}, page size "
               f"{facts.page_size}")
        how = (f"preload copy (pid {result.child_pid})" if guest.twin is None else
               f"layout twin (pid {result.child_pid}) of the static program: {guest.twin.path}")
        yield f"Probe:       {a.arch} {how}, profile {jit.profile.name}"
    yield (f"Anchor:      {a.anchor.name} {a.anchor.span.start:#x} ({a.anchor.how_found}: "
           f"{a.anchor.detail})")
    yield f"Window:      {jit.window}  usable {jit.usable} ({format_size(jit.usable.size)})"
    yield (f"Probing:     {result.scanned} scanned, {result.mmap_calls} mmap calls, "
           f"{result.probe_ns / 1e6:.3f} ms")
    yield (f"Measured:    {format_size(free_bytes)} free in {free_slots} slots; largest free "
           f"run {big if big else '-'}")
    yield f"JIT areas:   {len(a.jit_areas)}"
    for area in a.jit_areas:
        inside = "inside" if a.accounting.jit.usable.contains(area.span) else "OUTSIDE"
        yield (f"  {area.span.start:#x}-{area.span.end:#x}  {format_size(area.span.size)}  "
               f"distance {area.distance:+#x}  {inside} the window")
    for note in result.notes:
        yield f"Note:        {note}"
    yield _model_line(result.differences)
    yield f"Program:     {'still running' if status is None else f'exit status {status}'}"
    verdict = f"ok: {format_size(free_bytes)} free" if free_slots else "window full"
    if not result.jit_inside:
        verdict += "; JIT code outside the window"
    yield f"Verdict:     {verdict}"


__all__: Sequence[str] = ("differences_json", "probe_json", "probe_lines", "program_json",
                          "program_lines")
