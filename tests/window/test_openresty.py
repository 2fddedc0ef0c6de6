"""OpenResty's LuaJIT (``luajit-openresty``) against Debian's real luajit2 packages.

Ground truths, none taken from layoutkit's output:
- which exports a file defines: ``readelf --dyn-syms``;
- its LuaJIT version string: the file's bytes;
- maxmcode: the ``jit_param_default`` array compiled into the binary (src/lib_jit.c:
  one int32 per name of JIT_P_STRING, in its order), located by the names the binary
  carries; Debian's upstream libluajit-5.1.so.2 gives 512, OpenResty's 40960;
- the window: LuaJIT's 2017-2025 rule (src/lj_mcode.c: target = anchor & ~0xffff,
  range = 2^(JR-1) - 2 MiB) written out here for the PT_LOAD that readelf lists;
- a live luajit2 process: its own /proc/PID/maps.
"""

from __future__ import annotations

import json
import os
import re
import struct
import subprocess
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path

import pytest

from layoutkit.commands.inspect import inspect_binary
from layoutkit.commands.maps import analyse_target
from layoutkit.core.arches import by_name
from layoutkit.core.scenario import Scenario
from layoutkit.core.spans import Span
from layoutkit.elf import ElfReader
from layoutkit.errors import UsageError
from layoutkit.window.anchor import find_anchor
from layoutkit.window.kernel import KernelConfig
from layoutkit.window.openresty import PROFILE, PROFILE_2025, classify_release
from layoutkit.window.profiles import choose_profile, jit_window, profile
from layoutkit.window.replay import HeapTiming, ReplayParams, replay
from tests.support import ELF_DIR, debian_unpacked, require

KiB, MiB = 1 << 10, 1 << 20
RANGE_X64 = (1 << 30) - (1 << 21)  # 2^(31-1) - 2 MiB: LJ_TARGET_JUMPRANGE 31 on x64
TRIPLET = "x86_64-linux-gnu"
UPSTREAM_LIB = Path(f"/usr/lib/{TRIPLET}/libluajit-5.1.so.2")  # Debian's luajit package


