"""Fuzz harness: the option values people type for the new profiles.

One input is one string (UTF-8, invalid bytes escaped), given to every parser of a
size-like option: :func:`~layoutkit.core.units.parse_size` (``--heap``, ``--mcode``,
``--code-range``), :func:`~layoutkit.core.units.parse_address` (``--mmap-min-addr``),
:func:`~layoutkit.core.scenario.parse_opcache_size` (``--opcache-size``) and
:func:`~layoutkit.config.scenario_from` with it as each option. Beyond the crash rule, a
value that parses must be a whole number of bytes in a 64-bit address space, and a
plain decimal or hex number must come back exactly (no float rounding).
"""

from __future__ import annotations

import re

from layoutkit.config import scenario_from
from layoutkit.core.scenario import parse_opcache_size
from layoutkit.core.units import SIZE_LIMIT, parse_address, parse_size
from layoutkit.window.v8 import V8
from tests.fuzz.harness import CrashError, check

NAME = "options"
_PLAIN = re.compile(r"(0x[0-9a-fA-F]{1,16}|[0-9]{1,20})")
SEEDS = ("64K", "128M", "1.5G", "0x10000", "128M+64M", "256M", "0+64M", "3M", "512MiB",
         "9007199254740993", "18446744073709551615", "4G+4G", "1.25K", " 2 G ")


def seeds() -> dict[str, bytes]:
    return {f"seed-{i}": text.encode() for i, text in enumerate(SEEDS)}


def _size(text: str) -> None:
    size = parse_size(text)
    if not 0 <= size < SIZE_LIMIT:
        raise CrashError(f"parse_size({text!r}) = {size}: outside a 64-bit address space")
    if _PLAIN.fullmatch(text):
        exact = int(text, 16) if text.startswith("0x") else int(text, 10)
        if size != exact:
            raise CrashError(f"parse_size({text!r}) = {size}, not {exact}")


def _opcache(text: str) -> None:
    size = parse_opcache_size(text)
    if size.memory < 0 or size.jit_buffer < 0 or not 0 < size.total < SIZE_LIMIT:
        raise CrashError(f"parse_opcache_size({text!r}) = {size!r}")


def _scenario(key: str, text: str) -> None:
    scenario = scenario_from({key: text})
    if scenario.code_range is not None:
        V8.with_code_range(scenario.code_range)


def one_input(data: bytes) -> None:
    text = data.decode("utf-8", errors="surrogateescape")
    check(lambda: _size(text))
    check(lambda: parse_address(text))
    check(lambda: _opcache(text))
    for key in ("heap", "mcode", "code_range", "opcache_size", "mmap_min_addr"):
        check(lambda k=key: _scenario(k, text))  # type: ignore[misc]
