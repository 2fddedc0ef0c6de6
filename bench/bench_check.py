"""``layoutkit check`` over a system's binaries against a ``readelf -lW`` loop, in one run.

Lists every ELF file under /usr/lib/x86_64-linux-gnu and /usr/bin the way the check
walks them (regular files, symlinks not followed, picked by magic), then times

  * ``layoutkit check DIR...`` as a whole process (interpreter start-up included), and
  * ``for f in ...; do readelf -lW "$f" >/dev/null; done`` over the same list,

and prints both times and the ratio. Target (issue 6): at least as fast as the loop.

    python3 bench/bench_check.py [DIR ...] [--repeat 2]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from layoutkit.commands.check import Item, walk

DIRS = ("/usr/lib/x86_64-linux-gnu", "/usr/bin")


def elf_files(dirs: list[str]) -> list[str]:
    return [item.real for top in dirs if os.path.isdir(top)
            for item in walk(top) if isinstance(item, Item)]


def time_check(dirs: list[str]) -> tuple[float, dict[str, int]]:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "layoutkit", "check", *dirs, "--format",
                           "json"], capture_output=True, text=True, env=env, check=False)
    elapsed = time.perf_counter() - start
    if done.returncode not in (0, 1, 3):
        sys.exit(f"layoutkit check failed ({done.returncode}): {done.stderr}")
    summary: dict[str, int] = json.loads(done.stdout)["summary"]
    return elapsed, summary


def time_readelf_loop(files: list[str]) -> float:
    with tempfile.NamedTemporaryFile("w", suffix=".txt") as listing:
        listing.write("\n".join(files) + "\n")
        listing.flush()
        script = (f'while IFS= read -r f; do readelf -lW "$f" >/dev/null 2>&1; done '
                  f'< {listing.name}')
        start = time.perf_counter()
        subprocess.run(["bash", "-c", script], check=True)
        return time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dirs", nargs="*", default=list(DIRS))
    parser.add_argument("--repeat", type=int, default=2, help="best of N (default 2)")
    args = parser.parse_args()
    if not shutil.which("readelf"):
        print("readelf is not installed: nothing to compare against")
        return 1
    files = elf_files(args.dirs)
    size = sum(os.path.getsize(f) for f in files)
    print(f"{len(files)} ELF files, {size / 2**20:.0f} MiB, under {' '.join(args.dirs)}; "
          f"{os.cpu_count()} cores")
    time_readelf_loop(files[:50])  # warm the page cache for both sides
    check_times, loop_times = [], []
    summary: dict[str, int] = {}
    for _ in range(args.repeat):
        elapsed, summary = time_check(args.dirs)
        check_times.append(elapsed)
        loop_times.append(time_readelf_loop(files))
    check_t, loop_t = min(check_times), min(loop_times)
    print(f"  layoutkit check     {check_t:7.2f} s   ({summary['total']} paths: "
          f"{summary['pass']} pass, {summary['fail']} fail, {summary['error']} error, "
          f"{summary['n/a']} n/a)")
    print(f"  readelf -lW loop    {loop_t:7.2f} s")
    print(f"  ratio: layoutkit check {loop_t / check_t:.2f}x the speed of the loop")
    if summary["total"] != len(files):
        print(f"  note: check reported {summary['total']} paths for {len(files)} files")
    print(f"target at least as fast as the readelf -lW loop: "
          f"{'met' if check_t <= loop_t else 'MISSED'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
