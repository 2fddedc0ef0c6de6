"""``layoutkit verify``: measure a binary's JIT window with its layout twin, compare twice.

The twin (twin.py) is run on a runner several times (ASLR). Each run scans the JIT
window around the target's anchor with the native probe and is compared:

(a) with layoutkit's accounting of the same run's own /proc/self/maps ("predicted"):
    they must agree slot for slot, every difference explained (stack guard gap, below
    vm.mmap_min_addr, a slot qemu-user moved);
(b) with the kernel model's range over ASLR (``inspect``'s worst and best case, for the
    kernel values read on the runner): the measured free slots must lie inside it.

The verdict is ok when both hold in every run and the layout (the advised one, with an
advice option) meets its capacity verdict in every run.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Sequence
from dataclasses import dataclass

from layoutkit.advice.edits import Rebase
from layoutkit.commands.advise import advise
from layoutkit.core.kinds import AdviceKind
from layoutkit.core.model import ElfImage, LoadKind, Perm
from layoutkit.core.scenario import DEFAULT_SCENARIO, Scenario
from layoutkit.core.spans import Span, largest
from layoutkit.elf import ElfReader
from layoutkit.errors import EXIT_FINDINGS, EXIT_OK, ProbeError, UsageError
from layoutkit.native.compare import Cause, Difference, differences, model_accounting
from layoutkit.native.guest.boot import GuestResult, run_in_guest
from layoutkit.native.guest.probe import (
    handshake_program,
    probe_scan_args,
    scan_result,
    window_answer,
)
from layoutkit.native.probe import run_probe
from layoutkit.native.protocol import ScanResult
from layoutkit.native.toolchain import Runner
from layoutkit.native.twin import Twin, TwinSpec, build_twin
from layoutkit.native.twin_report import (
    guest_report_programs,
    guest_report_scan,
    run_report_twin,
)
from layoutkit.read.maps import ProcessMaps
from layoutkit.window.accounting import Accounting, states_fit
from layoutkit.window.anchor import find_anchor, luajit_generation
from layoutkit.window.kernel import PAGE, KernelConfig, defaults
from layoutkit.window.layout import Prediction, predict
from layoutkit.window.profiles import choose_profile, wants_generation, window_for_span

ADVICE_KINDS = (AdviceKind.REBASE, AdviceKind.RELOCATE_TEXT, AdviceKind.PIE)
DEFAULT_RUNS = 3


@dataclass(frozen=True)
class Figures:
    """Free space of one window: the three numbers both sides are compared on."""

    free_bytes: int
    free_slots: int
    largest_free: Span | None

    @classmethod
    def of_runs(cls, runs: Sequence[Span], slot: int) -> Figures:
        return cls(sum(r.size for r in runs), sum(r.size // slot for r in runs), largest(runs))

    @classmethod
    def of_accounting(cls, acc: Accounting) -> Figures:
        return cls(acc.free_bytes, acc.free_slots, acc.largest_free)


@dataclass(frozen=True)
class Run:
    result: ScanResult
    bias: int  # the twin's load bias in this run: where the kernel placed it (0: non-PIE)
    predicted: Accounting  # from the run's own maps
    measured: Figures
    differences: tuple[Difference, ...]
    states_fit: int  # JIT states that fit in the measured free runs

    @property
    def unexplained(self) -> int:
        return sum(d.cause is Cause.UNEXPLAINED for d in self.differences)


@dataclass(frozen=True)
class RunnerKernel:
    release: str
    va_bits: int
    mmap_min_addr: int | None
    how: str  # where the values come from


@dataclass(frozen=True)
class Verification:
    target: str
    advice: str | None  # "rebase -Wl,-Ttext-segment=..." or None
    twin: Twin
    runner: Runner
    kernel: RunnerKernel
    profile: str
    states: int
    runs: tuple[Run, ...]
    model: Prediction
    notes: tuple[str, ...]

    @property
    def worst_run(self) -> Run:
        return min(self.runs, key=lambda r: (r.measured.free_slots, r.measured.free_bytes))

    @property
    def agrees(self) -> bool:
        return all(r.unexplained == 0 for r in self.runs)

    @property
    def contained(self) -> bool:
        lo, hi = self.model.worst.free_slots, self.model.best.free_slots
        return all(lo <= r.measured.free_slots <= hi for r in self.runs)

    @property
    def capacity_ok(self) -> bool:
        return all(r.states_fit >= self.states for r in self.runs)

    @property
    def failures(self) -> tuple[str, ...]:
        """The checks that failed, each as a sentence (empty when all hold)."""
        return tuple(text for ok, text in (
            (self.agrees, "the scan and the accounting of the run's own maps disagree "
                          "where no documented cause applies"),
            (self.contained, "the measurement lies outside the kernel model's range"),
            (self.capacity_ok, f"fewer than {self.states} JIT state(s) fit"),
        ) if not ok)

    @property
    def ok(self) -> bool:
        return not self.failures

    @property
    def exit_code(self) -> int:
        return EXIT_OK if self.ok else EXIT_FINDINGS


def _runner_kernel(maps: ProcessMaps, spec: TwinSpec, runner: Runner,
                   mmap_min_addr: int | None) -> RunnerKernel:
    """Kernel values as the runner shows them: the release (uname; qemu-user reports the
    host's), the smallest VA size of the arch that holds every mapping the run saw, and
    vm.mmap_min_addr as the probe read it."""
    top = max((m.end for m in maps.mappings if m.end < 1 << 63), default=0)
    choices = defaults(spec.arch).va_choices
    va_bits = next((v for v in sorted(choices) if top <= 1 << v), max(choices))
    how = ("the host kernel (qemu-user passes uname and /proc/sys through)"
           if runner is Runner.QEMU_USER else "the kernel the probe ran on")
    return RunnerKernel(os.uname().release, va_bits, mmap_min_addr, how)


def _image_holes(maps: ProcessMaps, image: ElfImage, bias: int) -> list[Span]:
    """Anonymous mappings between the image's PT_LOADs (qemu-user reserves the span)."""
    loads = sorted(image.loads, key=lambda s: s.vaddr)
    gaps = [Span(a.page_span(PAGE).end + bias, b.page_span(PAGE).start + bias)
            for a, b in itertools.pairwise(loads)
            if a.page_span(PAGE).end < b.page_span(PAGE).start]
    return [m.span for m in maps.mappings if not m.path and m.perms == Perm.NONE
            and any(m.span.overlaps(g) for g in gaps) and m.size > PAGE]


def _guest_runs(twin: Twin, profile: str, runs: int) -> GuestResult:
    """``runs`` scans by the twin in one boot of the guest (qemu-system runner).

    A non-PIE twin's anchor is its link address: the window goes on its command line.
    A PIE twin is placed by the guest kernel (ASLR): it reports its anchor first and is
    answered with the window around it (the handshake, relayed by the guest's /init).
    A static PIE's twin scans around its own code and reports to a file (twin_report)."""
    arch = twin.spec.arch
    if twin.reports_to_file:  # a static PIE's twin: the probe inside it, no handshake
        return run_in_guest(arch.name, guest_report_programs(twin, profile, runs),
                            timeout=60 + 30 * runs)
    if twin.spec.kind is LoadKind.EXEC:
        args = probe_scan_args(twin.path, arch, jit=profile)
        return run_in_guest(arch.name, [(twin.path, [*args, "--seed", str(seed)])
                                        for seed in range(1, runs + 1)],
                            timeout=60 + 30 * runs)
    programs = [handshake_program(twin.path, arch, jit=profile, seed=seed)
                for seed in range(1, runs + 1)]
    return run_in_guest(arch.name, programs, timeout=60 + 30 * runs,
                        answer=window_answer(arch, jit=profile))


def _capacity(runs: Sequence[Span], profile_area: int, per_state: int) -> int:
    return states_fit(runs, profile_area, per_state)


def _advised(image: ElfImage, anchor: int, path: str, kind: AdviceKind | None,
             base: int | None, scenario: Scenario) -> tuple[ElfImage, int, str | None]:
    """The image (and anchor) as the advice lays it out, and how to say so: the
    recommendation's own edit value, as ``advise`` predicted it."""
    if base is not None:
        if image.load_kind is not LoadKind.EXEC:
            raise UsageError("--base moves a non-PIE executable; this one is "
                             f"{image.load_kind.describe()}")
        rebase = Rebase(base)
        return rebase.apply(image), rebase.address(image, anchor), f"rebase to {base:#x}"
    if kind is None:
        return image, anchor, None
    advice = advise(path, scenario, anchor=f"{anchor:#x}")
    rec = next((r for r in advice.recommendations if r.kind is kind), None)
    if rec is None or rec.edit is None:
        raise UsageError(f"advise has no {kind} recommendation for {path}")
    text = f"{kind}: {' '.join(rec.flags)}"
    return rec.edit.apply(image), rec.edit.address(image, anchor), text


def verify(path: str, scenario: Scenario = DEFAULT_SCENARIO, *, arch_name: str | None = None,
           runner: Runner | str = Runner.NATIVE, runs: int = DEFAULT_RUNS,
           advice: AdviceKind | None = None, base: int | None = None,
           anchor_spec: str | None = None) -> Verification:
    """Build the twin of ``path`` (as advised), run it ``runs`` times, compare.

    The kernel values are the runner's (measured), not the scenario's overrides."""
    jit, states, mcode = scenario.jit, scenario.demand.states, scenario.demand.mcode
    runner = Runner.named(runner)
    if advice is not None and advice not in ADVICE_KINDS:
        raise UsageError(f"--advice {advice}: one of {', '.join(map(str, ADVICE_KINDS))}")
    if not 1 <= runs <= 100:
        raise UsageError("--runs must be 1..100")
    with ElfReader(path) as reader:
        image = reader.image()
        found = find_anchor(reader, anchor_spec)
        generation = luajit_generation(reader, found) if wants_generation(jit) else None
    if arch_name is not None:
        from layoutkit.core.arches import by_name
        if by_name(arch_name) is not image.arch:
            raise UsageError(f"--arch {arch_name}, but {path} is {image.arch}")
    notes: list[str] = []
    if found.span.size > 1:
        raise UsageError(f"{path} has no anchor symbol (the fallback is its whole "
                         "executable segment, where no single probe function can stand): "
                         "give --anchor SYMBOL|ADDR inside its code")
    laid, anchor, advice_text = _advised(image, found.span.start, path, advice, base, scenario)
    spec = TwinSpec.of(laid, anchor, path if advice_text is None else
                       f"{path} ({advice_text})")
    twin = build_twin(spec)
    profile, note = choose_profile(image.arch, jit, generation)
    if note:
        notes.append(note)
    done: list[Run] = []
    guest = _guest_runs(twin, profile, runs) if runner is Runner.QEMU_SYSTEM else None
    for seed in range(1, runs + 1):
        if guest is not None and twin.reports_to_file:
            result = guest_report_scan(guest, guest.runs[seed - 1], twin, profile)
        elif guest is not None:
            result = scan_result(guest.runs[seed - 1], image.arch, jit=profile)
        elif twin.reports_to_file:
            result = run_report_twin(twin, runner, profile)
        else:
            found_result = run_probe(image.arch, runner=runner, jit=profile, seed=seed,
                                     executable=twin.path)
            assert isinstance(found_result, ScanResult)
            result = found_result
        ctx = result.context
        bias = ctx.self_anchor - anchor
        if bias % ctx.page_size or (spec.kind is LoadKind.EXEC and bias):
            raise ProbeError(f"the twin's anchor is at {ctx.self_anchor:#x}, not at the "
                             f"target's {anchor:#x} (plus a load bias)")
        predicted = model_accounting(result, states=states, mcode=mcode)
        measured = Figures.of_runs(result.free_runs, result.slot)
        fit = _capacity(result.free_runs, predicted.capacity.area_size,
                        predicted.capacity.mcode_per_state)
        done.append(Run(result, bias, predicted, measured, tuple(differences(result)), fit))
    first = done[0].result.context
    if guest is not None:
        kernel_seen = RunnerKernel(guest.facts.release, guest.facts.va_bits,
                                   guest.facts.mmap_min_addr,
                                   f"the guest kernel: {guest.kernel.package} "
                                   f"{guest.kernel.version} under qemu-system")
    else:
        kernel_seen = _runner_kernel(first.maps(), spec, runner, first.mmap_min_addr)
    kernel = KernelConfig.for_arch(image.arch, va_bits=kernel_seen.va_bits,
                                   mmap_min_addr=kernel_seen.mmap_min_addr)
    bias, _ = kernel.nominal_bias(laid, randomize=True)
    point = Span(anchor + bias, anchor + bias + 1)
    window = window_for_span(profile, image.arch, point, kernel.user_space,
                             form_name=scenario.form)
    model = predict(laid, kernel, window, bias, scenario)
    holes = _image_holes(first.maps(), laid, bias) if runner is Runner.QEMU_USER else []
    if holes:
        notes.append("qemu-user reserves the holes between the image's PT_LOAD segments ("
                     + ", ".join(str(h) for h in holes) + "); a real kernel maps an "
                     "ET_EXEC's segments one by one and leaves them free, so the model's "
                     "range does not apply to this runner there: verify on a kernel")
    if twin.reports_to_file:
        notes.append("the target is a static PIE; so is its twin, with static libc and the "
                     "probe (preload.c) inside its segments: its copy scans around the "
                     "twin's code and reports to a file, its buffers mapped outside the "
                     "scanned range")
    elif image.interpreter is None:
        notes.append("the target is linked statically; the twin is dynamic (its loader, "
                     "libc and liblkprobe.so sit in the mmap area, far from the image)")
    if twin.grown:
        notes.append("the twin's own .dynamic and GOT did not fit the target's segments: its "
                     "PT_LOADs cover the target's pages (what the kernel maps), not their "
                     "exact bytes, and the last ends where the target's does")
    if runner is Runner.QEMU_USER:
        notes.append("liblkprobe.so (the probe's code and buffers) and the runner's own "
                     "libraries are in the mmap area, where the target's libraries would be")
    return Verification(path, advice_text, twin, runner, kernel_seen, profile, states,
                        tuple(done), model, tuple(notes))


__all__: Sequence[str] = ("ADVICE_KINDS", "Figures", "Run", "RunnerKernel", "Verification",
                          "verify")
