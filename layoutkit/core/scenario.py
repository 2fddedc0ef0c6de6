"""The scenario a layout is judged under: one frozen value, built once per command.

Every use case takes ``(input, scenario)``. The CLI builds a :class:`Scenario` from one
shared set of options (``cli.scenario_options``), ``check`` from its configuration file
merged with those options; nothing else declares these settings again.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from layoutkit.core.units import format_size, parse_size
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
class OpcacheSize:
    """``opcache.memory_consumption`` and ``opcache.jit_buffer_size``, in bytes."""

    memory: int
    jit_buffer: int

    @property
    def total(self) -> int:
        return self.memory + self.jit_buffer

    @property
    def jit_on(self) -> bool:
        return self.jit_buffer > 0

    def __str__(self) -> str:
        if not self.memory:
            return f"{format_size(self.total)} segment, JIT on (its buffer's share not given)"
        jit = (f"{format_size(self.jit_buffer)} JIT buffer" if self.jit_on
               else "no JIT buffer: the JIT is off")
        return f"{format_size(self.memory)} + {jit} = {format_size(self.total)}"


# PHP 8.2's built-in defaults (ext/opcache/zend_accelerator_module.c: memory_consumption
# "128", jit_buffer_size "0"); `php -n -d zend_extension=opcache.so` prints them.
PHP82_DEFAULT = OpcacheSize(128 << 20, 0)


def parse_opcache_size(text: str | None) -> OpcacheSize:
    """``MEM+JIT`` (``128M+64M``), or one SIZE: the whole segment with the JIT on (its
    buffer's share unknown: the whole segment is judged as JIT code). None: 8.2's
    defaults."""
    if text is None:
        return PHP82_DEFAULT
    memory, plus, jit = text.partition("+")
    try:
        size = OpcacheSize(parse_size(memory), parse_size(jit)) if plus else \
            OpcacheSize(0, parse_size(text))
    except UsageError as e:
        raise UsageError(f"--opcache-size {text!r}: {e}") from None
    if size.memory < 0 or size.jit_buffer < 0 or size.total <= 0:
        raise UsageError(f"--opcache-size {text!r}: MEM+JIT with MEM + JIT > 0, e.g. "
                         "128M+64M")
    return size


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
    # PHP's opcache segment (--opcache-size; php-opcache only): PHP 8.2's defaults.
    opcache: OpcacheSize = field(default_factory=lambda: PHP82_DEFAULT)
    code_range: int | None = None  # V8's code range (--code-range); None: the version's own

    def __post_init__(self) -> None:
        if self.code_range is not None and self.code_range <= 0:
            raise UsageError(f"--code-range {self.code_range}: a size must be positive")
        if self.heap < 0:
            raise UsageError(f"--heap {self.heap}: a size cannot be negative")


DEFAULT_SCENARIO = Scenario()
