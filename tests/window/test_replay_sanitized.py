"""The compiled replay engine (window/_replay.c) built with AddressSanitizer and UBSan
and driven at its parameter edges (tests/window/replay_extremes.py): no out-of-bounds
access, no undefined behaviour, and the rules' own answers where no engine is needed."""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from tests.support import ROOT, require

SOURCE = ROOT / "layoutkit" / "window" / "_replay.c"
DRIVER = Path(__file__).with_name("replay_extremes.py")


@pytest.mark.toolchain
def test_the_compiled_engine_at_its_edges_under_sanitizers(tmp_path: Path) -> None:
    gcc = require("gcc")
    libasan = subprocess.run([gcc, "-print-file-name=libasan.so"], capture_output=True,
                             text=True, check=True).stdout.strip()
    assert os.path.isabs(libasan), f"gcc has no libasan: {libasan}"
    module = tmp_path / f"_replay{sysconfig.get_config_var('EXT_SUFFIX')}"
    subprocess.run([gcc, "-shared", "-fPIC", "-O1", "-g", "-std=c11", "-Wall", "-Wextra",
                    "-Werror", "-fno-omit-frame-pointer", "-fsanitize=address,undefined",
                    "-fno-sanitize-recover=undefined",
                    f"-I{sysconfig.get_paths()['include']}", "-o", str(module), str(SOURCE)],
                   check=True)
    env = {**os.environ, "LD_PRELOAD": libasan, "PYTHONPATH": str(ROOT),
           "ASAN_OPTIONS": "detect_leaks=0:halt_on_error=1",
           "UBSAN_OPTIONS": "halt_on_error=1:print_stacktrace=1"}
    done = subprocess.run([sys.executable, str(DRIVER), str(module)], capture_output=True,
                          text=True, env=env, timeout=900, check=False)
    assert "runtime error" not in done.stderr and "AddressSanitizer" not in done.stderr, \
        done.stderr[-3000:]
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    assert done.stdout == ""
