"""The scenario a layout is judged under: one frozen value, built once per command.

Every use case takes ``(input, scenario)``. The CLI builds a :class:`Scenario` from one
shared set of options (``cli.scenario_options``), ``check`` from its configuration file
merged with those options; nothing else declares these settings again.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from layoutkit.errors import UsageError

# How far the brk heap is assumed to grow past its start: one glibc malloc heap,
# HEAP_MAX_SIZE = 2 * DEFAULT_MMAP_THRESHOLD_MAX = 64 MiB on 64-bit
# (glibc malloc/arena.c and malloc/malloc.c).
DEFAULT_HEAP = 64 << 20


@dataclass(frozen=True)
class Demand:
    """How much JIT code is wanted: ``states`` JIT states of ``mcode`` bytes each."""

    states: int = 1
    mcode: int | None = None  # None: the profile's maxmcode

    def __post_init__(self) -> None:
        if self.states < 1:
            raise UsageError(f"--states {self.states}: at least one JIT state")
        if self.mcode is not None and self.mcode <= 0:
            raise UsageError(f"--mcode {self.mcode}: a JIT state needs some code space")


@dataclass(frozen=True)
class KernelOverrides:
    """Kernel values the user states instead of the architecture's defaults."""

    va_bits: int | None = None
    mmap_min_addr: int | None = None


@dataclass(frozen=True)
class Scenario:
    """The JIT, its demand and the kernel a layout is judged under."""

    jit: str | None = None  # allocator profile name; None: detected from the binary
    form: str | None = None  # branch form for the generic profile; None: the direct one
    heap: int = DEFAULT_HEAP  # brk heap growth past its start
    demand: Demand = field(default_factory=Demand)
    kernel: KernelOverrides = field(default_factory=KernelOverrides)

    def __post_init__(self) -> None:
        if self.heap < 0:
            raise UsageError(f"--heap {self.heap}: a size cannot be negative")


DEFAULT_SCENARIO = Scenario()
