"""``probe --runner qemu-system -- PROGRAM``: a real arm64 program on Debian's arm64
kernel with the probe inside it (dynamic), or beside its layout twin (static).

The programs are the cross-built fixtures (fixtures/src/anchor.c): ``PROGRAM jit 2``
prints its own ``lj_vm_exit_handler`` address, maps two 64 KiB areas with LuaJIT's hints
below it and copies its /proc/self/maps. That run is the ground truth: where the guest
kernel put the program (its own maps, its printed anchor) and which slots a JIT really
got. One boot per program.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from layoutkit.cli import cli
from layoutkit.core.spans import Span
from layoutkit.errors import EXIT_USAGE
from layoutkit.native.guest.program import probe_in_guest
from layoutkit.output.document import dumps
from layoutkit.output.probe import program_json
from layoutkit.read.maps import parse_maps
from tests.output.test_schemas import assert_valid
from tests.support import ELF_DIR, oracle, require

ARM64 = ELF_DIR / "aarch64"


@pytest.fixture(autouse=True)
def _private_cache(tmp_path_factory: pytest.TempPathFactory,
                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path_factory.getbasetemp() / "cache"))


def _guest_probe(program: Path) -> tuple[dict[str, Any], str, tuple[Span, ...]]:
    """The JSON document, the program's own output, the free runs the scan found."""
    require("qemu-system-aarch64")
    require("aarch64-linux-gnu-gcc")
    require("apt-get")
    result = probe_in_guest([str(program), "jit", "2"], arch_name="arm64")
    assert result.exit_code == 0
    doc = json.loads(dumps(program_json(result)))
    assert_valid(doc)
    return doc, result.stdout, result.result.scan.free_runs


def _readelf_symbol(binary: Path, name: str) -> int:
    return next(int(f[1], 16) for f in (line.split() for line in
                                        oracle(binary, "s").splitlines())
                if len(f) == 8 and f[0][:-1].isdigit() and f[7] == name)


def _own_run(printed: str) -> tuple[int, list[Span], str]:
    """The program's printed anchor, the areas it got where it asked, and its maps."""
    found = re.search(r"^lj_vm_exit_handler (0x[0-9a-f]+)$", printed, re.M)
    assert found is not None, printed
    anchor = int(found[1], 16)
    areas = [Span(int(got, 16), int(got, 16) + 0x10000) for got, asked in
             re.findall(r"^area (0x[0-9a-f]+) requested (0x[0-9a-f]+)$", printed, re.M)
             if got == asked]
    maps = "".join(line + "\n" for line in printed.splitlines()
                   if re.match(r"^[0-9a-f]+-[0-9a-f]+ ", line))
    return anchor, areas, maps


@pytest.mark.qemu_system
def test_dynamic_program_probed_from_inside_in_the_guest() -> None:
    program = ARM64 / "pie"
    doc, printed, free = _guest_probe(program)
    anchor, areas, own_maps = _own_run(printed)
    # Where the guest kernel put the PIE, from the program's own /proc/self/maps.
    maps = parse_maps(own_maps, source="the program in the guest")
    mapped_at = next(m.start for m in maps.mappings
                     if m.path == f"/bin/0-{program.name}" and m.offset == 0)
    bias = anchor - _readelf_symbol(program, "lj_vm_exit_handler")
    assert bias == mapped_at  # the first PT_LOAD's p_vaddr is 0 (readelf -lW)
    assert doc["runner"] == "qemu-system" and doc["measured_through"] == "preload"
    assert doc["twin"] is None
    assert doc["guest_kernel"]["release"].endswith("-cloud-arm64")
    assert doc["guest_kernel"]["mmap_min_addr"] == "0x1000"
    assert doc["anchor"]["address"] == f"{anchor:#x}"
    assert doc["anchor"]["source"] == "symbol"
    assert doc["bias"] == f"{bias:#x}"
    assert doc["anchor_object"] == f"/bin/0-{program.name}"
    assert doc["program_status"] == 0
    # The probe ran inside the program: its forked copy has the guest build of the
    # library mapped, and a pid of its own.
    assert "/lib/layoutkit/liblayoutkit-probe.so" in doc["maps"]
    assert "/lib/ld-linux-aarch64.so.1" in doc["maps"]
    assert doc["pid"] > 0
    assert doc["model_differences"] == []
    assert doc["measured"]["free_slots"] == doc["model"]["free_slots"]
    # The areas the program then mapped where it asked lie in slots the scan found free.
    assert len(areas) == 2
    assert all(any(run.contains(a) for run in free) for a in areas)


@pytest.mark.qemu_system
def test_static_program_measured_through_its_twin_in_the_guest() -> None:
    program = ARM64 / "static"
    doc, printed, free = _guest_probe(program)
    anchor, areas, own_maps = _own_run(printed)
    assert anchor == _readelf_symbol(program, "lj_vm_exit_handler")  # non-PIE: no bias
    assert f"/bin/0-{program.name}" in own_maps  # the program itself ran in the guest
    assert doc["measured_through"] == "twin"
    assert doc["twin"] and doc["twin"].endswith("/twin")
    assert any(n.startswith(f"{program} is statically linked: no preload can enter it")
               for n in doc["notes"])
    assert doc["anchor"]["name"] == "lj_vm_exit_handler"
    assert doc["anchor"]["address"] == f"{anchor:#x}"
    assert doc["bias"] == "0x0"
    assert "/bin/1-twin" in doc["maps"]  # the twin's maps, not the program's
    assert doc["program_status"] == 0
    assert len(areas) == 2
    assert all(any(run.contains(a) for run in free) for a in areas)


def test_guest_program_options_are_checked(tmp_path: Path) -> None:
    def run(*args: str) -> tuple[int, str]:
        result = CliRunner().invoke(cli, ["probe", *args])
        return result.exit_code, result.stderr

    code, err = run("--runner", "qemu-system", "--when", "signal:USR1", "--",
                    str(ARM64 / "pie"))
    assert code == EXIT_USAGE and "nobody sends a signal in the guest" in err
    code, err = run("--runner", "qemu-system", "--threads", "2", "--", str(ARM64 / "pie"))
    assert code == EXIT_USAGE and "--threads" in err
    code, err = run("--arch", "x86_64", "--runner", "qemu-system", "--",
                    str(ARM64 / "pie"))
    assert code == EXIT_USAGE and "--arch x86_64, but" in err
    code, err = run("--runner", "qemu-system", "--", str(ELF_DIR / "x86_64" / "pie"))
    assert code == EXIT_USAGE and "no qemu-system guest is known for x86_64" in err
    script = tmp_path / "run.sh"
    script.write_text("#!/bin/sh\n")
    code, err = run("--runner", "qemu-system", "--", str(script))
    assert code == EXIT_USAGE and "not a program the guest can run" in err
