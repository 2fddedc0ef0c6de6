"""The v8 profile on Debian's Node 18 (V8 10.2): a PIE ``node`` on a stripped
libnode.so.108, fetched with ``apt-get download`` (private apt state) and unpacked, never
installed. The JavaScript packages it also needs are left out, so node aborts after V8
has reserved its code range; strace records the reservation (the ground truth)."""

from __future__ import annotations

import re
import subprocess
import tempfile
from pathlib import Path

import pytest

from layoutkit.commands.check import Settings, check_paths
from layoutkit.commands.inspect import inspect_binary
from layoutkit.core.arches import by_name
from layoutkit.core.kinds import Status
from layoutkit.core.scenario import Scenario
from layoutkit.core.spans import Span
from layoutkit.native.build import cache_dir
from layoutkit.window.v8 import RULES, place_code_range, short_call_region
from tests.support import require

pytestmark = pytest.mark.toolchain

PACKAGES = ("nodejs", "libnode108", "libc-ares2")
MiB = 1 << 20
OPENAT = re.compile(r'openat\(.*"([^"]*libnode\.so\.108)".*= (\d+)$')
MMAP = re.compile(r"mmap\((\S+), (\d+), (\S+), (\S+), (-?\d+), (\S+)\) = (0x[0-9a-f]+)$")


@pytest.fixture(scope="module")
def debian_node() -> Path:
    """The unpacked root with usr/bin/node and usr/lib/x86_64-linux-gnu/libnode.so.108."""
    apt_get, dpkg = require("apt-get"), require("dpkg-deb")
    root = cache_dir("debian-node18") / "root"
    if (root / "usr" / "bin" / "node").exists():
        return root
    apt = cache_dir("debian-node18") / "apt"
    for sub in (apt / "state" / "lists" / "partial", apt / "cache" / "archives" / "partial"):
        sub.mkdir(parents=True, exist_ok=True)
    opts = [f"-oDir::State={apt / 'state'}", f"-oDir::Cache={apt / 'cache'}",
            "-oDir::State::status=/dev/null", "-oAPT::Sandbox::User=root"]
    subprocess.run([apt_get, *opts, "-qq", "update"], check=True, capture_output=True)
    with tempfile.TemporaryDirectory(prefix=".fetch-", dir=root.parent) as tmp:
        subprocess.run([apt_get, *opts, "-qq", "download", *PACKAGES], cwd=tmp, check=True,
                       capture_output=True)
        unpacked = Path(tmp) / "root"
        unpacked.mkdir()
        debs = Path(tmp) / "debs"
        debs.mkdir()
        for deb in sorted(Path(tmp).glob("*.deb")):
            subprocess.run([dpkg, "-x", str(deb), str(unpacked)], check=True)
            deb.rename(debs / deb.name)
        debs.rename(root.parent / "debs")
        unpacked.rename(root)
    return root


def test_check_judges_the_libnode_deb(debian_node: Path) -> None:
    """check on Debian's packages: libnode108's member passes by V8's rule; nodejs's
    /usr/bin/node holds no V8 (it needs libnode.so.108) and is not applicable."""
    debs = sorted((debian_node.parent / "debs").glob("*.deb"))
    results = {r.path.split(":", 1)[1]: r for r in check_paths([str(d) for d in debs],
                                                                  Settings(), jobs=1).results
               if ":" in r.path}
    assert results["/usr/lib/x86_64-linux-gnu/libnode.so.108"].status is Status.PASS
    assert results["/usr/lib/x86_64-linux-gnu/libnode.so.108"].profile == "v8"
    assert results["/usr/bin/node"].status is Status.NA


def _reservations(root: Path, tmp: Path) -> tuple[int, list[tuple[int, int, int]]]:
    """libnode's load address and every anonymous PROT_NONE mmap (hint, size, got)."""
    strace = require("strace")
    lib = root / "usr" / "lib" / "x86_64-linux-gnu"
    log = tmp / "strace.txt"
    subprocess.run([strace, "-f", "-qq", "-e", "trace=openat,mmap", "-o", str(log),
                    str(root / "usr" / "bin" / "node"), "-e", "0"],
                   env={"LD_LIBRARY_PATH": str(lib)}, cwd=tmp, capture_output=True,
                   check=False)  # node aborts later, without its JavaScript packages
    fd, base, mmaps = None, None, []
    for raw in log.read_text().splitlines():
        line = raw.split(None, 1)[1] if raw[:1].isdigit() else raw
        opened = OPENAT.search(line)
        if opened:
            fd = opened.group(2)
        m = MMAP.search(line)
        if not m:
            continue
        if base is None and fd is not None and m.group(5) == fd and m.group(6) == "0":
            base = int(m.group(7), 16)
        if m.group(3) == "PROT_NONE" and "MAP_ANONYMOUS" in m.group(4):
            hint = 0 if m.group(1) == "NULL" else int(m.group(1), 16)
            mmaps.append((hint, int(m.group(2)), int(m.group(7), 16)))
    assert base is not None, log.read_text()[:2000]
    return base, mmaps


def test_pie_libnode_code_range_is_near(debian_node: Path, tmp_path: Path) -> None:
    libnode = debian_node / "usr" / "lib" / "x86_64-linux-gnu" / "libnode.so.108"
    result = inspect_binary(libnode, Scenario())
    assert result.profile == "v8" and result.v8 is not None
    rule = result.jit.profile
    size = RULES[0].code_range(by_name("x86_64"))
    assert rule.sizemcode == size == 128 * MiB  # V8 10.2's kMaximalCodeRangeSize on x64
    base, mmaps = _reservations(debian_node, tmp_path)
    blob = result.anchor.span.shifted(base)  # link-time blob recovered from the accessors
    region = short_call_region(by_name("x86_64"), blob)
    # The reservation: the one 128 MiB PROT_NONE mapping asked at a hint.
    hint, asked, got = next(r for r in mmaps if r[1] == size and r[0])
    loads = subprocess.run(["readelf", "-lW", str(libnode)], capture_output=True, text=True,
                           check=True).stdout
    end = max(int(f[2], 16) + int(f[5], 16) for f in (line.split() for line in
              loads.splitlines()) if f and f[0] == "LOAD")
    placed = place_code_range([Span(base, base + end)], region, size, RULES[0])
    assert hint == placed.hint == -(-region.start // 4096) * 4096
    assert got == hint and placed.honoured
    assert region.contains(Span(got, got + asked)) and placed.near
    assert result.v8.worst_near
    (judged,) = check_paths([str(libnode)], Settings(), jobs=1).results
    assert judged.status is Status.PASS and judged.profile == "v8"
