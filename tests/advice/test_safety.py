"""Safety of advise's recommendations, against readelf's view of real links.

The protections layoutkit measures (advice/safety.py) are compared with the committed
readelf oracles of every fixture; the table advise consults (advice/safety_table.py) is
checked row by row by linking a real program of each shape with each linker for each
arch and reading the result with ``readelf -lW`` / ``-dW``; the -z separate-code layout
advise predicts is compared with where GNU ld really put the segments.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from layoutkit.advice import linkers
from layoutkit.advice.safety import Protection, Protections, Shape, Source
from layoutkit.advice.safety_table import MEASURED_ARCHES, SEPARATE_CODE, effect
from layoutkit.commands.advise import advise
from layoutkit.core.arches import by_name
from layoutkit.core.kinds import AdviceKind
from layoutkit.elf import read_elf
from layoutkit.native.relink import SOURCE
from tests.support import ELF_DIR, FIXTURES, ROOT, binary_id, fixture_binaries, oracle, require

TRIPLET = {"x86_64": "x86_64-linux-gnu", "aarch64": "aarch64-linux-gnu",
           "ppc64le": "powerpc64le-linux-gnu"}
# Addresses like the ones advise picks (a rebase clear of mmap_min_addr, .bss above the
# window): what matters to the protections is that -Ttext-segment / -Tbss are given.
BASE = {"aarch64": 0x3E20000, "ppc64le": 0x3E20000, "x86_64": 0x1000000}
BSS = 0x7C30000


# ------------------------------------------------------------------ readelf's view

def readelf_view(program_headers: str, dynamic: str) -> dict[str, object]:
    """The protections as readelf prints them (``-lW`` and ``-dW`` texts)."""
    rows = re.findall(r"^\s+(LOAD|GNU_RELRO|GNU_STACK)\s+\S+\s+\S+\s+\S+\s+\S+\s+\S+\s+"
                      r"([RWE ]{3})\s+(?:0x)?[0-9a-f]+$", program_headers, re.M)
    loads = [flags for kind, flags in rows if kind == "LOAD"]
    stack = [flags for kind, flags in rows if kind == "GNU_STACK"]
    return {"segments": loads,
            "w_xor_x": not any("W" in f and "E" in f for f in loads),
            "relro": any(kind == "GNU_RELRO" for kind, _ in rows),
            "nx_stack": bool(stack) and "E" not in stack[0],
            "bind_now": bool(re.search(r"\(FLAGS\)\s+.*BIND_NOW|\(FLAGS_1\)\s+Flags:.*\bNOW\b",
                                       dynamic))}


def readelf(binary: Path) -> dict[str, object]:
    run = [require("readelf"), "-W"]
    lw = subprocess.run([*run, "-l", str(binary)], capture_output=True, text=True, check=True)
    dw = subprocess.run([*run, "-d", str(binary)], capture_output=True, text=True, check=True)
    sw = subprocess.run([*run, "-S", str(binary)], capture_output=True, text=True, check=True)
    return readelf_view(lw.stdout, dw.stdout) | {"separate": separate(lw.stdout, sw.stdout)}


def separate(program_headers: str, sections: str) -> bool:
    """No LOAD holds both an executable and a writable section, from readelf's section
    to segment mapping and its section flags (-SW: X executable, W write)."""
    flags = dict(re.findall(r"^\s+\[\s*\d+\]\s+(\S+)\s+\S+\s+[0-9a-f]+\s+[0-9a-f]+\s+"
                            r"[0-9a-f]+\s+[0-9a-f]+\s+([A-Za-z]*)\s+\d", sections, re.M))
    headers, _, mapped = program_headers.partition("Section to Segment")
    kinds = [k for k in re.findall(r"^\s+(\w+)\s+0x", headers, re.M) if k != "Type"]
    mapping = re.findall(r"^\s+(\d\d)\s+(.*)$", mapped, re.M)
    for number, names in mapping:
        if kinds[int(number)] != "LOAD":
            continue
        inside = [flags.get(name, "") for name in names.split()]
        if any("X" in f for f in inside) and any("W" in f for f in inside):
            return False
    return True


def ours(p: Protections, *, with_separate: bool = True) -> dict[str, object]:
    view: dict[str, object] = {"segments": list(p.segments), "w_xor_x": p.w_xor_x,
                               "relro": p.relro, "nx_stack": p.nx_stack,
                               "bind_now": p.bind_now}
    return view | ({"separate": p.separate} if with_separate else {})


@pytest.mark.parametrize("binary", fixture_binaries(), ids=binary_id)
def test_protections_are_readelfs(binary: Path) -> None:
    expected = readelf_view(oracle(binary, "l"), oracle(binary, "d")) | {
        "separate": separate(oracle(binary, "l"), oracle(binary, "S"))}
    assert ours(Protections.measure(read_elf(binary))) == expected


# ------------------------------------------------------------------ the table, relinked

def link(tmp: Path, arch: str, linker: str, shape: Shape, flags: list[str],
         name: str) -> subprocess.CompletedProcess[str]:
    cc = require(f"{TRIPLET[arch]}-gcc")
    cmd = [cc, "-O2"]
    if linker in ("lld", "mold"):
        tool = tmp / f"ld.{linker}"
        if not tool.exists():
            tool.symlink_to(require("ld.lld" if linker == "lld" else "mold"))
        cmd += ["-B", f"{tmp}/"]
    if linker == "gold":
        require("ld.gold")
    pie = any(f in ("-pie", "-static-pie") for f in flags)
    if not pie:
        cmd += ["-fno-pie", "-no-pie"] + (["-static"] if shape is Shape.STATIC else [])
    if shape is Shape.DYNAMIC:
        cmd.append("-Wl,-z,now")  # so that the table's BIND_NOW column is exercised
    cmd += [*linkers.fuse_ld(linker), *flags, "-o", str(tmp / name), str(SOURCE)]
    return subprocess.run(cmd, capture_output=True, text=True, check=False)


def edit_flags(kind: AdviceKind, linker: str, arch: str, shape: Shape) -> list[str]:
    if kind is AdviceKind.PIE:
        return list(linkers.pie_flags(shape is Shape.STATIC))
    flags = linkers.base_flags(linker, BASE[arch])
    return flags + ([f"-Wl,-Tbss={BSS:#x}"] if kind is AdviceKind.RELOCATE_TEXT else [])


def table_cases() -> list[tuple[str, str, Shape, AdviceKind]]:
    out = []
    for arch in MEASURED_ARCHES:
        for linker in sorted(by_name(arch).link.linkers & {"bfd", "gold", "lld", "mold"}):
            kinds = [AdviceKind.REBASE, AdviceKind.PIE]
            if linkers.separate_bss_supported(linker):
                kinds.append(AdviceKind.RELOCATE_TEXT)
            out += [(arch, linker, shape, kind) for shape in (Shape.STATIC, Shape.DYNAMIC)
                    for kind in kinds]
    return out


NAMES = {"w_xor_x": Protection.W_XOR_X, "relro": Protection.RELRO,
         "nx_stack": Protection.NX_STACK, "bind_now": Protection.BIND_NOW,
         "separate": Protection.SEPARATE}


def held(view: dict[str, object]) -> set[str]:
    return {name for name in NAMES if view[name]}


@pytest.mark.toolchain
@pytest.mark.parametrize("case", table_cases(),
                         ids=lambda c: f"{c[0]}-{c[1]}-{c[2]}-{c[3]}")
def test_table_row_is_what_the_linker_does(tmp_path: Path,
                                           case: tuple[str, str, Shape, AdviceKind]) -> None:
    arch, linker, shape, kind = case
    row = effect(linker, shape, arch, kind)
    assert row is not None
    base = link(tmp_path, arch, linker, shape, [], "before")
    assert base.returncode == 0, base.stderr
    before = readelf(tmp_path / "before")
    flags = edit_flags(kind, linker, arch, shape)
    done = link(tmp_path, arch, linker, shape, flags, "after")
    assert (done.returncode == 0) == row.links, done.stderr
    if not row.links:
        return
    after = readelf(tmp_path / "after")
    if kind is AdviceKind.PIE:
        header = subprocess.run([require("readelf"), "-hW", str(tmp_path / "after")],
                                capture_output=True, text=True, check=True).stdout
        assert "DYN (Position-Independent Executable file)" in header
    lost = {NAMES[n] for n in held(before) - held(after)}
    assert lost == set(row.lost), (before, after)
    if row.lost:
        assert row.keep == SEPARATE_CODE
        kept = link(tmp_path, arch, linker, shape, [*flags, *row.keep], "kept")
        assert kept.returncode == 0, kept.stderr
        assert held(readelf(tmp_path / "kept")) == held(before)


# ------------------------------------------------------------------ advise, end to end

def test_static_arm64_relocate_text_carries_separate_code() -> None:
    adv = advise(str(ELF_DIR / "aarch64" / "static"))
    rec = next(r for r in adv.recommendations if r.kind is AdviceKind.RELOCATE_TEXT)
    assert rec.flags[-1] == "-Wl,-z,separate-code"
    assert rec.safety is not None and not rec.safety.weaker
    assert rec.safety.added == SEPARATE_CODE
    assert all(not (r.safety and r.safety.weaker) for r in adv.recommendations)


def test_allow_weaker_shows_the_merged_link_last_and_marked() -> None:
    adv = advise(str(ELF_DIR / "aarch64" / "static"), allow_weaker=True)
    weak = [r for r in adv.recommendations if r.safety and r.safety.weaker]
    assert len(weak) == 1 and weak[0] is adv.recommendations[-2]  # before the runtime one
    assert weak[0].flags == ("-Wl,-Ttext-segment=0x3e20000", "-Wl,-Tbss=0x7c30000")
    assert weak[0].reasons[0].startswith("WEAKER: loses ")
    assert weak[0].safety is not None
    assert set(weak[0].safety.lost) == {Protection.W_XOR_X, Protection.RELRO,
                                        Protection.SEPARATE}


def symbol(readelf_s: str, name: str) -> int:
    found = re.search(rf"([0-9a-f]{{16}}) .* {name}$", readelf_s, re.M)
    assert found is not None, name
    return int(found[1], 16)


def loads_of(readelf_l: str) -> list[tuple[int, int, str]]:
    """(p_vaddr, page-rounded end, flags) of every LOAD readelf -lW lists."""
    rows = re.findall(r"^\s+LOAD\s+\S+\s+(0x[0-9a-f]+)\s+\S+\s+\S+\s+(0x[0-9a-f]+)\s+"
                      r"([RWE ]{3})", readelf_l, re.M)
    return [(int(v, 16), -(-(int(v, 16) + int(m, 16)) // 4096) * 4096, f)
            for v, m, f in rows]


@pytest.fixture(scope="module")
def static_arm64_advice() -> dict[object, object]:
    adv = advise(str(ELF_DIR / "aarch64" / "static"), allow_weaker=True)
    recs = [r for r in adv.recommendations if r.kind is AdviceKind.RELOCATE_TEXT]
    assert [bool(r.safety and r.safety.weaker) for r in recs] == [False, True]
    return {"adv": adv, False: recs[0], True: recs[1]}


@pytest.mark.toolchain
@pytest.mark.parametrize("weaker", [False, True], ids=["separate-code", "merged-rwx"])
def test_static_relocate_text_layout_and_twin_are_what_gnu_ld_emits(
        tmp_path: Path, weaker: bool, static_arm64_advice: dict[object, object]) -> None:
    """The advised flags on the static arm64 fixture's own object (fixtures/Makefile):
    every PT_LOAD where advise's model put it, with its flags (the RWE merge included),
    the anchor where advise moved it, the protections advise stated, and the layout
    twin's PT_LOADs those of the real relink, all read by readelf."""
    from layoutkit.advice.candidates import Advice, Recommendation
    from layoutkit.native.twin import TwinSpec, build_twin

    adv, rec = static_arm64_advice["adv"], static_arm64_advice[weaker]
    assert isinstance(adv, Advice) and isinstance(rec, Recommendation)
    assert rec.edit is not None and rec.safety is not None
    cc = require("aarch64-linux-gnu-gcc")
    out = tmp_path / "advised"
    subprocess.run([cc, "-O2", "-g0", "-fno-pie", f"-ffile-prefix-map={FIXTURES}=.", "-c",
                    "-o", str(tmp_path / "anchor.o"), str(FIXTURES / "src" / "anchor.c")],
                   check=True)
    subprocess.run([cc, "-static", "-no-pie", str(tmp_path / "anchor.o"), *rec.flags,
                    "-o", str(out)], check=True, capture_output=True)
    real = loads_of(subprocess.run([require("readelf"), "-lW", str(out)], capture_output=True,
                                   text=True, check=True).stdout)
    model = rec.edit.apply(adv.image)
    assert [(v, f) for v, _, f in real] == list(zip(
        [s.vaddr for s in model.loads], Protections.measure(model).segments, strict=True))
    sw = subprocess.run([require("readelf"), "-sW", str(out)], capture_output=True,
                        text=True, check=True).stdout
    fixture = subprocess.run([require("readelf"), "-sW", str(ELF_DIR / "aarch64" / "static")],
                             capture_output=True, text=True, check=True).stdout
    before = symbol(fixture, "lj_vm_exit_handler")
    anchor = rec.edit.address(adv.image, before)
    if weaker:
        # The merged link has one program header less (no PT_GNU_RELRO), so the 64-byte
        # aligned .text may start 0x40 lower in its page; -z separate-code starts the
        # code on a page, which makes the other case exact.
        assert abs(symbol(sw, "lj_vm_exit_handler") - anchor) < 4096
        anchor = symbol(sw, "lj_vm_exit_handler")
    else:
        assert symbol(sw, "lj_vm_exit_handler") == anchor
    view = readelf(out)
    assert ours(rec.safety.after) == view
    twin = build_twin(TwinSpec.of(model, anchor, "advised"))
    twin_loads = loads_of(subprocess.run([require("readelf"), "-lW", str(twin.path)],
                                         capture_output=True, text=True, check=True).stdout)
    assert twin_loads == real


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "layoutkit", *args], capture_output=True,
                          text=True, check=False, cwd=ROOT,
                          env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})})


