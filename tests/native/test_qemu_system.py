"""The qemu-system runner: Debian's arm64 cloud kernel booted under TCG.

One boot (module-scoped) runs the static probe twice and a failing command. Ground
truth is the guest probe's own /proc/self/maps: layoutkit's accounting of those maps
must agree with the guest kernel's answers slot for slot, except below
vm.mmap_min_addr, where the kernel refuses an unprivileged process (EPERM).
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from layoutkit.cli import cli
from layoutkit.errors import ProbeError, UsageError
from layoutkit.native.compare import Cause, Difference, differences, model_accounting
from layoutkit.native.guest.boot import (
    GuestResult,
    GuestRun,
    _reply,
    parse_console,
    run_in_guest,
)
from layoutkit.native.guest.initramfs import (
    GUEST_TMP,
    GuestProgram,
    initramfs,
    runtime_files,
)
from layoutkit.native.guest.kernels import fetch_kernel, system_for
from layoutkit.native.guest.probe import build_guest_probe, probe_scan_args, scan_result
from layoutkit.native.protocol import Outcome, ScanResult, ScanVerdict
from layoutkit.native.toolchain import Runner
from layoutkit.read.maps import parse_maps
from tests.output.test_schemas import assert_valid
from tests.support import ELF_DIR, require

MiB = 1 << 20
RADIUS = 128 * MiB


def _needs_guest() -> None:
    require("qemu-system-aarch64")
    require("aarch64-linux-gnu-gcc")
    require("apt-get")
    require("dpkg-deb")


@pytest.fixture(scope="module")
def guest() -> tuple[GuestResult, Path]:
    _needs_guest()
    probe = build_guest_probe("aarch64")
    programs = [
        (probe, probe_scan_args(probe, "aarch64", radius=RADIUS)),
        (probe, probe_scan_args(probe, "aarch64")),  # luajit-2.1's whole window
        (probe, ["--mode", "nonsense"]),
        (ELF_DIR / "aarch64" / "nopie", []),  # dynamic: loader and libc from the sysroot
    ]
    return run_in_guest("aarch64", programs, timeout=60), probe


def _scan(result: GuestResult, index: int, radius: int | None) -> ScanResult:
    return scan_result(result.runs[index], "aarch64", radius=radius)


@pytest.mark.qemu_system
def test_guest_boots_and_reads_the_kernel_facts(guest: tuple[GuestResult, Path]) -> None:
    result, _ = guest
    facts = result.facts
    assert facts.release.endswith("-cloud-arm64")
    assert result.kernel.package == f"linux-image-{facts.release}"
    assert result.kernel.version in facts.version  # "#1 SMP Debian 6.1.x-y (date)"
    assert facts.machine == "aarch64"
    assert facts.va_bits == 48
    assert facts.page_size == 4096
    assert facts.mmap_min_addr == 4096
    assert facts.randomize_va_space == 2
    assert facts.mmap_rnd_bits == 18
    assert len(result.runs) == 4
    assert 0 < result.boot_s < result.total_s < 30


@pytest.mark.qemu_system
def test_guest_scan_sees_eexist_and_eperm(guest: tuple[GuestResult, Path]) -> None:
    result, _ = guest
    scan = _scan(result, 0, RADIUS)
    ctx = scan.context
    assert ctx.runner is Runner.QEMU_SYSTEM
    assert ctx.infidelities == ()
    assert not ctx.leaked
    # A static non-PIE probe: its code sits at the link address, whatever ASLR does.
    assert ctx.self_anchor == ctx.anchor
    assert scan.window.start == 0
    assert scan.window.end == (ctx.self_anchor & ~0xFFFF) + RADIUS
    # Slot 0 holds page 0, below vm.mmap_min_addr: EPERM, the probe runs as uid 65534
    # (root would be allowed to map it).
    assert scan.outcomes[0] is Outcome.EPERM
    assert scan.counts.eperm == 1
    assert scan.counts.moved == scan.counts.enomem == scan.counts.other == 0
    maps = parse_maps(ctx.maps_before)
    inside = [m for m in maps.mappings if m.span.overlaps(scan.window)]
    assert any(m.start <= ctx.self_anchor < m.end for m in inside)
    for m in inside:
        first = (m.start - scan.window.start) // scan.slot
        last = (min(m.end, scan.window.end) - 1 - scan.window.start) // scan.slot
        assert set(scan.outcomes[first:last + 1]) == {Outcome.EEXIST}, m
    assert scan.counts.eexist > 0
    assert scan.verdict is ScanVerdict.OK


@pytest.mark.qemu_system
@pytest.mark.parametrize(("index", "radius"), [(0, RADIUS), (1, None)])
def test_guest_scan_agrees_with_accounting_slot_for_slot(
        guest: tuple[GuestResult, Path], index: int, radius: int | None) -> None:
    result, _ = guest
    scan = _scan(result, index, radius)
    acc = model_accounting(scan)
    model_free = {s for gap in acc.free for s in range(gap.start, gap.end, scan.slot)}
    # The only difference: page 0, which the model counts free and the kernel refuses.
    assert differences(scan) == [
        Difference(0, Outcome.EPERM, True, Cause.BELOW_MMAP_MIN_ADDR)]
    assert scan.free_slots() == model_free - {0}
    assert len(scan.outcomes) == scan.window.size // scan.slot


@pytest.mark.qemu_system
def test_guest_reports_a_failing_program(guest: tuple[GuestResult, Path]) -> None:
    result, _ = guest
    run = result.runs[2]
    assert run.argv == ("/bin/0-probe", "--mode", "nonsense")
    assert (run.status, run.signal, run.stdout, run.ok) == (2, None, "", False)
    assert "probe: unknown mode nonsense" in run.stderr
    with pytest.raises(ProbeError, match="status 2"):
        scan_result(run, "aarch64")


@pytest.mark.qemu_system
def test_guest_runs_a_dynamic_program(guest: tuple[GuestResult, Path]) -> None:
    result, _ = guest
    run = result.runs[3]
    assert run.argv == ("/bin/1-nopie",)
    assert (run.status, run.stderr) == (0, "")
    assert run.stdout.split() == ["lj_vm_exit_handler", "0x403dd0"]


@pytest.mark.qemu_system
def test_kernel_is_cached_by_package_version(guest: tuple[GuestResult, Path]) -> None:
    result, _ = guest
    kernel = result.kernel
    assert kernel.path.parent.name == f"{kernel.package}_{kernel.version}"
    assert fetch_kernel("aarch64") == kernel


@pytest.mark.qemu_system
def test_guest_killed_at_the_timeout(guest: tuple[GuestResult, Path]) -> None:
    _, probe = guest
    with pytest.raises(ProbeError, match=r"did not power off within 0\.1 s and was killed"):
        run_in_guest("aarch64", [(probe, ["--mode", "scan"])], timeout=0.1)


# --- no guest needed --------------------------------------------------------------------

def _cpio_entries(data: bytes) -> dict[str, tuple[int, int, int, bytes]]:
    """name -> (mode, rdevmajor, rdevminor, data) for a newc archive."""
    found: dict[str, tuple[int, int, int, bytes]] = {}
    at = 0
    while True:
        assert data[at:at + 6] == b"070701"
        fields = [int(data[at + 6 + 8 * i:at + 14 + 8 * i], 16) for i in range(13)]
        size, namesize = fields[6], fields[11]
        name = data[at + 110:at + 110 + namesize - 1].decode()
        at = (at + 110 + namesize + 3) & ~3
        if name == "TRAILER!!!":
            assert at == len(data)
            return found
        found[name] = (fields[1], fields[9], fields[10], data[at:at + size])
        at = (at + size + 3) & ~3


def test_initramfs_layout(tmp_path: Path) -> None:
    init, prog = tmp_path / "init", tmp_path / "prog"
    init.write_bytes(b"INIT")
    prog.write_bytes(b"PROGRAM")
    handshake = GuestProgram(prog, ("-v",), ("A=1", "B=x y"), handshake=True,
                             report=f"{GUEST_TMP}/r.json")
    entries = _cpio_entries(initramfs(init, [(prog, ["a b", "-x"]), (prog, []), handshake]))
    assert entries["init"] == (0o100755, 0, 0, b"INIT")
    assert entries["dev/console"][:3] == (0o020600, 5, 1)
    assert entries["bin/0-prog"] == (0o100755, 0, 0, b"PROGRAM")  # placed once
    assert entries["layoutkit.conf"][3] == (
        b"layoutkit-guest-2\x00"
        b"0\x00\x000\x003\x00/bin/0-prog\x00a b\x00-x\x00"
        b"0\x00\x000\x001\x00/bin/0-prog\x00"
        b"1\x00" + f"{GUEST_TMP}/r.json".encode()
        + b"\x002\x00A=1\x00B=x y\x002\x00/bin/0-prog\x00-v\x00")


FACTS = {"release": "6.1.0-56-cloud-arm64", "version": "#1 SMP", "machine": "aarch64",
         "stack": "0xffffe5e87a34", "page_size": 4096, "mmap_min_addr": 4096,
         "randomize_va_space": 2, "mmap_rnd_bits": 18, "uptime_ns": 1}


def _block(kind: str, doc: dict[str, object]) -> str:
    return f"@@LAYOUTKIT-{kind}@@\r\n{json.dumps(doc)}\r\n@@LAYOUTKIT-END@@\r\n"


def test_parse_console() -> None:
    run = {"index": 0, "argv": ["/bin/0-p", "\u00c3\u00a9"], "status": None, "signal": 11,
           "wall_ns": 5, "stdout": "ok\n", "stdout_bytes": 3, "stderr": "", "stderr_bytes": 0}
    text = ("[    0.000000] Booting Linux\r\n" + _block("FACTS", FACTS) + _block("RUN", run)
            + "@@LAYOUTKIT-DONE@@\r\n")
    facts, runs = parse_console(text)
    assert (facts.release, facts.va_bits, facts.mmap_rnd_bits) == (
        "6.1.0-56-cloud-arm64", 48, 18)
    assert runs == (GuestRun(("/bin/0-p", "é"), None, 11, 5, "ok\n", ""),)


def test_handshake_blocks_are_answered_once_each() -> None:
    """/init's HELLO blocks (the probe's first line, JSON in a JSON string) are answered
    in order, each once, through qemu's stdin; a partial block waits for its end."""
    hello = json.dumps({"anchor": "0x4016e0", "stack": "0xffffc000", "page_size": 4096})
    block = _block("HELLO", {"index": 0, "hello": hello}).encode()
    asked: list[tuple[int, dict[str, object]]] = []

    def answer(index: int, doc: dict[str, object]) -> str:
        asked.append((index, doc))
        return f"0x0 0x10000 {doc['anchor']} 0x8000 0x0 0x10000"

    sent = io.BytesIO()
    console = b"boot noise\r\n" + block[:30]
    assert _reply(console, 0, answer, sent) == 0 and not asked  # not complete yet
    console += block[30:]
    at = _reply(console, 0, answer, sent)
    assert at == console.rindex(b"@@LAYOUTKIT-END@@") + len(b"@@LAYOUTKIT-END@@")
    assert _reply(console, at, answer, sent) == at  # answered once
    assert asked == [(0, json.loads(hello))]
    assert sent.getvalue() == b"0x0 0x10000 0x4016e0 0x8000 0x0 0x10000\n"
    with pytest.raises(ProbeError, match="nobody answers"):
        _reply(console, 0, None, None)
    run = {"index": 0, "argv": ["/bin/0-p"], "status": 0, "signal": None, "pid": 77,
           "wall_ns": 5, "stdout": "{}", "stdout_bytes": 2, "stderr": "", "stderr_bytes": 0,
           "hello": hello, "answer": "0x0 0x1", "report": "{}", "report_bytes": 2}
    _, runs = parse_console(_block("FACTS", FACTS) + _block("RUN", run))
    assert (runs[0].hello, runs[0].answer, runs[0].report, runs[0].pid) == (
        hello, "0x0 0x1", "{}", 77)


