"""`advise --move`: how far sections can move, from their decoded references."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from layoutkit.advice.move import check_move
from layoutkit.errors import NoFitError
from tests.support import ELF_DIR, FIXTURES, require


def section(binary: Path, name: str) -> tuple[int, int]:
    out = subprocess.run([require("readelf"), "-SW", str(binary)], capture_output=True,
                         text=True, check=True).stdout
    match = re.search(rf"\]\s+{re.escape(name)}\s+\S+\s+([0-9a-f]+) [0-9a-f]+ ([0-9a-f]+)", out)
    assert match, name
    return int(match.group(1), 16), int(match.group(2), 16)


@pytest.mark.toolchain
def test_aarch64_text_move_is_bounded_by_its_calls_into_the_plt() -> None:
    """Independent decode: GNU objdump's `bl <target>` from .text into .plt. B/BL reaches
    [pc - 2^27, pc + 2^27 - 4]: .text may move no further than its tightest call allows."""
    binary = ELF_DIR / "aarch64" / "nopie"
    plt_lo, plt_size = section(binary, ".plt")
    text_lo, _ = section(binary, ".text")
    dump = subprocess.run([require("objdump"), "-d", "-j", ".text", str(binary)],
                          capture_output=True, text=True, check=True).stdout
    calls = [(int(pc, 16), int(target, 16)) for pc, target in
             re.findall(r"^\s*([0-9a-f]+):\s+[0-9a-f]{8}\s+bl?\s+([0-9a-f]+) <", dump, re.M)]
    into_plt = [(pc, t) for pc, t in calls if plt_lo <= t < plt_lo + plt_size]
    assert into_plt
    # Moving .text by x changes d = t - pc into d - x: need -2^27 <= d - x <= 2^27 - 4.
    hi = min((t - pc) + 2**27 for pc, t in into_plt)
    lo = max((t - pc) - (2**27 - 4) for pc, t in into_plt)
    check = check_move(str(binary), [".text"], None)
    assert check.address == text_lo
    # Other references (.init -> .text, ADRP pages) may bound it further, never wider.
    assert check.allowed.hi <= hi and check.allowed.lo >= lo
    assert check.allowed.hi == hi or check.allowed.limit_hi is not None


@pytest.mark.toolchain
@pytest.mark.skipif(os.uname().machine != "x86_64", reason="runs the moved build natively")
def test_x86_64_feasible_move_links_and_runs(tmp_path: Path) -> None:
    gcc = require("gcc")
    check = check_move(str(ELF_DIR / "x86_64" / "nopie"), [".text"], 0x50000000)
    assert check.feasible
    binary = tmp_path / "moved"
    subprocess.run([gcc, "-O2", "-no-pie", "-Wl,--section-start=.text=0x50000000", "-o",
                    str(binary), str(FIXTURES / "src" / "anchor.c")], check=True)
    assert section(binary, ".text")[0] == 0x50000000
    out = subprocess.run([str(binary)], capture_output=True, text=True, check=True).stdout
    assert re.search(r"lj_vm_exit_handler 0x5000[0-9a-f]{4}\b", out)


def test_infeasible_move_names_the_reference_and_exits_1() -> None:
    with pytest.raises(NoFitError, match=r"breaks the b/bl at 0x[0-9a-f]+ to 0x[0-9a-f]+"):
        check_move(str(ELF_DIR / "aarch64" / "nopie"), [".text"], 0x20000000)
    proc = subprocess.run([sys.executable, "-m", "layoutkit", "advise",
                           str(ELF_DIR / "x86_64" / "nopie"), "--move", ".text=0x90000000"],
                          capture_output=True, text=True, check=False)
    assert proc.returncode == 1 and proc.stdout == ""
    assert proc.stderr.count("\n") == 1 and "breaks the rel32/disp32" in proc.stderr


def test_move_json_and_usage_errors() -> None:
    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "layoutkit", "advise", *args],
                              capture_output=True, text=True, check=False)

    proc = run(str(ELF_DIR / "aarch64" / "nopie"), "--move", ".text", "--format", "json")
    doc = json.loads(proc.stdout)
    assert doc["schema"] == "layoutkit/advise-move/1"
    assert doc["sections"] == [".text"] and doc["feasible"] is True
    assert doc["limit_high"]["form"] == "b/bl"
    assert run(str(ELF_DIR / "aarch64" / "nopie"), "--move", ".nope").returncode == 2
    assert run("--arch", "arm64", "--move", ".text").returncode == 2
