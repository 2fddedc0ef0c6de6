"""Where native code is built and where it runs: compilers, Debian triplets, runners.

Runners (:class:`Runner`):

- ``native``: the host kernel, host arch, built with ``cc`` (``$CC``).
- ``qemu-user``: ``qemu-<arch> -L /usr/<triplet>``, built with ``<triplet>-gcc``. Quick,
  but not a kernel: its infidelities (:data:`QEMU_USER_INFIDELITIES`) are stated in
  every result.
- ``qemu-system``: Debian's own kernel for the arch booted under ``qemu-system-<arch>``
  (``native/guest/``): a real foreign kernel.

A missing compiler or qemu raises :class:`ProbeError` (exit 4) naming the Debian package.
"""

from __future__ import annotations

import enum
import os
import platform
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from layoutkit.core import arches
from layoutkit.core.arches import Arch
from layoutkit.errors import ProbeError, UsageError


@dataclass(frozen=True)
class Target:
    """How to build for and run on one arch: Debian's cross toolchain names."""

    triplet: str
    compiler_package: str  # gcc-<triplet> plus the libc6-dev-<debarch>-cross it links
    qemu: str  # qemu-user binary

    @property
    def sysroot(self) -> Path:
        """The cross sysroot Debian's libc6-<debarch>-cross installs."""
        return Path("/usr") / self.triplet


# Debian 12 package names (gcc-<triplet>, libc6-dev-<debian arch>-cross, qemu-user).
TARGETS: dict[str, Target] = {
    "x86_64": Target("x86_64-linux-gnu", "gcc-x86-64-linux-gnu libc6-dev-amd64-cross",
                     "qemu-x86_64"),
    "i386": Target("i686-linux-gnu", "gcc-i686-linux-gnu libc6-dev-i386-cross", "qemu-i386"),
    "aarch64": Target("aarch64-linux-gnu", "gcc-aarch64-linux-gnu libc6-dev-arm64-cross",
                      "qemu-aarch64"),
    "arm": Target("arm-linux-gnueabihf", "gcc-arm-linux-gnueabihf libc6-dev-armhf-cross",
                  "qemu-arm"),
    "ppc64le": Target("powerpc64le-linux-gnu",
                      "gcc-powerpc64le-linux-gnu libc6-dev-ppc64el-cross", "qemu-ppc64le"),
    "riscv64": Target("riscv64-linux-gnu", "gcc-riscv64-linux-gnu libc6-dev-riscv64-cross",
                      "qemu-riscv64"),
    "s390x": Target("s390x-linux-gnu", "gcc-s390x-linux-gnu libc6-dev-s390x-cross",
                    "qemu-s390x"),
    "mips64el": Target("mips64el-linux-gnuabi64",
                       "gcc-mips64el-linux-gnuabi64 libc6-dev-mips64el-cross", "qemu-mips64el"),
}

# What qemu-user gets wrong, measured with Debian 12's qemu-user 7.2 (the first is
# tests/native/test_probe.py::test_qemu_user_moves_mappings_and_says_so, the holes it
# reserves tests/commands/test_verify.py::test_qemu_user_image_holes_are_named_and_fail).
QEMU_USER_INFIDELITIES = (
    "qemu-user is not a kernel: MAP_FIXED_NOREPLACE is passed on as a plain hint, so a "
    "taken slot shows as 'moved' (the mapping landed elsewhere), never as EEXIST",
    "a PIE loads at a fixed base without ASLR (0x5500000000 on aarch64, 0x4000000000 on "
    "riscv64 and ppc64le), not at ELF_ET_DYN_BASE plus randomisation",
    "the p_vaddr of an ET_DYN is honoured (a real kernel ignores it)",
    "qemu adds a one-page anonymous r-x mapping (its signal trampoline) that looks like "
    "JIT code",
    "RLIMIT_AS and vm.mmap_min_addr apply to qemu's own host process, not to the guest",
)


class Runner(enum.Enum):
    """Where a probe (or a layout twin) runs."""

    NATIVE = "native"
    QEMU_USER = "qemu-user"
    QEMU_SYSTEM = "qemu-system"

    def __str__(self) -> str:
        return self.value

    @classmethod
    def named(cls, name: str | Runner) -> Runner:
        """The runner called ``name``; a :class:`UsageError` naming the known ones."""
        if isinstance(name, Runner):
            return name
        try:
            return cls(name)
        except ValueError:
            known = ", ".join(r.value for r in cls)
            raise UsageError(f"unknown runner {name!r} (known: {known})") from None

    @property
    def interactive(self) -> bool:
        """True when the probe's handshake goes through its own stdin and stdout (a
        child process of layoutkit); in a qemu-system guest the guest's /init relays it
        over the serial console instead (``layoutkit.native.guest``)."""
        return self is not Runner.QEMU_SYSTEM

    @property
    def infidelities(self) -> tuple[str, ...]:
        """What this runner gets wrong compared with a kernel (empty on a kernel)."""
        return QEMU_USER_INFIDELITIES if self is Runner.QEMU_USER else ()


# The runners ``layoutkit probe`` offers: all of them (in the guest, /init relays the
# handshake).
PROBE_RUNNERS = tuple(Runner)


def host_arch() -> Arch:
    """The arch this Python runs on."""
    return arches.by_name(platform.machine())


def target(arch: Arch) -> Target:
    """Debian's cross toolchain for ``arch``; :class:`ProbeError` when there is none."""
    found = TARGETS.get(arch.name)
    if found is None:
        raise ProbeError(f"no cross toolchain is known for {arch} (Debian 12 has none)")
    return found


@dataclass(frozen=True)
class Compiler:
    """A C compiler for one arch, found on PATH."""

    arch: Arch
    path: str
    package: str  # the Debian package(s) that provide it

    @classmethod
    def for_arch(cls, arch: Arch, *, cross: bool = False) -> Compiler:
        """``$CC`` (default ``cc``) for the host arch, else ``<triplet>-gcc``; ``cross``
        takes the cross compiler even for the host arch (static guest builds)."""
        if arch == host_arch() and not cross:
            command, package = os.environ.get("CC") or "cc", "gcc"
        else:
            found = target(arch)
            command, package = f"{found.triplet}-gcc", found.compiler_package
        path = shutil.which(command)
        if path is None:
            raise ProbeError(f"no C compiler for {arch} ({command} not found): "
                             f"apt-get install {package}")
        return cls(arch, path, package)


def run_command(arch: Arch, runner: Runner, exe: Path) -> list[str]:
    """The command that runs ``exe`` (built for ``arch``) on ``runner``."""
    if runner is Runner.NATIVE:
        host = host_arch()
        if arch != host:
            raise UsageError(f"cannot run a {arch} probe natively on {host}: "
                             "use --runner qemu-user")
        return [str(exe)]
    if runner is not Runner.QEMU_USER:
        raise UsageError(f"the {runner} runner boots a guest: see layoutkit.native.guest")
    found = TARGETS.get(arch.name)
    if found is None:
        raise ProbeError(f"no qemu-user target is known for {arch}")
    qemu = shutil.which(found.qemu)
    if qemu is None:
        raise ProbeError(f"{found.qemu} not found: apt-get install qemu-user")
    if arch == host_arch():
        return [qemu, str(exe)]
    return [qemu, "-L", str(found.sysroot), str(exe)]


__all__: Sequence[str] = ("PROBE_RUNNERS", "QEMU_USER_INFIDELITIES", "TARGETS", "Compiler",
                          "Runner", "Target", "host_arch", "run_command", "target")