def test_parse_console_rejects_cut_output() -> None:
    run = {"index": 0, "argv": ["/bin/0-p"], "status": 0, "signal": None, "wall_ns": 5,
           "stdout": "o", "stdout_bytes": 3, "stderr": "", "stderr_bytes": 0}
    with pytest.raises(ProbeError, match="cut short"):
        parse_console(_block("FACTS", FACTS) + _block("RUN", run))
    with pytest.raises(ProbeError, match="no kernel facts"):
        parse_console("Kernel panic - not syncing: No working init found\n")


def test_unknown_arch_and_non_elf_program_are_refused(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="no qemu-system guest is known for riscv64"):
        system_for("riscv64")
    script = tmp_path / "run.sh"
    script.write_text("#!/bin/sh\n")
    with pytest.raises(UsageError, match="not a program the guest can run"):
        run_in_guest("aarch64", [(script, [])], timeout=1)


def test_runtime_files_of_a_dynamic_program(tmp_path: Path) -> None:
    """The loader at its PT_INTERP path, DT_NEEDED (transitively) in /lib/<triplet>, a
    library beside the program before the sysroot's; nothing for a static program."""
    sysroot = Path("/usr/aarch64-linux-gnu/lib")
    if not (sysroot / "libc.so.6").is_file():
        pytest.skip("no arm64 cross sysroot (libc6-arm64-cross)")
    assert runtime_files("aarch64", ELF_DIR / "aarch64" / "static") == {}
    files = runtime_files("aarch64", ELF_DIR / "aarch64" / "uselib")
    assert files["/lib/ld-linux-aarch64.so.1"] == sysroot / "ld-linux-aarch64.so.1"
    assert files["/lib/aarch64-linux-gnu/libc.so.6"] == sysroot / "libc.so.6"
    assert files["/lib/aarch64-linux-gnu/libanchor.so"] == ELF_DIR / "aarch64" / "libanchor.so"
    prog = tmp_path / "prog"
    prog.write_bytes(b"PROGRAM")
    lib = tmp_path / "libx.so"
    lib.write_bytes(b"LIB")
    entries = _cpio_entries(initramfs(prog, [(prog, [])], {"/lib/a/libx.so": lib}))
    assert entries["lib"][0] == entries["lib/a"][0] == 0o040755
    assert entries["lib/a/libx.so"] == (0o100755, 0, 0, b"LIB")


