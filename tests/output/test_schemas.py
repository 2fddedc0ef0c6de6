"""Every JSON document the CLI writes validates against its committed JSON Schema.

The documents are real outputs: the fixture binaries and maps captures, the bundled sample,
and, natively on x86-64, the probe (scan, replay, inside a running program) and verify.
The schemas are strict (every key required, no unknown key, addresses as "0x..."), which
the mutation tests prove: renaming any one key anywhere, or writing an address as a
number, makes a real document invalid.
"""

from __future__ import annotations

import copy
import json
import os
import platform
from collections.abc import Iterator
from functools import cache
from importlib.resources import files
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from click.testing import CliRunner

from layoutkit.advice.safety import Protection, Source
from layoutkit.cli import cli
from layoutkit.commands.verify_workload import Figure, WorkloadVerdict
from layoutkit.core.kinds import (
    AdviceKind,
    CheckFailure,
    CodeRangeSource,
    CodeRangeVerdict,
    OccupantKind,
    ReplayVerdict,
    Status,
    Verdict,
)
from layoutkit.core.model import LoadKind
from layoutkit.ranges import FormKind
from layoutkit.window.anchor import HowFound
from layoutkit.window.v8 import RULES as V8_RULES
from tests.support import ELF_DIR, MAPS_DIR, ROOT, fixture_binaries, require

SCHEMAS = Path(str(files("layoutkit").joinpath("schemas")))
# The replay's figures are not what these tests check, its shape is: a few runs will do.
FEW_RUNS = ("--runs", "20")
ADDRESS = "^0x[0-9a-f]+$"
X86_HOST = platform.machine() == "x86_64"


def schema_files() -> list[Path]:
    return sorted(SCHEMAS.glob("*/*.schema.json"))


def schema_id(path: Path) -> str:
    """``layoutkit/<command>/<version>`` from ``schemas/<command>/<version>.schema.json``."""
    return f"layoutkit/{path.parent.name}/{path.name.removesuffix('.schema.json')}"


@cache
def validator(schema: str) -> Any:
    """The validator for a document's ``schema`` value (its file, found by that value)."""
    _, command, version = schema.split("/")
    text = (SCHEMAS / command / f"{version}.schema.json").read_text()
    return jsonschema.Draft202012Validator(json.loads(text))


def document(*args: str, codes: tuple[int, ...] = (0,)) -> dict[str, Any]:
    result = CliRunner().invoke(cli, [args[0], "--format", "json", *args[1:]])
    assert result.exit_code in codes, result.output
    doc: dict[str, Any] = json.loads(result.stdout)
    return doc


def errors(doc: dict[str, Any], schema: str | None = None) -> list[str]:
    """What the validator for ``schema`` (default: the document's own) finds wrong."""
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}"
            for e in validator(schema or doc["schema"]).iter_errors(doc)]


def assert_valid(doc: dict[str, Any]) -> None:
    assert errors(doc) == [], doc["schema"]


def path_map(capture: Path) -> list[str]:
    """``--path-map`` from where the capture was taken to this checkout's fixtures, read
    from its meta.json (the capture names the fixture by its absolute path then)."""
    meta = json.loads(capture.with_suffix(".meta.json").read_text())
    binary = str(meta["fixture_binary"])
    recorded = next(str(c) for c in meta["command"] if str(c).endswith(binary))
    return ["--path-map", f"{recorded[: -len(binary)].rstrip('/')}={ROOT / 'fixtures'}"]


def captures() -> list[Path]:
    return sorted(c for c in MAPS_DIR.glob("*.maps")
                  if "fixture_binary" in json.loads(c.with_suffix(".meta.json").read_text()))


# -- the schemas themselves ------------------------------------------------------------


