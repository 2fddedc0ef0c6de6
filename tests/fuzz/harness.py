"""What every fuzz harness shares: the crash rule, seeds from fixtures/, the driver.

The rule: a harness feeds one input to a reader; the reader may refuse it with a
:class:`~layoutkit.errors.LayoutkitError` (that is its job), but not with one of the
boundary's own errors (:class:`UnforeseenInputError`, :class:`InternalError`: the
safety nets must never be what refuses an input) and not with any other exception.
Either is a crash.

Run one harness (atheris, coverage-guided libFuzzer; flags are libFuzzer's)::

    python -m tests.fuzz.run elf CORPUS_DIR -runs=200000

``python -m tests.fuzz.campaign`` runs them all for the long campaign (README, "Fuzzing").
With ``LAYOUTKIT_FUZZ_KEEP_GOING=DIR`` a crash is saved as ``DIR/crash-<harness>-<sha1>``
with its one-line signature in ``DIR/crashes.txt`` and the run goes on, so one long run
counts every distinct crash instead of stopping at the first.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import traceback
from collections.abc import Callable
from pathlib import Path

from layoutkit.core.scenario import Sampling, Scenario
from layoutkit.errors import InternalError, LayoutkitError, UnforeseenInputError

ROOT = Path(__file__).resolve().parent.parent.parent
FIXTURES = ROOT / "fixtures"
REGRESSIONS = Path(__file__).resolve().parent / "regressions"
# A tmpfs when there is one: every execution writes its input to a file.
SCRATCH = Path("/dev/shm") if Path("/dev/shm").is_dir() else Path(tempfile.gettempdir())


# The allocator replay's figures are not what fuzzing checks (the readers are), and
# atheris stops an execution that runs past a second: a few replay runs keep one short.
FEW_RUNS = Scenario(sampling=Sampling(runs=4))


class CrashError(Exception):
    """An input made a reader fail in a way the rule forbids."""


def check(run: Callable[[], object]) -> None:
    """Run one execution under the crash rule."""
    try:
        run()
    except (UnforeseenInputError, InternalError) as err:
        raise CrashError(f"{type(err).__name__}: {err.message}") from err
    except LayoutkitError:
        return


def signature(error: BaseException) -> str:
    """One line naming a crash by its exception and innermost layoutkit frame."""
    cause = error.__cause__ if isinstance(error, CrashError) and error.__cause__ else error
    inner = cause.__cause__ or cause
    frames = traceback.extract_tb(inner.__traceback__)
    ours = [f for f in frames if "/layoutkit/" in f.filename] or frames
    where = f"{Path(ours[-1].filename).name}:{ours[-1].lineno}" if ours else "?"
    first = str(inner).splitlines()[0][:160] if str(inner) else ""
    return f"{type(inner).__name__} at {where}: {first}"


def scratch_file(name: str) -> Path:
    """A per-process file for one execution's input."""
    return SCRATCH / f"layoutkit-fuzz-{os.getpid()}-{name}"


def regression_inputs(harness: str) -> list[Path]:
    """The committed crash inputs of ``harness`` (tests/fuzz/regressions/HARNESS/*)."""
    folder = REGRESSIONS / harness
    return sorted(p for p in folder.iterdir() if p.is_file()) if folder.is_dir() else []


def write_seeds(corpus: Path, seeds: dict[str, bytes]) -> None:
    corpus.mkdir(parents=True, exist_ok=True)
    for name, data in seeds.items():
        (corpus / name).write_bytes(data)


def fuzz(name: str, one_input: Callable[[bytes], None], seeds: Callable[[], dict[str, bytes]],
         argv: list[str]) -> None:
    """Seed the corpus (the first argument that is not a flag) when it is empty, then
    fuzz with atheris; ``argv`` goes to libFuzzer. The caller has imported the harness
    under ``atheris.instrument_imports`` (:mod:`tests.fuzz.run`)."""
    import atheris

    for arg in argv[1:]:
        if not arg.startswith("-"):
            corpus = Path(arg)
            if not corpus.is_dir() or not any(corpus.iterdir()):
                write_seeds(corpus, seeds())
                for path in regression_inputs(name):
                    (corpus / f"regression-{path.name}").write_bytes(path.read_bytes())
            break
    keep = os.environ.get("LAYOUTKIT_FUZZ_KEEP_GOING")

    def test_one_input(data: bytes) -> None:
        try:
            one_input(data)
        except Exception as error:  # a fuzz harness records every crash (tests only)
            if not keep:
                raise
            _record(Path(keep), name, data, error)

    atheris.Setup(argv, test_one_input)
    atheris.Fuzz()


def _record(folder: Path, name: str, data: bytes, error: BaseException) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    sig = signature(error)
    log = folder / "crashes.txt"
    known = log.read_text().splitlines() if log.exists() else []
    line = f"{name}\t{sig}"
    if line in known:
        return
    with log.open("a") as out:
        out.write(line + "\n")
    digest = hashlib.sha1(data).hexdigest()
    (folder / f"crash-{name}-{digest}").write_bytes(data)
