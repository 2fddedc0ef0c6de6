"""``[tool.layoutkit]`` settings from ``pyproject.toml`` or ``layoutkit.toml``.

Read in the current directory (``layoutkit.toml`` first, whose keys sit at the top
level or under ``[tool.layoutkit]``), or from the file given with ``--config``. The
command line overrides every key. An unknown key, or a value of the wrong type, is a
usage error naming the key and the file: a typo must not silently loosen a gate.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from layoutkit.boundary import reading
from layoutkit.core.scenario import (
    DEFAULT_HEAP,
    DEFAULT_RUNS,
    DEFAULT_SEED,
    Demand,
    KernelOverrides,
    Sampling,
    Scenario,
    parse_opcache_size,
)
from layoutkit.core.text import shown
from layoutkit.core.units import parse_address, parse_size
from layoutkit.errors import UsageError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover (Python 3.10)
    import tomli as tomllib

# key -> the TOML types it accepts ("size" keys take 65536 or "64K").
KEYS: dict[str, tuple[type, ...]] = {
    "jit": (str,),
    "form": (str,),
    "min_window": (int, str),
    "min_free_slots": (int,),
    "states": (int,),
    "mcode": (int, str),
    "heap": (int, str),
    "va_bits": (int,),
    "mmap_min_addr": (int, str),
    "code_range": (int, str),
    "arch": (str, list),
    "opcache_size": (str,),
    "aslr": (str, bool),
    "runs": (int,),
    "seed": (int,),
    "retries": (int,),
    "kernel": (str,),
    "kernel_file": (str,),
    "max_abort_probability": (float, int),
}

CONFIG_FILES = ("layoutkit.toml", "pyproject.toml")
MAX_CONFIG = 1 << 20  # bytes: a pyproject.toml is a few KiB


@dataclass(frozen=True)
class Config:
    """The settings a file gave (only the keys it set) and where they came from."""

    values: dict[str, Any] = field(default_factory=dict)
    source: str | None = None

    def get(self, key: str) -> Any:
        return self.values.get(key)


def _table(path: Path) -> dict[str, Any] | None:
    try:
        with path.open("rb") as stream:
            raw = stream.read(MAX_CONFIG + 1)
    except PermissionError:
        raise UsageError(f"cannot read {shown(str(path))}: permission denied") from None
    except OSError:
        raise UsageError(f"cannot read {shown(str(path))}: the system refuses to read "
                         "it") from None
    if len(raw) > MAX_CONFIG:
        raise UsageError(f"{shown(str(path))}: larger than {MAX_CONFIG} bytes: not a "
                         "settings file")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise UsageError(f"{shown(str(path))}: byte {e.start} is not UTF-8 (TOML files are "
                         "UTF-8)") from None
    with reading("settings file", str(path)):
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as e:
            raise UsageError(f"{shown(str(path))}: not valid TOML: {e}") from None
    data = dict(data)
    tool = data.get("tool", {})
    table = tool.get("layoutkit") if isinstance(tool, dict) else None
    if path.name == "pyproject.toml":
        return dict(table) if isinstance(table, dict) else None
    if table is not None:
        if not isinstance(table, dict):
            raise UsageError(f"{path}: [tool.layoutkit] must be a table")
        return dict(table)
    return data


def validate(values: dict[str, Any], source: str) -> dict[str, Any]:
    """Check every key and value type; the error names the key and ``source``."""
    for key, value in values.items():
        if key not in KEYS:
            known = ", ".join(sorted(KEYS))
            raise UsageError(f"{source}: unknown key {key!r} in [tool.layoutkit] "
                             f"(known: {known})")
        accepted = KEYS[key]
        if (isinstance(value, bool) and bool not in accepted) or \
                not isinstance(value, accepted):
            names = " or ".join({str: "string", int: "integer", float: "number",
                                 bool: "boolean"}.get(t, "list") for t in accepted)
            raise UsageError(f"{source}: {key} must be a {names}, not {value!r}")
        if key == "arch" and isinstance(value, list) and not all(
                isinstance(item, str) for item in value):
            raise UsageError(f"{source}: arch must be a string or a list of strings")
    return values


def load_config(path: str | Path | None = None, *, cwd: str | Path | None = None) -> Config:
    """The settings of ``path``, else of the first config file in ``cwd`` that has them."""
    if path is not None:
        chosen = Path(path)
        if not chosen.is_file():
            raise UsageError(f"--config {chosen}: no such file")
        table = _table(chosen)
        return Config(validate(dict(table or {}), str(chosen)), str(chosen))
    folder = Path.cwd() if cwd is None else Path(cwd)
    for name in CONFIG_FILES:
        candidate = folder / name
        if candidate.is_file():
            table = _table(candidate)
            if table is not None:
                return Config(validate(dict(table), str(candidate)), str(candidate))
    return Config()


# The scenario keys: command-line options (scenario_options in cli/options.py) and
# config keys alike.
SCENARIO_KEYS = ("jit", "form", "heap", "states", "mcode", "va_bits", "mmap_min_addr",
                 "opcache_size", "code_range")
KERNEL_KEYS = ("kernel", "kernel_file")  # which kernel's rules (with va_bits, mmap_min_addr)
SAMPLING_KEYS = ("aslr", "runs", "seed", "retries")  # how the allocator replay samples


def config_size(value: object) -> int | None:
    """A size key: 65536 or "64K"."""
    if value is None:
        return None
    return value if isinstance(value, int) else parse_size(str(value))


def _address(value: object) -> int | None:
    if value is None:
        return None
    return value if isinstance(value, int) else parse_address(str(value))


def scenario_from(options: dict[str, Any], config: Config | None = None) -> Scenario:
    """The scenario of the command-line ``options`` (None: not given) over ``config``."""
    cfg = config or Config()

    def pick(key: str) -> Any:
        value = options.get(key)
        return value if value is not None else cfg.get(key)

    def where(key: str) -> str:
        """The option, or the configuration key, a value came from."""
        return ("--" + key.replace("_", "-") if options.get(key) is not None
                else f"{cfg.source}: {key}")

    jit = pick("jit")
    if jit is not None:
        from layoutkit.window.profiles import PROFILES

        if jit not in PROFILES:
            raise UsageError(f"{where('jit')} {jit!r} is not one of "
                             f"{', '.join(sorted(PROFILES))}")

    def size(key: str, parse: Callable[[object], int | None] = config_size, *,
             least: int = 0) -> int | None:
        """A size (or address) option of at least ``least``, its fault said under the
        option's or the key's own name."""
        try:
            value = parse(pick(key))
        except UsageError as e:
            raise UsageError(f"{where(key)}: {e.message}") from None
        if value is not None and value < least:
            raise UsageError(f"{where(key)}: {value} is below {least}")
        return value

    opcache = parse_opcache_size(_text(pick("opcache_size")), name=where("opcache_size"))

    heap = size("heap")
    states = pick("states")
    kernel_file = pick("kernel_file")
    capture = None
    if kernel_file is not None:
        from layoutkit.read.host import load_capture

        capture = load_capture(str(kernel_file))
    runs, seed = pick("runs"), pick("seed")
    return Scenario(
        jit=jit,
        form=pick("form"),
        heap=DEFAULT_HEAP if heap is None else heap,
        demand=Demand(states=1 if states is None else states, mcode=size("mcode", least=1)),
        kernel=KernelOverrides(va_bits=pick("va_bits"),
                               mmap_min_addr=size("mmap_min_addr", _address),
                               release=pick("kernel"), capture=capture),
        opcache=opcache,
        code_range=size("code_range", least=1),
        sampling=Sampling(runs=DEFAULT_RUNS if runs is None else runs,
                          seed=DEFAULT_SEED if seed is None else seed,
                          retries=pick("retries"), aslr=_aslr(pick("aslr"))),
    )


def _text(value: object) -> str | None:
    return None if value is None else str(value)


def _aslr(value: object) -> bool | None:
    """``--aslr on|off`` (a config file may also say true or false)."""
    if value is None or isinstance(value, bool):
        return value
    if value not in ("on", "off"):
        raise UsageError(f"--aslr {shown(str(value))}: on or off")
    return value == "on"
