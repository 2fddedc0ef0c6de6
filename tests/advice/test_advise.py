"""``layoutkit advise`` proven on real builds.

Every rebase / relocate-text / pie recommendation made for a fixture is linked for real
(fixtures/src/anchor.c, the cross gcc 12 of the arch, exactly the recommended flags plus
what fixtures/Makefile needs), then checked against independent ground truth: readelf of
the new binary (where the image landed), the kernel's own /proc/self/maps when it runs
natively, qemu-user for the foreign arches, and arithmetic written out here. The
prediction the advice made for the new layout must be what ``inspect`` says about the
binary that was actually built.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import pytest
from click.testing import CliRunner

from layoutkit.advice.candidates import Advice, Recommendation
from layoutkit.cli import cli
from layoutkit.commands.advise import advise
from layoutkit.commands.inspect import inspect_binary
from layoutkit.core.arches import arch_names
from layoutkit.core.scenario import Demand, Scenario
from layoutkit.core.spans import Span
from layoutkit.errors import UsageError
from tests.support import ELF_DIR, FIXTURES, ROOT, require

KiB, MiB, GiB = 1 << 10, 1 << 20, 1 << 30
SLOT = 64 * KiB  # LuaJIT's area size and hint alignment (lj_mcode.c)
SRC = FIXTURES / "src"
DATA = ROOT / "tests" / "data"

TRIPLET = {"x86_64": "x86_64-linux-gnu", "aarch64": "aarch64-linux-gnu",
           "riscv64": "riscv64-linux-gnu", "ppc64le": "powerpc64le-linux-gnu"}
QEMU = {"aarch64": "qemu-aarch64", "riscv64": "qemu-riscv64", "ppc64le": "qemu-ppc64le"}
# The fixture each linker made (fixtures/Makefile VARIANTS_*), so that linker detection
# picks that linker: no gold for riscv64 in Debian 12.
VARIANT = {"bfd": "nopie", "gold": "nopie-gold-textseg", "lld": "nopie-lld-base",
           "mold": "nopie-mold-base"}
LINKERS_OF = {"x86_64": ("bfd", "gold", "lld", "mold"), "aarch64": ("bfd", "gold", "lld", "mold"),
              "riscv64": ("bfd", "lld", "mold"), "ppc64le": ("bfd", "gold", "lld", "mold")}
# -Tbss (relocate-text) is advised for GNU ld and gold only (layoutkit/linkers.py).
KINDS_OF = {"bfd": ("rebase", "relocate-text", "pie"), "gold": ("rebase", "relocate-text", "pie"),
            "lld": ("rebase", "pie"), "mold": ("rebase", "pie")}
ALL_CASES = [(arch, linker, kind) for arch, linkers in LINKERS_OF.items()
             for linker in linkers for kind in KINDS_OF[linker]]
# (arch, linker, kind) whose change would leave fewer worst-case free slots than the
# fixture's current layout (current, after), as measured here: advise must not offer them.
KNOWN_WORSE = {("x86_64", "gold", "rebase"): (31677, 31676),
               ("x86_64", "lld", "rebase"): (31677, 31676),
               ("x86_64", "mold", "rebase"): (31677, 31676),
               ("riscv64", "lld", "rebase"): (7, 6),
               ("riscv64", "mold", "rebase"): (7, 6)}
CASES = [c for c in ALL_CASES if c not in KNOWN_WORSE]
CFLAGS = ["-O2", "-g0", "-Wall", "-Wextra"]  # fixtures/Makefile CFLAGS (minus the prefix map)


def case_id(case: tuple[str, str, str]) -> str:
    return "-".join(case)


# ------------------------------------------------------------------ readelf, the oracle

def readelf(*args: str) -> str:
    return subprocess.run([require("readelf"), *args], capture_output=True, text=True,
                          check=True, env={**os.environ, "LC_ALL": "C"}).stdout


@dataclass(frozen=True)
class Load:
    vaddr: int
    filesz: int
    memsz: int
    flags: str


def loads(binary: Path) -> list[Load]:
    """The PT_LOAD rows of ``readelf -lW``."""
    out = []
    for line in readelf("-lW", str(binary)).splitlines():
        cols = line.split()
        if cols[:1] == ["LOAD"]:
            out.append(Load(int(cols[2], 16), int(cols[4], 16), int(cols[5], 16),
                            "".join(cols[6:-1])))
    assert out, f"no PT_LOAD in {binary}"
    return out


def elf_type(binary: Path) -> str:
    match = re.search(r"^\s*Type:\s+(\S+)", readelf("-hW", str(binary)), re.M)
    assert match
    return match.group(1)


def symbol_value(binary: Path, name: str) -> int:
    match = re.search(rf"^\s*\d+: ([0-9a-f]+) .* {re.escape(name)}$",
                      readelf("-sW", str(binary)), re.M)
    assert match, f"{name} not in {binary}"
    return int(match.group(1), 16)


def section(binary: Path, name: str) -> tuple[int, int]:
    """Address and size of section ``name`` (readelf -SW)."""
    for line in readelf("-SW", str(binary)).splitlines():
        cols = line.replace("[ ", "[").split()
        if len(cols) > 5 and cols[1] == name:
            return int(cols[3], 16), int(cols[5], 16)
    raise AssertionError(f"no {name} in {binary}")


def image_extent(binary: Path) -> tuple[int, int]:
    """First and end address of the PT_LOADs, page-rounded as the kernel maps them."""
    rows = loads(binary)
    return (min(r.vaddr for r in rows) & ~0xFFF,
            -(-max(r.vaddr + r.memsz for r in rows) // 4096) * 4096)


# ------------------------------------------------------------------ building

class Builder:
    """anchor.c compiled once per arch and flavour, linked as often as needed."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.bindir = root / "bin"  # gcc 12 finds ld.lld / ld.mold only through -B
        self.bindir.mkdir()
        self._objects: dict[tuple[str, str], Path] = {}
        self._built: dict[tuple[str, str, str], Path] = {}

    def cc(self, arch: str) -> str:
        return require(f"{TRIPLET[arch]}-gcc")

    def _linker_link(self, linker: str) -> None:
        tool = {"lld": "ld.lld", "mold": "ld.mold"}[linker]
        link = self.bindir / tool
        if not link.exists():
            link.symlink_to(require("ld.lld" if linker == "lld" else "mold"))

    def obj(self, arch: str, flavour: str) -> Path:
        """``flavour``: nopie, pie, nopie-norelax, pie-norelax, start (riscv64 only)."""
        key = (arch, flavour)
        if key not in self._objects:
            out = self.root / f"{arch}-{flavour}.o"
            if flavour == "start":
                cmd = [self.cc(arch), "-mno-relax", "-c", "-o", str(out),
                       str(SRC / "riscv64-start.S")]
            else:
                extra = ["-fPIE" if flavour.startswith("pie") else "-fno-pie"]
                if flavour.endswith("norelax"):
                    extra.append("-mno-relax")
                cmd = [self.cc(arch), *CFLAGS, *extra, "-c", "-o", str(out),
                       str(SRC / "anchor.c")]
            subprocess.run(cmd, check=True, capture_output=True, text=True)
            self._objects[key] = out
        return self._objects[key]

    def crt(self, arch: str, name: str) -> str:
        return subprocess.run([self.cc(arch), f"-print-file-name={name}"], check=True,
                              capture_output=True, text=True).stdout.strip()

    def link(self, arch: str, rec: Recommendation, out: Path,
             extra_objects: tuple[Path, ...] = ()) -> Path:
        """Link anchor.c with exactly ``rec.flags`` (plus the Makefile's necessities)."""
        pie = rec.kind.value == "pie"
        cmd = [self.cc(arch)]
        if rec.linker == "gold":
            require("ld.gold")
        if rec.linker in ("lld", "mold"):
            self._linker_link(rec.linker)
            cmd += ["-B", f"{self.bindir}/"]
        cmd += list(rec.flags)
        if not pie:
            cmd.append("-no-pie")
        flavour = "pie" if pie else "nopie"
        if arch == "riscv64" and rec.linker == "lld":
            # LLD 14 has no riscv64 relaxation and Debian's crt1.o/Scrt1.o carry an
            # R_RISCV_ALIGN: own _start, -mno-relax objects (fixtures/README.md).
            begin, end = ("crtbeginS.o", "crtendS.o") if pie else ("crtbegin.o", "crtend.o")
            cmd += ["-nostartfiles", str(self.obj(arch, "start")), self.crt(arch, "crti.o"),
                    self.crt(arch, begin), str(self.obj(arch, f"{flavour}-norelax")),
                    *map(str, extra_objects), self.crt(arch, end), self.crt(arch, "crtn.o")]
        else:
            cmd += [str(self.obj(arch, flavour)), *map(str, extra_objects)]
        cmd += ["-o", str(out), "-Wl,--build-id=sha1"]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        assert proc.returncode == 0, f"{' '.join(cmd)}\n{proc.stderr}"
        return out

    def built(self, case: tuple[str, str, str]) -> tuple[Advice, Recommendation, Path]:
        arch, linker, kind = case
        adv = fixture_advice(arch, linker)
        rec = only(adv, kind)
        if case not in self._built:
            self._built[case] = self.link(arch, rec, self.root / case_id(case))
        return adv, rec, self._built[case]


