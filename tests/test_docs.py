"""README.md and ARCHITECTURE.md tell the truth mechanically.

The README's example outputs and command reference are written by the real CLI through
cog (tests/readme_examples.py); these tests fail when the committed text is not what
``cog -r README.md`` would write now, and check what cog does not write: the exit-code
table, the Python snippets, and ARCHITECTURE.md's paths and one-importer table.
"""

from __future__ import annotations

import ast
import difflib
import importlib
import json
import re
from pathlib import Path
from typing import Any

import click
import jsonschema
import pytest
from click.testing import CliRunner
from cogapp import Cog

from layoutkit import config, errors
from layoutkit.cli import cli
from tests.readme_examples import ROOT, commands

README = ROOT / "README.md"
ARCHITECTURE = ROOT / "ARCHITECTURE.md"
REGENERATE = "run `cog -r README.md` from the repository root (cogapp is a test extra)"


def test_readme_examples_are_current() -> None:
    committed = README.read_text()
    cog = Cog()
    cog.options.verbosity = 0
    generated = cog.process_string(committed, fname=str(README))
    if generated != committed:
        diff = "".join(difflib.unified_diff(
            committed.splitlines(keepends=True), generated.splitlines(keepends=True),
            "README.md (committed)", "README.md (what the CLI prints now)", n=1))
        pytest.fail(f"README.md is out of date: {REGENERATE}.\n{diff[:6000]}")


def test_every_command_has_help_and_a_reference_section() -> None:
    text = README.read_text()
    for name in commands():
        command = cli.commands[name] if isinstance(cli, click.Group) else None
        assert command is not None and (command.help or "").strip(), f"{name}: no help text"
        assert f"### `layoutkit {name} --help`" in text, f"{name}: {REGENERATE}"
        assert f"Usage: layoutkit {name} [OPTIONS]" in text, f"{name}: {REGENERATE}"


def test_exit_code_table_lists_every_exit_code() -> None:
    section = README.read_text().split("## Exit codes\n", 1)[1].split("\n## ", 1)[0]
    table = {int(m) for m in re.findall(r"^\| (\d+) \|", section, re.M)}
    codes = {value for name, value in vars(errors).items() if name.startswith("EXIT_")}
    assert table == codes


# Linker options the prose names (they are not layoutkit's).
# Options of other programs the prose names: linkers, and node's (the V8 section).
FOREIGN_OPTIONS = {"--image-base", "--section-start", "--max-old-space-size",
                   "--trace-code-range-allocation"}


def test_every_option_named_in_the_prose_exists() -> None:
    options = {"--help"}
    for command in [cli, *(cli.commands.values() if isinstance(cli, click.Group) else ())]:
        for param in command.params:
            if isinstance(param, click.Option):
                options.update(param.opts + param.secondary_opts)
    named = set(re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", README.read_text()))
    assert named - FOREIGN_OPTIONS - options == set()


def test_config_keys_are_the_ones_check_accepts() -> None:
    sentence = re.search(r"Keys: (.*?)\.", README.read_text(), re.S)
    assert sentence is not None
    assert set(re.findall(r"`(\w+)`", sentence.group(1))) == set(config.KEYS)


def python_blocks(text: str) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```$", text, re.M | re.S)


def test_python_snippets_import_what_exists() -> None:
    blocks = python_blocks(README.read_text())
    assert len(blocks) >= 2
    for block in blocks:
        for node in ast.walk(ast.parse(block)):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("layoutkit"):
                module = importlib.import_module(node.module or "")
                for alias in node.names:
                    assert hasattr(module, alias.name), f"{node.module}.{alias.name}"


def test_validate_snippet_accepts_a_real_document_and_rejects_a_renamed_key() -> None:
    text = README.read_text()
    snippet = python_blocks(text.split("<!-- validate-example -->\n", 1)[1])[0]
    namespace: dict[str, Any] = {}
    exec(compile(snippet, "README.md", "exec"), namespace)
    result = CliRunner().invoke(cli, ["ranges", "--arch", "riscv64", "--format", "json"])
    doc = json.loads(result.stdout)
    namespace["validate"](doc)
    doc["forms"][0]["reach_min"] = doc["forms"][0].pop("disp_min")
    with pytest.raises(jsonschema.ValidationError):
        namespace["validate"](doc)


def test_json_documents_table_names_every_schema() -> None:
    text = README.read_text()
    for path in sorted((ROOT / "layoutkit" / "schemas").glob("*/*.schema.json")):
        version = path.name.removesuffix(".schema.json")
        assert f"`layoutkit/{path.parent.name}/{version}`" in text
        assert f"`{path.relative_to(ROOT)}`" in text


@pytest.mark.parametrize("doc", [README, ARCHITECTURE], ids=lambda p: p.name)
def test_no_machine_specific_paths(doc: Path) -> None:
    text = doc.read_text()
    found = re.findall(r"(?<![\w.])/(?:work|tmp|root|home)/\S*", text)
    assert found == []
    assert str(ROOT) not in text


# -- ARCHITECTURE.md -------------------------------------------------------------------


FOLDERS = ("core", "read", "window", "advice", "native", "commands", "output")


def named_paths(text: str) -> set[str]:
    """Backticked paths of this repository: a file (with an extension) or a folder
    (ending in /); templates such as ``<command>`` and schema ids are not paths."""
    found = re.findall(r"`((?:layoutkit|tests|fixtures|bench|scripts|"
                       + "|".join(FOLDERS) + r")/[\w/.-]*)`", text)
    return {p for p in found if p.endswith("/") or "." in p.rsplit("/", 1)[-1]}


@pytest.mark.parametrize("doc", [README, ARCHITECTURE], ids=lambda p: p.name)
def test_named_paths_exist(doc: Path) -> None:
    named = named_paths(doc.read_text())
    assert named
    for name in named:
        path = ROOT / "layoutkit" / name if name.split("/")[0] in FOLDERS else ROOT / name
        assert path.exists(), f"{doc.name} names {name}, which does not exist"


def test_architecture_describes_every_folder_and_top_level_module() -> None:
    text = ARCHITECTURE.read_text()
    package = ROOT / "layoutkit"
    for entry in sorted(package.iterdir()):
        if entry.name.startswith(("_", ".")) or entry.name == "py.typed":
            continue
        shown = f"`layoutkit/{entry.name}/`" if entry.is_dir() else f"`layoutkit/{entry.name}`"
        assert shown in text, f"ARCHITECTURE.md does not say what {shown} owns"


def imported_libraries(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
    return found


def test_one_importer_per_library_as_the_table_says() -> None:
    section = ARCHITECTURE.read_text().split("## One importer per library", 1)[1]
    rows = re.findall(r"^\| (`.+?) \| (.*`layoutkit/[\w/]+\.py`.*) \|$", section, re.M)
    assert len(rows) >= 5
    modules = sorted((ROOT / "layoutkit").rglob("*.py"))
    for libraries, cell in rows:
        owners = set(re.findall(r"`(layoutkit/[\w/]+\.py)`", cell))
        for library in re.findall(r"`(\w+)`", libraries):
            importers = {str(m.relative_to(ROOT)) for m in modules
                         if library in imported_libraries(m)}
            assert importers == owners, f"{library}: imported by {sorted(importers)}"
