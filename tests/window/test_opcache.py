"""``php-opcache`` against Debian's real php8.2 with opcache (scripts/debian-packages.txt).

Ground truths: php's own /proc/self/maps (the opcache segment is the ``/dev/zero
(deleted)`` pair), ``php -r`` for its defaults and version, readelf for its symbols. The
cases: two sizes with ASLR off (``setarch -R``: the image at the kernel's ELF_ET_DYN_BASE,
where ``inspect`` predicts it), and three made real by a library preloaded into php that
maps PROT_NONE blockers before opcache starts: 1 GiB directly below the image (the segment
goes below it, still in reach), 2 GiB (find_prefered_mmap_base accepts it within 4 GiB,
but the JIT buffer is beyond call rel32's 2 GiB) and 4 GiB below plus everything above
(no gap: the segment goes to MAP_32BIT's low 2 GiB).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest

from layoutkit.commands.inspect import inspect_binary
from layoutkit.commands.maps import analyse_target
from layoutkit.core.scenario import OpcacheSize, Scenario, parse_opcache_size
from layoutkit.core.spans import Span
from layoutkit.errors import UsageError
from layoutkit.window.opcache import PROFILE, Region, preferred_base
from tests.output.test_schemas import assert_renames_caught
from tests.support import debian_unpacked, require

MiB, GiB = 1 << 20, 1 << 30
PHP = "/usr/bin/php8.2"

pytestmark = pytest.mark.skipif(os.uname().machine != "x86_64",
                                reason="the expectations are for Debian's x86-64 php8.2")

# A preloaded constructor: PROT_NONE blockers around the php image, from environment
# variables (bytes below the image; above: the gap before the brk heap, and bytes past
# the image and its heap).
BLOCKER_C = r"""
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/mman.h>

#ifndef MAP_FIXED_NOREPLACE
#define MAP_FIXED_NOREPLACE 0x100000
#endif

static void block(unsigned long start, unsigned long end) {
    void *p = mmap((void *)start, end - start, PROT_NONE,
                   MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | MAP_FIXED_NOREPLACE, -1, 0);
    if (p != (void *)start) { fprintf(stderr, "blocker: no room at %lx\n", start); _exit(97); }
}

