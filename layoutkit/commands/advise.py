"""``layoutkit advise``: open the binary once and rank the changes that widen its JIT
window (advice/candidates.py), replay the allocator before and after each change, or
bound a move of some sections (advice/move.py)."""

from __future__ import annotations

from dataclasses import replace

from layoutkit.advice.candidates import Advice, Recommendation, candidates
from layoutkit.advice.move import RelocationCheck, check_move, parse_move
from layoutkit.core.kinds import ReplayVerdict
from layoutkit.core.model import ElfImage
from layoutkit.core.scenario import ABORT_LIMIT, DEFAULT_SCENARIO, Scenario
from layoutkit.elf import ElfReader
from layoutkit.errors import NoFitError
from layoutkit.window.forecast import Forecast, forecast
from layoutkit.window.kernel import KernelConfig
from layoutkit.window.layout import Prediction


def advise(
    binary: str | None,
    scenario: Scenario = DEFAULT_SCENARIO,
    *,
    arch_name: str | None = None,
    linker: str | None = None,
    anchor: str | None = None,
    allow_weaker: bool = False,
    prove: bool = False,
) -> Advice:
    """Ranked recommendations for ``binary`` (None: the default link of ``arch_name``),
    each predicted under ``scenario`` and replayed. The binary is opened once, for the
    whole advice. ``prove``: each recommendation's safety measured on a relink
    (native/relink.py). Raises :class:`NoFitError` when no change makes the requested
    states safe: by the replay (traces abort in 1% of the runs or more, before and after
    every change), or by slot arithmetic where the profile has no replay."""
    if binary is None:
        advice = candidates(None, scenario, arch_name=arch_name, linker=linker,
                            anchor=anchor, allow_weaker=allow_weaker)
    else:
        with ElfReader(binary) as reader:
            advice = candidates(reader, scenario, arch_name=arch_name, linker=linker,
                                anchor=anchor, allow_weaker=allow_weaker)
    if prove:
        from layoutkit.native.relink import prove as relink
        advice = relink(advice, allow_weaker)
    return judged(replayed(advice, scenario))


def _forecast(image: ElfImage, kernel: KernelConfig, prediction: Prediction,
              scenario: Scenario) -> Forecast:
    bias, _ = kernel.nominal_bias(image, randomize=True)  # as the prediction placed it
    best = prediction.best.capacity
    hint = best.areas_free // max(1, -(-best.mcode_per_state // best.area_size))
    return forecast(image, kernel, prediction.worst.jit, bias, scenario, search=hint)


def replayed(advice: Advice, scenario: Scenario) -> Advice:
    """The advice with the replay run on the current image and on every advised one
    (each recommendation's edit applied to the current image)."""
    kernel = advice.kernel
    recs: list[Recommendation] = []
    for rec in advice.recommendations:
        if rec.edit is None or rec.prediction is None:
            recs.append(rec)  # runtime advice: nothing to lay out
            continue
        edited = rec.edit.apply(advice.image)
        recs.append(replace(rec, forecast=_forecast(edited, kernel, rec.prediction, scenario)))
    current = _forecast(advice.image, kernel, advice.current, scenario)
    return replace(advice, recommendations=tuple(recs), forecast=current)


def judged(advice: Advice) -> Advice:
    """The advice, or :class:`NoFitError` when no change makes the requested states safe."""
    current = advice.forecast
    if current is None or current.result is None:
        if advice.no_fit is not None:
            raise NoFitError(advice.no_fit)
        return advice
    forecasts = [current, *(r.forecast for r in advice.recommendations if r.forecast)]
    if all(f.verdict() is not ReplayVerdict.OK for f in forecasts):
        best = min((f.result for f in forecasts if f.result), key=lambda r: r.p_abort)
        now = current.result
        raise NoFitError(
            f"{best.states} JIT state(s) ({best.profile}) abort traces in "
            f"{100 * now.p_abort:.1f}% of {best.runs} replay runs now and in "
            f"{100 * best.p_abort:.1f}% even after the best change "
            f"(seed {best.seed}; up to {best.safe_states} states stay under "
            f"{100 * ABORT_LIMIT:.0f}%)"
            + (f"; by slot arithmetic: {advice.no_fit}" if advice.no_fit else ""))
    return advice


def move(binary: str, spec: str) -> RelocationCheck:
    """``--move SECTION[,SECTION...][=ADDR]`` on ``binary``."""
    sections, where = parse_move(spec)
    return check_move(binary, sections, where)
