"""The long fuzz campaign: every harness in turn, on one core, until each has run N inputs.

    python -m tests.fuzz.campaign DIR --runs 150000 [HARNESS...]

Each harness runs as ``python -m tests.fuzz.run NAME DIR/corpus-NAME -runs=...`` with
``LAYOUTKIT_FUZZ_KEEP_GOING=DIR/crashes`` (a crash is recorded and the run goes on) and
libFuzzer's artifacts (timeouts, out-of-memory) under DIR/artifacts; a run that libFuzzer
stops early (a timeout) is resumed from the same corpus for the remaining executions.
One process at a time, so the campaign takes at most one core. It prints
one line per harness: executions, wall time, executions per second, new crash signatures;
``DIR/crashes/crashes.txt`` lists every distinct crash, and each becomes a regression file
under tests/fuzz/regressions/NAME/.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import time
from pathlib import Path

from tests.fuzz.run import HARNESSES

_EXECS = re.compile(r"^#(\d+)\s", re.MULTILINE)
MAX_RESUMES = 20
# One process at a time (one core); a small niceness yields to interactive work without
# starving the run on a busy machine (nice 19 got under a tenth of a core there).
NICE = ("nice", "-n", "5")


def _one(name: str, runs: int, work: Path, timeout: int) -> tuple[int, float]:
    corpus = work / f"corpus-{name}"
    artifacts = work / "artifacts"
    artifacts.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, LAYOUTKIT_FUZZ_KEEP_GOING=str(work / "crashes"))
    done, wall = 0, 0.0
    for attempt in range(MAX_RESUMES):
        if done >= runs:
            break
        start = time.monotonic()
        log = work / f"log-{name}-{time.strftime('%Y%m%dT%H%M%S')}-{attempt}.txt"
        with log.open("w") as err:
            proc = subprocess.run(
                [*NICE, sys.executable, "-m", "tests.fuzz.run", name, str(corpus),
                 f"-runs={runs - done}", f"-timeout={timeout}", "-rss_limit_mb=2048",
                 f"-artifact_prefix={artifacts}/{name}-", "-print_final_stats=1"],
                stdout=subprocess.DEVNULL, stderr=err, env=env, check=False)
        wall += time.monotonic() - start
        text = log.read_text(errors="replace")
        counts = [int(n) for n in _EXECS.findall(text)]
        done += max(counts, default=0)
        if proc.returncode == 0:
            break
    return done, wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=150_000, help="executions per harness")
    parser.add_argument("work", type=Path, help="corpora, logs, crashes")
    parser.add_argument("--timeout", type=int, default=20, help="seconds per execution")
    parser.add_argument("harness", nargs="*", default=list(HARNESSES))
    args = parser.parse_args()
    log = args.work / "crashes" / "crashes.txt"
    for name in args.harness:
        before = len(log.read_text().splitlines()) if log.exists() else 0
        done, wall = _one(name, args.runs, args.work, args.timeout)
        after = len(log.read_text().splitlines()) if log.exists() else 0
        print(f"{name}: {done} executions in {wall:.0f} s ({done / max(wall, 1e-9):.0f}/s), "
              f"{after - before} new crash signatures", flush=True)


if __name__ == "__main__":
    main()
