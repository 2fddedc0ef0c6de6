"""The top of the mmap area with ASLR on and off (KernelConfig.mmap_gap / mmap_top), held
to the kernel's sources per arch and to real processes on this x86-64 host.

Sources: mm/util.c mmap_base() (v6.1; arch/x86/mm/mmap.c and arch/s390/mm/mmap.c apply the
same rule): gap = RLIMIT_STACK + stack_guard_gap (256 pages, mm/mmap.c), plus
STACK_RND_MASK << PAGE_SHIFT when the task randomises, clamped to [MIN_GAP,
STACK_TOP / 6 * 5]; STACK_RND_MASK from each arch/*/include/asm/elf.h.
"""

from __future__ import annotations

import platform
import resource
import subprocess
from pathlib import Path

import pytest

from layoutkit.core.arches import ARCHES, by_name
from layoutkit.core.scenario import Scenario
from layoutkit.elf import ElfReader
from layoutkit.window.aslr import draw
from layoutkit.window.kernel import KernelConfig
from layoutkit.window.layout import predict
from layoutkit.window.profiles import window_for_span
from tests.support import ELF_DIR, require

MiB, GiB = 1 << 20, 1 << 30
RLIMIT = 8 * MiB  # include/uapi/linux/resource.h _STK_LIM


@pytest.mark.parametrize(("name", "randomised_gap"), [
    # x86-64: __STACK_RND_MASK(0) = 0x3fffff pages of 4 KiB (arch/x86/include/asm/elf.h)
    ("x86_64", RLIMIT + 256 * 4096 + 0x3FFFFF * 4096),
    # arm64 with 4 KiB pages: 0x3ffff >> (PAGE_SHIFT - 12) (arch/arm64/include/asm/elf.h)
    ("aarch64", RLIMIT + 256 * 4096 + 0x3FFFF * 4096),
    # riscv64: the same mask (arch/riscv/include/asm/elf.h)
    ("riscv64", RLIMIT + 256 * 4096 + 0x3FFFF * 4096),
    # ppc64 with 64 KiB pages: 0x3ffff >> 4 pages, guard gap 256 x 64 KiB
    # (arch/powerpc/include/asm/elf.h)
    ("ppc64le", RLIMIT + 256 * 65536 + (0x3FFFF >> 4) * 65536),
    # s390x: STACK_RND_MASK = MMAP_RND_MASK = 0x3ff80 (arch/s390/include/asm/elf.h)
    ("s390x", RLIMIT + 256 * 4096 + 0x3FF80 * 4096),
    # arm, i386, mips, loongarch: 0x7ff pages (8 MiB): x86's 32-bit mask, mm/util.c's
    # fallback for the others; 9 MiB + 8 MiB is below MIN_GAP.
    ("i386", 128 * MiB),
    ("arm", 128 * MiB),
    ("mips64el", 128 * MiB),
    ("loongarch64", 128 * MiB),
])
def test_the_gap_keeps_the_stack_randomisation_free(name: str, randomised_gap: int) -> None:
    kernel = KernelConfig.for_arch(by_name(name))
    assert kernel.mmap_gap(randomize=True) == randomised_gap
    # ASLR off: 8 MiB + the guard gap is below MIN_GAP (s390 v5.10: gap_min 32 MiB).
    assert kernel.mmap_gap(randomize=False) == (32 if name == "s390x" else 128) * MiB
    assert kernel.mmap_base == kernel.mmap_top(randomize=False)
    assert kernel.mmap_top(randomize=True) == kernel.user_top - randomised_gap


def test_every_arch_has_a_stack_randomisation_mask() -> None:
    for arch in ARCHES:
        kernel = KernelConfig.for_arch(arch)
        assert arch.kernel.stack_rnd_mask > 0 and arch.kernel.page in (4096, 65536)
        assert kernel.mmap_gap(randomize=True) >= kernel.mmap_gap(randomize=False)
        # MAX_GAP = STACK_TOP / 6 * 5 never binds with an 8 MiB stack rlimit.
        assert kernel.mmap_gap(randomize=True) < kernel.user_top // 6 * 5


MAPS = """\
#include <stdio.h>
int main(void) {
    FILE *f = fopen("/proc/self/maps", "r");
    char line[512];
    while (f && fgets(line, sizeof line, f)) fputs(line, stdout);
    return 0;
}
"""


def _static_pie(tmp: Path) -> Path:
    src = tmp / "maps.c"
    src.write_text(MAPS)
    out = tmp / "maps-static-pie"
    subprocess.run([require("gcc"), "-O1", "-static-pie", "-o", str(out), str(src)],
                   check=True, capture_output=True)
    return out


