"""The binaries bundled with layoutkit, so a new user sees real output at once."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

# An AArch64 non-PIE executable linked by GNU ld at its default 0x400000, with a
# LuaJIT-like lj_vm_exit_handler: the layout of the report that started the project
# (LuaJIT mailing list, "LuaJIT and mmap() scalability", 2017-02-27; LuaJIT #282-#285).
# It is fixtures/elf/aarch64/nopie, copied by `make -C fixtures sample`.
DEFAULT_NAME = "aarch64-nopie"


def default_binary() -> Path:
    return Path(str(resources.files("layoutkit") / "samples" / DEFAULT_NAME))
