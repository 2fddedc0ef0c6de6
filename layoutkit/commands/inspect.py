"""``layoutkit inspect``: a binary's layout, its anchor and the reach windows around it."""

from __future__ import annotations

import os
from dataclasses import dataclass

from layoutkit.core.model import ElfImage
from layoutkit.core.scenario import DEFAULT_SCENARIO, Scenario
from layoutkit.core.spans import Span
from layoutkit.elf import ElfReader
from layoutkit.errors import EXIT_OK, UsageError
from layoutkit.ranges import BranchForm, forms
from layoutkit.read.host import host
from layoutkit.window.anchor import Anchor, PlacedAnchor, find_anchor, luajit_generation
from layoutkit.window.forecast import Forecast, forecast
from layoutkit.window.kernel import KernelConfig
from layoutkit.window.layout import Prediction, predict
from layoutkit.window.opcache import Placement
from layoutkit.window.opcache import check_fits as check_opcache_fits
from layoutkit.window.opcache import predict as predict_opcache
from layoutkit.window.opcache import with_demand as opcache_demand
from layoutkit.window.profiles import (
    Generation,
    JitWindow,
    choose_profile,
    wants_generation,
    window_for_span,
)
from layoutkit.window.v8 import check_blob_size
from layoutkit.window.v8_outlook import V8Outlook, choose_v8, outlook


@dataclass(frozen=True)
class ReachWindow:
    """Where code can lie and still branch to the anchor with one form."""

    form: BranchForm
    below: int  # how far below the anchor's first byte the form reaches (unclipped)
    above: int  # how far above the anchor's last byte (unclipped)
    window: Span | None  # run-time addresses, clipped to user space; None if nothing is left
    clipped_below: int  # bytes of the unclipped window below user space
    clipped_above: int  # bytes above it

    @property
    def full(self) -> int:
        return self.below + self.above + 1


@dataclass(frozen=True)
class Inspection:
    image: ElfImage
    kernel: KernelConfig
    bias: int  # added to link-time addresses to get run-time addresses
    bias_how: str
    anchor: Anchor  # link-time
    reach: tuple[ReachWindow, ...]
    generation: Generation | None
    profile: str
    jit: JitWindow
    prediction: Prediction
    forecast: Forecast  # the allocator replay the verdict rests on
    notes: tuple[str, ...]
    opcache: Placement | None = None  # php-opcache: where the opcache segment goes
    v8: V8Outlook | None = None  # V8's code-range placement, for the v8 profile

    @property
    def exit_code(self) -> int:
        """``inspect`` reports and states a verdict; its exit code judges nothing
        (``check`` is the gate)."""
        return EXIT_OK

    @property
    def placed(self) -> PlacedAnchor:
        return PlacedAnchor(self.anchor, self.bias)

    @property
    def runtime_anchor(self) -> Span:
        return self.placed.span


def reach_window(form: BranchForm, anchor: Span, limit: Span) -> ReachWindow:
    lo1, hi1 = form.sources_to(anchor.start)
    lo2, hi2 = form.sources_to(anchor.end - 1)
    lo, hi = max(lo1, lo2), min(hi1, hi2)
    return ReachWindow(
        form=form,
        below=max(0, anchor.start - lo),
        above=max(0, hi - 1 - (anchor.end - 1)),
        window=form.window(anchor, limit),
        clipped_below=max(0, min(hi, limit.start) - lo),
        clipped_above=max(0, hi - max(lo, limit.end)),
    )


def inspect_binary(
    path: str | os.PathLike[str],
    scenario: Scenario = DEFAULT_SCENARIO,
    *,
    anchor: str | None = None,
) -> Inspection:
    """Read ``path``; work out its anchor, reach windows and JIT window accounting."""
    with ElfReader(path) as reader:
        return inspect_reader(reader, scenario, anchor=anchor)


def inspect_reader(reader: ElfReader, scenario: Scenario = DEFAULT_SCENARIO, *,
                   anchor: str | None = None, search: bool = True) -> Inspection:
    """:func:`inspect_binary` on a file already open (``check`` opens each file once);
    ``search``: also search the largest safe number of states."""
    jit = scenario.jit
    image = reader.image()
    found = find_anchor(reader, anchor)
    generation = luajit_generation(reader, found) if wants_generation(jit) else None
    kernel = KernelConfig.resolve(image.arch, scenario.kernel, host=host())
    bias, how = kernel.nominal_bias(image, randomize=True)
    runtime = found.span.shifted(bias)
    windows = tuple(reach_window(f, runtime, kernel.user_space) for f in forms(image.arch))
    v8 = choose_v8(reader, scenario, luajit_found=generation is not None) if (
        anchor is None) else None
    if v8 is not None:
        found = v8.build.anchor() or found
        check_blob_size(image.arch, found.span, f"the code V8 must reach ({found.name})",
                        reader.path)
        runtime = found.span.shifted(bias)
        windows = tuple(reach_window(f, runtime, kernel.user_space) for f in forms(image.arch))
    profile, note = choose_profile(image.arch, jit, generation)
    check_opcache_fits(profile, scenario.opcache, kernel.user_space)
    scenario = opcache_demand(profile, scenario)
    window = window_for_span(v8.profile if v8 is not None else profile, image.arch, runtime,
                             kernel.user_space, form_name=scenario.form)
    if v8 is not None:
        profile, note = v8.profile.name, None
    elif scenario.code_range is not None:
        raise UsageError(f"--code-range applies to --jit v8, not {profile}")
    prediction = predict(image, kernel, window, bias, scenario)
    v8_outlook = outlook(image, kernel, bias, window, v8, runtime) if v8 is not None else None
    best = prediction.best.capacity
    hint = best.areas_free // max(1, -(-best.mcode_per_state // best.area_size))
    replayed = forecast(image, kernel, window, bias, scenario, search=hint if search else None)
    notes = (*((note,) if note else ()), *prediction.notes,
             *(v8_outlook.notes if v8_outlook is not None else ()))
    opcache = predict_opcache(reader, profile, bias, scenario.opcache,
                              prediction.heap_start[0] if prediction.heap_start else None)
    return Inspection(image, kernel, bias, how, found, windows, generation, profile, window,
                      prediction, replayed, notes, opcache, v8_outlook)
