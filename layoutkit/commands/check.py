"""``layoutkit check``: judge every JIT-hosting binary under some paths against thresholds.

Inputs are ELF files, directories (walked without following symlinks, so a symlink
loop cannot trap the walk; ELF files picked by magic) and Debian packages (unpacked with
``dpkg-deb -x`` into a temporary directory, removed afterwards). A binary is judged when
it embeds or links a JIT target: LuaJIT's VM symbols, a LuaJIT version string, or
DT_NEEDED on libluajit. The figures are the worst case over ASLR
(:func:`layoutkit.commands.inspect.inspect_binary`). Everything else is n/a; a file that
cannot be analysed is an error and the run goes on.

Files are judged in a process pool when there are more than a few; the walk is streamed
and at most a bounded number of batches is in flight, so a directory of a million files
costs memory only for its results.
"""

from __future__ import annotations

import os
import stat
import tempfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from typing import Any

from layoutkit.boundary import REPORT_HINT, internal
from layoutkit.commands.collect import (
    Item,
    Unreadable,
    is_deb,
    os_reason,
    unpack_deb,
    walk,
)
from layoutkit.commands.inspect import inspect_reader
from layoutkit.commands.prescan import NO_JIT, prescan
from layoutkit.config import Config, config_size, scenario_from
from layoutkit.core import arches
from layoutkit.core.kinds import CheckFailure, Status, Verdict
from layoutkit.core.scenario import ABORT_LIMIT, Scenario
from layoutkit.core.units import format_size
from layoutkit.elf import ElfReader
from layoutkit.errors import (
    EXIT_FINDINGS,
    EXIT_INPUT,
    EXIT_INTERNAL,
    EXIT_OK,
    InternalError,
    LayoutkitError,
    UnsupportedArchError,
    UsageError,
)
from layoutkit.window.accounting import Accounting
from layoutkit.window.anchor import DEFAULT_ANCHORS
from layoutkit.window.forecast import Forecast
from layoutkit.window.opcache import php_generation
from layoutkit.window.opcache import text_of as opcache_text
from layoutkit.window.profiles import detect_generation, has_luajit
from layoutkit.window.v8 import BLOB_SYMBOL, V8_EXPORT

__all__ = ["NO_JIT", "Item", "prescan", "walk"]  # re-exported (bench, tests)

INLINE_MAX = 8  # up to this many files: no process pool
BATCH = 16  # files per pool task
WORKER_MEMORY = 4 << 30  # address-space limit of each pool worker (RLIMIT_AS)


@dataclass(frozen=True)
class Settings:
    """What a binary is judged against, and how its layout is modelled."""

    min_window: int = 0  # free bytes the worst case must leave in the window
    min_free_slots: int = 0
    arches: tuple[str, ...] = ()  # judge only these (canonical names); () = all
    scenario: Scenario = field(default_factory=Scenario)  # the JIT (None: detected per binary)
    # A binary fails when traces abort in this share of the replay's runs or more.
    max_abort_probability: float = ABORT_LIMIT

    def __post_init__(self) -> None:
        if not 0 < self.max_abort_probability <= 1:
            raise UsageError(f"--max-abort-probability {self.max_abort_probability}: a "
                             "fraction in (0, 1], such as 0.01")



@dataclass(frozen=True)
class CheckResult:
    """The verdict on one path: a plain value (output/checkreport.py renders it)."""

    path: str  # as reported: the path, or PKG.deb:/member for a package member
    status: Status
    reason: str
    arch: str | None = None
    profile: str | None = None
    evidence: str | None = None
    failures: tuple[CheckFailure, ...] = ()  # which thresholds failed
    worst: Accounting | None = None  # the worst case over ASLR (--min-window, --min-free-slots)
    forecast: Forecast | None = None  # the allocator replay the capacity verdict rests on
    internal: bool = False  # an error that is a bug in layoutkit, not bad input

    @property
    def artifact(self) -> str:
        """The file on disk this result is about (the package for a package member)."""
        deb, sep, _ = self.path.partition(".deb:/")
        return deb + ".deb" if sep else self.path


@dataclass
class Summary:
    results: list[CheckResult] = field(default_factory=list)

    def count(self, status: Status) -> int:
        return sum(1 for r in self.results if r.status == status)

    @property
    def exit_code(self) -> int:
        """5 if layoutkit failed on any path, else 3 if any could not be analysed, else 1
        if any failed, else 0: the exit code says "error" only once all are reported."""
        if any(r.internal for r in self.results):
            return EXIT_INTERNAL
        if self.count(Status.ERROR):
            return EXIT_INPUT
        if self.count(Status.FAIL):
            return EXIT_FINDINGS
        return EXIT_OK


