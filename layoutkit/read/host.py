"""This machine's kernel facts, read from the real files, and a capture of them as a file.

``capture()`` reads the release and machine (``os.uname()``, as ``uname -r`` / ``-m``)
and the sysctls the layout model depends on (Documentation/admin-guide/sysctl/kernel.rst
and vm.rst):

- ``/proc/sys/kernel/randomize_va_space``: 0 no randomisation, 1 mmap base, stack and
  vDSO, 2 also the brk heap (fs/binfmt_elf.c calls ``arch_randomize_brk()`` only when
  ``randomize_va_space > 1``);
- ``/proc/sys/vm/mmap_min_addr``: the lowest address a hint can get;
- ``/proc/sys/vm/mmap_rnd_bits``: ``arch_mmap_rnd()`` draws this many bits of pages
  (mm/util.c; absent on kernels without CONFIG_HAVE_ARCH_MMAP_RND_BITS);
- ``/proc/sys/vm/legacy_va_layout``: 1 puts the mmap area bottom-up.

``layoutkit kernel --capture`` writes them as a JSON document (output/document.py
``capture_json``); ``load_capture`` reads that document back for ``--kernel-file``.
"""

from __future__ import annotations

import json
import os
from functools import cache
from pathlib import Path

from layoutkit.core import arches
from layoutkit.core.scenario import KernelCapture
from layoutkit.core.text import shown
from layoutkit.errors import InputError, UsageError

SYSCTLS = {
    "randomize_va_space": "kernel/randomize_va_space",
    "mmap_min_addr": "vm/mmap_min_addr",
    "mmap_rnd_bits": "vm/mmap_rnd_bits",
    "legacy_va_layout": "vm/legacy_va_layout",
}
CAPTURE_SCHEMA = "layoutkit/kernel/1"
MAX_CAPTURE = 1 << 16  # bytes: a capture is a few hundred


def _sysctl(root: Path, name: str) -> int | None:
    path = root / SYSCTLS[name]
    try:
        text = path.read_text(encoding="ascii")
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"{path}: cannot read this kernel's {name}: {e}",
                         path=str(path)) from None
    try:
        return int(text.strip())
    except ValueError:
        raise InputError(f"{path}: {shown(text.strip())!r} is not a number",
                         path=str(path)) from None


def capture(root: Path = Path("/proc/sys")) -> KernelCapture:
    """This machine's kernel facts (``root``: where the sysctl files are)."""
    uname = os.uname()
    arch = arches.by_name(uname.machine)  # UsageError: not an arch layoutkit knows
    values = {name: _sysctl(root, name) for name in SYSCTLS}
    aslr, min_addr = values["randomize_va_space"], values["mmap_min_addr"]
    if aslr is None or min_addr is None:
        raise InputError(f"{root}: no randomize_va_space or mmap_min_addr: not a Linux "
                         "/proc/sys", path=str(root))
    return KernelCapture(uname.release, arch.name, aslr, min_addr, values["mmap_rnd_bits"],
                         bool(values["legacy_va_layout"]), "this machine (uname, /proc/sys)")


@cache
def host() -> KernelCapture | None:
    """This machine's facts, read once per process; None where there is no /proc/sys
    or the machine is not an arch layoutkit knows."""
    try:
        return capture()
    except (InputError, UsageError):
        return None


def load_capture(path: str) -> KernelCapture:
    """A ``layoutkit kernel --capture`` document (``--kernel-file``), checked key by key."""

    def bad(message: str) -> InputError:
        return InputError(f"kernel capture: {message}", path=path)

    try:
        with open(path, "rb") as stream:
            raw = stream.read(MAX_CAPTURE + 1)
    except OSError as e:
        raise bad(f"cannot read it: {e.strerror}") from None
    try:
        doc = json.loads(raw[:MAX_CAPTURE].decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise bad("not a JSON document (write one with `layoutkit kernel --capture`)") from None
    if not isinstance(doc, dict) or doc.get("schema") != CAPTURE_SCHEMA:
        raise bad(f"not a {CAPTURE_SCHEMA} document (write one with "
                  "`layoutkit kernel --capture`)")
    sysctl = doc.get("sysctl")
    if not isinstance(sysctl, dict):
        raise bad("no sysctl object")
    values = {**doc, **sysctl}

    def number(key: str, optional: bool = False) -> int | None:
        value = values.get(key)
        if value is None and optional:
            return None
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad(f"{key} must be an integer, not {value!r}")
        return value

    release, machine = doc.get("release"), doc.get("machine")
    if not isinstance(release, str) or not isinstance(machine, str):
        raise bad("release and machine must be strings")
    try:
        arch = arches.by_name(machine)
    except UsageError:
        raise bad(f"machine {machine!r} is not an architecture layoutkit knows") from None
    aslr, min_addr, legacy = (number(k) for k in ("randomize_va_space", "mmap_min_addr",
                                                  "legacy_va_layout"))
    rnd = number("mmap_rnd_bits", optional=True)
    assert aslr is not None and min_addr is not None and legacy is not None
    if aslr not in (0, 1, 2) or min_addr < 0 or legacy not in (0, 1) or (
            rnd is not None and not 0 < rnd < 64):
        raise bad(f"randomize_va_space {aslr}, mmap_min_addr {min_addr}, mmap_rnd_bits "
                  f"{rnd}, legacy_va_layout {legacy}: not values a kernel has")
    return KernelCapture(release, arch.name, aslr, min_addr, rnd, bool(legacy),
                         f"--kernel-file {shown(path)}")
