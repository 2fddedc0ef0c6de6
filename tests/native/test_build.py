"""The one build cache (native/build.py) with the host's real compiler."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from layoutkit.errors import ProbeError
from layoutkit.native.build import cache_dir, compile_c
from layoutkit.native.toolchain import host_arch
from tests.support import require

FLAGS = ("-std=c11", "-O2")


@pytest.fixture(autouse=True)
def _private_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))


def _output(program: Path) -> str:
    return subprocess.run([program], capture_output=True, text=True, check=True).stdout


@pytest.mark.toolchain
def test_built_once_and_keyed_by_the_source(tmp_path: Path) -> None:
    require("cc")
    source = tmp_path / "hello.c"
    source.write_text('#include <stdio.h>\nint main(void) { puts("one"); return 0; }\n')
    first = compile_c(host_arch(), source, FLAGS, "hello", kind="probe", what="hello")
    assert first.parent.parent == cache_dir("probe")
    assert first.parent.name.startswith(f"{host_arch().name}-hello-")
    mtime = first.stat().st_mtime_ns
    assert compile_c(host_arch(), source, FLAGS, "hello", kind="probe", what="hello") == first
    assert first.stat().st_mtime_ns == mtime  # not rebuilt
    assert _output(first) == "one\n"
    source.write_text('#include <stdio.h>\nint main(void) { puts("two"); return 0; }\n')
    second = compile_c(host_arch(), source, FLAGS, "hello", kind="probe", what="hello")
    assert second != first
    assert _output(second) == "two\n"
    other = compile_c(host_arch(), source, (*FLAGS, "-DX"), "hello", kind="probe",
                      what="hello")
    assert other not in (first, second)  # the flags are part of the key


@pytest.mark.toolchain
def test_a_failed_build_leaves_nothing_behind(tmp_path: Path) -> None:
    require("cc")
    source = tmp_path / "broken.c"
    source.write_text("int main(void) { return missing; }\n")
    with pytest.raises(ProbeError, match=r"building broken for .* failed \(is gcc installed"
                                         r"\?\): .*missing"):
        compile_c(host_arch(), source, FLAGS, "broken", kind="probe", what="broken")
    assert list(cache_dir("probe").iterdir()) == []
