"""The replay a command judges on: the scenario's sampling and demand turned into
:class:`~layoutkit.window.replay.ReplayParams`, run on a binary (``inspect``, ``check``,
``advise`` before and after each edit) or on a fixed layout (``maps``).

The scenario is validated once where it is built (core/scenario.py); the parameters are
derived from it here. ASLR follows ``--aslr`` when given, else the kernel's
``randomize_va_space`` (0: every run gets the ``setarch -R`` layout).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from layoutkit.core.kinds import ReplayVerdict
from layoutkit.core.model import ElfImage, LoadKind, Perm, Segment
from layoutkit.core.scenario import ABORT_LIMIT, Scenario
from layoutkit.core.spans import Span, align_down
from layoutkit.window.kernel import PAGE, KernelConfig
from layoutkit.window.profiles import JitWindow
from layoutkit.window.replay import (
    DEFAULT_RETRIES,
    Generation,
    ReplayParams,
    ReplayResult,
    replay,
    simulate,
)

SEARCH_LIMIT = 4096  # the largest N the safe-states search tries
SEARCH_TOLERANCE = 32  # bisect until the bracket is within 1/32 of the safe N (3%)

__all__ = ["ABORT_LIMIT", "FIXED_LAYOUT", "Forecast", "SafeSearch", "forecast",
           "forecast_fixed", "search_safe"]


@dataclass(frozen=True)
class Forecast:
    """A replay's result, or why there is none (a profile the replay does not model)."""

    result: ReplayResult | None
    reason: str | None  # None when there is a result
    aslr_how: str  # why ASLR is on or off: the option, or the kernel's sysctl
    approximation: str | None = None  # how a fixed layout was replayed (maps)
    search: SafeSearch | None = None  # how safe_states was found (None: not searched)

    def verdict(self, limit: float = ABORT_LIMIT) -> ReplayVerdict | None:
        """OK when the share of runs with a trace abort is under ``limit``; None
        without a replay."""
        if self.result is None:
            return None
        return ReplayVerdict.OK if self.result.p_abort < limit else ReplayVerdict.ABORTS


@dataclass(frozen=True)
class SafeSearch:
    """The largest number of states with p_abort under the limit, as bracketed: ``safe``
    was replayed under it, ``unsafe`` (None: none up to the limit) at or over it."""

    safe: int
    unsafe: int | None
    evaluations: int  # replays the search ran (each on the same seeded runs)
    start: int  # where it started: a power of two at or below half the hint