def test_prove_without_a_toolchain_is_one_line_exit_4(tmp_path: Path) -> None:
    target = str(ELF_DIR / "aarch64" / "static")
    text = cli("advise", target, "--prove", env={"PATH": str(tmp_path)})
    assert text.returncode == 4
    assert text.stdout == ""
    assert text.stderr.count("\n") == 1
    assert "aarch64-linux-gnu-gcc not found" in text.stderr
    doc = cli("advise", target, "--prove", "--format", "json", env={"PATH": str(tmp_path)})
    assert doc.returncode == 4
    assert "aarch64-linux-gnu-gcc not found" in json.loads(doc.stdout)["error"]["message"]


@pytest.mark.toolchain
@pytest.mark.parametrize("variant", ["static", "nopie"])
def test_prove_measures_what_readelf_sees(tmp_path: Path, variant: str) -> None:
    require("aarch64-linux-gnu-gcc")
    done = cli("advise", str(ELF_DIR / "aarch64" / variant), "--prove", "--allow-weaker",
               "--format", "json")
    assert done.returncode == 0, done.stderr
    shape = Shape.STATIC if variant == "static" else Shape.DYNAMIC
    for rec in json.loads(done.stdout)["recommendations"]:
        if rec["safety"] is None:
            continue
        assert rec["safety"]["source"] == "measured"
        flags = [f for f in rec["flags"]]
        built = link(tmp_path, "aarch64", rec["linker"], shape, flags, "again")
        assert built.returncode == 0, built.stderr
        view = readelf(tmp_path / "again")
        after = rec["safety"]["after"]
        assert [after[k] for k in ("w_xor_x", "relro", "nx_stack", "separate_code")] == [
            view[k] for k in ("w_xor_x", "relro", "nx_stack", "separate")]
        assert after["segments"] == view["segments"]