@cache
def fixture_advice(arch: str, linker: str) -> Advice:
    # One 64 KiB area per state: free-slot figures do not depend on it, and riscv64's
    # generic window (JAL, +-1 MiB mutual reach: 16 slots) cannot hold the 512 KiB
    # default next to an image.
    return advise(str(ELF_DIR / arch / VARIANT[linker]), Scenario(demand=Demand(mcode=SLOT)))


def only(adv: Advice, kind: str) -> Recommendation:
    found = [r for r in adv.recommendations if r.kind.value == kind]
    assert len(found) == 1, f"{kind}: {[r.kind for r in adv.recommendations]}"
    return found[0]


@pytest.fixture(scope="module")
def builder(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Builder]:
    yield Builder(tmp_path_factory.mktemp("advise-builds"))


# ------------------------------------------------------------ 1. the image lands where advised

@pytest.mark.parametrize(("arch", "linker"),
                         [(a, linker) for a, linkers in LINKERS_OF.items() for linker in linkers])
def test_linker_detection_picks_the_fixture_linker(arch: str, linker: str) -> None:
    adv = fixture_advice(arch, linker)
    assert adv.linker == linker
    assert sorted(r.kind.value for r in adv.recommendations if r.kind.value != "runtime") == sorted(
        k for k in KINDS_OF[linker] if (arch, linker, k) not in KNOWN_WORSE)