def search_safe(image: ElfImage, kernel: KernelConfig, jit: JitWindow, bias: int,
                params: ReplayParams, hint: int) -> SafeSearch:
    """Bracket the largest N with p_abort < 1%, starting near ``hint`` (the best-case
    slot arithmetic, which bounds it from above in practice) instead of at 1.

    Every N replays the same runs (common random numbers: the same layouts and per-state
    streams), so p_abort is compared across N on one sample. From a power of two at or
    below half of ``hint`` the search doubles up while under the limit or halves down while not,
    then bisects until the bracket is within 1/:data:`SEARCH_TOLERANCE` of the safe N.
    About half the replays of a search from 1 (window/replay.py safe_states), which
    matters because each replay costs about the same whatever N (painting the window).
    p_abort need not be monotone for small N; a search from ``hint`` sees the largest safe
    N near it.
    """
    seen: dict[int, bool] = {}

    def ok(n: int) -> bool:
        if n not in seen:
            out = simulate(image, kernel, jit, bias, params, n)
            seen[n] = float((out.aborts.sum(axis=1) > 0).mean()) < ABORT_LIMIT
        return seen[n]

    # Half the hint: replays of many states cost more, and the answer lies below it.
    start = 1 << max(0, min(max(hint // 2, 1), SEARCH_LIMIT).bit_length() - 1)
    good, bad = 0, None
    n = start
    if ok(n):
        good = n
        while good * 2 <= SEARCH_LIMIT:
            if not ok(good * 2):
                bad = good * 2
                break
            good *= 2
    else:
        bad = n
        while bad > 1:
            if ok(bad // 2):
                good = bad // 2
                break
            bad //= 2
    if good == 0:
        return SafeSearch(0, bad, len(seen), start)
    while bad is not None and bad - good > max(1, good // SEARCH_TOLERANCE):
        mid = (good + bad) // 2
        if ok(mid):
            good = mid
        else:
            bad = mid
    return SafeSearch(good, bad, len(seen), start)


def aslr_for(scenario: Scenario, kernel: KernelConfig) -> tuple[bool, str]:
    """Whether the runs randomise the layout, and why."""
    given = scenario.sampling.aslr
    if given is not None:
        return given, f"--aslr {'on' if given else 'off'}"
    on = kernel.randomize_va_space != 0
    return on, f"randomize_va_space={kernel.randomize_va_space} ({kernel.source})"


def replay_params(scenario: Scenario, *, aslr: bool, heap: int | None = None) -> ReplayParams:
    """The replay's parameters, derived from the (already validated) scenario."""
    sampling, demand = scenario.sampling, scenario.demand
    return ReplayParams(
        states=demand.states, mcode=demand.mcode,
        heap=scenario.heap if heap is None else heap,
        runs=sampling.runs, seed=sampling.seed, aslr=aslr,
        retries=DEFAULT_RETRIES if sampling.retries is None else sampling.retries)


def unmodelled(jit: JitWindow, kernel: KernelConfig) -> str | None:
    """Why the replay cannot run for ``jit`` on ``kernel``'s arch, or None if it can."""
    names = {g.value for g in Generation}
    if jit.profile.allocator_name not in names:
        return (f"the replay models LuaJIT's allocators ({', '.join(sorted(names))}); "
                f"{jit.profile.name} is judged by slot arithmetic only")
    if kernel.arch.luajit_jumprange is None:
        return f"LuaJIT has no reach-limited JIT on {kernel.arch}: nothing to replay"
    return None


def forecast(image: ElfImage, kernel: KernelConfig, jit: JitWindow, bias: int,
             scenario: Scenario, *, search: int | None = None) -> Forecast:
    """Replay ``scenario`` on ``image`` loaded at its ASLR-off ``bias`` (``jit``: its
    window there); with ``search`` (a hint: the best-case number of states that fit)
    also the largest safe number of states."""
    aslr, how = aslr_for(scenario, kernel)
    why = unmodelled(jit, kernel)
    if why is not None:
        return Forecast(None, why, how)
    params = replay_params(scenario, aslr=aslr)
    return _searched(Forecast(replay(image, kernel, jit, bias, params, search=False), None,
                              how), image, kernel, jit, bias, params, search)


def _searched(fc: Forecast, image: ElfImage, kernel: KernelConfig, jit: JitWindow, bias: int,
              params: ReplayParams, hint: int | None) -> Forecast:
    if hint is None or fc.result is None:
        return fc
    found = search_safe(image, kernel, jit, bias, params, hint)
    return replace(fc, result=replace(fc.result, safe_states=found.safe), search=found)


FIXED_LAYOUT = ("replayed on the mappings as listed, the same in every run (ASLR off): "
                "the [heap] with its --heap reserve taken from the start, the JIT areas "
                "already mapped taken, the new states' thread stacks and arenas not added")


def as_image(path: str, kernel: KernelConfig, taken: list[Span]) -> ElfImage:
    """A fixed layout (a maps listing) as a non-PIE image whose PT_LOADs are its
    mappings, so that the replay paints exactly them (and, with no heap growth of its
    own, nothing else)."""
    rw = Perm.R | Perm.W
    segments = tuple(Segment("PT_LOAD", s.start, s.size, 0, s.size, rw, 6, PAGE)
                     for s in sorted(taken, key=lambda s: s.start) if s.size)
    if not segments:  # nothing mapped at all: one page at the top of user space
        top = align_down(kernel.user_top - PAGE, PAGE)
        segments = (Segment("PT_LOAD", top, PAGE, 0, PAGE, rw, 6, PAGE),)
    arch = kernel.arch
    return ElfImage(path, 0, arch, arch.bits, arch.little_endian, arch.e_machine, "ET_EXEC",
                    LoadKind.EXEC, segments[0].vaddr, None, segments, (), None, (), None,
                    False, False, ())


def forecast_fixed(path: str, kernel: KernelConfig, jit: JitWindow, taken: list[Span],
                   scenario: Scenario, hint: int) -> Forecast:
    """Replay ``scenario.demand.states`` new states on a fixed layout (``maps``):
    ``taken`` the occupied spans as the accounting has them (the [heap] with its
    --heap reserve, stack guard gaps, JIT areas); :data:`FIXED_LAYOUT` says what is
    approximated. ``safe_states`` is then how many more states the process can add."""
    how = "the layout as mapped"
    why = unmodelled(jit, kernel)
    if why is not None:
        return Forecast(None, why, how)
    image = as_image(path, kernel, taken)
    params = replay_params(scenario, aslr=False, heap=0)
    fc = Forecast(replay(image, kernel, jit, 0, params, search=False), None, how, FIXED_LAYOUT)
    return _searched(fc, image, kernel, jit, 0, params, hint)
