"""Debian's own kernels for the qemu-system guest: which package, fetched once.

Kernels come from Debian's archive (``apt-get download`` through a private apt state for
the guest's Debian arch; the meta package names the versioned image package) and are
cached under ``$XDG_CACHE_HOME/layoutkit/guest/kernels`` keyed by that version. Offline,
the newest kernel already downloaded is used.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from layoutkit.core import arches
from layoutkit.core.arches import Arch
from layoutkit.errors import ProbeError, UsageError
from layoutkit.native.build import cache_dir

APT_REFRESH = 24 * 3600.0  # seconds between `apt-get update`s of a private apt state


@dataclass(frozen=True)
class GuestSystem:
    """How to boot one arch: Debian's kernel package and the qemu-system command."""

    arch: str  # layoutkit arch name
    debian_arch: str
    kernel_package: str  # the meta package; it depends on the versioned image package
    kernel_glob: str  # the image inside that package
    qemu: str
    qemu_package: str
    machine: tuple[str, ...]
    console: str


SYSTEMS: dict[str, GuestSystem] = {
    "aarch64": GuestSystem("aarch64", "arm64", "linux-image-cloud-arm64", "boot/vmlinuz-*",
                           "qemu-system-aarch64", "qemu-system-arm",
                           ("-M", "virt", "-cpu", "cortex-a72"), "ttyAMA0"),
    "ppc64le": GuestSystem("ppc64le", "ppc64el", "linux-image-powerpc64le", "boot/vmlinux-*",
                           "qemu-system-ppc64", "qemu-system-ppc",
                           ("-M", "pseries", "-vga", "none"), "hvc0"),
}


@dataclass(frozen=True)
class KernelImage:
    """A Debian kernel image on disk and where it came from."""

    path: Path
    package: str  # the versioned image package, e.g. linux-image-6.1.0-56-cloud-arm64
    version: str  # its Debian version


def guest_cache() -> Path:
    return cache_dir("guest")


def system_for(arch: Arch | str) -> GuestSystem:
    name = arch.name if isinstance(arch, Arch) else arches.by_name(arch).name
    system = SYSTEMS.get(name)
    if system is None:
        raise UsageError(f"no qemu-system guest is known for {name} "
                         f"(known: {', '.join(SYSTEMS)})")
    return system


def _run(command: list[str], what: str, *, cwd: Path | None = None,
         timeout: float = 300) -> str:
    try:
        done = subprocess.run(command, capture_output=True, text=True, cwd=cwd,
                              timeout=timeout, check=False)
    except (OSError, subprocess.SubprocessError) as e:
        raise ProbeError(f"{what}: {' '.join(command[:2])} failed: {e}") from e
    if done.returncode != 0:
        tail = " / ".join(done.stderr.strip().splitlines()[-3:])
        raise ProbeError(f"{what}: `{' '.join(command)}` exited {done.returncode}: {tail}")
    return done.stdout


def _cached_kernels(root: Path) -> list[KernelImage]:
    found = []
    for meta in sorted(root.glob("*/kernel.json"), key=lambda p: p.stat().st_mtime):
        doc = json.loads(meta.read_text())
        image = meta.with_name(doc["image"])
        if image.is_file():
            found.append(KernelImage(image, doc["package"], doc["version"]))
    return found


def fetch_kernel(arch: Arch | str) -> KernelImage:
    """Debian's kernel image for ``arch`` (downloaded once per package version)."""
    system = system_for(arch)
    for tool in ("apt-get", "apt-cache", "dpkg-deb"):
        if shutil.which(tool) is None:
            raise ProbeError(f"{tool} not found: the guest kernel comes from Debian's archive")
    root = guest_cache() / "kernels" / system.debian_arch
    apt = guest_cache() / "apt" / system.debian_arch
    for folder in (apt / "state" / "lists" / "partial", apt / "cache" / "archives" / "partial"):
        folder.mkdir(parents=True, exist_ok=True)
    opts = [f"-oDir::State={apt / 'state'}", f"-oDir::Cache={apt / 'cache'}",
            f"-oAPT::Architecture={system.debian_arch}",
            f"-oAPT::Architectures::={system.debian_arch}",
            "-oDir::State::status=/dev/null", "-oAPT::Sandbox::User=root"]
    stamp = apt / "updated"
    failed: ProbeError | None = None
    if not stamp.exists() or time.time() - stamp.stat().st_mtime > APT_REFRESH:
        try:
            _run(["apt-get", *opts, "-qq", "update"], "refreshing the private apt state")
            stamp.touch()
        except ProbeError as e:  # often one index of a mirror mid-sync: the rest is usable
            failed = e
    try:
        record = _run(["apt-cache", *opts, "show", "--no-all-versions", system.kernel_package],
                      f"looking up {system.kernel_package}")
    except ProbeError as e:
        cached = _cached_kernels(root)
        if cached:  # offline: the newest kernel already downloaded will do
            return cached[-1]
        raise (failed or e) from None
    depends = re.search(r"^Depends: (.*)$", record, re.M)
    image = depends and re.search(r"\b(linux-image-[\w.+-]+)\s*\(=\s*([^)\s]+)\)",
                                  depends.group(1))
    if image is None:
        raise ProbeError(f"{system.kernel_package} names no versioned linux-image package")
    package, version = image.group(1), image.group(2)
    folder = root / f"{package}_{version}"
    meta = folder / "kernel.json"
    if meta.is_file():
        doc = json.loads(meta.read_text())
        return KernelImage(folder / doc["image"], package, version)
    root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".fetch-", dir=root) as tmp:
        work = Path(tmp)
        _run(["apt-get", *opts, "-qq", "download", f"{package}={version}"],
             f"downloading {package}", cwd=work)
        debs = sorted(work.glob(f"{package}_*.deb"))
        if not debs:
            raise ProbeError(f"apt-get download left no {package} .deb")
        _run(["dpkg-deb", "-x", str(debs[0]), str(work / "x")], f"unpacking {debs[0].name}")
        images = sorted((work / "x").glob(system.kernel_glob))
        if not images:
            raise ProbeError(f"{debs[0].name} holds no {system.kernel_glob}")
        done = work / "done"
        done.mkdir()
        os.replace(images[0], done / images[0].name)
        (done / "kernel.json").write_text(json.dumps({"package": package, "version": version,
                                                       "image": images[0].name}))
        try:
            os.rename(done, folder)  # atomic: a concurrent fetch leaves one complete folder
        except OSError:
            if not meta.is_file():
                raise
    return KernelImage(folder / images[0].name, package, version)




__all__: Sequence[str] = ("SYSTEMS", "GuestSystem", "KernelImage", "fetch_kernel",
                          "guest_cache", "system_for")
