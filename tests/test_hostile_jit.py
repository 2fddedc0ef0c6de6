"""Hostile input for the options and detectors of the V8, php-opcache and OpenResty
profiles and of ``verify --workload``: one line naming the input and its fault, the
documented exit code, a JSON document with ``--format json`` except on a usage error.

The V8 cases patch a real ELF file gcc builds from tests/fuzz/seeds/v8.c (the fuzz
harness's seed); the addresses they expect come from ``readelf -sW``/``-lW`` of it.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from layoutkit.core.text import shown
from layoutkit.core.units import parse_address, parse_size
from layoutkit.errors import UsageError
from tests.output.test_schemas import errors as schema_errors
from tests.support import ELF_DIR, ROOT, require
from tests.test_bad_elf import ElfBytes
from tests.test_hostile import X64_NOPIE, cli, one_error, set_symbol

NOPIE = str(ELF_DIR / X64_NOPIE)
NINES = "9" * 400


def _cut(text: str) -> str:
    return shown(repr(text), 60)


@pytest.mark.parametrize(("option", "value", "fault"), [
    ("--opcache-size", "99999999999999999999999T+1",
     "--opcache-size '99999999999999999999999T+1': not a size: '99999999999999999999999T' "
     "is 16 EiB or more, beyond any 64-bit address space"),
    ("--opcache-size", "128M+64M+1M",
     "--opcache-size '128M+64M+1M': not a size: '64M+1M' (try 64K, 128M, 2G or 0x10000)"),
    ("--opcache-size", "0+0", "--opcache-size '0+0': MEM+JIT with MEM + JIT > 0, e.g. "
     "128M+64M"),
    ("--code-range", NINES, f"--code-range: not a size: {_cut(NINES)} has more than 64 digits"),
    ("--code-range", "0.5", "--code-range: not a whole number of bytes: '0.5'"),
    ("--code-range", "16E", "--code-range: not a size: '16E' (try 64K, 128M, 2G or 0x10000)"),
    ("--heap", "16384P", "--heap: not a size: '16384P' (try 64K, 128M, 2G or 0x10000)"),
    ("--mcode", "0x10000000000000000", "--mcode: not a size: '0x10000000000000000' is 16 EiB "
     "or more, beyond any 64-bit address space"),
    ("--mmap-min-addr", "0x10000000000000000", "--mmap-min-addr: not an address: "
     "'0x10000000000000000' is beyond any 64-bit address space"),
])
def test_bad_size_options_are_one_line_and_exit_2(option: str, value: str, fault: str) -> None:
    done = cli("inspect", NOPIE, option, value, "--format", "json")
    assert one_error(done, 2) == f"layoutkit: {fault}"
    assert done.stdout == b""  # a usage error writes no document


def test_sizes_are_exact_integers() -> None:
    # 2^53 + 1 and 2^64 - 1: a float parse rounds the first and overflows past 1e308.
    assert parse_size("9007199254740993") == 2**53 + 1
    assert parse_size("0xffffffffffffffff") == 2**64 - 1
    assert parse_size("1.5K") == 1536
    with pytest.raises(UsageError, match="beyond any 64-bit address space"):
        parse_size("16777216T")  # 2^24 TiB = 2^64 bytes
    with pytest.raises(UsageError, match="has more than 64 digits"):
        parse_size("1" + "0" * 5000)
    with pytest.raises(UsageError, match="beyond any 64-bit address space"):
        parse_address(str(2**64))


@pytest.mark.parametrize(("args", "fault"), [
    (("--seed", "-1"), "--seed -1: cannot be negative"),
    (("--seed", str(2**64)), f"--seed {2**64}: at most 2^64 - 1"),
])
def test_verify_workload_refuses_a_bad_seed_before_running(args: tuple[str, ...],
                                                           fault: str) -> None:
    done = cli("verify", "--workload", "luajit", "--jit", "luajit-2.1", *args,
               "--format", "json")
    assert one_error(done, 2) == f"layoutkit: {fault}"
    assert done.stdout == b""


@pytest.mark.toolchain
def test_verify_workload_refuses_runs_beyond_the_memory_limit() -> None:
    require("gcc")
    done = cli("verify", "--workload", "luajit", "--jit", "luajit-2.1",
               "--replay-runs", "100000000", "--format", "json")
    line = one_error(done, 2)
    assert re.fullmatch(r"layoutkit: 100000000 replay runs with 1 states need about \d+ MiB "
                        r"for this window, over 4096 MiB: use fewer runs", line), line


# -- V8-shaped ELF files ------------------------------------------------------------------


def _v8(tmp_path: Path) -> tuple[Path, dict[str, int], tuple[int, int, int]]:
    """The seed built by gcc, its V8 symbols (readelf -sW) and its one PT_LOAD
    (offset, vaddr, memsz from readelf -lW)."""
    require("gcc")
    from tests.fuzz.fuzz_jit import SOURCES

    out = tmp_path / "v8"
    subprocess.run(["gcc", "-O2", "-nostdlib", "-static", "-no-pie", "-Wl,--build-id=none",
                    "-Wl,-z,noseparate-code", "-o", str(out), str(SOURCES / "v8.c")],
                   check=True)
    symbols = {}
    for line in subprocess.run(["readelf", "-sW", str(out)], capture_output=True, text=True,
                               check=True).stdout.splitlines():
        fields = line.split()
        if len(fields) == 8 and fields[7].startswith("v8_Default_embedded_blob_code"):
            symbols[fields[7]] = int(fields[1], 16)
    [load] = [line.split() for line in subprocess.run(
        ["readelf", "-lW", str(out)], capture_output=True, text=True,
        check=True).stdout.splitlines() if line.split()[:1] == ["LOAD"]]
    return out, symbols, (int(load[1], 16), int(load[2], 16), int(load[5], 16))


def _error_doc(done: subprocess.CompletedProcess[bytes]) -> dict[str, object]:
    doc: dict[str, object] = json.loads(done.stdout)
    assert schema_errors(doc) == []
    assert doc["exit_code"] == 3
    return doc


@pytest.mark.toolchain
def test_v8_blob_size_symbol_in_the_bss(tmp_path: Path) -> None:
    """The size symbol inside the image but past the file's bytes (the PT_LOAD given a
    page of .bss): its value cannot be read."""
    path, _, (_, vaddr, memsz) = _v8(tmp_path)
    elf = ElfBytes(path.read_bytes())
    elf.set_phdr(0, "p_memsz", memsz + 0x1000)
    where = vaddr + memsz + 0x10
    set_symbol(elf, "v8_Default_embedded_blob_code_size_", where)
    bad = elf.write(tmp_path / "v8-size-in-bss")
    fault = (f"v8_Default_embedded_blob_code_size_ at {where:#x}: its 4 bytes cannot be read: "
             f"[{where:#x}, {where + 4:#x}) is not file-backed in any PT_LOAD")
    assert one_error(cli("inspect", str(bad))) == f"layoutkit: {bad}: {fault}"
    done = cli("inspect", str(bad), "--format", "json")
    assert one_error(done) == f"layoutkit: {bad}: {fault}"
    assert _error_doc(done)["error"] == {"error": "ElfError", "message": fault,
                                         "path": str(bad)}


@pytest.mark.toolchain
def test_v8_blob_size_beyond_the_radius(tmp_path: Path) -> None:
    path, symbols, (offset, vaddr, _) = _v8(tmp_path)
    data = bytearray(path.read_bytes())
    at = symbols["v8_Default_embedded_blob_code_size_"] - vaddr + offset
    data[at:at + 4] = (0xffffffff).to_bytes(4, "little")
    bad = tmp_path / "v8-size-4g"
    bad.write_bytes(bytes(data))
    start = symbols["v8_Default_embedded_blob_code_"]
    assert one_error(cli("inspect", str(bad))) == (
        f"layoutkit: {bad}: v8_Default_embedded_blob_code_ at {start:#x} with "
        f"v8_Default_embedded_blob_code_size_ 4294967295: V8's embedded blob [{start:#x}, "
        f"{start + 0xffffffff:#x}) spans 0xffffffff bytes: V8's short builtin calls need the "
        "builtins under 2048 MiB (kMaxPCRelativeCodeRangeInMB on x86_64)")


@pytest.mark.toolchain
def test_v8_blob_past_its_segment(tmp_path: Path) -> None:
    path, symbols, (offset, vaddr, memsz) = _v8(tmp_path)
    data = bytearray(path.read_bytes())
    at = symbols["v8_Default_embedded_blob_code_size_"] - vaddr + offset
    start = symbols["v8_Default_embedded_blob_code_"]
    size = vaddr + memsz - start + 1  # one byte past the PT_LOAD
    data[at:at + 4] = size.to_bytes(4, "little")
    bad = tmp_path / "v8-past-segment"
    bad.write_bytes(bytes(data))
    assert one_error(cli("inspect", str(bad))) == (
        f"layoutkit: {bad}: v8_Default_embedded_blob_code_ at {start:#x} with "
        f"v8_Default_embedded_blob_code_size_ {size}: V8's embedded blob [{start:#x}, "
        f"{vaddr + memsz + 1:#x}) lies in no PT_LOAD of the image")


@pytest.mark.toolchain
def test_v8_code_range_below_the_image_is_not_the_heaps_to_decide(tmp_path: Path) -> None:
    """A 3 MiB code range fits in the gap below the image at 0x400000: the first gap is
    [0, 0x400000) whatever the heap does, and its hint 0 is under vm.mmap_min_addr
    (given: 0x10000)."""
    path, _, (_, vaddr, _) = _v8(tmp_path)
    assert vaddr == 0x400000
    done = cli("inspect", str(path), "--jit", "v8", "--code-range", "3M",
               "--mmap-min-addr", "0x10000")
    assert done.returncode == 0, done.stderr.decode()  # inspect informs; check judges
    notes = [line for line in done.stdout.decode().splitlines() if line.startswith("Note: v8:")]
    assert notes[1] == ("Note: v8: brk heap anywhere: hint 0x0 (the gap at 0x0), refused "
                        "(0x0-0x10000 is taken): the range goes far away and the builtins "
                        "are remapped into it")
    assert notes[2] == ("Note: v8: code range within reach in 0.0% of runs over ASLR (heap "
                        "position and the heap's end at V8's start)")
    assert not any("advice:" in n for n in notes)


def test_openresty_version_with_no_date_is_not_taken_for_one() -> None:
    """Found by the jit harness: 23 digits after "LuaJIT 2.1." made datetime overflow
    (exit 5); a commit time has 9 or 10 digits until 2286."""
    from layoutkit.window.openresty import PROFILE, classify_release

    odd = classify_release("LuaJIT 2.1.99999999999999999999999", "exports")
    assert (odd.profile, odd.confidence) == (PROFILE, "low")
    assert "no LuaJIT 2.1 version string" in odd.evidence
    last = classify_release("LuaJIT 2.1.9999999999", "exports")  # 2286-11-20
    assert "a tree of 2286-11-20" in last.evidence


@pytest.mark.parametrize("module", ["openresty", "opcache", "v8", "v8_maps", "anchor"])
def test_each_profile_module_imports_on_its_own(module: str) -> None:
    """``import layoutkit.window.openresty`` first was a circular import (anchor.py)."""
    done = subprocess.run([sys.executable, "-c", f"import layoutkit.window.{module}"],
                          capture_output=True, text=True, cwd=ROOT, check=False)
    assert done.returncode == 0, done.stderr


@pytest.mark.toolchain
def test_maps_remapped_builtins_whose_code_range_would_start_below_0(tmp_path: Path) -> None:
    """Found by the maps harness: an r-x mapping of V8's binary at the blob's file offset,
    16 MiB up, read as V8's remapped builtins, put a 512 MiB code range at a negative
    address (ValueError, exit 5)."""
    path, symbols, (offset, vaddr, _) = _v8(tmp_path)
    blob_offset = symbols["v8_Default_embedded_blob_code_"] - vaddr + offset
    listing = tmp_path / "node.maps"
    listing.write_text(f"00400000-00401000 r-xp 00000000 08:01 1001 {path}\n"
                       f"01000000-01001000 r-xp {blob_offset:08x} 08:01 1001 {path}\n"
                       "7ffffffde000-7ffffffff000 rw-p 00000000 00:00 0 [stack]\n")
    # V8 11.3's 512 MiB range holds the copy 512 MiB - 256 KiB above its start.
    start = 0x1000000 - (512 * 1024 * 1024 - 256 * 1024)
    fault = (f"{path} is mapped r-x at 0x1000000 from the builtins' file offset "
             f"{blob_offset:#x}, as V8 remaps its builtins, but a code range of 512 MiB "
             f"holding them there would start at {start:#x}: the listing is inconsistent")
    assert one_error(cli("maps", str(listing))) == f"layoutkit: {listing}: {fault}"
    done = cli("maps", str(listing), "--format", "json")
    assert _error_doc(done)["error"] == {"error": "MapsError", "message": fault,
                                         "path": str(listing), "line": None}


@pytest.mark.toolchain
def test_opcache_segment_larger_than_user_space(tmp_path: Path) -> None:
    """A PHP-shaped ELF (execute_ex, gcc from tests/fuzz/seeds/php.c): an --opcache-size
    beyond x86-64's 47-bit user space cannot be mapped, yet was judged by its 1-byte JIT
    buffer alone ("ok")."""
    require("gcc")
    from tests.fuzz.fuzz_jit import SOURCES

    php = tmp_path / "php"
    subprocess.run(["gcc", "-O2", "-nostdlib", "-static", "-no-pie", "-o", str(php),
                    str(SOURCES / "php.c")], check=True)
    done = cli("inspect", str(php), "--opcache-size", "8191T+1", "--format", "json")
    assert one_error(done, 2) == (
        "layoutkit: --opcache-size 8191 TiB + 1 B JIT buffer = 8191.0 TiB: the segment does "
        "not fit in the 128.0 TiB of user address space")
    assert done.stdout == b""
    assert cli("inspect", str(php), "--opcache-size", "128M+64M").returncode == 0


def test_verify_workload_refuses_more_states_than_the_workload_runs() -> None:
    """workload.c refused them itself, after the build, as a probe failure (exit 4)."""
    source = (ROOT / "layoutkit" / "native" / "workload" / "workload.c").read_text()
    [limit] = re.findall(r"^#define THREADS_MAX (\d+)$", source, re.MULTILINE)
    over = int(limit) + 1
    done = cli("verify", "--workload", "luajit", "--jit", "luajit-2.1", "--states", str(over),
               "--format", "json")
    assert one_error(done, 2) == (f"layoutkit: --states {over}: the workload runs at most "
                                  f"{limit} threads, one JIT state each")
    assert done.stdout == b""


@pytest.mark.parametrize(("setting", "fault"), [
    ('code_range = "0.5"', "code_range: not a whole number of bytes: '0.5'"),
    ("code_range = -5", "code_range: -5 is below 1"),
    ('opcache_size = "0+0"', "opcache_size '0+0': MEM+JIT with MEM + JIT > 0, e.g. 128M+64M"),
    ("heap = -1", "heap: -1 is below 0"),
    ("mmap_min_addr = -3", "mmap_min_addr: -3 is below 0"),
])
def test_bad_settings_are_named_by_their_key(tmp_path: Path, setting: str, fault: str) -> None:
    """The same values in [tool.layoutkit] were reported under the option's name."""
    config = tmp_path / "pyproject.toml"
    config.write_text(f"[tool.layoutkit]\n{setting}\n")
    done = cli("check", NOPIE, "--format", "json", cwd=tmp_path)
    assert one_error(done, 2) == f"layoutkit: {config}: {fault}"


