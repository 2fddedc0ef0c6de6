"""The command line: exact output, JSON fields, exit codes, help and README coverage."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import click
from click.testing import CliRunner

from layoutkit.cli import cli
from layoutkit.commands.samples import default_binary
from tests.support import ELF_DIR, ROOT, oracle


def run(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(cli, list(args))
    return result.exit_code, result.stdout, result.stderr


def test_bundled_sample_is_the_fixture() -> None:
    assert default_binary().read_bytes() == (ELF_DIR / "aarch64" / "nopie").read_bytes()


def test_inspect_without_argument_shows_the_bundled_sample() -> None:
    code, out, _ = run("inspect")
    assert code == 0
    assert out.startswith("No BINARY given: inspecting the bundled sample")
    anchor = re.search(r"(\S+)\s+\d+ FUNC\s+GLOBAL HIDDEN\s+\d+ lj_vm_exit_handler",
                       oracle(ELF_DIR / "aarch64" / "nopie", "s"))
    assert anchor
    address = int(anchor.group(1), 16)
    assert f"Anchor:      lj_vm_exit_handler at {address:#x}" in out
    window = f"[0x1000, {address + 2**27 + 1:#x})"
    assert re.search(rf"^  b/bl\s+direct\s+-0x7fffffc\s+\+0x8000000\s+{re.escape(window)}", out,
                     re.M)
    assert "\nReach: the b/bl window is cut to " in out
    worst, verdict = out.rstrip().splitlines()[-2:]
    assert worst == ("Worst case over ASLR: ok: 7 state(s) of 512 KiB fit in 63 free slots, "
                     "1 requested")
    assert verdict.startswith("Verdict: ok: 1 state(s): traces abort in 0.0% of 300 runs")


def test_inspect_json_has_the_minimum_fields() -> None:
    binary = ELF_DIR / "x86_64" / "nopie"
    # A Debian kernel's rules and defaults (CONFIG_DEFAULT_MMAP_MIN_ADDR=65536 on amd64),
    # not this machine's sysctls.
    code, out, _ = run("inspect", str(binary), "--format", "json", "--kernel", "6.1.0-27-amd64")
    assert code == 0
    doc = json.loads(out)
    assert doc["schema"] == "layoutkit/inspect/2"
    assert (doc["arch"], doc["elf_type"], doc["pie"]) == ("x86_64", "ET_EXEC", False)
    loads = [s for s in doc["segments"] if s["type"] == "PT_LOAD"]
    readelf = [line.split() for line in oracle(binary, "l").splitlines()
               if line.split()[:1] == ["LOAD"]]
    assert [(s["vaddr"], s["memsz"]) for s in loads] == [
        (hex(int(r[2], 16)), int(r[5], 16)) for r in readelf]
    assert set(loads[0]) >= {"type", "vaddr", "memsz", "flags"}
    assert doc["anchor"]["name"] == "lj_vm_exit_handler"
    assert doc["anchor"]["how_found"] == "symbol"
    assert doc["anchor"]["address"].startswith("0x")
    direct = doc["reach"][0]
    assert direct["form"] == "jmp/call rel32"
    assert direct["start"] == "0x10000"
    assert int(direct["end"], 16) == int(doc["anchor"]["address"], 16) + 2**31 - 5 + 1


def test_ranges_table_for_arm64() -> None:
    code, out, _ = run("ranges", "--arch", "arm64")
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split() == ["Arch", "Form", "Kind", "Back", "Forward", "Reach", "Align", "Note"]
    assert lines[1].split()[:6] == ["aarch64", "b/bl", "direct", "0x8000000", "0x7fffffc",
                                    "256"]
    doc = json.loads(run("ranges", "--arch", "riscv64", "--format", "json")[1])
    assert [f["form"] for f in doc["forms"]] == ["jal", "beq/bne/...", "auipc+jalr"]
    assert doc["forms"][2]["disp_min"] == -(2**31) - 2**11


def test_usage_errors_exit_2() -> None:
    code, _, err = run("ranges", "--arch", "vax")
    assert code == 2
    assert err == "layoutkit: unknown architecture 'vax' (known: x86_64, i386, aarch64, arm, " \
                  "ppc64le, ppc64, riscv64, mips64el, mips64, s390x, loongarch64)\n"
    code, _, err = run("inspect", "--format", "xml")
    assert code == 2


def test_input_errors_exit_3_with_one_line(tmp_path: Path) -> None:
    bad = tmp_path / "notes.txt"
    bad.write_text("hello\n")
    code, out, err = run("inspect", str(bad))
    assert (code, out, err) == (3, "", f"layoutkit: {bad}: not an ELF file (bad magic)\n")


def test_debug_shows_the_traceback(tmp_path: Path) -> None:
    bad = tmp_path / "x"
    bad.write_text("x")
    proc = subprocess.run([sys.executable, "-m", "layoutkit", "--debug", "inspect", str(bad)],
                          capture_output=True, text=True, check=False)
    assert proc.returncode != 0 and "Traceback" in proc.stderr


def test_broken_pipe_is_quiet() -> None:
    proc = subprocess.run(
        f"{sys.executable} -m layoutkit inspect {ELF_DIR / 'x86_64' / 'nopie'} | head -1",
        shell=True, capture_output=True, text=True, check=False)
    assert proc.stdout.startswith("File:")
    assert proc.stderr == ""


def _commands() -> list[str]:
    assert isinstance(cli, click.Group)
    return sorted(cli.commands)


def test_every_command_has_help_and_is_in_the_readme() -> None:
    readme = (ROOT / "README.md").read_text()
    for name in _commands():
        code, out, _ = run(name, "--help")
        assert code == 0
        assert "Exit codes: 0 ok" in out
        assert f"layoutkit {name}" in readme


def test_cli_names_match_the_model() -> None:
    """cli/options.py lists the profile and linker names without importing the model (lean start):
    they must be exactly the model's."""
    from layoutkit import cli
    from layoutkit.advice.linkers import LINKERS
    from layoutkit.window.profiles import PROFILES

    assert sorted(cli.PROFILE_NAMES) == sorted(PROFILES)
    assert sorted(cli.LINKER_NAMES) == sorted(LINKERS)


def test_scenario_options_are_declared_once() -> None:
    """Every command that judges a layout takes the same scenario options."""
    from layoutkit.cli import cli

    names = {"--jit", "--form", "--heap", "--states", "--mcode"}
    for command in ("inspect", "maps", "advise", "check", "verify"):
        params = {opt for p in cli.commands[command].params for opt in p.opts}
        assert names <= params, command


def test_lean_start() -> None:
    """`import layoutkit.cli` loads none of the heavy libraries: each command imports
    what it uses (pyelftools, capstone, numpy, networkx) when it runs."""
    import subprocess
    import sys

    script = ("import sys, layoutkit.cli, layoutkit; "
              "print(' '.join(sorted(m for m in ('elftools', 'capstone', 'numpy', 'networkx') "
              "if m in sys.modules)))")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == ""


def test_public_api_resolves() -> None:
    import layoutkit

    assert sorted(layoutkit.__all__) == sorted(layoutkit._WHERE)
    for name in layoutkit.__all__:
        assert getattr(layoutkit, name) is not None, name
