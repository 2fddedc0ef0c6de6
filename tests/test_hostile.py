"""Issue 10's seven root causes, reproduced with real files, plus the boundaries.

Each case is a committed fixture with one field corrupted (or a real /proc file), run
through the CLI as a user would (a subprocess, under RLIMIT_AS 1 GiB): exit 3 and one
line naming the file, the field, its value and the limit; never a traceback, never
exit 1. The expected values come from the fixtures' readelf oracles (``readelf -SW``,
``-sW``, ``-lW`` beside each binary).
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import click
import pytest
from click.testing import CliRunner

from layoutkit.cli.options import EXIT_CODES, handled
from layoutkit.commands import check
from layoutkit.core.text import json_safe, shown
from tests.output.test_schemas import errors as schema_errors
from tests.support import ELF_DIR, ROOT, require
from tests.test_bad_elf import ElfBytes

X64_NOPIE, A64_NOPIE = "x86_64/nopie", "aarch64/nopie"
NOT_UTF8 = b"lk-\xff\xfe-name"  # not UTF-8 in any position
_JUDGE = check.judge


def cli(*args: str | bytes, env: dict[str, str] | None = None,
        cwd: Path | None = None) -> subprocess.CompletedProcess[bytes]:
    """``layoutkit ARGS`` in a subprocess of its own, bytes in and out (a strict locale)."""
    full_env = {k: v for k, v in os.environ.items() if k != "LAYOUTKIT_DEBUG"}
    full_env.update({"LC_ALL": "C.UTF-8", "PYTHONPATH": str(ROOT)})
    full_env.update(env or {})
    return subprocess.run([sys.executable, "-m", "layoutkit", *args], capture_output=True,
                          env=full_env, cwd=cwd, timeout=300, check=False)


def one_error(done: subprocess.CompletedProcess[bytes], code: int = 3) -> str:
    """The single stderr line of a refused input (exit ``code``, no traceback)."""
    err = done.stderr.decode()
    assert b"Traceback" not in done.stderr, err
    assert done.returncode == code, (done.returncode, err)
    lines = err.splitlines()
    assert len(lines) == 1, err
    return lines[0]


def patched(tmp_path: Path, rel: str, name: str, edit: object) -> Path:
    elf = ElfBytes.load(rel)
    assert callable(edit)
    edit(elf)
    return elf.write(tmp_path / name)


def set_symbol(elf: ElfBytes, name: str, value: int) -> None:
    """st_value of ``name`` in .symtab (ELF64 little-endian: the aarch64 fixtures)."""
    table = elf.section(".symtab")
    strings = elf.shdr(elf.shdr(table, "sh_link"), "sh_offset")
    first, size = elf.shdr(table, "sh_offset"), elf.shdr(table, "sh_size")
    for pos in range(first, first + size, 24):
        start = strings + int.from_bytes(elf.data[pos:pos + 4], "little")
        if elf.data[start:elf.data.index(0, start)] == name.encode():
            elf.data[pos + 8:pos + 16] = value.to_bytes(8, "little")
            return
    raise KeyError(name)


# -- 1. e_shoff set, e_shnum 0, a too-small e_shentsize ----------------------------------


def _small_shentsize(elf: ElfBytes) -> None:
    elf.set_header("e_shnum", 0)
    elf.set_header("e_shentsize", 8)


def test_1_small_shentsize_is_refused_by_its_field(tmp_path: Path) -> None:
    bad = patched(tmp_path, X64_NOPIE, "shentsize-8", _small_shentsize)
    assert one_error(cli("inspect", str(bad))) == (
        f"layoutkit: {bad}: e_shentsize is 8, not 64 (the size of an ELF64 section header)")


def test_1_check_isolates_the_file_in_a_pool(tmp_path: Path) -> None:
    """Ten good binaries and the bad one through `check -j 2` (more than INLINE_MAX, so
    the pool judges them): the bad one is one error, every other is judged, exit 3."""
    tree = tmp_path / "tree"
    tree.mkdir()
    for i in range(10):
        shutil.copy(ELF_DIR / X64_NOPIE, tree / f"good{i}")
    bad = patched(tree, X64_NOPIE, "shentsize-8", _small_shentsize)
    done = cli("check", str(tree), "-j", "2", "--format", "json")
    assert done.returncode == 3, done.stderr.decode()
    results = {r["path"]: r for r in json.loads(done.stdout)["results"]}
    assert results.pop(str(bad)) | {"path": ""} == {
        "path": "", "status": "error", "arch": None, "profile": None, "evidence": None,
        "reason": "e_shentsize is 8, not 64 (the size of an ELF64 section header)",
        "failures": [], "window": None, "capacity": None, "replay": None,
        "replay_reason": "not judged", "replay_verdict": None}
    assert sorted(results) == sorted(str(tree / f"good{i}") for i in range(10))
    assert {r["status"] for r in results.values()} == {"pass"}


# -- 2. reads the kernel refuses ---------------------------------------------------------


@pytest.mark.parametrize(("path", "why"), [
    ("/proc/self/mem", "the kernel reports an I/O error reading it (a special file such as "
                       "/proc/PID/mem, or a failing disk)"),
    ("/proc/self/clear_refs", "the kernel refuses to read it as a file (a special /proc or "
                              "/sys file)"),
])
def test_2_proc_files_the_kernel_will_not_read(path: str, why: str) -> None:
    if not os.access(path, os.R_OK):
        pytest.skip(f"{path} is not readable here")
    assert one_error(cli("inspect", path)) == f"layoutkit: {path}: cannot read the file: {why}"


def test_2_a_maps_listing_naming_proc_self_mem(tmp_path: Path) -> None:
    """The listing's program is /proc/self/mem: not readable as ELF, so the anchor is
    its executable mapping (the fallback), and the command completes."""
    listing = tmp_path / "mem.maps"
    listing.write_text(
        "00400000-00405000 r-xp 00000000 00:05 1 /proc/self/mem\n"
        "00605000-00606000 rw-p 00005000 00:05 1 /proc/self/mem\n"
        "7ffffffde000-7ffffffff000 rw-p 00000000 00:00 0 [stack]\n")
    done = cli("maps", str(listing), "--arch", "x86_64", "--format", "json")
    assert done.returncode == 0, done.stderr.decode()
    anchor = json.loads(done.stdout)["anchor"]
    assert (anchor["how_found"], anchor["address"], anchor["end"]) == (
        "executable-segment", "0x400000", "0x405000")


# -- 3. a symbol value that makes the anchor (and a rebase) negative ----------------------


def test_3_anchor_symbol_outside_the_image(tmp_path: Path) -> None:
    bad = patched(tmp_path, A64_NOPIE, "anchor-at-0",
                  lambda e: set_symbol(e, "lj_vm_exit_handler", 0))
    # readelf -lW: PT_LOADs [0x400000, 0x405...) and [0x41fde8, 0x4200b8).
    expected = (f"layoutkit: {bad}: symbol lj_vm_exit_handler in .symtab: st_value 0x0 "
                "lies outside the loaded image [0x400000, 0x4200b8)")
    assert one_error(cli("advise", str(bad))) == expected
    assert one_error(cli("inspect", str(bad))) == expected


def test_3_an_anchor_at_the_image_end_is_accepted(tmp_path: Path) -> None:
    """The bound is inclusive at the top: a linker symbol like _end sits there."""
    ok = patched(tmp_path, A64_NOPIE, "anchor-at-end",
                 lambda e: set_symbol(e, "lj_vm_exit_handler", 0x4200B8))
    done = cli("inspect", str(ok), "--format", "json")
    assert done.returncode == 0, done.stderr.decode()
    assert json.loads(done.stdout)["anchor"]["address"] == "0x4200b8"


# -- 4. a section address at 2^63 (an np.int64 overflow in the A64 scan) -----------------


def test_4_allocated_section_above_user_space(tmp_path: Path) -> None:
    elf = ElfBytes.load(A64_NOPIE)
    index = elf.section(".data")
    elf.set_shdr(index, "sh_addr", 1 << 63)
    bad = elf.write(tmp_path / "data-at-2-63")
    size = elf.shdr(index, "sh_size")
    assert one_error(cli("advise", str(bad), "--move", ".text=0x800000")) == (
        f"layoutkit: {bad}: section #{index} .data (SHF_ALLOC) at 0x8000000000000000 of "
        f"{size:#x} bytes runs past any user address space (2^57)")


# -- 5. a code section without SHF_ALLOC -------------------------------------------------


def test_5_code_section_without_alloc_is_not_scanned(tmp_path: Path) -> None:
    """.text without SHF_ALLOC is never loaded: the move check of .rodata ignores it and
    gives the range the same binary gives with .text's references gone."""
    elf = ElfBytes.load(A64_NOPIE)
    text = elf.section(".text")
    elf.set_shdr(text, "sh_flags", elf.shdr(text, "sh_flags") & ~0x2)
    bad = elf.write(tmp_path / "text-not-alloc")
    done = cli("advise", str(bad), "--move", ".rodata", "--format", "json")
    assert done.returncode == 0, done.stderr.decode()
    moved = json.loads(done.stdout)
    # The same file with .text emptied (sh_size 0) has no references from .text either.
    elf.set_shdr(text, "sh_size", 0)
    empty = elf.write(tmp_path / "text-empty")
    reference = cli("advise", str(empty), "--move", ".rodata", "--format", "json")
    assert reference.returncode == 0, reference.stderr.decode()
    drop = ("binary",)
    assert {k: v for k, v in moved.items() if k not in drop} == \
           {k: v for k, v in json.loads(reference.stdout).items() if k not in drop}