def test_an_arch_no_relink_measured_says_so() -> None:
    """riscv64 has no row: its safety is not claimed either way."""
    adv = advise(str(ELF_DIR / "riscv64" / "nopie"))
    linked = [r for r in adv.recommendations if r.safety is not None]
    assert linked
    for rec in linked:
        assert rec.safety is not None and rec.safety.source is Source.NOT_MEASURED
        assert rec.safety.weaker is None


@pytest.mark.qemu_system
def test_separate_code_advice_measured_under_debians_arm64_kernel() -> None:
    """The safe -Tbss advice on the static arm64 fixture (-z separate-code, whose padding
    moves the code): its twin on Debian's arm64 kernel leaves exactly the free slots
    the advice predicted for the layout with that padding."""
    require("qemu-system-aarch64")
    require("aarch64-linux-gnu-gcc")
    require("apt-get")
    done = cli("verify", str(ELF_DIR / "aarch64" / "static"), "--runner", "qemu-system",
               "--runs", "2", "--advice", "relocate-text", "--format", "json")
    assert done.returncode == 0, done.stdout + done.stderr
    doc = json.loads(done.stdout)
    assert doc["advice"].endswith("-Wl,-z,separate-code")
    assert doc["kernel"]["release"].endswith("-cloud-arm64")
    assert doc["measured"] == doc["predicted"]
    assert doc["difference"]["unexplained"] == 0
    assert [r["counts"]["moved"] for r in doc["runs"]] == [0, 0]