__attribute__((constructor)) static void blockers(void) {
    char exe[4096], line[4096 + 128], path[4096];
    ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
    const char *below = getenv("LK_BLOCK_BELOW"), *above = getenv("LK_BLOCK_ABOVE");
    if (n <= 0 || !strstr(exe, "php")) return;  /* setarch, the shell: not php */
    exe[n] = 0;
    unsigned long lo = ~0UL, hi = 0, heap_lo = 0, heap_hi = 0, s, e;
    FILE *f = fopen("/proc/self/maps", "r");
    while (f && fgets(line, sizeof line, f)) {
        path[0] = 0;
        if (sscanf(line, "%lx-%lx %*s %*s %*s %*s %4095s", &s, &e, path) < 2) continue;
        if (!strcmp(path, exe)) {
            if (s < lo) lo = s;
            if (e > hi) hi = e;
        } else if (!path[0] && s == hi) {
            hi = e;  /* the image's .bss beyond its file */
        } else if (!strcmp(path, "[heap]")) {
            heap_lo = s, heap_hi = e;
        }
    }
    if (f) fclose(f);
    unsigned long two = 2UL << 20, top = heap_hi > hi ? heap_hi : hi;
    if (below && atol(below)) block((lo - strtoul(below, 0, 10)) & ~(two - 1), lo);
    if (above && atol(above)) {
        if (heap_lo > hi) block(hi, heap_lo);  /* the randomised gap before the heap */
        block(top, top + strtoul(above, 0, 10));
    }
}
"""

SCRIPT = "<?php echo file_get_contents('/proc/self/maps'); echo \"ready\\n\"; fgets(STDIN);"


def php_ini(size: OpcacheSize) -> list[str]:
    return ["-n", "-d", "zend_extension=opcache.so", "-d", "opcache.enable_cli=1",
            "-d", f"opcache.memory_consumption={size.memory >> 20}",
            "-d", f"opcache.jit_buffer_size={size.jit_buffer >> 20}M",
            "-d", "opcache.jit=tracing"]


def parse_maps(text: str) -> list[tuple[Span, str, str]]:
    rows = []
    for line in text.splitlines():
        cols = line.split(maxsplit=5)
        if len(cols) < 5 or "-" not in cols[0]:
            continue
        lo, hi = (int(x, 16) for x in cols[0].split("-"))
        rows.append((Span(lo, hi), cols[1], cols[5] if len(cols) > 5 else ""))
    return rows


def opcache_pair(rows: list[tuple[Span, str, str]]) -> tuple[Span, Span]:
    (data,) = [s for s, perms, path in rows if path == "/dev/zero (deleted)" and perms == "rw-s"]
    (code,) = [s for s, perms, path in rows if path == "/dev/zero (deleted)" and perms == "r-xs"]
    assert data.end == code.start
    return data, code


def php_text(rows: list[tuple[Span, str, str]]) -> tuple[int, Span]:
    """(the image's first byte, its r-xp mapping)."""
    mine = [(s, perms) for s, perms, path in rows if path == PHP]
    (text,) = [s for s, perms in mine if perms == "r-xp"]
    return mine[0][0].start, text


def readelf_execute_ex() -> int:
    out = subprocess.run([require("readelf"), "--dyn-syms", "-W", PHP], check=True,
                         capture_output=True, text=True).stdout
    (line,) = [ln for ln in out.splitlines() if ln.split()[-1:] == ["execute_ex"]]
    cols = line.split()
    assert cols[3:5] == ["FUNC", "GLOBAL"] and cols[6] != "UND"
    return int(cols[1], 16)


def run_php(size: OpcacheSize, *args: str, env: dict[str, str] | None = None,
            prefix: tuple[str, ...] = ()) -> subprocess.Popen[str]:
    proc = subprocess.Popen([*prefix, require("php8.2"), *php_ini(size), *args, "-r",
                             SCRIPT.removeprefix("<?php ")], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True, env=env)
    return proc


def maps_until_ready(proc: subprocess.Popen[str]) -> str:
    assert proc.stdout is not None
    lines: list[str] = []
    for line in proc.stdout:
        if line == "ready\n":
            return "".join(lines)
        lines.append(line)
    raise AssertionError(f"php stopped before it was ready (exit {proc.wait()})")


# --- inputs ---------------------------------------------------------------------------


def test_opcache_size_values() -> None:
    assert parse_opcache_size(None) == OpcacheSize(128 * MiB, 0)
    assert parse_opcache_size("128M+64M") == OpcacheSize(128 * MiB, 64 * MiB)
    assert parse_opcache_size("192M") == OpcacheSize(0, 192 * MiB)
    for bad in ("0+0", "lots", "128M+x"):
        with pytest.raises(UsageError, match="--opcache-size"):
            parse_opcache_size(bad)


@pytest.mark.toolchain
def test_defaults_and_detection_are_php_s_own() -> None:
    php = require("php8.2")
    ini = subprocess.run([php, "-n", "-d", "zend_extension=opcache.so", "-r",
                          "echo ini_get('opcache.memory_consumption'), ' ', "
                          "ini_get('opcache.jit_buffer_size'), ' ', PHP_VERSION;"],
                         check=True, capture_output=True, text=True).stdout.split()
    memory, jit, version = int(ini[0]) * MiB, int(ini[1]), ini[2]
    assert Scenario().opcache == OpcacheSize(memory, jit)  # 8.2: the JIT off
    result = inspect_binary(PHP)
    assert result.profile == PROFILE
    gen = result.generation
    assert gen is not None and gen.confidence == "high"
    assert "defines execute_ex (GLOBAL FUNC in .dynsym)" in gen.evidence
    assert f"'PHP/{version}'" in gen.evidence
    readelf_execute_ex()
    assert result.opcache is not None and result.opcache.segment is None
    assert result.opcache.cost == "none: the JIT is off"
    # The real run with those defaults: no r-xs half, and no hint near the text (8.2.36
    # hints only for a JIT buffer): the segment went to MAP_32BIT's low 2 GiB.
    listing = subprocess.run([php, "-n", "-d", "zend_extension=opcache.so", "-d",
                              "opcache.enable_cli=1", "-r",
                              "echo file_get_contents('/proc/self/maps');"],
                             check=True, capture_output=True, text=True).stdout
    pair = [(s, perms) for s, perms, path in parse_maps(listing)
            if path == "/dev/zero (deleted)"]
    assert [perms for _, perms in pair] == ["rw-s"] and pair[0][0].size == memory
    assert pair[0][0].end <= 1 << 31


# --- ASLR off: inspect's prediction against the real run ------------------------------


@pytest.mark.toolchain
@pytest.mark.parametrize("size", [OpcacheSize(32 * MiB, 32 * MiB),
                                  OpcacheSize(128 * MiB, 64 * MiB),
                                  OpcacheSize(128 * MiB, 1914 * MiB)],
                         ids=["64M", "192M", "advised-most"])
def test_inspect_predicts_the_segment_exactly(size: OpcacheSize) -> None:
    proc = run_php(size, prefix=(require("setarch"), "x86_64", "-R"))
    try:
        rows = parse_maps(maps_until_ready(proc))
    finally:
        proc.communicate("")
    data, code = opcache_pair(rows)
    image_start, text = php_text(rows)
    assert (data.size, code.size) == (size.memory, size.jit_buffer)
    predicted = inspect_binary(PHP, Scenario(opcache=size))
    place = predicted.opcache
    assert place is not None and place.image_start == image_start
    assert place.segment == Span(data.start, code.end)
    assert place.offset == image_start - data.start
    assert place.jit_buffer == code and place.text == text
    # call rel32 from both ends of the buffer to both ends of the text
    assert place.direct == (text.end - 1 - code.start < 1 << 31)
    assert place.direct


@pytest.mark.toolchain
def test_inspect_json_carries_the_placement() -> None:
    from click.testing import CliRunner

    from layoutkit.cli import cli

    out = CliRunner().invoke(cli, ["inspect", PHP, "--opcache-size", "128M+64M",
                                   "--format", "json"])
    assert out.exit_code == 0, out.output
    doc = json.loads(out.stdout)
    assert doc["opcache"]["jit_buffer_size"] == 64 * MiB and doc["opcache"]["direct_calls"]
    assert_renames_caught(doc)


# --- blockers preloaded into php: the model on php's own listing ----------------------


@pytest.fixture(scope="module")
def blocker(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("blocker")
    (folder / "blocker.c").write_text(BLOCKER_C)
    lib = folder / "blocker.so"
    subprocess.run([require("cc"), "-shared", "-fPIC", "-O2", "-o", str(lib),
                    str(folder / "blocker.c")], check=True)
    return lib


def maps_json_of(pid: int) -> dict[str, Any]:
    from click.testing import CliRunner

    from layoutkit.cli import cli

    out = CliRunner().invoke(cli, ["maps", str(pid), "--format", "json"])
    assert out.exit_code in (0, 1), out.output
    loaded: dict[str, Any] = json.loads(out.stdout)
    return loaded


def without_segment(rows: list[tuple[Span, str, str]]) -> list[Region]:
    return [Region(s, heap=path == "[heap]") for s, _, path in rows
            if path != "/dev/zero (deleted)"]


@pytest.mark.toolchain
@pytest.mark.parametrize(("below", "above", "where"), [
    (1 * GiB, 0, "below-in-reach"),
    (2 * GiB, 0, "below-out-of-reach"),
    (4 * GiB, 4 * GiB, "nowhere"),
])
def test_blocked_placement_and_maps_judgement(blocker: Path, below: int, above: int,
                                              where: str) -> None:
    size = OpcacheSize(128 * MiB, 64 * MiB)
    env = {**os.environ, "LD_PRELOAD": str(blocker), "LK_BLOCK_BELOW": str(below),
           "LK_BLOCK_ABOVE": str(above)}
    proc = run_php(size, env=env)
    try:
        rows = parse_maps(maps_until_ready(proc))
        analysis = analyse_target(str(proc.pid))  # php-opcache detected, not given
        doc = maps_json_of(proc.pid)
    finally:
        proc.communicate("")
    assert analysis.profile == PROFILE
    judged = analysis.opcache
    assert_renames_caught(doc)
    assert doc["opcache"]["direct_calls"] == (where == "below-in-reach")
    data, code = opcache_pair(rows)
    image_start, text = php_text(rows)
    blockers = [s for s, perms, path in rows if perms == "---p" and path == "" and
                s.size >= min(below, above or below)]
    assert blockers, "the preloaded blocker is not mapped"
    # php8.2's first PT_LOAD has p_vaddr 0: its load bias is the image's first byte
    hint = preferred_base(without_segment(rows), image_start + readelf_execute_ex(),
                          size.total)
    assert judged is not None and judged.segment == Span(data.start, code.end)
    assert [a.span for a in analysis.jit_areas] == [code]  # its JIT code: the r-xs half
    assert judged.size == size
    reach = max(text.end - 1 - code.start, code.end - 1 - text.start) < 1 << 31
    assert judged.direct == reach
    if where == "nowhere":
        assert hint is None
        assert code.end <= 1 << 31  # MAP_32BIT's low 2 GiB
        assert not judged.direct
        assert "through a register" in judged.cost
    else:
        assert hint == data.start  # the model on php's own listing: the same address
        assert data.start < image_start - below  # below the blocker
        assert judged.direct == (where == "below-in-reach")
    assert re.search(r"below|above|around", judged.how)


# --- check ----------------------------------------------------------------------------


def check_json(*args: str) -> tuple[int, dict[str, Any]]:
    from click.testing import CliRunner

    from layoutkit.cli import cli

    out = CliRunner().invoke(cli, ["check", *args, "--format", "json"])
    return out.exit_code, json.loads(out.stdout)


@pytest.mark.toolchain
def test_check_judges_php_and_leaves_opcache_so_to_it(tmp_path: Path) -> None:
    subprocess.run([require("apt-get"), "-qq", "-oAPT::Sandbox::User=root", "download",
                    "php8.2-opcache"], cwd=tmp_path, check=True, capture_output=True)
    (deb,) = tmp_path.glob("php8.2-opcache_*.deb")
    code, doc = check_json(PHP, str(deb), "--opcache-size", "128M+64M")
    assert code == 0
    results = {Path(r["path"]).name: r for r in doc["results"]}
    assert results["php8.2"]["status"] == "pass"
    assert results["php8.2"]["profile"] == PROFILE
    assert "the JIT calls PHP directly" in results["php8.2"]["reason"]
    assert results["opcache.so"]["status"] == "n/a"
    assert "check the php binary" in results["opcache.so"]["reason"]
    # A 3 GiB JIT buffer: find_prefered_mmap_base still takes the gap below the image
    # (within 4 GiB of the text), but the buffer's start lies over 2 GiB below it.
    code, doc = check_json(PHP, "--opcache-size", "128M+3G")
    (result,) = doc["results"]
    assert code == 1 and result["status"] == "fail"
    assert result["failures"] == ["opcache_direct_calls"]  # PHP's own threshold
    assert "through a register" in result["reason"]


@pytest.mark.toolchain
def test_advise_gives_the_largest_buffer_in_reach() -> None:
    """128M + 3G puts the buffer's start over 2 GiB below the text: advise names the
    largest jit_buffer_size whose buffer still reaches it wherever ASLR leaves the image
    within its 2 MiB (the real run of that size is a case of
    test_inspect_predicts_the_segment_exactly)."""
    from click.testing import CliRunner

    from layoutkit.cli import cli

    out = CliRunner().invoke(cli, ["advise", PHP, "--opcache-size", "128M+3G"])
    assert out.exit_code == 0, out.output
    out_l = subprocess.run([require("readelf"), "-lW", PHP], check=True, capture_output=True,
                           text=True).stdout
    loads = [line.split() for line in out_l.splitlines() if line.split()[:1] == ["LOAD"]]
    (code,) = [cols for cols in loads if cols[-2] == "E"]
    # the text's mapping ends on a page boundary; the image starts at the first p_vaddr
    extent = -(-(int(code[2], 16) + int(code[5], 16)) // 4096) * 4096 - int(loads[0][2], 16)
    # buffer start >= image_start - (128M + jit + 2 MiB) + 128M; rel32 reaches +2^31 - 1
    most = ((1 << 31) - extent - 2 * MiB - 128 * MiB) // (2 * MiB) * (2 * MiB)
    assert f"opcache.jit_buffer_size={most >> 20}M or less" in out.output
    assert most >> 20 == 1914
    out = CliRunner().invoke(cli, ["advise", "--arch", "aarch64", "--jit", PROFILE,
                                   "--opcache-size", "128M+256M"])
    assert "keep opcache.jit_buffer_size at 128M or less on aarch64" in out.output


# --- the arm64 packages (read here; nothing runs) -------------------------------------


@pytest.mark.toolchain
def test_arm64_php_detection_and_reach(tmp_path: Path) -> None:
    """Debian's arm64 php8.2: found by execute_ex; below the image the JIT buffer's BL
    calls (+-128 MiB, both ends of the buffer) reach the text with 128M + 64M, and none
    of it with 128M + 128M, whose buffer starts over 128 MiB below the text."""
    root = debian_unpacked(tmp_path, "php8.2-cli", arch="arm64")
    php = root / "usr" / "bin" / "php8.2"
    out = subprocess.run([require("readelf"), "-lW", "--dyn-syms", str(php)], check=True,
                         capture_output=True, text=True).stdout
    assert any(line.split()[-1:] == ["execute_ex"] and "FUNC" in line
               for line in out.splitlines())
    loads = [line.split() for line in out.splitlines() if line.split()[:1] == ["LOAD"]]
    (code,) = [cols for cols in loads if cols[-2] == "E"]
    text_lo = int(code[2], 16)
    text_hi = -(-(text_lo + int(code[5], 16)) // 4096) * 4096
    reach = (1 << 27) - 4  # BL: imm26 * 4
    for jit, direct in ((64 * MiB, True), (128 * MiB, False)):
        result = inspect_binary(php, Scenario(opcache=OpcacheSize(128 * MiB, jit)))
        assert result.profile == PROFILE
        place = result.opcache
        assert place is not None and place.segment is not None and place.offset is not None
        buffer = place.jit_buffer
        assert buffer is not None and buffer.end <= place.image_start
        text = Span(text_lo + result.bias, text_hi + result.bias)
        assert place.text == text
        assert (text.end - 1 - buffer.start <= reach) is direct
        assert place.direct is direct
        assert ("100% of PHP's text" in place.cost) is not direct


ARM64_PHP = ("php8.2-cli", "php8.2-opcache", "libxml2", "libssl3", "libpcre2-8-0", "zlib1g",
             "libsodium23", "libargon2-1", "libicu72", "liblzma5")  # php8.2's DT_NEEDED


@pytest.mark.qemu_user
@pytest.mark.parametrize("size", [OpcacheSize(128 * MiB, 64 * MiB),
                                  OpcacheSize(128 * MiB, 128 * MiB)], ids=["192M", "256M"])
def test_arm64_php_under_qemu_user_places_it_as_predicted(tmp_path: Path,
                                                          size: OpcacheSize) -> None:
    """Debian's arm64 php8.2 runs its own find_prefered_mmap_base under qemu-aarch64
    (which emulates /proc/self/maps); the segment lands where the model puts it for the
    load bias qemu chose (inspect's own prediction function, at that bias)."""
    from layoutkit.elf import ElfReader
    from layoutkit.window.opcache import predict

    qemu = require("qemu-aarch64")
    root = debian_unpacked(tmp_path, *ARM64_PHP, arch="arm64")
    php = root / "usr" / "bin" / "php8.2"
    libs = f"{root}/usr/lib/aarch64-linux-gnu:{root}/lib/aarch64-linux-gnu"
    ini = php_ini(size)
    ini[2] = f"zend_extension={root}/usr/lib/php/20220829/opcache.so"
    out = subprocess.run([qemu, "-L", "/usr/aarch64-linux-gnu", "-E", f"LD_LIBRARY_PATH={libs}",
                          str(php), *ini, "-r", "echo file_get_contents('/proc/self/maps');"],
                         check=True, capture_output=True, text=True, timeout=120).stdout
    rows = parse_maps(out)
    data, code = opcache_pair(rows)
    mine = [s for s, _, path in rows if path == str(php)]
    image_start = mine[0].start  # php8.2's first PT_LOAD has p_vaddr 0
    with ElfReader(php) as reader:
        place = predict(reader, PROFILE, image_start, size, None)
    assert place is not None and place.segment == Span(data.start, code.end)
    assert place.jit_buffer == code
    (text,) = [s for s, perms, path in rows if path == str(php) and perms == "r-xp"]
    reach = (1 << 27) - 4  # BL, from both ends of the buffer
    assert place.direct == (text.end - 1 - code.start <= reach)
    assert place.direct is (size.jit_buffer == 64 * MiB)