@pytest.mark.parametrize("path", schema_files(), ids=schema_id)
def test_schema_is_valid_and_pins_its_version(path: Path) -> None:
    schema = json.loads(path.read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["properties"]["schema"] == {"const": schema_id(path)}
    assert "schema" in schema["required"]


def test_shared_definitions_are_the_same_in_every_schema() -> None:
    """Each schema stands alone (a user validates with one file), so shared pieces are
    repeated; they must not drift apart."""
    seen: dict[str, tuple[str, Any]] = {}
    for path in schema_files():
        for name, definition in json.loads(path.read_text()).get("$defs", {}).items():
            first = seen.setdefault(name, (schema_id(path), definition))
            assert definition == first[1], f"$defs/{name}: {schema_id(path)} != {first[0]}"


# The version each command's documents carry now; older schema files stay, retired
# (README, "JSON documents"): advise 2 added the recommendations' safety; the allocator
# replay (issue 11) made inspect, maps and check 2 and advise 3.
CURRENT = {"advise": 3, "inspect": 2, "maps": 2, "check": 2}
RETIRED = {"layoutkit/advise/1", "layoutkit/advise/2", "layoutkit/inspect/1",
           "layoutkit/maps/1", "layoutkit/check/1"}


def schema_of(command: str) -> dict[str, Any]:
    version = CURRENT.get(command, 1)
    loaded: dict[str, Any] = json.loads(
        (SCHEMAS / command / f"{version}.schema.json").read_text())
    return loaded


def test_vocabularies_are_the_code_enums() -> None:
    """A closed vocabulary in a schema is exactly the enum the code prints from."""
    inspect, advise, check = schema_of("inspect"), schema_of("advise"), schema_of("check")
    pairs = [
        (inspect["$defs"]["occupant"]["properties"]["kind"], OccupantKind),
        (inspect["$defs"]["capacity"]["properties"]["verdict"], Verdict),
        (inspect["properties"]["load_kind"], LoadKind),
        (inspect["properties"]["reach"]["items"]["properties"]["kind"], FormKind),
        (schema_of("ranges")["properties"]["forms"]["items"]["properties"]["kind"], FormKind),
        (advise["properties"]["recommendations"]["items"]["properties"]["kind"], AdviceKind),
        (advise["properties"]["recommendations"]["items"]["properties"]["safety"]["oneOf"][1]
         ["properties"]["lost"]["items"], Protection),
        (advise["properties"]["recommendations"]["items"]["properties"]["safety"]["oneOf"][1]
         ["properties"]["source"], Source),
        (check["properties"]["results"]["items"]["properties"]["status"], Status),
        (check["properties"]["results"]["items"]["properties"]["failures"]["items"],
         CheckFailure),
        (inspect["properties"]["anchor"]["properties"]["how_found"], HowFound),
        (schema_of("maps")["properties"]["anchor"]["properties"]["how_found"], HowFound),
        (schema_of("probe")["$defs"]["program"]["properties"]["anchor"]["properties"]["source"],
         HowFound),
        (schema_of("verify-workload")["properties"]["bands"]["items"]["properties"]["figure"],
         Figure),
        (schema_of("verify-workload")["properties"]["verdict"], WorkloadVerdict),
    ]
    for command in ("inspect", "maps"):
        v8 = schema_of(command)["$defs"]["v8"]["properties"]
        pairs.append((v8["verdict"], CodeRangeVerdict))
        pairs.append(({"enum": [v for v in v8["code_range_how"]["enum"] if v is not None]},
                      CodeRangeSource))
        rules = v8["rule"]
        assert sorted(rules["enum"]) == sorted(r.label for r in V8_RULES), command
    for schema, kind in pairs:
        assert sorted(schema["enum"]) == sorted(k.value for k in kind), kind.__name__
    for command in ("inspect", "maps"):  # null: no replay (a profile it does not model)
        verdict = schema_of(command)["properties"]["replay_verdict"]["enum"]
        assert verdict == [*(v.value for v in ReplayVerdict), None]


# -- real documents --------------------------------------------------------------------


@pytest.mark.parametrize("binary", fixture_binaries(), ids=lambda p: str(p.relative_to(ELF_DIR)))
def test_inspect_every_fixture(binary: Path) -> None:
    doc = document("inspect", str(binary), *FEW_RUNS)
    assert doc["schema"] == "layoutkit/inspect/2"
    assert_valid(doc)


def test_inspect_bundled_sample() -> None:
    doc = document("inspect")
    assert doc["bundled_default"] is True
    assert_valid(doc)


@pytest.mark.parametrize("capture", captures(), ids=lambda p: p.stem)
def test_maps_every_capture(capture: Path) -> None:
    doc = document("maps", str(capture), *path_map(capture), *FEW_RUNS, codes=(0, 1))
    assert doc["schema"] == "layoutkit/maps/2"
    assert_valid(doc)


SAMPLE = str(ROOT / "layoutkit" / "samples" / "aarch64-nopie")
ADVISE = [
    ("advise", SAMPLE, "--states", "150"),
    ("advise", str(ELF_DIR / "x86_64" / "nopie")),
    ("advise", str(ELF_DIR / "ppc64le" / "nopie"), "--linker", "lld"),
    ("advise", str(ELF_DIR / "aarch64" / "pie")),
    ("advise", str(ELF_DIR / "aarch64" / "static"), "--allow-weaker"),
    ("advise", "--arch", "x86_64", "--linker", "gold"),
]


@pytest.mark.parametrize("args", ADVISE, ids=lambda a: " ".join(a[1:]).replace(str(ROOT), ""))
def test_advise(args: tuple[str, ...]) -> None:
    doc = document(*args, codes=(0, 1))
    assert doc["schema"] == "layoutkit/advise/3"
    assert_valid(doc)


@pytest.mark.parametrize("move", [".bss", ".bss=0x7c30000", ".text,.rodata"])
def test_advise_move(move: str) -> None:
    doc = document("advise", str(ELF_DIR / "aarch64" / "nopie"), "--move", move)
    assert doc["schema"] == "layoutkit/advise-move/1"
    assert_valid(doc)


def test_ranges() -> None:
    doc = document("ranges")
    assert doc["schema"] == "layoutkit/ranges/1"
    assert_valid(doc)


def test_check_every_status(tmp_path: Path) -> None:
    damaged = tmp_path / "damaged"
    damaged.write_bytes(b"\x7fELF\x02\x01")
    # An error outranks a failure: exit 3.
    doc = document("check", str(ELF_DIR), str(damaged), "--states", "100", *FEW_RUNS,
                   codes=(3,))
    assert {r["status"] for r in doc["results"]} == {"pass", "fail", "n/a", "error"}
    assert_valid(doc)


@pytest.fixture
def private_cache(tmp_path_factory: pytest.TempPathFactory,
                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path_factory.getbasetemp() / "cache"))


