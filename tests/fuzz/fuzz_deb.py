"""Fuzz harness: ``layoutkit check`` on a Debian package.

One input is one ``.deb``: unpacked with dpkg-deb (:func:`layoutkit.commands.collect.
unpack_deb`), walked, and every ELF member judged (:func:`layoutkit.commands.check.
check_paths`, one process). A result marked internal, or refused by the input
boundary's catch-all, is a crash. Seeds: packages built here with ``dpkg-deb --build``
around a fixture executable, uncompressed, gzip and xz.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

from layoutkit.boundary import UNFORESEEN
from layoutkit.commands.check import Settings, check_paths
from tests.fuzz.harness import FEW_RUNS, FIXTURES, CrashError, scratch_file

NAME = "deb"
MEMBER = FIXTURES / "elf" / "x86_64" / "nopie"


def seeds() -> dict[str, bytes]:
    found = {}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "pkg"
        (root / "DEBIAN").mkdir(parents=True)
        (root / "DEBIAN" / "control").write_text(
            "Package: fuzz-seed\nVersion: 1.0\nArchitecture: amd64\n"
            "Maintainer: layoutkit <layoutkit@localhost>\nDescription: fuzz seed\n")
        (root / "usr" / "bin").mkdir(parents=True)
        shutil.copy(MEMBER, root / "usr" / "bin" / "nopie")
        for compression in ("none", "gzip", "xz"):
            out = Path(tmp) / f"seed-{compression}.deb"
            subprocess.run(["dpkg-deb", "--root-owner-group", f"-Z{compression}", "--build",
                            str(root), str(out)], check=True, capture_output=True)
            found[out.name] = out.read_bytes()
    return found


def one_input(data: bytes) -> None:
    path = scratch_file(f"{NAME}.deb")
    path.write_bytes(data)
    for result in check_paths([str(path)], Settings(scenario=FEW_RUNS), jobs=1).results:
        if result.internal or UNFORESEEN in result.reason:
            raise CrashError(f"{result.path}: {result.reason}")