def test_v8_code_to_reach_beyond_the_radius() -> None:
    """Found by the jit harness: --jit v8 on a file with no V8 symbols whose executable
    segment (the code to reach instead) has p_memsz 0x40000000280 (``readelf -lW``) made
    GetShortBuiltinsCallRegion's start pass its end (ValueError, exit 5)."""
    path = ROOT / "tests" / "fuzz" / "regressions" / "jit" / "v8-code-segment-4tib-over-the-radius"
    done = cli("inspect", str(path), "--jit", "v8", "--format", "json")
    fault = ("the code V8 must reach (executable segment) [0x400000, 0x40000400280) spans "
             "0x40000000280 bytes: V8's short builtin calls need the builtins under 2048 MiB "
             "(kMaxPCRelativeCodeRangeInMB on x86_64)")
    assert one_error(done) == f"layoutkit: {path}: {fault}"
    assert _error_doc(done)["error"] == {"error": "ElfError", "message": fault,
                                         "path": str(path)}


@pytest.mark.parametrize(("args", "fault"), [
    # probe.c stores --retries in an unsigned: 2^32 became 0 retries.
    (("--retries", str(2**32)), f"--retries {2**32}: at most {2**32 - 1}"),
    # strtoull refused these (the probe exited 2, reported as a probe failure: exit 4)...
    (("--retries", "99999999999999999999"), "--retries 99999999999999999999: at most "
     f"{2**32 - 1}"),
    (("--seed", str(2**64)), f"--seed {2**64}: at most 2^64 - 1"),
    # ...and read -1 as 2^64 - 1.
    (("--seed", "-1"), "--seed -1: cannot be negative"),
])
def test_probe_replay_numbers_beyond_what_the_probe_reads(args: tuple[str, ...],
                                                          fault: str) -> None:
    done = cli("probe", "--threads", "2", "--areas", "2", *args, "--format", "json")
    assert one_error(done, 2) == f"layoutkit: {fault}"
    assert done.stdout == b""


