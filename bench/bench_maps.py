"""``layoutkit maps FILE --format json`` on listings of 1k to 262k JIT mappings.

Writes (in a temporary directory) maps listings of a long-running x86-64 JIT server:
its executable, heap and stack, and N anonymous r-x mappings of 8 KiB, each followed by
an 8 KiB hole (the kernel merges adjacent mappings of equal permissions, so every one
stays a line) inside the +-2 GiB rel32 window: the worst case for the occupant and JIT
area computation. Times the whole command in a fresh process (start-up included): wall time, and CPU
time (user + system, which a loaded machine inflates much less), and reports its peak
memory (ru_maxrss of that child alone).
Targets (issue 10): 65,530 mappings (vm.max_map_count's default) under 2 s; 262,144 (a
commonly raised limit) in proportion, i.e. linear.

    python3 bench/bench_maps.py [--counts 1000,10000,65530,262144] [--repeat 1]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

EXE = "/usr/local/bin/jit-server"
AREA = 0x2000  # bytes per JIT mapping (more than qemu-user's one-page trampoline)
BASE = 0x10000000


def listing(count: int) -> str:
    lines = [f"00400000-00405000 r-xp 00000000 fe:00 4242 {EXE}",
             f"00605000-00606000 rw-p 00005000 fe:00 4242 {EXE}",
             "00606000-00627000 rw-p 00000000 00:00 0 [heap]"]
    for i in range(count):
        start = BASE + i * 2 * AREA
        lines.append(f"{start:08x}-{start + AREA:08x} r-xp 00000000 00:00 0")
    lines.append("7ffffffde000-7ffffffff000 rw-p 00000000 00:00 0 [stack]")
    return "\n".join(lines) + "\n"


def run_once(path: Path) -> tuple[float, float, int, int]:
    """Wall seconds, CPU seconds (user + system), peak RSS in KiB and the exit code of
    one ``layoutkit maps`` run."""
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "layoutkit", "maps", str(path),
                             "--arch", "x86_64", "--format", "json"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    elapsed = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    err = proc.stderr.read().decode() if proc.stderr else ""
    if proc.stderr:
        proc.stderr.close()
    if proc.returncode not in (0, 1):
        raise SystemExit(f"layoutkit maps failed ({proc.returncode}): {err.strip()}")
    return elapsed, usage.ru_utime + usage.ru_stime, usage.ru_maxrss, proc.returncode


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--counts", default="1000,10000,65530,262144")
    parser.add_argument("--repeat", type=int, default=1, help="runs per size (best kept)")
    args = parser.parse_args()
    counts = [int(c) for c in args.counts.split(",")]
    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores (wall time grows "
          "with it; CPU time much less)")
    print(f"{'mappings':>9} {'lines':>9} {'MiB':>6} {'wall s':>7} {'CPU s':>6} "
          f"{'CPU us/line':>11} {'peak MiB':>9}")
    with tempfile.TemporaryDirectory(prefix="bench-maps-") as tmp:
        for count in counts:
            path = Path(tmp) / f"maps-{count}"
            path.write_text(listing(count))
            runs = [run_once(path) for _ in range(args.repeat)]
            wall = min(r[0] for r in runs)
            cpu = min(r[1] for r in runs)
            peak = max(r[2] for r in runs)
            lines = count + 4
            print(f"{count:>9} {lines:>9} {path.stat().st_size / 2**20:>6.1f} {wall:>7.2f} "
                  f"{cpu:>6.2f} {cpu / lines * 1e6:>11.1f} {peak / 1024:>9.0f}", flush=True)


if __name__ == "__main__":
    main()
