"""``[tool.layoutkit]`` settings from ``pyproject.toml`` or ``layoutkit.toml``.

Read in the current directory (``layoutkit.toml`` first, whose keys sit at the top
level or under ``[tool.layoutkit]``), or from the file given with ``--config``. The
command line overrides every key. An unknown key, or a value of the wrong type, is a
usage error naming the key and the file: a typo must not silently loosen a gate.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from layoutkit.errors import UsageError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover (Python 3.10)
    import tomli as tomllib

# key -> the TOML types it accepts ("size" keys take 65536 or "64K").
KEYS: dict[str, tuple[type, ...]] = {
    "jit": (str,),
    "min_window": (int, str),
    "min_free_slots": (int,),
    "states": (int,),
    "mcode": (int, str),
    "heap": (int, str),
    "va_bits": (int,),
    "mmap_min_addr": (int, str),
    "arch": (str, list),
}

CONFIG_FILES = ("layoutkit.toml", "pyproject.toml")


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
            data = tomllib.load(stream)
    except OSError as e:
        raise UsageError(f"cannot read {path}: {e.strerror}") from None
    except tomllib.TOMLDecodeError as e:
        raise UsageError(f"{path}: not valid TOML: {e}") from None
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
        if isinstance(value, bool) or not isinstance(value, accepted):
            names = " or ".join("string" if t is str else "integer" if t is int else "list"
                                for t in accepted)
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
