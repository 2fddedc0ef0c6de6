"""The real-LuaJIT workload: N threads, each with its own ``lua_State``, compiling big
traces, counting mcode allocation aborts, areas and mmap calls (``workload.c``,
``workload.lua``).

Two LuaJIT builds, fetched from the package registries and cached under
``$XDG_CACHE_HOME/layoutkit/workload`` (never in the repo):

- ``luajit-2.1`` (the 2017-2025 allocator): Debian's ``libluajit-5.1-dev`` static
  library and headers for the target's Debian arch, with ``jit/vmdef.lua`` from
  ``libluajit-5.1-common``, through a private apt state (``apt-get download``).
- ``luajit-2025`` (commit 68354f44's allocator): the LuaJIT 2.1 source bundled in PyPI's
  ``lupa`` sdist (``third-party/luajit21``; its ``src/lj_mcode.c`` must contain
  ``mcode_setrange``), built ``BUILDMODE=static`` with LuaJIT's own Makefile, with
  ``CROSS=<triplet>-`` for a foreign arch.

The workload is linked static and non-PIE (GNU ld's default link address, 0x400000 on
x86-64 and aarch64) with ``--wrap=mmap --wrap=munmap``. It runs natively on the host's
arch or in the qemu-system guest (:func:`layoutkit.native.guest.boot.run_in_guest`).
"""

from layoutkit.native.workload.build import (
    MACHINES,
    Generation,
    LuajitBuild,
    Machine,
    Workload,
    build_workload,
    cache_root,
    fetch_luajit,
    host_machine,
)
from layoutkit.native.workload.run import (
    STATEMENTS,
    THREADS_MAX,
    Aslr,
    MmapCost,
    StateCounts,
    WorkloadRun,
    parse_mmap_bench,
    parse_report,
    run_in_guest,
    run_in_guest_facts,
    run_native,
    workload_args,
)

__all__ = (
    "MACHINES", "STATEMENTS", "THREADS_MAX", "Aslr", "Generation", "LuajitBuild", "Machine",
    "MmapCost",
    "StateCounts", "Workload", "WorkloadRun", "build_workload", "cache_root", "fetch_luajit",
    "host_machine", "parse_mmap_bench", "parse_report", "run_in_guest", "run_in_guest_facts",
    "run_native", "workload_args",
)
