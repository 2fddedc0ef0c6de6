"""The fixtures are what they claim: rebuilt bit for bit, and run for real."""

from __future__ import annotations

import re
import subprocess

import pytest

from layoutkit.elf import ElfReader
from tests.support import ELF_DIR, FIXTURES, require

# qemu-user binary and sysroot per fixture arch (Debian's cross sysroots).
QEMU = {
    "aarch64": ("qemu-aarch64", "/usr/aarch64-linux-gnu"),
    "riscv64": ("qemu-riscv64", "/usr/riscv64-linux-gnu"),
    "ppc64le": ("qemu-ppc64le", "/usr/powerpc64le-linux-gnu"),
    "s390x": ("qemu-s390x", "/usr/s390x-linux-gnu"),
    "armhf": ("qemu-arm", "/usr/arm-linux-gnueabihf"),
    "i686": ("qemu-i386", "/usr/i686-linux-gnu"),
    "mips64el": ("qemu-mips64el", "/usr/mips64el-linux-gnuabi64"),
}


@pytest.mark.toolchain
def test_fixtures_rebuild_bit_for_bit() -> None:
    require("make")
    for tool in ("aarch64-linux-gnu-gcc", "riscv64-linux-gnu-gcc", "ld.lld", "mold"):
        require(tool)
    # Bit-for-bit only holds with the very toolchain versions that made them.
    now = subprocess.run([str(FIXTURES / "toolchains.sh")], capture_output=True, text=True,
                         check=True, cwd=FIXTURES).stdout
    recorded = (FIXTURES / "TOOLCHAINS.txt").read_text()

    def versions(text: str) -> list[str]:
        return [line for line in text.splitlines() if not line.startswith(("kernel", "os:"))]

    changed = sorted(set(versions(now)) ^ set(versions(recorded)))
    if changed:
        pytest.skip(f"toolchain differs from fixtures/TOOLCHAINS.txt: {changed[:4]}")
    proc = subprocess.run(["make", "-s", "-j2", "-C", str(FIXTURES), "check-determinism"],
                          capture_output=True, text=True, check=False, timeout=1200)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "check-determinism: OK" in proc.stdout


@pytest.mark.qemu_user
@pytest.mark.parametrize("arch", ["x86_64", *QEMU])
@pytest.mark.parametrize("variant", ["nopie", "pie"])
def test_anchor_symbol_is_where_the_running_program_says(arch: str, variant: str) -> None:
    """The program prints &lj_vm_exit_handler; for non-PIE it must equal the symbol."""
    binary = ELF_DIR / arch / variant
    if arch == "x86_64":
        command = [str(binary)]
    else:
        qemu, sysroot = QEMU[arch]
        command = [require(qemu), "-L", sysroot, str(binary)]
    proc = subprocess.run(command, capture_output=True, text=True, timeout=60, check=True)
    printed = re.search(r"lj_vm_exit_handler (0x[0-9a-f]+)", proc.stdout)
    assert printed, proc.stdout
    runtime = int(printed.group(1), 16)
    with ElfReader(binary) as reader:
        symbol = reader.symbol("lj_vm_exit_handler")
    assert symbol is not None
    if variant == "nopie":
        assert runtime == symbol.value
    else:
        # A PIE moves by a page-aligned bias: the offset inside the page stays.
        assert (runtime - symbol.value) % 4096 == 0