@pytest.mark.toolchain
def test_v8_accessor_at_the_end_of_its_segment(tmp_path: Path) -> None:
    """A stripped V8-shaped library (tests/fuzz/seeds/v8_stripped.c): the exported code
    accessor moved to 4 bytes before the end of the file-backed text, where the 16 bytes
    decoded from it cannot be read: one line naming the accessors."""
    require("gcc")
    from tests.fuzz.fuzz_jit import SOURCES

    lib = tmp_path / "libv8.so"
    subprocess.run(["gcc", "-O2", "-nostdlib", "-shared", "-fPIC", "-s", "-o", str(lib),
                    str(SOURCES / "v8_stripped.c")], check=True)
    loads = [line.split() for line in subprocess.run(
        ["readelf", "-lW", str(lib)], capture_output=True, text=True,
        check=True).stdout.splitlines() if line.split()[:1] == ["LOAD"]]
    [text] = [f for f in loads if "E" in f[6:-1]]
    end = int(text[2], 16) + int(text[4], 16)  # p_vaddr + p_filesz
    code = "_ZN2v88internal23DefaultEmbeddedBlobCodeEv"
    size = "_ZN2v88internal27DefaultEmbeddedBlobCodeSizeEv"
    sizes = {f[7]: int(f[1], 16) for f in (line.split() for line in subprocess.run(
        ["readelf", "--dyn-syms", "-W", str(lib)], capture_output=True, text=True,
        check=True).stdout.splitlines()) if len(f) == 8 and f[0] != "Num:"}
    elf = ElfBytes(lib.read_bytes())
    table = elf.section(".dynsym")
    strings = elf.shdr(elf.shdr(table, "sh_link"), "sh_offset")
    first, total = elf.shdr(table, "sh_offset"), elf.shdr(table, "sh_size")
    for pos in range(first, first + total, 24):
        start = strings + int.from_bytes(elf.data[pos:pos + 4], "little")
        if elf.data[start:elf.data.index(0, start)] == code.encode():
            elf.data[pos + 8:pos + 16] = (end - 4).to_bytes(8, "little")
    bad = elf.write(tmp_path / "libv8-accessor-at-end.so")
    assert one_error(cli("inspect", str(bad))) == (
        f"layoutkit: {bad}: V8's accessors {code} at {end - 4:#x} and {size} at "
        f"{sizes[size]:#x} cannot be read: [{end - 4:#x}, {end + 12:#x}) is not file-backed "
        "in any PT_LOAD")
