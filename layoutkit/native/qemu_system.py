"""The qemu-system runner's names under their first import path (now ``native/guest/``).

``run_in_guest`` and ``fetch_kernel`` live in :mod:`layoutkit.native.guest.boot` and
:mod:`layoutkit.native.guest.kernels`; new code imports them from there.
"""

from __future__ import annotations

from collections.abc import Sequence

from layoutkit.native.guest.boot import (
    GuestKernel,
    GuestResult,
    GuestRun,
    build_static,
    parse_console,
    run_in_guest,
)
from layoutkit.native.guest.initramfs import initramfs, runtime_files
from layoutkit.native.guest.kernels import (
    SYSTEMS,
    GuestSystem,
    KernelImage,
    fetch_kernel,
    system_for,
)
from layoutkit.native.guest.probe import build_guest_probe, probe_scan_args, scan_result

__all__: Sequence[str] = (
    "SYSTEMS", "GuestKernel", "GuestResult", "GuestRun", "GuestSystem", "KernelImage",
    "build_guest_probe", "build_static", "fetch_kernel", "initramfs", "parse_console",
    "probe_scan_args", "run_in_guest", "runtime_files", "scan_result", "system_for",
)
