"""The scenario a layout is judged under: one frozen value, built once per command.

Every use case takes ``(input, scenario)``. The CLI builds a :class:`Scenario` from one
shared set of options (``cli.scenario_options``), ``check`` from its configuration file
merged with those options; nothing else declares these settings again.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from layoutkit.core.units import format_size, parse_size
from layoutkit.errors import UsageError

# How far the brk heap is assumed to grow past its start: one glibc malloc heap,
# HEAP_MAX_SIZE = 2 * DEFAULT_MMAP_THRESHOLD_MAX = 64 MiB on 64-bit
# (glibc malloc/arena.c and malloc/malloc.c).
DEFAULT_HEAP = 64 << 20
DEFAULT_RUNS = 300  # replay runs per judgement (issue 11: 300 or more)
DEFAULT_SEED = 1  # fixed, and printed in every report, so a judgement is reproducible
# The chance of a trace abort a judgement accepts: safe_states is the largest N under it
# (window/replay.py ABORT_LIMIT), and check's --max-abort-probability defaults to it.
ABORT_LIMIT = 0.01

# The kernel releases whose rules the layout model is sourced for (window/kernel.py,
# window/aslr.py): from v5.10, where fs/binfmt_elf.c started aligning a PIE's load bias
# to its largest p_align, through v6.18; x86-64's brk range changed in v6.9.
KNOWN_RELEASES = ((5, 10), (6, 18))
KNOWN_TEXT = "Linux 5.10 to 6.18 (such as 5.10.0-33-amd64, 6.1.0-27-arm64, 6.12.12-amd64)"


def release_version(release: str | None) -> tuple[int, int] | None:
    """(major, minor) of a release string such as ``6.1.0-27-arm64``; None if not one."""
    match = re.match(r"(\d+)\.(\d+)(?:[.\-+_~][\w.+~\-]*)?$", release or "")
    return (int(match.group(1)), int(match.group(2))) if match else None


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


def parse_opcache_size(text: str | None, name: str = "--opcache-size") -> OpcacheSize:
    """``MEM+JIT`` (``128M+64M``), or one SIZE: the whole segment with the JIT on (its
    buffer's share unknown: the whole segment is judged as JIT code). None: 8.2's
    defaults. ``name`` is where the text came from (an option, a configuration key)."""
    if text is None:
        return PHP82_DEFAULT
    memory, plus, jit = text.partition("+")
    try:
        size = OpcacheSize(parse_size(memory), parse_size(jit)) if plus else \
            OpcacheSize(0, parse_size(text))
    except UsageError as e:
        raise UsageError(f"{name} {text!r}: {e}") from None
    if size.memory < 0 or size.jit_buffer < 0 or size.total <= 0:
        raise UsageError(f"{name} {text!r}: MEM+JIT with MEM + JIT > 0, e.g. "
                         "128M+64M")
    return size


@dataclass(frozen=True)
class KernelCapture:
    """A host's kernel facts, as ``layoutkit kernel --capture`` reads them
    (read/host.py): its release (``uname -r``), machine (``uname -m``) and sysctls."""

    release: str
    machine: str  # layoutkit arch name
    randomize_va_space: int  # /proc/sys/kernel/randomize_va_space: 0, 1 or 2
    mmap_min_addr: int  # /proc/sys/vm/mmap_min_addr
    mmap_rnd_bits: int | None  # /proc/sys/vm/mmap_rnd_bits (None: the kernel has none)
    legacy_va_layout: bool  # /proc/sys/vm/legacy_va_layout
    source: str  # where the facts were read: "this machine", or the capture file


@dataclass(frozen=True)
class KernelOverrides:
    """Which kernel to judge under: the values the user states instead of the chosen
    kernel's, a release whose rules to follow, or a host capture (--kernel-file)."""

    va_bits: int | None = None
    mmap_min_addr: int | None = None
    release: str | None = None  # --kernel RELEASE
    capture: KernelCapture | None = None  # --kernel-file FILE

    def __post_init__(self) -> None:
        if self.release is None:
            return
        version = release_version(self.release)
        lo, hi = KNOWN_RELEASES
        if version is None or not lo <= version <= hi:
            why = "not a kernel release" if version is None else "no rules for it"
            raise UsageError(f"--kernel {self.release!r}: {why}; known: {KNOWN_TEXT}")
        if self.capture is not None:
            raise UsageError("--kernel and --kernel-file: give one of them")


@dataclass(frozen=True)
class Sampling:
    """How the allocator replay samples: runs, seed, retries after an abort, and ASLR."""

    runs: int = DEFAULT_RUNS
    seed: int = DEFAULT_SEED
    retries: int | None = None  # None: the replay's default (stated in its notes)
    aslr: bool | None = None  # None: as the kernel has it (randomize_va_space)

    def __post_init__(self) -> None:
        if self.runs < 1:
            raise UsageError(f"--runs {self.runs}: at least 1")
        if self.seed < 0:
            raise UsageError(f"--seed {self.seed}: cannot be negative")
        if self.seed >= 1 << 64:
            # The compiled engine takes a uint64_t seed (window/_replay.c).
            raise UsageError(f"--seed {self.seed}: at most 2^64 - 1")
        if self.retries is not None and self.retries < 0:
            raise UsageError(f"--retries {self.retries}: cannot be negative")


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
    sampling: Sampling = field(default_factory=Sampling)

    def __post_init__(self) -> None:
        if self.code_range is not None and self.code_range <= 0:
            raise UsageError(f"--code-range {self.code_range}: a size must be positive")
        if self.heap < 0:
            raise UsageError(f"--heap {self.heap}: a size cannot be negative")


DEFAULT_SCENARIO = Scenario()
