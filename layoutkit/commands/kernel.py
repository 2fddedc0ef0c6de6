"""``layoutkit kernel``: this machine's kernel facts, as the judging commands use them."""

from __future__ import annotations

from layoutkit.core import arches
from layoutkit.core.scenario import KernelCapture, KernelOverrides
from layoutkit.read.host import capture
from layoutkit.window.kernel import KernelConfig


def host_kernel() -> tuple[KernelCapture, KernelConfig]:
    """The facts read here (uname, /proc/sys) and the kernel configuration they make."""
    facts = capture()
    arch = arches.by_name(facts.machine)
    return facts, KernelConfig.resolve(arch, KernelOverrides(), host=facts)
