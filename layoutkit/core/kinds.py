"""The project's vocabularies as enums: one definition each, their values the words the
text and JSON outputs print (so outputs read as before, and JSON consumers see strings)."""

from __future__ import annotations

import enum


class OccupantKind(enum.Enum):
    """What takes room in or next to a JIT window (one name per kind, everywhere)."""

    IMAGE = "image"  # the analysed executable's own segments
    LIBRARY = "library"  # a shared object (including the dynamic loader)
    HEAP = "heap"  # the brk heap as mapped
    HEAP_RESERVE = "heap-reserve"  # where the brk heap will grow (--heap)
    STACK = "stack"
    STACK_GUARD = "stack-guard"  # the kernel's gap below a stack (stack_guard_gap)
    JIT = "jit"  # JIT code already mapped
    ANONYMOUS = "anonymous"
    FILE = "file"  # any other mapped file
    DELETED = "deleted"  # a mapped file that has been unlinked
    VDSO = "vdso"  # kernel-provided areas: [vdso], [vvar], [vsyscall], ...
    MAPPED_BEFORE = "mapped-before-and-stack"  # above a library: earlier mappings, stack

    def __str__(self) -> str:
        return self.value


class Verdict(enum.Enum):
    """Whether the requested JIT states fit."""

    OK = "ok"
    INSUFFICIENT = "insufficient"

    def __str__(self) -> str:
        return self.value


class ReplayVerdict(enum.Enum):
    """What the allocator replay says of the requested states."""

    OK = "ok"  # the chance of a trace abort is under the limit (1% unless set)
    ABORTS = "aborts"  # traces abort in at least that share of the runs

    def __str__(self) -> str:
        return self.value


class CodeRangeVerdict(enum.Enum):
    """Whether V8's code range lies within reach of its embedded builtins."""

    NEAR = "near"  # generated code calls the builtins where they are
    FAR = "far"  # out of reach: builtins remapped into it, or called through a register
    UNKNOWN = "unknown"  # maps: no code range found (not yet reserved, or not V8's)

    def __str__(self) -> str:
        return self.value


class CodeRangeSource(enum.Enum):
    """How ``maps`` found V8's code range in a process."""

    REMAPPED = "remapped builtins"  # given back by the builtins' copy at its end
    RESERVED = "reservation"  # its reserved anonymous mappings

    def __str__(self) -> str:
        return self.value


class CheckFailure(enum.Enum):
    """Which of ``check``'s thresholds a binary failed."""

    MIN_WINDOW = "min_window"  # free bytes in the window, worst case (--min-window)
    MIN_FREE_SLOTS = "min_free_slots"  # --min-free-slots
    CAPACITY = "capacity"  # the requested JIT states do not fit (no replay)
    MAX_ABORT_PROBABILITY = "max_abort_probability"  # the replay's p(trace abort)
    # V8's own threshold: its code range within reach of the embedded builtins in the
    # worst case over ASLR (else builtins remapped or called through a register).
    V8_CODE_RANGE = "v8_code_range"
    # PHP's own: the opcache JIT buffer within direct-call reach of PHP's text (else
    # calls through a register), and not refused (AArch64: over 128 MiB).
    OPCACHE_DIRECT_CALLS = "opcache_direct_calls"

    def __str__(self) -> str:
        return self.value


class AdviceKind(enum.Enum):
    """What a recommendation changes."""

    REBASE = "rebase"  # move the whole non-PIE image (-Ttext-segment / --image-base)
    PIE = "pie"  # link as a PIE
    RELOCATE_TEXT = "relocate-text"  # rebase, and .bss (so the brk heap) above the window
    RUNTIME = "runtime"  # a setting of the running JIT (maxmcode, the 2025 allocator)

    def __str__(self) -> str:
        return self.value


class Status(enum.Enum):
    """``check``'s verdict on one path."""

    PASS = "pass"
    FAIL = "fail"
    NA = "n/a"
    ERROR = "error"

    def __str__(self) -> str:
        return self.value