@pytest.mark.qemu_system
def test_ppc64le_guest_scan_agrees_with_accounting() -> None:
    """Debian's ppc64el kernel on qemu-system-ppc64 -M pseries: 64 KiB pages."""
    require("qemu-system-ppc64")
    require("powerpc64le-linux-gnu-gcc")
    require("apt-get")
    probe = build_guest_probe("ppc64le")
    args = probe_scan_args(probe, "ppc64le", jit="generic", radius=RADIUS)
    result = run_in_guest("ppc64le", [(probe, args)], timeout=60)
    facts = result.facts
    assert facts.release.endswith("-powerpc64le")
    assert (facts.machine, facts.va_bits, facts.page_size) == ("ppc64le", 47, 65536)
    assert (facts.mmap_min_addr, facts.randomize_va_space) == (4096, 2)
    scan = scan_result(result.runs[0], "ppc64le", jit="generic", radius=RADIUS)
    assert not scan.context.leaked
    assert scan.counts.eexist > 0
    assert scan.counts.eperm == scan.counts.moved == scan.counts.other == 0
    acc = model_accounting(scan)
    assert differences(scan) == []
    assert scan.free_slots() == {s for gap in acc.free
                                 for s in range(gap.start, gap.end, scan.slot)}


def test_old_import_path_still_names_the_guest_runner() -> None:
    """Callers written against native/qemu_system.py (the workload) keep working."""
    from layoutkit.native import qemu_system

    assert qemu_system.run_in_guest is run_in_guest
    assert qemu_system.fetch_kernel is fetch_kernel