@pytest.mark.toolchain
def test_prove_drops_what_the_relink_shows_weaker_than_the_table_said() -> None:
    """A guard against a wrong table row: the merged -Tbss flags on the static arm64
    fixture, presented as keeping everything, are relinked by --prove, found RWE
    without RELRO, and dropped with the reason (kept, marked, with --allow-weaker)."""
    from dataclasses import replace

    from layoutkit.native.relink import prove

    require("aarch64-linux-gnu-gcc")
    adv = advise(str(ELF_DIR / "aarch64" / "static"), allow_weaker=True)
    weak = next(r for r in adv.recommendations if r.safety and r.safety.weaker)
    assert weak.safety is not None
    claimed = replace(weak, safety=replace(weak.safety, after=weak.safety.before))
    wrong = replace(adv, recommendations=(claimed,), notes=())
    proven = prove(wrong)
    assert proven.recommendations == ()
    assert proven.notes == (
        "no relocate-text with bfd: --prove measured that -Wl,-Ttext-segment=0x3e20000 "
        "-Wl,-Tbss=0x7c30000 loses w^x, relro, separate-code on a static program",)
    kept = prove(wrong, allow_weaker=True)
    (rec,) = kept.recommendations
    assert rec.safety is not None and rec.safety.source is Source.MEASURED
    assert rec.safety.after.segments == ("RWE", "RW ")