def _run(argv: list[str], exe: Path) -> tuple[int, int, int]:
    """(start of the image's file offset 0, end of its last mapping, end of [stack])."""
    lines = subprocess.run(argv, check=True, capture_output=True, text=True).stdout
    image: list[tuple[int, int, str]] = []
    stack_end = None
    for line in lines.splitlines():
        fields = line.split()
        lo, hi = (int(x, 16) for x in fields[0].split("-"))
        if fields[-1] == str(exe) or (image and len(fields) == 5 and lo == image[-1][1]):
            image.append((lo, hi, fields[2]))  # its segments and the bss right after them
        if fields[-1] == "[stack]":
            stack_end = hi
    assert image and stack_end is not None
    first = next(lo for lo, _, off in image if int(off, 16) == 0)
    return first, image[-1][1], stack_end


@pytest.mark.toolchain
@pytest.mark.skipif(platform.machine() != "x86_64", reason="x86-64 host only")
def test_a_real_static_pie_sits_below_the_randomised_gap(tmp_path: Path) -> None:
    """The host kernel maps a real static PIE at the top of its mmap area: with ASLR off
    (setarch -R) right below STACK_TOP - 128 MiB, with ASLR on below STACK_TOP minus the
    stack's 16 GiB randomisation range and the rlimit and guard gap, then
    arch_mmap_rnd() lower. Each run's /proc/self/maps is compared with the model."""
    assert Path("/proc/sys/kernel/randomize_va_space").read_text().strip() == "2"
    bits = int(Path("/proc/sys/vm/mmap_rnd_bits").read_text())
    assert resource.getrlimit(resource.RLIMIT_STACK)[0] == RLIMIT, "ulimit -s must be 8192"
    exe = _static_pie(tmp_path)
    with ElfReader(exe) as reader:
        image = reader.image()
    kernel = KernelConfig.for_arch(image.arch)
    assert kernel.mmap_rnd == (1 << bits) * 4096, "the host's vm.mmap_rnd_bits differs"

    bias_off, _ = kernel.nominal_bias(image)
    first, end, stack_end = _run([require("setarch"), "x86_64", "-R", str(exe)], exe)
    assert first == bias_off  # the first PT_LOAD's p_vaddr is 0
    assert end == kernel.user_top - 128 * MiB == kernel.mmap_base
    assert stack_end == kernel.user_top

    gap = kernel.mmap_gap(randomize=True)
    bias_hi, _ = kernel.nominal_bias(image, randomize=True)
    tops, stacks = [], []
    for _ in range(40):
        first, end, stack_end = _run([str(exe)], exe)
        # The image ends at mmap_base (its p_align is a page): STACK_TOP - gap - rnd.
        rnd = kernel.user_top - gap - end
        assert 0 <= rnd < kernel.mmap_rnd and rnd % 4096 == 0
        assert bias_hi - kernel.mmap_rnd < first <= bias_hi
        assert first == kernel.top_of_mmap_bias(image, kernel.mmap_top(randomize=True,
                                                                       rnd=rnd))
        # The stack's top moved down by up to STACK_RND_MASK pages, never into the gap.
        assert kernel.user_top - image.arch.kernel.stack_rnd <= stack_end <= kernel.user_top
        assert stack_end - end >= RLIMIT + 256 * 4096
        tops.append(end)
        stacks.append(stack_end)
    # 40 draws of a 16 GiB range: a spread under 1 GiB has probability below 1e-40.
    assert max(stacks) - min(stacks) > GiB
    assert len(set(tops)) == 40


def test_the_static_pie_prediction_uses_the_randomised_top() -> None:
    """inspect's range for a static PIE: the image below the randomised gap, the stack's
    reserve right above mmap_base in the worst case, at STACK_TOP in the best."""
    with ElfReader(ELF_DIR / "x86_64" / "static-pie") as reader:
        image = reader.image()
    kernel = KernelConfig.for_arch(image.arch)
    bias, how = kernel.nominal_bias(image, randomize=True)
    assert how == "top of the mmap area with ASLR, before its random offset"
    span = image.image_span
    assert span is not None
    point = span.shifted(bias)
    jit = window_for_span("luajit-2.1", image.arch, point, kernel.user_space)
    pred = predict(image, kernel, jit, bias, Scenario())
    assert pred.bias_range[1] == bias
    assert pred.bias_range[0] == kernel.top_of_mmap_bias(
        image, kernel.mmap_top(randomize=True, rnd=kernel.mmap_rnd - 4096))
    # The ±1 GiB window is whole: 16 GiB of gap keep it from the end of user space.
    assert jit.window.end < kernel.user_top - 15 * GiB
    lay = draw(image, kernel, bias, runs=200, seed=3, randomize=True)
    assert all(pred.bias_range[0] <= b <= pred.bias_range[1] for b in lay.bias)
    assert max(lay.mmap_shift) <= -(kernel.mmap_gap(randomize=True) - 128 * MiB)
