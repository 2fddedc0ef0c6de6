"""The C replay against the model replay, as text (:mod:`layoutkit.native.replay_agreement`)."""

from __future__ import annotations

from collections.abc import Iterator

from layoutkit.native.replay_agreement import Agreement, Z


def agreement_lines(result: Agreement) -> Iterator[str]:
    """One header line, one line per statistic, the verdict last."""
    c_runs = result.statistics[0].c.runs
    m_runs = result.statistics[0].model.runs
    yield (f"{result.generation.value}, JR {result.jumprange}: {result.states} states x "
           f"{result.areas} areas, retries {result.retries}; C replay {c_runs} processes, "
           f"model {m_runs} runs on their layouts")
    yield f"  {'statistic':<18} {'C replay':>18} {'model':>18} {'allowed':>9}"
    for s in result.statistics:
        yield (f"  {s.name:<18} {s.c.mean:>10.3f} +- {s.c.stderr:<5.3f}"
               f" {s.model.mean:>10.3f} +- {s.model.stderr:<5.3f} {s.allowed:>9.3f}"
               f"  {'agrees' if s.agrees else 'DIFFERS'}")
    yield (f"  verdict: {'agree' if result.agrees else 'differ'} "
           f"(means within {Z:g} standard errors of their difference)")
