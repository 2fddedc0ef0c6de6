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


# Cost markers, cheapest first: a test is marked with the costliest thing it needs, and
# `pytest -m unit` (or `-m "not qemu_system"`) picks by cost. Unmarked tests are unit
# tests (tests/conftest.py marks them); require() fails a test that asks for a tool its
# marker does not admit, so the markers cannot drift from what the tests really run.
COSTS = ("unit", "toolchain", "qemu_user", "qemu_system")
_running_cost = [len(COSTS) - 1]  # the current test's cost rank (set by conftest.py)


def set_running_cost(rank: int) -> None:
    _running_cost[0] = rank


def tool_cost(tool: str) -> int:
    """The cost rank a test needs to use ``tool``."""
    if tool.startswith("qemu-system"):
        return COSTS.index("qemu_system")
    if tool.startswith("qemu-"):
        return COSTS.index("qemu_user")
    return COSTS.index("toolchain")


def require(tool: str) -> str:
    """The path of ``tool``; skips without it, except in CI (LAYOUTKIT_REQUIRE_ALL=1),
    where a missing tool is a failure: a silently skipped test proves nothing."""
    import os
    import shutil

    need = tool_cost(tool)
    if need > _running_cost[0]:
        pytest.fail(f"this test uses {tool}: mark it @pytest.mark.{COSTS[need]} "
                    f"(it is marked {COSTS[_running_cost[0]]})")
    path = shutil.which(tool)
    if path is None:
        if os.environ.get("LAYOUTKIT_REQUIRE_ALL"):
            pytest.fail(f"{tool} is not installed (scripts/debian-packages.txt installs it)")
        pytest.skip(f"{tool} is not installed")
    return path


def debian_unpacked(folder: Path, *packages: str, arch: str | None = None) -> Path:
    """Debian's ``packages`` fetched with ``apt-get download`` (nothing is installed) and
    unpacked with ``dpkg-deb -x`` into ``folder``, which is returned. ``arch`` (a Debian
    architecture such as ``arm64``): through a private apt state for that architecture,
    refreshed once a day in the build cache; None: this machine's own apt lists."""
    import subprocess
    import time

    apt, dpkg = require("apt-get"), require("dpkg-deb")
    opts = ["-oAPT::Sandbox::User=root"]
    if arch is not None:
        from layoutkit.native.build import cache_dir

        state = cache_dir("debian-apt") / arch
        for sub in (state / "state" / "lists" / "partial",
                    state / "cache" / "archives" / "partial"):
            sub.mkdir(parents=True, exist_ok=True)
        opts += [f"-oDir::State={state / 'state'}", f"-oDir::Cache={state / 'cache'}",
                 f"-oAPT::Architecture={arch}", f"-oAPT::Architectures::={arch}",
                 "-oDir::State::status=/dev/null"]
        stamp = state / "updated"
        if not stamp.is_file() or time.time() - stamp.stat().st_mtime > 24 * 3600:
            subprocess.run([apt, *opts, "-qq", "update"], check=True, capture_output=True)
            stamp.touch()
    debs = folder / "debs"
    debs.mkdir(parents=True, exist_ok=True)
    subprocess.run([apt, *opts, "-qq", "download", *packages], cwd=debs, check=True,
                   capture_output=True)
    root = folder / "root"
    root.mkdir(exist_ok=True)
    for package in packages:
        (deb,) = sorted(debs.glob(f"{package.split(':')[0]}_*.deb"))
        subprocess.run([dpkg, "-x", str(deb), str(root)], check=True)
    return root
