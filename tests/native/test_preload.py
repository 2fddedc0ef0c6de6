"""The probe inside a running program (native/preload.c) on this x86-64 host.

Ground truth: the program's own output (its exit handler, its JIT areas), the kernel
(MAP_FIXED_NOREPLACE in the forked copy) against layoutkit's accounting of the copy's
maps, and the program's /proc/PID/maps read from here before and after the probe.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
from pathlib import Path

import pytest
from click.testing import CliRunner

from layoutkit.cli import cli
from layoutkit.core.spans import Span
from layoutkit.elf import ElfReader
from layoutkit.native.compare import Cause, differences, model_accounting
from layoutkit.native.preload import ProgramRun, start_program
from tests.support import ROOT, require

pytestmark = pytest.mark.skipif(platform.machine() != "x86_64", reason="x86-64 host only")

X86 = ROOT / "fixtures" / "elf" / "x86_64"
JIT_HEAVY = ROOT / "fixtures" / "src" / "jit-heavy.lua"


def _lines_until(run: ProgramRun, last: str) -> list[str]:
    assert run.process.stdout is not None
    lines: list[str] = []
    while True:
        line = run.process.stdout.readline().decode()
        assert line, f"the program ended before printing {last!r}: {lines}"
        lines.append(line.rstrip("\n"))
        if line.startswith(last):
            return lines


@pytest.mark.toolchain
def test_jit_program_undisturbed_and_scan_agrees_with_model() -> None:
    exe = X86 / "pie"
    run = start_program([str(exe), "jit", "4", "wait"], when="signal:USR2",
                        stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        head = _lines_until(run, "maps ")
        pid = run.process.pid
        assert head[-2:] == [f"pid {pid}", f"maps /proc/{pid}/maps"]
        areas = [int(line.split()[1], 16) for line in head if line.startswith("area ")]
        handler = int(head[0].split()[1], 16)
        before = Path(f"/proc/{pid}/maps").read_text()
        run.signal()
        result = run.wait_report()
        after = Path(f"/proc/{pid}/maps").read_text()
        assert run.process.stdin is not None
        run.process.stdin.close()
        assert run.process.stdout is not None
        tail = run.process.stdout.read().decode()
        status = run.finish(timeout=10)
    finally:
        if run.process.poll() is None:
            run.finish(kill=True)
    # The program: same maps before and after, no extra output, exit 0.
    assert before == after
    assert tail == ""
    assert status == 0
    # The copy saw the program's address space as it was.
    assert result.scan.context.maps_before == before
    # Anchor from .symtab plus the load bias: the program printed the same address.
    a = result.analysis
    with ElfReader(exe) as reader:
        symbol = reader.symbol("lj_vm_exit_handler")
    assert symbol is not None and a.bias is not None
    assert a.anchor.how_found.value == "symbol"
    assert a.anchor.span.start == symbol.value + a.bias == handler
    # The four 64 KiB areas, adjacent below the anchor, merged into one mapping.
    assert [j.span for j in a.jit_areas] == [Span(min(areas), max(areas) + 0x10000)]
    assert result.jit_inside
    # Kernel against model, slot for slot: only documented differences.
    assert all(d.cause is Cause.STACK_GUARD_GAP for d in differences(result.scan))
    assert result.differences == tuple(differences(result.scan))
    acc = model_accounting(result.scan)
    assert acc.free_slots == result.measured[1]
    assert result.measured[0] == acc.free_bytes
    assert result.measured[2] == acc.largest_free
    assert result.scan.counts.eexist > 0  # the image and the JIT areas were in the way
    assert result.scan.context.maps_after == result.scan.context.maps_before


@pytest.mark.toolchain
def test_debian_luajit_jit_areas_inside_the_window() -> None:
    luajit = require("luajit")
    run = start_program([luajit, str(JIT_HEAVY)], when="ms:1500", stdin=subprocess.PIPE,
                        stdout=subprocess.PIPE)
    try:
        printed = _lines_until(run, "ready")
        result = run.wait_report(timeout=20)
        assert run.process.stdin is not None
        run.process.stdin.close()
        status = run.finish(timeout=10)
    finally:
        if run.process.poll() is None:
            run.finish(kill=True)
    assert status == 0
    facts = dict(line.split(" ", 1) for line in printed if " " in line)
    a = result.analysis
    # Stripped luajit: the exit handler recovered from the copy's JIT code is the one
    # the script decoded in the program itself.
    assert a.anchor.how_found.value == "jit-code"
    assert a.anchor.span.start == int(facts["exit_handler"], 16)
    assert a.jit_areas
    assert result.jit_inside
    traces = [line.split() for line in printed if line.startswith("trace ")]
    assert traces
    for _, _, _, addr, _, size in traces:
        code = Span(int(addr, 16), int(addr, 16) + int(size))
        assert any(j.span.contains(code) for j in a.jit_areas)
    assert all(d.cause is Cause.STACK_GUARD_GAP for d in differences(result.scan))
    assert result.measured[1] == model_accounting(result.scan).free_slots


@pytest.mark.toolchain
def test_cli_program_json() -> None:
    # CMD inherits layoutkit's stdin: an open pipe keeps "wait" waiting until killed.
    read_end, write_end = os.pipe()
    saved = os.dup(0)
    os.dup2(read_end, 0)
    try:
        result = CliRunner().invoke(cli, ["probe", "--format", "json", "--when", "ms:300",
                                          "--kill-after", "--", str(X86 / "pie"), "jit", "2",
                                          "wait"])
    finally:
        os.dup2(saved, 0)
        for fd in (saved, read_end, write_end):
            os.close(fd)
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["mode"] == "program"
    assert doc["anchor"]["source"] == "symbol"
    assert set(doc["measured"]) == {"free_bytes", "free_slots", "largest_free"}
    assert [(j["size"], j["inside_window"]) for j in doc["jit_areas"]] == [(0x20000, True)]


def test_static_program_gets_the_twin_hint() -> None:
    result = CliRunner().invoke(cli, ["probe", "--", str(X86 / "static"), "wait"])
    assert result.exit_code == 4
    assert "statically linked" in result.stderr
    assert "layoutkit verify" in result.stderr
