"""Debian's arm64 luajit in the qemu-system guest.

``luajit`` (dynamic: its loader, libc, libm and libgcc_s come from the cross sysroot;
libluajit is bundled in the executable) runs fixtures/src/jit-heavy.lua under the static
``mapswatch`` wrapper (tests/native/mapswatch.c, a test-only helper), which prints the
program's /proc/PID/maps when it writes "ready" (the script then waits on stdin, which
the wrapper holds open until the maps are read).
``analyse_maps`` on that listing, with the guest's /usr/bin mapped to the unpacked
package, must find the JIT areas inside luajit-2.1's window around the stripped
executable's code.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

from layoutkit.commands.maps import analyse_maps
from layoutkit.core.scenario import KernelOverrides, Scenario
from layoutkit.errors import ProbeError
from layoutkit.native.guest.boot import GuestResult, GuestRun, build_static, run_in_guest
from layoutkit.read.maps import parse_maps
from tests.support import require

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "fixtures" / "src" / "jit-heavy.lua"
CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "layoutkit-tests"
PACKAGES = ("luajit", "libluajit-5.1-2")
MAPSWATCH = Path(__file__).with_name("mapswatch.c")
_MAPS = re.compile(r"@@LAYOUTKIT-MAPS@@\n(.*?)@@LAYOUTKIT-MAPS-END@@\n", re.S)


def build_mapswatch(arch: str) -> Path:
    """``mapswatch.c`` built static: ``mapswatch MARKER PROGRAM ARG...`` prints the
    program's /proc/PID/maps when it writes the line MARKER, while it waits on stdin."""
    return build_static(MAPSWATCH, arch, "mapswatch")


def watched_maps(run: GuestRun) -> tuple[str, str]:
    """A mapswatch run's output split in two: the program's own stdout, and the maps
    listing it printed at the marker."""
    found = _MAPS.search(run.stdout)
    if found is None:
        raise ProbeError(f"{' '.join(run.argv[2:3])} printed no maps in the guest (status "
                         f"{run.status}, signal {run.signal}): {run.stderr.strip()[-300:]}")
    return run.stdout[:found.start()] + run.stdout[found.end():], found.group(1)


def _arm64_debs() -> list[Path]:
    """The arm64 .debs of PACKAGES, fetched once through a private apt state (as
    tests/test_check.py and bench/bench_pcrel.py do) and kept in the tests' cache."""
    dest = CACHE / "debs" / "arm64"
    found = [next(iter(sorted(dest.glob(f"{p}_*_arm64.deb"))), None) for p in PACKAGES]
    if all(found):
        return [d for d in found if d is not None]
    state, cache = CACHE / "apt" / "state", CACHE / "apt" / "cache"
    for folder in (state / "lists" / "partial", cache / "archives" / "partial", dest):
        folder.mkdir(parents=True, exist_ok=True)
    opts = [f"-oDir::State={state}", f"-oDir::Cache={cache}", "-oAPT::Architecture=arm64",
            "-oAPT::Architectures::=arm64", "-oDir::State::status=/dev/null"]
    subprocess.run(["apt-get", *opts, "-qq", "update"], check=True, capture_output=True)
    subprocess.run(["apt-get", *opts, "-qq", "download", *(f"{p}:arm64" for p in PACKAGES)],
                   check=True, cwd=dest, capture_output=True)
    return [sorted(dest.glob(f"{p}_*_arm64.deb"))[0] for p in PACKAGES]


@pytest.fixture(scope="module")
def luajit_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[GuestResult, Path]:
    for tool in ("qemu-system-aarch64", "aarch64-linux-gnu-gcc", "apt-get", "dpkg-deb"):
        require(tool)
    unpacked = tmp_path_factory.mktemp("luajit-arm64")
    for deb in _arm64_debs():
        subprocess.run(["dpkg-deb", "-x", str(deb), str(unpacked)], check=True)
    luajit = unpacked / "usr" / "bin" / "luajit"
    watch = build_mapswatch("aarch64")
    result = run_in_guest(
        "aarch64", [(watch, ["ready", "/usr/bin/luajit", "/jit-heavy.lua", "200"])],
        timeout=120, files={"/usr/bin/luajit": luajit, "/jit-heavy.lua": SCRIPT})
    return result, unpacked