@pytest.fixture(scope="module")
def luajit2(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if os.uname().machine != "x86_64":
        pytest.skip("Debian's luajit2 is fetched for this x86-64 host")
    return debian_unpacked(tmp_path_factory.mktemp("luajit2"), "luajit2", "libluajit2-5.1-2")


def _binary(root: Path) -> Path:
    return root / "usr" / "bin" / "luajit"


def _library(root: Path) -> Path:
    (lib,) = sorted((root / "usr" / "lib" / TRIPLET).glob("libluajit-5.1.so.2.*"))
    return lib


def readelf_exdata(path: Path) -> list[str]:
    """The defined *exdata* exports that readelf lists."""
    out = subprocess.run([require("readelf"), "--dyn-syms", "-W", str(path)], check=True,
                         capture_output=True, text=True).stdout
    names = []
    for line in out.splitlines():
        cols = line.split()
        if len(cols) >= 8 and cols[6] != "UND" and re.fullmatch(r"lua_[sg]etexdata2?",
                                                                  cols[7]):
            names.append(cols[7])
    return sorted(names)


def compiled_mcode_defaults(path: Path) -> tuple[int, int]:
    """(sizemcode, maxmcode) in KiB as compiled into ``path``: JIT_P_STRING ends
    "...callunroll recunroll sizemcode maxmcode" (src/lj_jit.h), and gcc initialises the
    parameter array from 16-byte constants, the last of which holds callunroll 3,
    recunroll 2, sizemcode 64 and maxmcode (seen with objdump in both Debian builds)."""
    data = path.read_bytes()
    assert b"\ncallunroll\trecunroll\tsizemcode\x08maxmcode\x00" in data
    found = [struct.unpack_from("<2i", data, hit.start() + 8)
             for hit in re.finditer(re.escape(struct.pack("<3i", 3, 2, 64)), data)]
    assert len(found) == 1, found
    return found[0]


# --- release -> allocator ------------------------------------------------------------


def _stamp(year: int, month: int, day: int) -> int:
    return int(datetime(year, month, day, tzinfo=timezone.utc).timestamp())


@pytest.mark.parametrize(("version", "expected", "confidence"), [
    ("LuaJIT 2.1.0-beta3", PROFILE, "high"),  # OpenResty before its 2023 rolling versions
    (f"LuaJIT 2.1.{_stamp(2024, 6, 1)}", PROFILE, "high"),  # before 68354f44 existed
    (f"LuaJIT 2.1.{_stamp(2026, 1, 15)}", PROFILE, "medium"),  # after it, before 20260311
    (f"LuaJIT 2.1.{_stamp(2026, 3, 11)}", PROFILE_2025, "high"),  # the release itself
    (f"LuaJIT 2.1.{_stamp(2026, 7, 1)}", PROFILE_2025, "high"),
    ("LuaJIT 2.1.ROLLING", PROFILE, "low"),  # a git checkout without .relver
    (None, PROFILE, "low"),
])
def test_release_picks_the_allocator(version: str | None, expected: str,
                                     confidence: str) -> None:
    gen = classify_release(version, "exports lua_setexdata")
    assert (gen.profile, gen.confidence) == (expected, confidence)
    assert gen.evidence.startswith("exports lua_setexdata")
    said = "the 2025 allocator" if expected == PROFILE_2025 else "the 2017-2025 allocator"
    assert said in gen.evidence


def test_both_generations_keep_openresty_sizes_and_upstream_windows() -> None:
    arch = by_name("aarch64")
    limit = KernelConfig.for_arch(arch).user_space
    anchor = 0x7F00003DD0
    for name, upstream in ((PROFILE, "luajit-2.1"), (PROFILE_2025, "luajit-2025")):
        mine, theirs = jit_window(name, arch, anchor, limit), jit_window(upstream, arch,
                                                                         anchor, limit)
        assert mine.profile.name == "luajit-openresty"
        assert mine.profile.allocator_name == upstream
        assert replace(mine, profile=theirs.profile) == theirs
        assert (mine.profile.maxmcode, mine.profile.sizemcode) == (40960 * KiB, 64 * KiB)
    # --jit luajit-openresty follows the detected release; other names do not.
    new = classify_release(f"LuaJIT 2.1.{_stamp(2026, 4, 1)}", "exports")
    assert choose_profile(arch, "luajit-openresty", new) == (PROFILE_2025, None)
    assert choose_profile(arch, "luajit-2.1", new) == ("luajit-2.1", None)
    assert choose_profile(arch, None, new) == (PROFILE_2025, None)
    name, note = choose_profile(arch, "luajit-openresty", None)  # nothing detected
    assert name == PROFILE and note is not None and "2017-2025 allocator" in note


def test_replay_runs_openresty_with_its_maxmcode() -> None:
    """On the aarch64 GNU ld default-base fixture the 2017-2025 window has 63 free slots
    below the image with the heap grown (test_replay.py); one OpenResty state wants
    40960 KiB / 64 KiB = 640 areas, so every run aborts, where upstream's 512 KiB (8
    areas) fits."""
    path = ELF_DIR / "aarch64" / "nopie"
    res = {}
    for name in ("luajit-openresty", "luajit-2.1"):
        with ElfReader(path) as reader:
            image, anchor = reader.image(), find_anchor(reader)
        kernel = KernelConfig.for_arch(image.arch)
        bias, _ = kernel.nominal_bias(image)
        jit = jit_window(name, image.arch, anchor.span.start + bias, kernel.user_space)
        params = ReplayParams(aslr=False, heap_timing=HeapTiming.BEFORE, runs=40, retries=0)
        res[name] = replay(image, kernel, jit, bias, params, search=False)
        if name == "luajit-openresty":
            with pytest.raises(UsageError, match="maxmcode"):
                replay(image, kernel, jit, bias, replace(params, mcode=40961 * KiB))
    assert res["luajit-openresty"].profile == "luajit-openresty"
    assert res["luajit-openresty"].p_abort == 1.0
    assert res["luajit-2.1"].p_abort < 1.0


# --- Debian's luajit2 -------------------------------------------------------------------


@pytest.mark.toolchain
def test_maxmcode_is_the_packages_own(luajit2: Path) -> None:
    for path in (_binary(luajit2), _library(luajit2)):
        size, most = compiled_mcode_defaults(path)
        assert (size * KiB, most * KiB) == (profile(PROFILE).sizemcode,
                                            profile(PROFILE).maxmcode)
    if UPSTREAM_LIB.is_file():  # upstream's own, for contrast: LuaJIT's 512 KiB
        assert compiled_mcode_defaults(UPSTREAM_LIB) == (64, 512)


@pytest.mark.toolchain
@pytest.mark.parametrize("which", ["binary", "library"])
def test_inspect_detects_openresty_and_its_window(luajit2: Path, which: str) -> None:
    path = _binary(luajit2) if which == "binary" else _library(luajit2)
    exports = readelf_exdata(path)
    assert exports == ["lua_getexdata", "lua_getexdata2", "lua_setexdata", "lua_setexdata2"]
    version = re.search(rb"LuaJIT 2\.1\.[0-9A-Za-z-]+", path.read_bytes())
    assert version is not None and version.group(0) == b"LuaJIT 2.1.0-beta3"
    for requested in (None, "luajit-openresty"):
        result = inspect_binary(path, Scenario(jit=requested))
        assert result.profile == PROFILE
        gen = result.generation
        assert gen is not None and (gen.profile, gen.confidence) == (PROFILE, "high")
        for name in exports:
            assert f"{name} (.dynsym)" in gen.evidence
        assert "'LuaJIT 2.1.0-beta3'" in gen.evidence
        assert "2017-2025 allocator" in gen.evidence
    # Stripped: the anchor is the R E PT_LOAD, as readelf lists it.
    out = subprocess.run([require("readelf"), "-lW", str(path)], check=True,
                         capture_output=True, text=True).stdout
    (code,) = [line.split() for line in out.splitlines()
               if line.split()[:1] == ["LOAD"] and line.split()[-2:-1] == ["E"]]
    lo, size = int(code[2], 16), int(code[5], 16)
    assert result.anchor.span == Span(lo, lo + size)
    if which == "binary":  # a PIE at ELF_ET_DYN_BASE with ASLR off: 2/3 of the 47-bit
        # space, page aligned (arch/x86/include/asm/elf.h); the library goes below the
        # stack with the other mappings (inspect's own model, not checked here)
        assert result.bias == ((1 << 47) - 4096) // 3 * 2 & ~0xFFF
    first, last = lo + result.bias, lo + size - 1 + result.bias
    lo_w = max(first & ~0xFFFF, last & ~0xFFFF) - RANGE_X64
    hi_w = min(first & ~0xFFFF, last & ~0xFFFF) + RANGE_X64
    top = (1 << 47) - 4096  # x86-64 TASK_SIZE_MAX (arch/x86/include/asm/page_64_types.h)
    jit = result.jit
    assert jit.window == Span(lo_w, min(hi_w, top))
    assert jit.usable == Span(lo_w + 0x10000, min(hi_w - 0x10000, top))
    cap = result.prediction.worst.capacity
    assert cap.mcode_per_state == 40960 * KiB and cap.area_size == 64 * KiB


@pytest.mark.toolchain
def test_maps_judges_a_live_luajit2(luajit2: Path) -> None:
    """The unpacked luajit2 runs against its unpacked library; it compiles 4000 loops
    (one trace each) and waits on stdin while ``maps PID`` reads it. Its code outgrows
    upstream's 512 KiB maxmcode (where LuaJIT would flush it all), as OpenResty's
    40960 KiB allows."""
    binary = _binary(luajit2)
    script = ("for k = 1, 4000 do loadstring('local s = 0 for i = 1, 200 do s = s + i * ' "
              ".. k .. ' + (i % ' .. (k % 13 + 2) .. ') end return s')() end "
              "io.stdout:write('ready\\n') io.stdout:flush() io.read()")
    env = {**os.environ, "LD_LIBRARY_PATH": str(_library(luajit2).parent)}
    proc = subprocess.Popen([str(binary), "-e", script], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, env=env, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline() == "ready\n"
        truth = Path(f"/proc/{proc.pid}/maps").read_text().splitlines()
        result = analyse_target(str(proc.pid))
    finally:
        proc.communicate("")
    areas, image_code = [], []
    for line in truth:
        cols = line.split()
        lo, hi = (int(x, 16) for x in cols[0].split("-"))
        if cols[1] == "r-xp" and cols[4] == "0" and len(cols) == 5 and hi - lo > 4096:
            areas.append(Span(lo, hi))
        if cols[1] == "r-xp" and cols[-1] == str(binary):
            image_code.append(Span(lo, hi))
    assert sum(a.size for a in areas) > 512 * KiB
    assert [a.span for a in result.jit_areas] == areas
    assert result.profile == PROFILE
    assert result.generation is not None and result.generation.profile == PROFILE
    anchor = result.anchor.span.start  # recovered from the exit stubs: in luajit's code
    assert any(anchor in span for span in image_code)
    target = anchor & ~0xFFFF
    for area in areas:  # the 2017-2025 acceptance test, strictly inside the range
        assert target - RANGE_X64 < area.start and area.end < target + RANGE_X64
    assert result.accounting.capacity.mcode_per_state == 40960 * KiB


@pytest.mark.toolchain
def test_check_judges_the_luajit2_packages(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from layoutkit.cli import cli

    subprocess.run([require("apt-get"), "-qq", "-oAPT::Sandbox::User=root", "download",
                    "luajit2", "libluajit2-5.1-2"], cwd=tmp_path, check=True,
                   capture_output=True)
    debs = sorted(str(p) for p in tmp_path.glob("*.deb"))
    out = CliRunner().invoke(cli, ["check", *debs, "--format", "json"])
    doc = json.loads(out.stdout)
    judged = {r["path"].rsplit("/", 1)[-1]: r for r in doc["results"]
              if r["status"] != "n/a"}
    assert sorted(judged) == ["libluajit-5.1.so.2.1.0", "luajit"], doc
    for result in judged.values():
        assert (result["status"], result["profile"]) == ("pass", PROFILE)
        assert result["capacity"]["mcode_per_state"] == 40960 * KiB


# --- the arm64 packages (read here; nothing runs) -------------------------------------

RANGE_ARM64 = (1 << 26) - (1 << 21)  # 2^(27-1) - 2 MiB: LJ_TARGET_JUMPRANGE 27 on arm64


@pytest.mark.toolchain
def test_arm64_luajit2_detection_window_and_defaults(tmp_path: Path) -> None:
    root = debian_unpacked(tmp_path, "luajit2", "libluajit2-5.1-2", arch="arm64")
    binary = root / "usr" / "bin" / "luajit"
    (library,) = (root / "usr" / "lib" / "aarch64-linux-gnu").glob("libluajit-5.1.so.2.*")
    for path in (binary, library):
        assert compiled_mcode_defaults(path) == (64, 40960)
        exports = readelf_exdata(path)
        assert len(exports) == 4
        result = inspect_binary(path)
        gen = result.generation
        assert result.profile == PROFILE and gen is not None and gen.confidence == "high"
        assert all(f"{name} (.dynsym)" in gen.evidence for name in exports)
        out = subprocess.run([require("readelf"), "-lW", str(path)], check=True,
                             capture_output=True, text=True).stdout
        (code,) = [line.split() for line in out.splitlines()
                   if line.split()[:1] == ["LOAD"] and line.split()[-2:-1] == ["E"]]
        lo, size = int(code[2], 16), int(code[5], 16)
        assert result.anchor.span == Span(lo, lo + size)
        first, last = lo + result.bias, lo + size - 1 + result.bias
        lo_w = max(first & ~0xFFFF, last & ~0xFFFF) - RANGE_ARM64
        hi_w = min(first & ~0xFFFF, last & ~0xFFFF) + RANGE_ARM64
        top = 1 << 48  # arm64 with 48-bit VA
        assert result.jit.window == Span(lo_w, min(hi_w, top))
        assert result.prediction.worst.capacity.mcode_per_state == 40960 * KiB
