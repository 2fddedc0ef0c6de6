"""PC-relative reference scan: layoutkit against llvm-objdump (and objdump) in one run.

On Debian's libLLVM-14 for x86-64 (the local libllvm14 package) and for arm64 (fetched
with `apt-get download` through a private apt state for the arm64 architecture, cached
under ~/.cache/layoutkit-bench), time:

- the peers disassembling the whole file: `llvm-objdump -d FILE > /dev/null` (and
  GNU `objdump -d` for x86-64, the issue's x86-64 target);
- layoutkit's scan of every PC-relative reference between sections (refs.scan: the
  numpy pre-scan confirmed with capstone on arm64, chunked capstone on both cores on
  x86-64), in a fresh process whose peak memory (ru_maxrss) is reported.

Targets (issue 4): arm64 at least 50x faster than llvm-objdump; x86-64 no slower than
`objdump -d`; peak memory under 500 MB.

    python3 bench/bench_pcrel.py
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

X86 = Path("/usr/lib/x86_64-linux-gnu/libLLVM-14.so.1")
CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "layoutkit-bench"
ARM64_LIB = "usr/lib/aarch64-linux-gnu/libLLVM-14.so.1"

_SCAN = """
import json, resource, sys, time
t0 = time.perf_counter()
from layoutkit.elf import ElfReader
from layoutkit.read.refs import scan
t1 = time.perf_counter()
with ElfReader(sys.argv[1]) as reader:
    pairs = scan(reader)
t2 = time.perf_counter()
print(json.dumps({"scan": t2 - t1, "import": t1 - t0, "pairs": len(pairs),
                  "refs": sum(p.count for p in pairs),
                  "maxrss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}))
"""


def fetch_arm64() -> Path | None:
    target = CACHE / "libllvm14-arm64" / ARM64_LIB
    if target.exists():
        return target
    if not shutil.which("apt-get") or not shutil.which("dpkg-deb"):
        return None
    state, cache, dl = CACHE / "apt" / "state", CACHE / "apt" / "cache", CACHE / "dl"
    for folder in (state / "lists" / "partial", cache / "archives" / "partial", dl):
        folder.mkdir(parents=True, exist_ok=True)
    opts = [f"-oDir::State={state}", f"-oDir::Cache={cache}", "-oAPT::Architecture=arm64",
            "-oAPT::Architectures::=arm64", "-oDir::State::status=/dev/null"]
    subprocess.run(["apt-get", *opts, "-qq", "update"], check=True)
    subprocess.run(["apt-get", *opts, "-qq", "download", "libllvm14:arm64"], check=True, cwd=dl)
    deb = next(dl.glob("libllvm14_*_arm64.deb"))
    subprocess.run(["dpkg-deb", "-x", str(deb), str(CACHE / "libllvm14-arm64")], check=True)
    return target


def peer(command: list[str]) -> float:
    start = time.perf_counter()
    with open(os.devnull, "wb") as sink:
        subprocess.run(command, stdout=sink, check=True)
    return time.perf_counter() - start


def layoutkit(path: Path) -> tuple[float, float, dict[str, float]]:
    start = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", _SCAN, str(path)], capture_output=True,
                         text=True, check=True).stdout
    total = time.perf_counter() - start
    info = json.loads(out)
    return total, float(info["scan"]), info


def main() -> int:
    rows = []
    arm64 = fetch_arm64()
    for label, path, peers in (
        ("x86-64", X86, [["objdump", "-d"], ["llvm-objdump", "-d"]]),
        ("arm64", arm64, [["llvm-objdump", "-d"]]),
    ):
        if path is None or not path.exists():
            print(f"{label}: {path or 'libllvm14:arm64'} not available, skipped")
            continue
        size = path.stat().st_size
        total, scan, info = layoutkit(path)
        print(f"{label}: {path} ({size / 2**20:.0f} MiB), {info['refs']} references in "
              f"{info['pairs']} section pairs, peak memory {info['maxrss_kib'] / 1024:.0f} MiB")
        print(f"  layoutkit scan {scan:7.2f} s   (whole process {total:.2f} s)")
        for command in peers:
            if not shutil.which(command[0]):
                continue
            t = peer([*command, str(path)])
            print(f"  {' '.join(command):14} {t:7.2f} s   ratio: layoutkit {t / scan:.1f}x "
                  f"faster (whole process {t / total:.1f}x)")
            rows.append((label, command[0], t / scan))
        rows.append((label, "memory", info["maxrss_kib"] / 1024))
    for label, what, value in rows:
        if label == "arm64" and what == "llvm-objdump":
            print(f"target arm64 >= 50x llvm-objdump: {'met' if value >= 50 else 'MISSED'}")
        if label == "x86-64" and what == "objdump":
            print(f"target x86-64 no slower than objdump -d: {'met' if value >= 1 else 'MISSED'}")
        if what == "memory":
            print(f"target {label} peak memory < 500 MB: {'met' if value < 500 else 'MISSED'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