@pytest.mark.qemu_system
def test_luajit_runs_and_compiles_in_the_guest(
        luajit_run: tuple[GuestResult, Path]) -> None:
    result, _ = luajit_run
    run = result.runs[0]
    assert (run.status, run.signal, run.stderr) == (0, None, "")
    out, maps_text = watched_maps(run)
    lines = out.splitlines()
    assert lines[0].startswith("version LuaJIT 2.1")
    assert lines[1].split()[:2] == ["status", "true"]  # the JIT is on
    traces = int(next(line.split()[1] for line in lines if line.startswith("traces ")))
    assert traces > 100
    assert lines[-1] == "ready"
    maps = parse_maps(maps_text, source="guest luajit")
    paths = {m.path for m in maps.mappings}
    assert {"/usr/bin/luajit", "/lib/ld-linux-aarch64.so.1",
            "/lib/aarch64-linux-gnu/libc.so.6", "/lib/aarch64-linux-gnu/libm.so.6",
            "/lib/aarch64-linux-gnu/libgcc_s.so.1"} <= paths
    assert not any("libluajit" in p for p in paths if p)  # bundled in the executable


@pytest.mark.qemu_system
def test_analyse_maps_finds_the_jit_areas_in_the_window(
        luajit_run: tuple[GuestResult, Path]) -> None:
    result, unpacked = luajit_run
    out, maps_text = watched_maps(result.runs[0])
    kernel = KernelOverrides(va_bits=result.facts.va_bits,
                             mmap_min_addr=result.facts.mmap_min_addr)
    analysis = analyse_maps(parse_maps(maps_text, source="guest luajit"),
                            Scenario(kernel=kernel),
                            path_map=(("/usr/bin", str(unpacked / "usr" / "bin")),))
    # Debian's luajit is stripped: the window must reach its whole executable segment.
    assert analysis.anchor.how_found.value == "executable-segment"
    assert analysis.anchor_object == "/usr/bin/luajit"
    assert analysis.arch.name == "aarch64"
    assert analysis.profile == "luajit-2.1"
    window = analysis.accounting.jit.usable
    assert analysis.jit_areas
    assert analysis.ignored == ()
    for area in analysis.jit_areas:
        assert window.contains(area.span), (area, window)
    # Every trace's machine code lies in one of the JIT areas found in the maps.
    traces = [int(m.group(1), 16) for m in re.finditer(r"^trace \d+ mcode (0x[0-9a-f]+)",
                                                         out, re.M)]
    assert traces
    areas = [a.span for a in analysis.jit_areas]
    assert all(any(mc in s for s in areas) for mc in traces)
    code = analysis.anchor.span
    assert all(abs(a.distance) < 1 << 31 for a in analysis.jit_areas)
    assert all(not s.overlaps(code) for s in areas)


def test_watched_maps_needs_the_block() -> None:
    run = GuestRun(("/bin/0-mapswatch", "ready", "/usr/bin/luajit"), 3, None, 1,
                      "version x\n", "mapswatch: /usr/bin/luajit never printed ready\n")
    with pytest.raises(ProbeError, match="printed no maps in the guest"):
        watched_maps(run)
    run = GuestRun(run.argv, 0, None, 1, "a\nready\n@@LAYOUTKIT-MAPS@@\n1000-2000 r-xp "
                      "00000000 00:00 0 \n@@LAYOUTKIT-MAPS-END@@\nb\n", "")
    assert watched_maps(run) == ("a\nready\nb\n", "1000-2000 r-xp 00000000 00:00 0 \n")