# -- judging one file ------------------------------------------------------------------


def jit_evidence(reader: ElfReader) -> str | None:
    """Why this binary hosts a JIT layoutkit judges (LuaJIT, PHP's opcache, V8), or None when
    nothing says it does."""
    image = reader.image()
    for name in DEFAULT_ANCHORS:
        if reader.symbol(name) is not None:
            return f"LuaJIT VM symbol {name}"
    for needed in image.needed:
        if "luajit" in needed:
            return f"DT_NEEDED {needed}"
    generation = detect_generation(reader.raw_stream(), image.file_size,
                                   luajit_symbols=False, needs_libluajit=False)
    if generation is None:
        generation = php_generation(reader)  # PHP: its opcache JIT
    if generation is not None:
        return generation.evidence
    for name in (BLOB_SYMBOL, V8_EXPORT):
        if reader.symbol(name) is not None:
            return f"V8 symbol {name}"
    return None


def judge(item: Item, settings: Settings) -> CheckResult:
    """The verdict on one file, isolated: bad input is status "error", a bug in layoutkit
    an "error" marked internal; neither stops the run."""
    try:
        with internal(f"judging {item.shown}"):
            return _judge(item, settings)
    except InternalError as err:
        return CheckResult(item.shown, Status.ERROR, err.message, internal=True)


def _judge(item: Item, settings: Settings) -> CheckResult:
    shown = item.shown
    try:
        try:
            why = prescan(item.real)
            if why is not None:
                return CheckResult(shown, Status.NA, why)
        except OSError as e:
            return CheckResult(shown, Status.ERROR, f"cannot read: {os_reason(e)}")
        with ElfReader(item.real) as reader:  # the one open of this file
            image = reader.image()
            evidence = jit_evidence(reader)
            arch = image.arch.name
            if evidence is None:
                return CheckResult(shown, Status.NA, NO_JIT, arch=arch)
            if settings.arches and arch not in settings.arches:
                return CheckResult(shown, Status.NA, f"{arch} is not among the checked "
                                   f"architectures ({', '.join(settings.arches)})", arch=arch,
                                   evidence=evidence)
            if settings.scenario.jit is None and not has_luajit(image.arch):
                # No JIT there (riscv64, ppc64), or one that reaches every address (i386).
                return CheckResult(shown, Status.NA, f"no LuaJIT JIT window on {arch} (no "
                                   "JIT, or every address in reach); --jit generic judges "
                                   "branch reach", arch=arch, evidence=evidence)
            if php_generation(reader) is not None and opcache_text(reader, 0) is None:
                return CheckResult(shown, Status.NA, "opcache.so: its JIT calls PHP's own "
                                   "text; check the php binary", arch=arch, evidence=evidence)
            result = inspect_reader(reader, settings.scenario, search=False)
    except UnsupportedArchError as err:
        return CheckResult(shown, Status.NA, f"no JIT target layoutkit knows: {err.message}")
    except InternalError:
        raise
    except LayoutkitError as err:
        return CheckResult(shown, Status.ERROR, err.message)
    except MemoryError:
        return CheckResult(shown, Status.ERROR, "out of memory (worker limit "
                           f"{format_size(WORKER_MEMORY)})")
    worst = result.prediction.worst
    failures: list[CheckFailure] = []
    figures: list[str] = []
    if worst.free_bytes < settings.min_window:
        failures.append(CheckFailure.MIN_WINDOW)
        figures.append(f"free window {format_size(worst.free_bytes)} "
                       f"({worst.free_bytes} B) < --min-window "
                       f"{format_size(settings.min_window)} ({settings.min_window} B)")
    if worst.free_slots < settings.min_free_slots:
        failures.append(CheckFailure.MIN_FREE_SLOTS)
        figures.append(f"free slots {worst.free_slots} of {worst.slots} < "
                       f"--min-free-slots {settings.min_free_slots}")
    limit = settings.max_abort_probability
    replayed = result.forecast.result
    cap = worst.capacity
    if result.v8 is not None:
        # V8's own threshold: its code range within reach of the builtins in the worst
        # case over ASLR (else builtins remapped or called through a register).
        if not result.v8.worst_near:
            failures.append(CheckFailure.V8_CODE_RANGE)
            figures.append(f"V8's code range out of reach of its builtins: "
                           f"{result.v8.worst.removeprefix('v8: ')}")
    elif replayed is not None:
        if replayed.p_abort >= limit:
            failures.append(CheckFailure.MAX_ABORT_PROBABILITY)
            figures.append(f"p(trace abort) {100 * replayed.p_abort:.1f}% >= "
                           f"--max-abort-probability {limit}")
    elif cap.verdict is not Verdict.OK and result.opcache is None:
        failures.append(CheckFailure.CAPACITY)
        figures.append(f"{cap.states_fit} of {cap.states_requested} JIT states fit "
                       f"({format_size(cap.mcode_per_state)} each, worst case over ASLR)")
    opcache = result.opcache
    if opcache is not None and (not opcache.direct or opcache.refused):
        # php-opcache's own threshold: its JIT buffer as find_prefered_mmap_base places
        # it, within direct-call reach of PHP's text (it replaces the slot arithmetic,
        # which counts the same buffer).
        failures.append(CheckFailure.OPCACHE_DIRECT_CALLS)
        figures.append(f"opcache segment ({opcache.size}): {opcache.how}; {opcache.cost}")
    kernel = f"Linux {result.kernel.release or '(current rules)'} {result.kernel.arch}"
    replay_text = (f"{replayed.states} JIT state(s) abort in {100 * replayed.p_abort:.1f}% of "
                   f"{replayed.runs} runs, seed {replayed.seed}, {kernel}"
                   if replayed is not None else f"no replay: {result.forecast.reason}")
    if failures:
        where = "worst case over ASLR" if result.v8 is not None else replay_text
        reason = "; ".join(figures) + f" ({where})"
    elif result.v8 is not None:
        reason = (f"V8's code range within reach of its builtins in every case: "
                  f"{result.v8.worst.removeprefix('v8: ')}")
    else:
        fit = ("" if replayed is not None
               else f", {cap.states_fit} JIT states fit >= {cap.states_requested}")
        reason = (f"free window {format_size(worst.free_bytes)} ({worst.free_bytes} B) >= "
                  f"{format_size(settings.min_window)}, free slots {worst.free_slots} of "
                  f"{worst.slots} >= {settings.min_free_slots} (worst case over ASLR)"
                  f"{fit}; {replay_text}")
        if opcache is not None:
            reason += f"; opcache segment ({opcache.size}): {opcache.cost}"
    return CheckResult(shown, Status.FAIL if failures else Status.PASS, reason, arch=arch,
                       profile=result.profile, evidence=evidence, failures=tuple(failures),
                       worst=worst, forecast=result.forecast)