# -- 6. dpkg-deb's stderr is not UTF-8 -----------------------------------------------------


@pytest.mark.toolchain
def test_6_deb_with_a_non_utf8_name(tmp_path: Path) -> None:
    require("dpkg-deb")
    raw = os.fsencode(tmp_path) + b"/" + NOT_UTF8 + b".deb"
    with open(raw, "wb") as out:
        out.write(b"!<arch>\n" + b"\xff\xfe not a member header\n")
    name = os.fsdecode(raw)
    done = cli("check", raw, "--format", "json")
    assert done.returncode == 3, done.stderr.decode()
    whole = json.loads(done.stdout.decode("utf-8", "strict"))
    assert schema_errors(whole) == []
    result = whole["results"][0]
    assert result["status"] == "error"
    assert result["reason"].startswith("not a Debian package: ")
    assert result["path"] == shown(name, 1 << 20)
    assert base64.b64decode(result["path_base64"]) == raw


# -- 7. non-UTF-8 paths in every output --------------------------------------------------


def test_7_inspect_a_file_with_a_non_utf8_name(tmp_path: Path) -> None:
    raw = os.fsencode(tmp_path) + b"/" + NOT_UTF8
    shutil.copy(os.fsencode(ELF_DIR / X64_NOPIE), raw)
    text = cli("inspect", raw)
    assert text.returncode == 0, text.stderr.decode()
    shown_name = os.fsencode(tmp_path) + b"/lk-\\xff\\xfe-name"
    assert text.stdout.decode("utf-8", "strict").splitlines()[0] == \
           f"File:        {shown_name.decode()}"
    doc = cli("inspect", raw, "--format", "json")
    assert doc.returncode == 0, doc.stderr.decode()
    image = json.loads(doc.stdout.decode("utf-8", "strict"))
    assert image["path"] == shown_name.decode()
    assert base64.b64decode(image["path_base64"]) == raw
    assert schema_errors(image) == []
    # Refused input names the file the same way on stderr.
    (tmp_path / "dir").mkdir()
    bad = os.fsencode(tmp_path) + b"/dir/" + NOT_UTF8
    with open(bad, "wb") as out:
        out.write(b"\x7fELF\x03\x01\x01" + bytes(57))
    assert one_error(cli("inspect", bad)).endswith(
        "/dir/lk-\\xff\\xfe-name: EI_CLASS is 0x03: not 1 (ELFCLASS32) or 2 (ELFCLASS64)")