@pytest.mark.toolchain
@pytest.mark.skipif(not X86_HOST, reason="native probe expectations are for x86-64")
@pytest.mark.usefixtures("private_cache")
@pytest.mark.parametrize("mode", [(), ("--threads", "2", "--areas", "2")],
                         ids=["scan", "replay"])
def test_probe_native(mode: tuple[str, ...]) -> None:
    require("cc")
    doc = document("probe", *mode)
    assert doc["mode"] == ("replay" if mode else "scan")
    assert_valid(doc)


@pytest.mark.toolchain
@pytest.mark.skipif(not X86_HOST, reason="native probe expectations are for x86-64")
@pytest.mark.usefixtures("private_cache")
def test_probe_inside_a_program() -> None:
    require("cc")
    # CMD inherits layoutkit's stdin: an open pipe keeps "wait" waiting until killed.
    read_end, write_end = os.pipe()
    saved = os.dup(0)
    os.dup2(read_end, 0)
    try:
        doc = document("probe", "--when", "ms:300", "--kill-after", "--",
                       str(ELF_DIR / "x86_64" / "pie"), "jit", "2", "wait")
    finally:
        os.dup2(saved, 0)
        for fd in (saved, read_end, write_end):
            os.close(fd)
    assert doc["mode"] == "program"
    assert len(doc["jit_areas"]) == 1
    assert_valid(doc)


@pytest.mark.toolchain
@pytest.mark.skipif(not X86_HOST, reason="native twin expectations are for x86-64")
@pytest.mark.usefixtures("private_cache")
def test_verify_native() -> None:
    require("cc")
    doc = document("verify", str(ELF_DIR / "x86_64" / "pie"), "--runs", "1")
    assert doc["schema"] == "layoutkit/verify/1"
    assert_valid(doc)