def judge_batch(items: Sequence[Item], settings: Settings) -> list[CheckResult]:
    return [judge(item, settings) for item in items]


def _limit_memory() -> None:
    """Pool worker initializer: bound the worker's address space."""
    try:
        import resource

        _soft, hard = resource.getrlimit(resource.RLIMIT_AS)
        limit = WORKER_MEMORY if hard == resource.RLIM_INFINITY else min(WORKER_MEMORY, hard)
        resource.setrlimit(resource.RLIMIT_AS, (limit, hard))
    except (ImportError, ValueError, OSError):  # pragma: no cover (not Linux)
        pass


# -- running ---------------------------------------------------------------------------


class _Runner:
    """Judges items inline until there are more than INLINE_MAX, then in a pool."""

    def __init__(self, settings: Settings, jobs: int | None) -> None:
        self.settings = settings
        self.jobs = jobs if jobs is not None else (os.cpu_count() or 1)
        self.pool: ProcessPoolExecutor | None = None
        self.pending: list[Item] = []
        self.inflight: list[tuple[Future[list[CheckResult]], list[Item]]] = []

    def _start_pool(self) -> ProcessPoolExecutor:
        if self.pool is None:
            # Memory per worker is bounded by RLIMIT_AS (set in the initializer) and by
            # streaming every file read; a file that needs more is an error result.
            self.pool = ProcessPoolExecutor(max_workers=self.jobs, initializer=_limit_memory)
        return self.pool

    def add(self, item: Item) -> Iterator[CheckResult]:
        self.pending.append(item)
        if self.pool is None and (self.jobs <= 1 or len(self.pending) <= INLINE_MAX):
            if len(self.pending) >= BATCH:  # one worker: judge here, a batch at a time
                yield from judge_batch(self.pending, self.settings)
                self.pending = []
            return
        while len(self.pending) >= BATCH:
            batch, self.pending = self.pending[:BATCH], self.pending[BATCH:]
            self._submit(batch)
        while len(self.inflight) > 4 * self.jobs:
            yield from self._collect()

    def _submit(self, batch: list[Item]) -> None:
        self.inflight.append((self._start_pool().submit(judge_batch, batch, self.settings),
                              batch))

    def _collect(self) -> list[CheckResult]:
        """The oldest batch's results. A worker that died (a crash in a native library,
        the kernel's OOM killer) breaks the pool: the batches it held are judged again,
        one file per fresh worker, so only the file that kills a worker is an error."""
        future, batch = self.inflight.pop(0)
        try:
            return future.result()
        except BrokenProcessPool:
            if self.pool is not None:
                self.pool.shutdown(cancel_futures=True)
                self.pool = None
            retry = [batch] + [b for _, b in self.inflight]
            self.inflight = []
            results = [self._alone(item) for item in batch]
            for other in retry[1:]:
                self._submit(other)
            return results

    def _alone(self, item: Item) -> CheckResult:
        with ProcessPoolExecutor(max_workers=1, initializer=_limit_memory) as pool:
            try:
                return pool.submit(judge, item, self.settings).result()
            except BrokenProcessPool:
                return CheckResult(item.shown, Status.ERROR, "the worker process judging this "
                                   f"file died (killed by a signal); {REPORT_HINT}",
                                   internal=True)

    def flush(self) -> Iterator[CheckResult]:
        """Everything still pending or in flight (before a package's files are removed)."""
        if self.pool is not None and self.pending:
            self._submit(self.pending)
        elif self.pending:
            yield from judge_batch(self.pending, self.settings)
        self.pending = []
        while self.inflight:
            yield from self._collect()

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(cancel_futures=True)