def test_7_maps_listing_with_non_utf8_and_control_characters(tmp_path: Path) -> None:
    path = b"/opt/lk-\xff/\x1b[31mred"
    listing = tmp_path / "odd.maps"
    listing.write_bytes(b"00400000-00405000 r-xp 00000000 fe:00 7 /usr/bin/app\n"
                        b"10000000-10001000 r--p 00000000 fe:00 8 " + path + b"\n")
    done = cli("maps", str(listing), "--arch", "x86_64", "--format", "json")
    assert done.returncode == 0, done.stderr.decode()
    doc = json.loads(done.stdout.decode("utf-8", "strict"))
    [occupant] = [o for o in doc["occupants"] if o["path"].startswith("/opt/")]
    assert occupant["path"] == "/opt/lk-\\xff/\\x1b[31mred"
    assert base64.b64decode(occupant["path_base64"]) == path
    assert schema_errors(doc) == []
    text = cli("maps", str(listing), "--arch", "x86_64", env={"PYTHONIOENCODING": "ascii"})
    assert text.returncode == 0, text.stderr.decode()
    assert b"/opt/lk-\\xff/\\x1b[31mred" in text.stdout
    assert b"\x1b" not in text.stdout


def test_text_rule_cuts_long_names_in_the_middle() -> None:
    name = "/" + "a" * 300 + "/libluajit-5.1.so.2"
    out = shown(name)
    assert len(out) == 160
    assert out.startswith("/aaa") and "..." in out and out.endswith("aa/libluajit-5.1.so.2")
    assert shown("\u202eevil") == "\\u202eevil"
    assert json_safe({"p": "ok", "q": ["x\udcff"]}) == {"p": "ok", "q": ["x\\xff"]}