@pytest.mark.toolchain
@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_advised_build_lands_where_advised_and_the_prediction_follows(
        builder: Builder, case: tuple[str, str, str]) -> None:
    _, linker, kind = case
    adv, rec, binary = builder.built(case)
    assert rec.linker == linker
    rows = loads(binary)
    if kind == "pie":
        assert rec.base is None
        assert elf_type(binary) == "DYN"
    else:
        assert elf_type(binary) == "EXEC"
        assert rec.base is not None
        assert rows[0].vaddr == rec.base
    if kind == "relocate-text":
        assert rec.bss is not None
        bss = [r for r in rows if r.vaddr == rec.bss]
        assert len(bss) == 1, rows
        assert bss[0].filesz == 0 < bss[0].memsz
        # .bss lies in it (ppc64le gold puts the NOBITS .plt first, so not at its start).
        start, size = section(binary, ".bss")
        assert rec.bss <= start and start + size <= rec.bss + bss[0].memsz
        assert "-Wl,-Tbss=" + hex(rec.bss) in rec.flags
    assert rec.worst is not None
    built = inspect_binary(binary, Scenario(jit=adv.profile)).prediction.worst
    assert built.free_slots == rec.worst.free_slots
    # Same window, up to where the linker put the anchor inside its page (the advice
    # shifts the current image; a real relink may move .text by a few bytes).
    assert built.jit.window.size == rec.worst.jit.window.size
    assert abs(built.jit.window.start - rec.worst.jit.window.start) < 4096


@pytest.mark.toolchain
@pytest.mark.parametrize("case", [pytest.param(c, id=case_id(c)) for c in CASES])
def test_advised_build_is_no_worse_than_the_current_layout(
        builder: Builder, case: tuple[str, str, str]) -> None:
    adv, _, binary = builder.built(case)
    built = inspect_binary(binary, Scenario(jit=adv.profile)).prediction.worst
    assert built.free_slots >= adv.current.worst.free_slots