def _items(runner: _Runner, found: Iterable[Item | Unreadable]) -> Iterator[CheckResult]:
    for thing in found:
        if isinstance(thing, Unreadable):
            yield CheckResult(thing.shown, Status.ERROR, thing.reason)
        else:
            yield from runner.add(thing)


def _path_key(result: CheckResult) -> str:
    return result.path


def check_paths(paths: Sequence[str], settings: Settings, *, jobs: int | None = None,
                on_result: Callable[[CheckResult], None] | None = None) -> Summary:
    """Judge every binary under ``paths``: results in input order, a directory's (or a
    package's) sorted by path."""
    summary = Summary()

    def keep(results: Iterable[CheckResult]) -> None:
        for result in results:
            summary.results.append(result)
            if on_result is not None:
                on_result(result)

    runner = _Runner(settings, jobs)
    try:
        for path in paths:
            try:
                info = os.stat(path)  # follows a symlink given by name
            except OSError as e:
                keep([CheckResult(path, Status.ERROR, f"cannot read: {os_reason(e)}")])
                continue
            if stat.S_ISDIR(info.st_mode):
                keep(runner.flush())
                before = len(summary.results)
                keep(_items(runner, walk(path)))
                keep(runner.flush())
                summary.results[before:] = sorted(summary.results[before:], key=_path_key)
            elif stat.S_ISREG(info.st_mode) and is_deb(path):
                keep(runner.flush())
                with tempfile.TemporaryDirectory(prefix="layoutkit-deb-") as tmp:
                    why = unpack_deb(path, tmp)
                    if why is not None:
                        keep([CheckResult(path, Status.ERROR, why)])
                        continue
                    before = len(summary.results)
                    keep(_items(runner, walk(tmp, path)))
                    keep(runner.flush())  # the files go away with the directory
                    summary.results[before:] = sorted(summary.results[before:],
                                                      key=_path_key)
                    if len(summary.results) == before:
                        keep([CheckResult(path, Status.NA, "the package holds no ELF file")])
            elif stat.S_ISREG(info.st_mode):
                keep(runner.add(Item(path, path)))
            else:
                keep([CheckResult(path, Status.ERROR, "not a regular file or directory")])
        keep(runner.flush())
    finally:
        runner.close()
    return summary


def resolve_arches(names: Iterable[str]) -> tuple[str, ...]:
    """Canonical names for ``--arch`` values (aliases such as arm64 accepted)."""
    return tuple(arches.by_name(name).name for name in names)


def check_partition(paths: Iterable[str], settings: Settings) -> list[CheckResult]:
    """Judge one share of a fleet in this process (for a Dask or Ray bag of paths).

    The workers must see the paths (a shared file system); gather the lists into a
    :class:`Summary` for one report and one exit code.
    """
    return check_paths(list(paths), settings, jobs=1).results


def settings_from(options: dict[str, Any], config: Config) -> Settings:
    """The gate's settings: command-line ``options`` (None: not given) over ``config``."""

    def pick(key: str) -> Any:
        value = options.get(key)
        return value if value is not None else config.get(key)

    arch = pick("arch")
    names = (arch,) if isinstance(arch, str) else tuple(arch or ())
    min_window = config_size(pick("min_window"))
    max_abort = pick("max_abort_probability")
    return Settings(
        min_window=min_window or 0,
        min_free_slots=pick("min_free_slots") or 0,
        arches=resolve_arches(names),
        scenario=scenario_from(options, config),
        max_abort_probability=ABORT_LIMIT if max_abort is None else float(max_abort),
    )