@pytest.mark.qemu_system
def test_probe_command_in_the_guest_answers_the_handshake_around_its_stack() -> None:
    """``probe --runner qemu-system --anchor stack``: the window is known only once the
    guest kernel has placed the probe's stack (ASLR); /init relays the probe's hello and
    the answer. Ground truth: the [stack] mapping of the probe's own maps in the guest."""
    _needs_guest()
    result = CliRunner().invoke(cli, ["probe", "--arch", "arm64", "--runner", "qemu-system",
                                      "--anchor", "stack", "--radius", "1M",
                                      "--format", "json"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert_valid(doc)
    stack = next(m for m in parse_maps(doc["maps"], source="guest").mappings
                 if m.path == "[stack]")
    anchor = int(doc["anchor"], 16)
    assert stack.start <= anchor < stack.end
    assert (doc["runner"], doc["anchor_source"]) == ("qemu-system", "the probe's main stack")
    assert doc["infidelities"] == [] and doc["counts"]["moved"] == 0
    base = anchor & ~0xffff
    assert (doc["usable"]["start"], doc["usable"]["end"]) == (
        f"{base - MiB:#x}", f"{base + MiB:#x}")
    # The stack's own slots are taken (EEXIST), never reported free.
    assert doc["counts"]["eexist"] >= stack.size // 0x10000
    assert not any(int(r["start"], 16) < stack.end and stack.start < int(r["end"], 16)
                   for r in doc["free_runs"])
    # Only the stack guard gap (free to the kernel's mmap, kept clear by its search)
    # differs from the accounting of the same maps.
    assert {d["reason"] for d in doc["model_differences"]} <= {Cause.STACK_GUARD_GAP.value}