@pytest.mark.toolchain
@pytest.mark.skipif(not X86_HOST, reason="the workload runs natively on x86-64 here")
def test_verify_workload_native() -> None:
    for tool in ("gcc", "make", "apt-get", "dpkg-deb"):
        require(tool)
    # One real run against a 5..95% band: its mmap calls fall outside about one time in
    # ten (exit 1); the document is checked either way, its verdict as the exit code says.
    doc = document("verify", "--workload", "luajit", "--states", "2", "--replay-runs", "50",
                   codes=(0, 1))
    assert doc["schema"] == "layoutkit/verify-workload/1"
    assert doc["verdict"] == ("ok" if all(b["inside"] for b in doc["bands"]) else "outside")
    assert_renames_caught(doc)


@pytest.mark.qemu_user
@pytest.mark.usefixtures("private_cache")
def test_probe_and_verify_under_qemu_user() -> None:
    """qemu-user's infidelities fill the lists a native run leaves empty: runner notes,
    'moved' outcomes, and slots where the probe and the model differ."""
    require("aarch64-linux-gnu-gcc")
    require("qemu-aarch64")
    probe = document("probe", "--arch", "aarch64", "--runner", "qemu-user")
    assert probe["verdict"] == "hints_only"
    assert probe["infidelities"] and probe["model_differences"]
    assert_valid(probe)
    verify = document("verify", str(ELF_DIR / "aarch64" / "nopie"), "--runner", "qemu-user",
                      "--runs", "1", codes=(0, 1))
    assert verify["infidelities"] and verify["difference"]["slots"]
    assert_valid(verify)


def test_every_schema_is_exercised() -> None:
    """Each committed schema is the schema of a document these tests validate."""
    exercised = {"layoutkit/inspect/2", "layoutkit/maps/2", "layoutkit/advise/3",
                 "layoutkit/advise-move/1", "layoutkit/ranges/1", "layoutkit/check/2",
                 "layoutkit/probe/1", "layoutkit/verify/1", "layoutkit/error/1",
                 "layoutkit/kernel/1", "layoutkit/verify-workload/1"}
    assert {schema_id(p) for p in schema_files()} == exercised | RETIRED


def test_kernel_capture() -> None:
    doc = document("kernel", "--capture")
    assert doc["schema"] == "layoutkit/kernel/1"
    assert_valid(doc)


def test_replay_versions_are_the_previous_ones_plus_the_replay() -> None:
    """The replay's version is the one before it plus the replay: every key is still
    there, with the same schema unless it is an object the replay fields were added to
    (so a reader of the previous version reads the new one by ignoring new keys)."""
    extended = {"schema", "current", "recommendations", "results", "thresholds"}
    for command, new in CURRENT.items():
        old = json.loads((SCHEMAS / command / f"{new - 1}.schema.json").read_text())
        now = json.loads((SCHEMAS / command / f"{new}.schema.json").read_text())
        assert "allocator_replay" in now["$defs"], command
        for key, value in old["properties"].items():
            assert key in now["properties"], (command, key)
            if key not in extended:
                assert now["properties"][key] == value, (command, key)
        assert set(old["required"]) <= set(now["required"]), command


# -- strictness ------------------------------------------------------------------------


Located = tuple[tuple[str, ...], dict[str, Any]]


def objects(node: Any, path: tuple[str, ...] = ()) -> Iterator[Located]:
    """Every JSON object in ``node`` with its path; list items are visited once (the
    first), since every item has the same shape."""
    if isinstance(node, dict):
        yield path, node
        for key, value in node.items():
            yield from objects(value, (*path, key))
    elif isinstance(node, list) and node:
        yield from objects(node[0], (*path, "0"))


def locate(doc: dict[str, Any], path: tuple[str, ...]) -> Any:
    node: Any = doc
    for part in path:
        node = node[int(part)] if isinstance(node, list) else node[part]
    return node