@pytest.mark.parametrize("case", sorted(KNOWN_WORSE), ids=case_id)
def test_a_change_that_leaves_less_room_is_not_offered(case: tuple[str, str, str]) -> None:
    arch, linker, kind = case
    adv = fixture_advice(arch, linker)
    assert adv.current.worst.free_slots == KNOWN_WORSE[case][0]
    assert kind not in {r.kind.value for r in adv.recommendations}
    assert any(f"no {kind} with {linker}" in note for note in adv.notes)


# ------------------------------------------------------------------ 2. run them

def run_jit(command: list[str]) -> tuple[int, list[tuple[int, int]], list[str]]:
    proc = subprocess.run([*command, "jit", "4"], capture_output=True, text=True, timeout=60,
                          check=False)
    assert proc.returncode == 0, proc.stderr
    printed = re.search(r"^lj_vm_exit_handler (0x[0-9a-f]+)$", proc.stdout, re.M)
    assert printed, proc.stdout
    areas = [(int(m.group(1), 16), int(m.group(2), 16))
             for m in re.finditer(r"^area (0x[0-9a-f]+) requested (0x[0-9a-f]+)$",
                                  proc.stdout, re.M)]
    assert len(areas) == 4, proc.stdout
    maps = [line for line in proc.stdout.splitlines() if line[:1] in "0123456789abcdef"]
    return int(printed.group(1), 16), areas, maps


@pytest.mark.toolchain
@pytest.mark.parametrize("case", [c for c in CASES if c[0] == "x86_64"], ids=case_id)
def test_x86_64_advised_build_runs_with_its_jit_areas_in_the_window(
        builder: Builder, case: tuple[str, str, str]) -> None:
    _, _, kind = case
    adv, rec, binary = builder.built(case)
    anchor, areas, maps = run_jit([str(binary)])
    value = symbol_value(binary, "lj_vm_exit_handler")
    if kind == "pie":
        assert (anchor - value) % 4096 == 0 and anchor != value
    else:
        assert anchor == value
    # LuaJIT 2.1 on x86-64 (JR 31): target = anchor & ~0xffff, range = 2^30 - 2 MiB,
    # an area p is kept iff target - range < p and p + 64K < target + range.
    assert adv.profile == "luajit-2.1"
    target, rng = anchor & ~0xFFFF, 2**30 - 2 * MiB
    assert rec.worst is not None
    shift = target - rec.worst.jit.target  # the ASLR of a PIE; 0 for a fixed image
    if kind != "pie":
        assert shift == 0
    window = rec.worst.jit.window
    assert (window.start + shift, window.end + shift) == (target - rng, target + rng)
    for got, _ in areas:
        assert target - rng < got and got + SLOT < target + rng, hex(got)
    # stdout is a pipe here: glibc mallocs its buffer, so there is a brk heap.
    heap = [line for line in maps if line.rstrip().endswith("[heap]")]
    assert len(heap) == 1, maps
    heap_start = int(heap[0].split("-")[0], 16)
    if kind == "relocate-text":
        assert rec.bss is not None
        # The kernel mapped the zero-fill segment where advised, and brk follows it.
        assert any(line.startswith(f"{rec.bss:x}-") and " rw-p " in line for line in maps)
        assert heap_start >= rec.bss
        assert heap_start >= target + rng


@pytest.mark.qemu_user
@pytest.mark.parametrize("case", [c for c in CASES if c[0] in QEMU], ids=case_id)
def test_foreign_advised_build_runs_under_qemu(builder: Builder,
                                               case: tuple[str, str, str]) -> None:
    arch, _, kind = case
    _, rec, binary = builder.built(case)
    sysroot = f"/usr/{TRIPLET[arch]}"
    anchor, areas, _ = run_jit([require(QEMU[arch]), "-L", sysroot, str(binary)])
    value = symbol_value(binary, "lj_vm_exit_handler")
    if kind == "pie":
        assert (anchor - value) % 4096 == 0 and anchor != value
    else:
        assert anchor == value
        # qemu-user honours free hints: the areas land right below the anchor,
        # inside the advised window.
        assert rec.worst is not None
        window = rec.worst.jit.window
        for got, requested in areas:
            assert got == requested
            assert window.start <= got and got + SLOT <= window.end


