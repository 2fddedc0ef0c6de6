"""Shared test helpers: fixture paths resolved relative to this file, never the cwd."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "fixtures"
ELF_DIR = FIXTURES / "elf"
MAPS_DIR = FIXTURES / "maps"


def fixture_binaries() -> list[Path]:
    """Every committed fixture binary that has its readelf oracle beside it."""
    return sorted(p.with_name(p.name.removesuffix(".readelf-lW.txt"))
                  for p in ELF_DIR.glob("*/*.readelf-lW.txt"))


def binary_id(path: Path) -> str:
    return f"{path.parent.name}/{path.name}"


def oracle(binary: Path, kind: str) -> str:
    """The committed ``readelf -<kind>W`` output for ``binary``."""
    return binary.with_name(f"{binary.name}.readelf-{kind}W.txt").read_text()


def require(tool: str) -> str:
    """The path of ``tool``; skips without it, except in CI (LAYOUTKIT_REQUIRE_ALL=1),
    where a missing tool is a failure: a silently skipped test proves nothing."""
    import os
    import shutil

    path = shutil.which(tool)
    if path is None:
        if os.environ.get("LAYOUTKIT_REQUIRE_ALL"):
            pytest.fail(f"{tool} is not installed (scripts/debian-packages.txt installs it)")
        pytest.skip(f"{tool} is not installed")
    return path
