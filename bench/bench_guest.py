"""The qemu-system runner: boot, run and power-off times, against qemu-user, in one run.

For each guest arch (aarch64 on Debian's cloud-arm64 kernel, ppc64le on its powerpc64le
kernel): one boot with one +-128 MiB probe scan and one boot with ``--runs`` scans, so
the fixed cost (boot to /init, power-off) and the cost per run separate; next to the
peer, the same scan under qemu-user (fast, but not a kernel: no EEXIST). Target: a boot
with one scan under 30 s on aarch64 (47 probe runs and power-off took 22 s when the
runner was first measured).

    python3 bench/bench_guest.py [--runs 10] [--arch aarch64 --arch ppc64le]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time

from layoutkit.errors import ProbeError
from layoutkit.native.guest.boot import GuestResult, run_in_guest
from layoutkit.native.guest.kernels import SYSTEMS
from layoutkit.native.guest.probe import build_guest_probe, probe_scan_args, scan_result
from layoutkit.native.probe import run_probe
from layoutkit.native.toolchain import Runner

MiB = 1 << 20
RADIUS = 128 * MiB
JIT = {"aarch64": "luajit-2.1", "ppc64le": "generic"}  # LuaJIT has no ppc64 JIT


def guest(arch: str, runs: int) -> GuestResult:
    probe = build_guest_probe(arch)
    args = probe_scan_args(probe, arch, jit=JIT[arch], radius=RADIUS)
    return run_in_guest(arch, [(probe, args)] * runs, timeout=600)


def qemu_user(arch: str) -> float:
    start = time.perf_counter()
    run_probe(arch, runner=Runner.QEMU_USER, jit=JIT[arch], radius=RADIUS)
    return time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--arch", action="append", choices=sorted(SYSTEMS))
    options = parser.parse_args()
    verdicts = []
    for arch in options.arch or sorted(SYSTEMS):
        system = SYSTEMS[arch]
        if shutil.which(system.qemu) is None:
            print(f"{arch}: {system.qemu} not installed ({system.qemu_package}), skipped")
            continue
        try:
            one = guest(arch, 1)
            many = guest(arch, options.runs)
        except ProbeError as e:
            print(f"{arch}: {e}")
            continue
        scan = scan_result(one.runs[0], arch, jit=JIT[arch], radius=RADIUS)
        # After /init is up: boots vary by a second or more, the runs themselves do not.
        after = (many.total_s - many.boot_s) - (one.total_s - one.boot_s)
        per_run = after / (options.runs - 1) if options.runs > 1 else 0.0
        print(f"{arch}: {one.kernel.package} {one.kernel.version} "
              f"(VA bits {one.facts.va_bits}, pages {one.facts.page_size // 1024} KiB)")
        print(f"  boot to /init       {one.boot_s:6.2f} s")
        print(f"  1 scan, power-off   {one.total_s:6.2f} s   ({len(scan.outcomes)} slots: "
              f"{scan.counts.free} free, {scan.counts.eexist} EEXIST, "
              f"{scan.counts.eperm} EPERM)")
        print(f"  {f'{options.runs} scans, power-off':19} {many.total_s:6.2f} s   "
              f"({per_run:.2f} s per extra run; in the guest "
              f"{sum(r.wall_ns for r in many.runs) / len(many.runs) / 1e6:.0f} ms per run)")
        try:
            peer = qemu_user(arch)
            print(f"  peer qemu-user      {peer:6.2f} s   (taken slots show as moved, "
                  "never EEXIST: not a kernel)")
        except ProbeError as e:
            print(f"  peer qemu-user      unavailable: {e}")
        if arch == "aarch64":
            verdicts.append(f"target aarch64 boot with one scan < 30 s: "
                            f"{'met' if one.total_s < 30 else 'MISSED'}")
    for line in verdicts:
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