# ------------------------------------------------------------------ 3. the example

@pytest.mark.toolchain
def test_aarch64_nopie_at_0x400000_gets_a_full_free_124_mib_window(builder: Builder) -> None:
    fixture = ELF_DIR / "aarch64" / "nopie"
    adv = advise(str(fixture), Scenario(jit="luajit-2.1"))
    image_start = loads(fixture)[0].vaddr
    assert image_start == 0x400000
    # Before: only the slots between 0x10000 (the first whole 64 KiB slot above
    # mmap_min_addr) and the image are free; the heap takes what lies above.
    assert adv.current.worst.free_slots == (image_start - 0x10000) // SLOT == 63
    # ... because the window (+-(2^26 - 2 MiB) around 0x400000) is mostly below 0: cut
    # at mmap_min_addr (4096 on arm64).
    rng = 2**26 - 2 * MiB
    assert 0x400000 - rng < 0
    assert adv.current.worst.jit.window.start == 0x1000
    top = adv.recommendations[0]
    assert top.worst is not None
    binary = builder.link("aarch64", top, builder.root / "issue-example")
    # ARM64 JR 27: range = 2^26 - 2 MiB around target = anchor & ~0xffff; whole slots
    # strictly inside: 2 * range / 64K - 2 = 1982 (124 MiB).
    target = symbol_value(binary, "lj_vm_exit_handler") & ~0xFFFF
    assert top.worst.jit.window == Span(target - rng, target + rng)
    usable = (target - rng + SLOT, target + rng - SLOT)
    assert (usable[1] - usable[0]) // SLOT == 1982
    assert usable[0] >= 0x10000  # wholly above mmap_min_addr now
    taken: set[int] = set()
    for row in loads(binary):
        lo, hi = row.vaddr & ~0xFFF, -(-(row.vaddr + row.memsz) // 4096) * 4096
        taken |= {s for s in range(lo // SLOT, -(-hi // SLOT))
                  if usable[0] <= s * SLOT and (s + 1) * SLOT <= usable[1]}
    assert 0 < len(taken) < 8
    assert top.worst.free_slots == 1982 - len(taken)
    assert inspect_binary(binary, Scenario(jit="luajit-2.1")).prediction.worst.free_slots == \
        1982 - len(taken)


# ------------------------------------------------------------------ 4. the calculator, every arch

def cli_run(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(cli, list(args))
    return result.exit_code, result.stdout, result.stderr


# Combinations the fixture build links (fixtures/README.md).
LINKS = {(arch, linker) for arch, linkers in LINKERS_OF.items() for linker in linkers}


def calculator_cases() -> list[object]:
    cases: list[object] = []
    for arch in arch_names():
        for linker in ("bfd", "gold", "lld", "mold"):
            if arch == "riscv64" and linker != "gold":
                continue  # no fit with JAL: see test_riscv64_calculator_points_to_auipc_jalr
            cases.append(pytest.param(arch, linker, (), id=f"{arch}-{linker}"))
    # riscv64 with the far form a riscv64 JIT would use for calls (AUIPC+JALR, +-2 GiB).
    cases += [pytest.param("riscv64", linker, ("--form", "auipc+jalr"),
                           id=f"riscv64-{linker}-auipc+jalr") for linker in ("bfd", "lld", "mold")]
    return cases


@pytest.mark.parametrize(("arch", "linker", "extra"), calculator_cases())
def test_advise_without_binary_for_every_arch(arch: str, linker: str,
                                              extra: tuple[str, ...]) -> None:
    code, out, err = cli_run("advise", "--arch", arch, "--linker", linker, *extra,
                             "--format", "json")
    if code == 2:
        assert linker != "bfd" and (arch, linker) not in LINKS, err
        assert err.count("\n") == 1 and "does not link" in err
        return
    assert code == 0, err
    doc = json.loads(out)
    assert doc["schema"] == "layoutkit/advise/3"
    assert doc["binary"] is None and doc["linker"] == linker
    assert {"window", "capacity"} <= set(doc["current"])
    recs = doc["recommendations"]
    assert recs
    for rec in recs:
        assert {"kind", "linker", "flags", "base", "window", "reasons"} <= set(rec)
        assert rec["reasons"]
    linked = [r for r in recs if r["kind"] != "runtime"]
    assert {r["kind"] for r in linked} >= {"rebase", "pie"}
    slots = [r["window"]["free_slots"] for r in linked]
    assert slots == sorted(slots, reverse=True)
    for rec in linked:
        assert rec["linker"] == linker
        flags = rec["flags"]
        fuse = [f for f in flags if f.startswith("-fuse-ld=")]
        assert fuse == ([] if linker == "bfd" else [f"-fuse-ld={linker}"])
        if linker in ("bfd", "gold"):
            assert not any("--image-base" in f for f in flags)
        else:
            assert not any("-Ttext-segment" in f or "-Tbss" in f for f in flags)
            assert rec["kind"] != "relocate-text"
        if rec["kind"] in ("rebase", "relocate-text"):
            base = rec["base"]
            option = "-Ttext-segment" if linker in ("bfd", "gold") else "--image-base"
            assert f"-Wl,{option}={base}" in flags
        if rec["kind"] == "relocate-text":
            assert f"-Wl,-Tbss={rec['bss']}" in flags
        if rec["kind"] == "pie":
            assert rec["base"] is None and {"-fPIE", "-pie"} <= set(flags)


# ------------------------------------------------------------------ 5. limits of the address space

@pytest.mark.toolchain
@pytest.mark.parametrize("binary", [None, "nopie", "nopie-bfd-textseg", "nopie-gold-textseg",
                                    "nopie-lld-base", "nopie-mold-base"])
def test_va_bits_39_keeps_every_aarch64_recommendation_below_2_to_the_39(
        binary: str | None) -> None:
    args = ["advise", "--va-bits", "39", "--format", "json"]
    args += ["--arch", "aarch64"] if binary is None else [str(ELF_DIR / "aarch64" / binary)]
    code, out, err = cli_run(*args)
    assert code == 0, err
    doc = json.loads(out)
    assert doc["kernel"]["user_top"] == hex(2**39)
    size = 0
    if binary is not None:
        start, end = image_extent(ELF_DIR / "aarch64" / binary)
        size = end - start
    for rec in doc["recommendations"]:
        if rec["base"] is not None:
            assert int(rec["base"], 16) + size <= 2**39
        if rec["bss"] is not None:
            assert int(rec["bss"], 16) < 2**39
        if rec["window"] is not None:
            assert int(rec["window"]["end"], 16) <= 2**39


LOW_2G_FIXTURES = [(arch, variant, form) for arch in ("x86_64", "riscv64")
                   for variant in ("nopie", "nopie-bfd-textseg", "nopie-gold-textseg",
                                   "nopie-lld-base", "nopie-mold-base")
                   for form in ((None, "auipc+jalr") if arch == "riscv64" else (None,))
                   if (ELF_DIR / arch / variant).exists()]


@pytest.mark.toolchain
@pytest.mark.parametrize(("arch", "variant", "form"), LOW_2G_FIXTURES,
                         ids=[f"{a}-{v}-{f or 'default'}" for a, v, f in LOW_2G_FIXTURES])
def test_x86_64_and_riscv64_recommendations_stay_below_2_gib(arch: str, variant: str,
                                                             form: str | None) -> None:
    binary = ELF_DIR / arch / variant
    start, end = image_extent(binary)
    bss_size = section(binary, ".bss")[1]
    adv = advise(str(binary), Scenario(form=form, demand=Demand(mcode=SLOT)))
    # A rebase is offered only where it leaves more room than the layout has now.
    assert "pie" in {r.kind.value for r in adv.recommendations}
    for rec in adv.recommendations:
        if rec.base is not None:
            assert rec.base + (end - start) <= 2 * GiB, (rec.kind, hex(rec.base))
        if rec.bss is not None:
            assert rec.bss + bss_size <= 2 * GiB, (rec.kind, hex(rec.bss))


@pytest.mark.parametrize("args", [("--arch", "x86_64"),
                                  ("--arch", "riscv64", "--form", "auipc+jalr")])
def test_calculator_stays_below_2_gib(args: tuple[str, ...]) -> None:
    code, out, err = cli_run("advise", *args, "--format", "json")
    assert code == 0, err
    for rec in json.loads(out)["recommendations"]:
        for key in ("base", "bss"):
            if rec[key] is not None:
                assert int(rec[key], 16) < 2 * GiB


def test_riscv64_calculator_points_to_auipc_jalr() -> None:
    """A 1 MiB default code segment fills the whole 1 MiB JAL window: no change can make
    room, and the error says which wider form a riscv64 JIT would use."""
    proc = real_run("advise", "--arch", "riscv64")
    assert proc.returncode == 1 and proc.stdout == ""
    assert proc.stderr.count("\n") == 1
    assert "--form auipc+jalr" in proc.stderr


@pytest.mark.toolchain
def test_x86_64_large_bss_advice_still_links(builder: Builder) -> None:
    big = builder.root / "bigbss.o"
    subprocess.run([builder.cc("x86_64"), *CFLAGS, "-fno-pie", "-c", "-o", str(big),
                    str(DATA / "bigbss.c")], check=True, capture_output=True, text=True)
    current = builder.root / "bigbss"
    subprocess.run([builder.cc("x86_64"), "-no-pie", "-o", str(current),
                    str(builder.obj("x86_64", "nopie")), str(big)], check=True,
                   capture_output=True, text=True)
    bss_size = section(current, ".bss")[1]
    assert bss_size >= 128 * MiB
    adv = advise(str(current), Scenario(demand=Demand(mcode=SLOT)))
    moved = [r for r in adv.recommendations if r.kind.value in ("rebase", "relocate-text")]
    assert moved
    for rec in moved:
        if rec.bss is not None:
            assert rec.bss + bss_size <= 2 * GiB, hex(rec.bss)
        builder.link("x86_64", rec, builder.root / f"bigbss-{rec.kind}", extra_objects=(big,))


# ------------------------------------------------------------------ 6. bad input

def real_run(*args: str) -> subprocess.CompletedProcess[str]:
    """The installed entry point in a fresh interpreter: a traceback would show here."""
    env = {k: v for k, v in os.environ.items() if k != "LAYOUTKIT_DEBUG"}
    return subprocess.run([sys.executable, "-m", "layoutkit", *args], capture_output=True,
                          text=True, timeout=60, check=False, env=env)


@pytest.mark.parametrize(("args", "says"), [
    (("--arch", "vax"), "vax"),
    (("--arch", "x86_64", "--linker", "ld64"), "--linker"),
    (("--arch", "riscv64", "--linker", "gold"), "gold does not link riscv64"),
    ((str(ELF_DIR / "riscv64" / "nopie"), "--linker", "gold"), "gold does not link riscv64"),
])
def test_usage_errors_exit_2(args: tuple[str, ...], says: str) -> None:
    proc = real_run("advise", *args)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    assert says in proc.stderr
    assert proc.stdout == ""


def test_unknown_or_unsupported_linker_through_the_api() -> None:
    with pytest.raises(UsageError, match="unknown linker"):
        advise(str(ELF_DIR / "x86_64" / "nopie"), linker="ld64")
    with pytest.raises(UsageError, match="gold does not link riscv64"):
        advise(None, arch_name="riscv64", linker="gold")


@pytest.mark.parametrize("target", [("--arch", "arm64"), (str(ELF_DIR / "aarch64" / "nopie"),)])
def test_no_change_fits_400_states_on_arm64(target: tuple[str, ...]) -> None:
    # 400 states of 512 KiB (maxmcode) = 200 MiB; the whole LuaJIT 2.1 ARM64 window is
    # 2 * (2^26 - 2 MiB) = 124 MiB: no layout can hold them.
    assert 400 * 512 * KiB > 2 * (2**26 - 2 * MiB)
    proc = real_run("advise", *target, "--jit", "luajit-2.1", "--states", "400")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert proc.stdout == ""
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("layoutkit: 400 JIT state(s) (luajit-2.1) abort traces in "
                               "100.0% of 300 replay runs now and in 100.0% even after the "
                               "best change")
    assert "by slot arithmetic: 400 JIT state(s) of 512 KiB do not fit" in lines[0]
    assert "luajit-2.1 window of aarch64" in lines[0]