@cache
def samples() -> dict[str, dict[str, Any]]:
    """One rich document per schema that needs no native tools."""
    return {
        "inspect": document("inspect", str(ELF_DIR / "x86_64" / "pie")),
        "maps": document("maps", str(MAPS_DIR / "x86_64-uselib-jit4.maps"),
                         *path_map(MAPS_DIR / "x86_64-uselib-jit4.maps")),
        "advise": document("advise", SAMPLE),
        "advise-move": document("advise", str(ELF_DIR / "aarch64" / "nopie"),
                                "--move", ".bss=0x7c30000"),
        "ranges": document("ranges", "--arch", "arm64"),
        "check": document("check", str(ELF_DIR / "armhf"), str(ELF_DIR / "aarch64" / "nopie"),
                          "--states", "96", codes=(1,)),
    }


def assert_renames_caught(doc: dict[str, Any]) -> None:
    assert_valid(doc)
    checked = 0
    for path, node in objects(doc):
        for key in node:
            mutant = copy.deepcopy(doc)
            target = locate(mutant, path)
            target[key + "_renamed"] = target.pop(key)
            where = "/".join(path)
            assert errors(mutant, doc["schema"]), f"{where}: renaming {key!r} went unnoticed"
            checked += 1
    assert checked > 10


@pytest.mark.parametrize("name", ["inspect", "maps", "advise", "advise-move", "ranges",
                                  "check"])
def test_renaming_any_key_is_caught(name: str) -> None:
    assert_renames_caught(samples()[name])


@pytest.mark.toolchain
@pytest.mark.skipif(not X86_HOST, reason="native probe expectations are for x86-64")
@pytest.mark.usefixtures("private_cache")
@pytest.mark.parametrize("args", [("probe",), ("probe", "--threads", "2", "--areas", "2"),
                                  ("verify", str(ELF_DIR / "x86_64" / "nopie"), "--runs", "1")],
                         ids=["probe-scan", "probe-replay", "verify"])
def test_renaming_any_key_is_caught_native(args: tuple[str, ...]) -> None:
    require("cc")
    assert_renames_caught(document(*args))


@pytest.mark.parametrize("name", ["inspect", "maps", "advise", "advise-move", "check"])
def test_an_address_as_a_number_is_caught(name: str) -> None:
    doc = samples()[name]
    checked = 0
    for path, node in objects(doc):
        for key, value in node.items():
            if isinstance(value, str) and value.startswith("0x") and key != "schema":
                mutant = copy.deepcopy(doc)
                locate(mutant, path)[key] = int(value, 16)
                assert errors(mutant), f"{'/'.join(path)}/{key}: a number went unnoticed"
                checked += 1
    assert checked > 3


# --- JSON on every exit but a usage error ---------------------------------------------

FAILURES = [
    pytest.param(("inspect", str(ROOT / "README.md")), 3, "ElfError", id="inspect-not-elf"),
    pytest.param(("maps", str(ROOT / "no-such-listing.maps")), 3, "MapsError",
                 id="maps-missing"),
    pytest.param(("advise", str(ELF_DIR / "aarch64" / "nopie"), "--states", "400"), 1,
                 "NoFitError", id="advise-no-fit"),
    pytest.param(("verify", str(ROOT / "README.md")), 3, "ElfError", id="verify-not-elf"),
]


@pytest.mark.parametrize(("args", "code", "error"), FAILURES)
def test_a_failing_command_still_writes_a_json_document(args: tuple[str, ...], code: int,
                                                        error: str) -> None:
    """With --format json every exit but a usage error (2) writes one document on stdout:
    the failure is a field, never silence (the one-line message stays on stderr)."""
    result = CliRunner().invoke(cli, [args[0], "--format", "json", *args[1:]])
    assert result.exit_code == code, result.output
    doc = json.loads(result.stdout)
    validator(doc["schema"]).validate(doc)
    assert (doc["schema"], doc["command"], doc["exit_code"], doc["error"]["error"]) == (
        "layoutkit/error/1", args[0], code, error)
    assert result.stderr.startswith("layoutkit: ") and result.stderr.count("\n") == 1


def test_a_usage_error_writes_no_document() -> None:
    result = CliRunner().invoke(cli, ["inspect", "--format", "json", "--va-bits", "3",
                                      str(ELF_DIR / "aarch64" / "nopie")])
    assert (result.exit_code, result.stdout) == (2, "")