# -- exit 5 and closed pipes --------------------------------------------------------------


def _group() -> click.Group:
    @click.group()
    @click.option("--debug", is_flag=True)
    def group(debug: bool) -> None:
        """A group with one command that has a bug."""

    @group.command()
    @handled
    def broken() -> None:
        """Divides by zero."""
        print(1 // 0)  # the bug

    return group


def test_a_bug_is_exit_5_with_one_line_and_a_hint() -> None:
    line = Path(__file__).read_text().splitlines().index("        print(1 // 0)  # the bug") + 1
    result = CliRunner().invoke(_group(), ["broken"])
    assert result.exit_code == 5
    assert result.stderr.splitlines() == [
        "layoutkit: internal error in layoutkit broken (ZeroDivisionError at "
        f"test_hostile.py:{line}); please report it with the command line (--debug shows "
        "the traceback)"]
    debug = CliRunner().invoke(_group(), ["--debug", "broken"])
    assert isinstance(debug.exception, Exception)
    assert isinstance(debug.exception.__cause__, ZeroDivisionError)
    assert "5 internal error" in " ".join(EXIT_CODES.split())


def _closed_pipe(args: Sequence[str]) -> tuple[int, int, bytes]:
    """The exit code of a full run, and of one whose reader leaves after one line."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    full = subprocess.run([sys.executable, "-m", "layoutkit", *args], env=env,
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, check=False)
    proc = subprocess.Popen([sys.executable, "-m", "layoutkit", *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.readline()
    proc.stdout.close()
    err = proc.stderr.read()
    proc.stderr.close()
    return full.returncode, proc.wait(), err


def test_closed_pipe_keeps_the_exit_code_of_the_work(tmp_path: Path) -> None:
    """More output than a pipe holds (64 KiB), the reader gone after one line: no
    message, and the exit code the same run gives when all its output is read."""
    listing = tmp_path / "big.maps"
    rows = [f"{0x10000000 + i * 0x4000:08x}-{0x10002000 + i * 0x4000:08x} r-xp 00000000 "
            "00:00 0" for i in range(3000)]
    listing.write_text("00400000-00405000 r-xp 00000000 fe:00 7 /usr/bin/app\n"
                       + "\n".join(rows) + "\n")
    for args, code in ((["maps", str(listing), "--arch", "x86_64", "--format", "json"], 0),
                       (["maps", str(listing), "--arch", "aarch64", "--states", "5000"], 1)):
        full, piped, err = _closed_pipe(args)
        assert (full, piped, err) == (code, code, b"")


# -- the settings file is input too -------------------------------------------------------


@pytest.mark.parametrize(("content", "code", "message"), [
    (b'min_window = "\xff"\n', 2, "byte 14 is not UTF-8 (TOML files are UTF-8)"),
    (b"a = " + b"[" * 5000 + b"]" * 5000 + b"\n", 3, "settings file nests too deeply to be "
                                                     "read"),
])
def test_settings_file_that_cannot_be_read(tmp_path: Path, content: bytes, code: int,
                                           message: str) -> None:
    (tmp_path / "layoutkit.toml").write_bytes(content)
    done = cli("check", str(ELF_DIR / X64_NOPIE), cwd=tmp_path)
    assert one_error(done, code) == f"layoutkit: {tmp_path / 'layoutkit.toml'}: {message}"


# -- a worker process that dies -----------------------------------------------------------


def _dies_on_boom(item: Any, settings: Any) -> Any:
    """``judge``, except that the worker process ends at once (as a crash in a native
    library would) on a file called boom."""
    if Path(item.real).name == "boom":
        os._exit(70)
    return _JUDGE(item, settings)


def test_a_worker_that_dies_costs_only_its_file(tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """Twenty binaries in a pool of two (forked workers inherit the patched judge): the
    one whose worker dies is an internal error (exit 5), the other nineteen are judged
    exactly as without the crash, and in the same order."""
    for i in range(19):
        shutil.copy(ELF_DIR / X64_NOPIE, tmp_path / f"good{i:02}")
    shutil.copy(ELF_DIR / X64_NOPIE, tmp_path / "boom")
    clean = check.check_paths([str(tmp_path)], check.Settings(), jobs=1)
    monkeypatch.setattr(check, "judge", _dies_on_boom)
    summary = check.check_paths([str(tmp_path)], check.Settings(), jobs=2)
    [boom] = [r for r in summary.results if r.path.endswith("/boom")]
    assert (boom.status.value, boom.internal) == ("error", True)
    assert boom.reason.startswith("the worker process judging this file died")
    assert [r for r in summary.results if r is not boom] == \
           [r for r in clean.results if not r.path.endswith("/boom")]
    assert summary.exit_code == 5


def test_maps_listing_with_a_mapping_below_its_load_bias(tmp_path: Path) -> None:
    """Found by the maps fuzz harness (tests/fuzz/regressions/maps/): an object mapped
    below the load bias its own mappings give made the link-time anchor negative (a
    ValueError, exit 1). The fixture PIE's code PT_LOAD is at file offset 0x1000, vaddr
    0x1000 (readelf -lW)."""
    pie = ELF_DIR / "x86_64" / "pie"
    listing = tmp_path / "inconsistent.maps"
    listing.write_text(f"10000000-10001000 r-xp 00005000 fe:00 7 {pie}\n"
                       f"555555555000-555555556000 r-xp 00001000 fe:00 7 {pie}\n")
    assert one_error(cli("maps", str(listing))) == (
        f"layoutkit: {listing}: {pie} is mapped at 0x10000000, below the load bias "
        "0x555555554000 that its mapping at 0x555555555000 (file offset 0x1000) gives: the "
        "listing is inconsistent")
