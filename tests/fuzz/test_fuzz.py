"""The fuzz harnesses inside the test suite: every regression input, then a short run.

Every file under tests/fuzz/regressions/HARNESS/ is an input a harness once crashed on:
each must now pass the harness's rule. Then each harness runs a few hundred
coverage-guided executions from its seed corpus (atheris, a few seconds each); the long
campaign is ``python -m tests.fuzz.campaign`` (README, "Fuzzing").
"""

from __future__ import annotations

import importlib
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.fuzz.harness import REGRESSIONS, regression_inputs, write_seeds
from tests.fuzz.run import HARNESSES
from tests.support import ROOT, require

SHORT_RUNS = 200
# libFuzzer's -mutate_depth (its default, passed explicitly): the most executions one
# fuzzing step makes (mutations of one input, each counted).
MUTATE_DEPTH = 5
_DONE = re.compile(r"^#(\d+)\s+DONE ", re.MULTILINE)


def _cases() -> list[tuple[str, Path]]:
    return [(name, path) for name in HARNESSES for path in regression_inputs(name)]


def test_every_regression_folder_names_a_harness() -> None:
    assert REGRESSIONS.is_dir()
    assert {p.name for p in REGRESSIONS.iterdir() if p.is_dir()} <= set(HARNESSES)


# dpkg-deb unpacks the deb harness's input; gcc builds the jit harness's seeds (and the
# ELF files the maps harness's JIT listings name).
_TOOLS = {"deb": "dpkg-deb", "jit": "gcc", "maps": "gcc"}


def _marks(name: str) -> tuple[pytest.MarkDecorator, ...]:
    return (pytest.mark.toolchain,) if name in _TOOLS else ()


@pytest.mark.parametrize(("name", "path"), [
    pytest.param(n, p, id=f"{n}/{p.name}", marks=_marks(n) if n == "deb" else ())
    for n, p in _cases()])
def test_regression_input(name: str, path: Path) -> None:
    if name == "deb":
        require("dpkg-deb")
    module = importlib.import_module(f"tests.fuzz.fuzz_{name}")
    module.one_input(path.read_bytes())


@pytest.mark.parametrize("name", [pytest.param(n, marks=_marks(n)) for n in HARNESSES])
def test_short_campaign(name: str, tmp_path: Path) -> None:
    """A short coverage-guided run from the seeds: libFuzzer ends it with DONE after at
    least SHORT_RUNS executions (the bound on how many more is below) and no crash (a
    crash ends it early, exit code non-zero). No per-input timeout: on a loaded machine
    one execution can take seconds, and a hang is the campaign's to find (it runs with
    -timeout)."""
    pytest.importorskip("atheris")
    if name in _TOOLS:
        require(_TOOLS[name])
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("LAYOUTKIT_FUZZ_KEEP_GOING", None)
    corpus = tmp_path / "corpus"
    write_seeds(corpus, importlib.import_module(f"tests.fuzz.fuzz_{name}").seeds())
    for path in regression_inputs(name):
        (corpus / f"regression-{path.name}").write_bytes(path.read_bytes())
    initial = len(list(corpus.iterdir()))
    done = subprocess.run(
        [sys.executable, "-m", "tests.fuzz.run", name, str(corpus),
         f"-runs={SHORT_RUNS}", "-seed=1", "-timeout=0", f"-mutate_depth={MUTATE_DEPTH}",
         f"-artifact_prefix={tmp_path}/"],
        capture_output=True, text=True, errors="replace", env=env, cwd=tmp_path,
        timeout=600, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    assert not list(tmp_path.glob("crash-*"))
    # DONE counts every execution: the initial corpus (each seed, and the empty input),
    # run whole even when larger than SHORT_RUNS, then fuzzing steps of up to
    # MUTATE_DEPTH executions until SHORT_RUNS; an execution may be run once more to
    # verify a suspected leak, and that run is counted too (llvm-project issue 66331,
    # FuzzerLoop.cpp TryDetectingAMemoryLeak): "#202 DONE", "#230 DONE". At most twice
    # the planned executions, never fewer than SHORT_RUNS.
    found = _DONE.findall(done.stderr)
    assert len(found) == 1, done.stderr[-2000:]
    ran = int(found[0])
    planned = max(SHORT_RUNS, initial + 1) + MUTATE_DEPTH - 1
    assert SHORT_RUNS <= ran <= 2 * planned, (ran, initial, done.stderr[-2000:])
