"""Reports of ``layoutkit check``: text, JSON, JUnit XML, SARIF 2.1.0, GitHub annotations.

One report for the whole run. JUnit has one test case per path (failure, error or
skipped for "n/a"); SARIF one result per failing binary with its figures, and every
path that could not be analysed as a tool execution notification.
"""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from typing import Any
from urllib.parse import quote

from layoutkit.commands.check import CheckResult, Settings, Summary
from layoutkit.core.kinds import CheckFailure, Status
from layoutkit.core.text import escaped, json_safe, shown
from layoutkit.output.document import capacity_json, document, window_json
from layoutkit.output.replay import replay_json

STATUSES = (Status.PASS, Status.FAIL, Status.ERROR, Status.NA)
SARIF_SCHEMA = ("https://docs.oasis-open.org/sarif/sarif/v2.1.0/errata01/os/schemas/"
                "sarif-schema-2.1.0.json")
RULE_ID = "LK001"
RULE_NAME = "jit-window-too-small"


@dataclass(frozen=True)
class Rule:
    """One SARIF rule: the failures it reports."""

    id: str
    name: str
    title: str  # of a GitHub annotation
    short: str
    full: str
    failures: frozenset[CheckFailure]


RULES = (
    Rule(RULE_ID, RULE_NAME, "JIT window too small", "The JIT window is too small",
         "Worst case over ASLR, the free bytes, free slots or JIT states that fit in the "
         "window a JIT can place code in are below the thresholds of layoutkit check, or "
         "the allocator replay aborts traces in too many runs.",
         frozenset({CheckFailure.MIN_WINDOW, CheckFailure.MIN_FREE_SLOTS,
                    CheckFailure.CAPACITY, CheckFailure.MAX_ABORT_PROBABILITY})),
    Rule("LK002", "v8-code-range-out-of-reach", "V8 code range out of reach",
         "V8's code range is out of reach of its embedded builtins",
         "In the worst case over ASLR, V8's one hint for its code range is refused or lies "
         "outside the short-call window of the embedded builtins: V8 remaps its builtins "
         "into the code range, or generated code calls them through a register.",
         frozenset({CheckFailure.V8_CODE_RANGE})),
    Rule("LK003", "opcache-jit-out-of-direct-call-reach",
         "opcache JIT out of direct-call reach",
         "PHP's opcache JIT buffer is out of direct-call reach of PHP's text",
         "Where find_prefered_mmap_base puts the opcache segment, the JIT buffer cannot "
         "call PHP's text directly (calls go through a register, 2-3% slower), or the "
         "buffer is refused (AArch64: over 128 MiB).",
         frozenset({CheckFailure.OPCACHE_DIRECT_CALLS})),
)


def rule_of(r: CheckResult) -> int:
    """The index in RULES of the rule a failing result is reported under: a runtime's
    own rule when one of its failures is there, else the window rule."""
    return next((i for i, rule in enumerate(RULES)
                 if i and rule.failures & set(r.failures)), 0)


def _version() -> str:
    try:
        return version("layoutkit")
    except PackageNotFoundError:  # pragma: no cover (run from a source tree)
        return "0"


def counts(summary: Summary) -> dict[str, int]:
    return {"total": len(summary.results), **{s.value: summary.count(s) for s in STATUSES}}


def verdict(summary: Summary) -> str:
    c = counts(summary)
    if c["error"]:  # an error outranks a failure (exit 3, or 5 for a bug in layoutkit)
        bugs = sum(1 for r in summary.results if r.internal)
        also = (f", {bugs} of them internal errors (please report)" if bugs else "") + (
            f"; {c['fail']} binaries below the thresholds" if c["fail"] else
            " (nothing failed)")
        return f"ERROR: {c['error']} paths could not be analysed{also}"
    if c["fail"]:
        return f"FAIL: {c['fail']} binaries below the thresholds"
    return "PASS" if c["pass"] else "PASS (no JIT-hosting binary found)"


# -- text ------------------------------------------------------------------------------


def text_lines(summary: Summary) -> Iterator[str]:
    width = max((len(shown(r.path)) for r in summary.results), default=4)
    width = min(width, 72)
    yield f"{'Status':6}  {'Path':{width}}  Reason"
    for r in summary.results:
        yield f"{r.status.value.upper():6}  {shown(r.path):{width}}  {escaped(r.reason)}"
    c = counts(summary)
    yield ""
    yield (f"{c['total']} paths: {c['pass']} pass, {c['fail']} fail, {c['error']} error, "
           f"{c['n/a']} n/a")
    yield verdict(summary)


# -- JSON ------------------------------------------------------------------------------


def result_json(r: CheckResult) -> dict[str, Any]:
    return {
        "path": r.path,
        "status": r.status.value,
        "reason": r.reason,
        "arch": r.arch,
        "profile": r.profile,
        "evidence": r.evidence,
        "failures": [f.value for f in r.failures],
        "window": window_json(r.worst) if r.worst else None,
        "capacity": capacity_json(r.worst) if r.worst else None,
        **(replay_json(r.forecast) if r.forecast else
           {"replay": None, "replay_reason": "not judged", "replay_verdict": None}),
    }


def thresholds_json(settings: Settings) -> dict[str, Any]:
    """What the binaries were judged against: the thresholds and the scenario."""
    s = settings.scenario
    return {
        "min_window": settings.min_window,
        "min_free_slots": settings.min_free_slots,
        "max_abort_probability": settings.max_abort_probability,
        "states": s.demand.states,
        "mcode": s.demand.mcode,
        "jit": s.jit,
        "heap": s.heap,
        "va_bits": s.kernel.va_bits,
        "mmap_min_addr": (None if s.kernel.mmap_min_addr is None
                          else f"{s.kernel.mmap_min_addr:#x}"),
        "arch": list(settings.arches),
        "kernel": s.kernel.release,
        "kernel_file": s.kernel.capture.source if s.kernel.capture else None,
        "aslr": s.sampling.aslr,
        "runs": s.sampling.runs,
        "seed": s.sampling.seed,
        "retries": s.sampling.retries,
    }


def check_json(summary: Summary, settings: Settings) -> dict[str, Any]:
    return document("check", {
        "thresholds": thresholds_json(settings),
        "summary": {**counts(summary), "exit_code": summary.exit_code},
        "results": [result_json(r) for r in summary.results],
    })


# -- JUnit XML -------------------------------------------------------------------------


def junit_xml(summary: Summary) -> str:
    c = counts(summary)
    suites = ET.Element("testsuites", name="layoutkit check", tests=str(c["total"]),
                        failures=str(c["fail"]), errors=str(c["error"]),
                        skipped=str(c["n/a"]), time="0")
    suite = ET.SubElement(suites, "testsuite", name="layoutkit check", tests=str(c["total"]),
                          failures=str(c["fail"]), errors=str(c["error"]),
                          skipped=str(c["n/a"]), time="0")
    for r in summary.results:
        case = ET.SubElement(suite, "testcase", classname="layoutkit.check", name=r.path,
                             time="0")
        if r.status is Status.FAIL:
            node = ET.SubElement(case, "failure", message=r.reason,
                                 type=",".join(f.value for f in r.failures))
            node.text = _figures(r)
        elif r.status is Status.ERROR:
            ET.SubElement(case, "error", message=r.reason, type="not-analysed")
        elif r.status is Status.NA:
            ET.SubElement(case, "skipped", message=r.reason)
        else:
            ET.SubElement(case, "system-out").text = r.reason
    ET.indent(suites)
    return ET.tostring(suites, encoding="unicode", xml_declaration=True)


def _figures(r: CheckResult) -> str:
    if r.worst is None:
        return r.reason
    w, cap = r.worst, r.worst.capacity
    return (f"{r.reason}\nprofile {r.profile}, window {w.jit.window.start:#x}.."
            f"{w.jit.window.end:#x}, free {w.free_bytes} B, free slots {w.free_slots} of "
            f"{w.slots}, JIT states fit {cap.states_fit} of {cap.states_requested}")


# -- SARIF 2.1.0 -----------------------------------------------------------------------


def _uri(path: str) -> str:
    """A URI reference: ``file://`` for an absolute path, else relative to the run."""
    if path.startswith("/"):
        return "file://" + quote(path, safe="/")
    return quote(path.removeprefix("./"), safe="/")


def sarif(summary: Summary, settings: Settings) -> dict[str, Any]:
    results = []
    for r in summary.results:
        if r.status is not Status.FAIL:
            continue
        location: dict[str, Any] = {"physicalLocation": {
            "artifactLocation": {"uri": _uri(r.artifact)}}}
        if r.artifact != r.path:
            location["logicalLocations"] = [{"fullyQualifiedName": r.path, "kind": "member"}]
        index = rule_of(r)
        results.append({
            "ruleId": RULES[index].id,
            "ruleIndex": index,
            "level": "error",
            "message": {"text": f"{r.path}: {_figures(r)}"},
            "locations": [location],
            "properties": {"failures": [f.value for f in r.failures],
                           "window": window_json(r.worst) if r.worst else None,
                           "capacity": capacity_json(r.worst) if r.worst else None,
                           "profile": r.profile},
        })
    notes = [{
        "level": "error",
        "message": {"text": f"{r.path}: {r.reason}"},
        "locations": [{"physicalLocation": {"artifactLocation": {"uri": _uri(r.artifact)}}}],
    } for r in summary.results if r.status is Status.ERROR]
    return {
        "$schema": SARIF_SCHEMA,
        "version": "2.1.0",
        "runs": [{
            "tool": {"driver": {
                "name": "layoutkit",
                "version": _version(),
                "informationUri": "https://pypi.org/project/layoutkit/",
                "rules": [{
                    "id": rule.id,
                    "name": rule.name,
                    "shortDescription": {"text": rule.short},
                    "fullDescription": {"text": rule.full},
                    "defaultConfiguration": {"level": "error"},
                } for rule in RULES],
            }},
            "invocations": [{
                "executionSuccessful": summary.count(Status.ERROR) == 0,
                "toolExecutionNotifications": notes,
                "properties": {"thresholds": thresholds_json(settings)},
            }],
            "results": results,
        }],
    }


# -- GitHub Actions --------------------------------------------------------------------


def _escape_data(text: str) -> str:
    return text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def _escape_property(text: str) -> str:
    return _escape_data(text).replace(":", "%3A").replace(",", "%2C")


def github_annotations(summary: Summary) -> Iterator[str]:
    """``::error file=...::`` workflow commands, one per failing or unanalysable path."""
    for r in summary.results:
        if r.status in (Status.FAIL, Status.ERROR):
            title = RULES[rule_of(r)].title if r.status is Status.FAIL else "not analysed"
            yield (f"::error file={_escape_property(r.artifact)},"
                   f"title={_escape_property('layoutkit check: ' + title)}::"
                   f"{_escape_data(r.path + ': ' + r.reason)}")


def render(summary: Summary, settings: Settings, fmt: str) -> str:
    if fmt == "json":
        return json.dumps(json_safe(check_json(summary, settings)), indent=2)
    if fmt == "junit":
        return junit_xml(summary)
    if fmt == "sarif":
        return json.dumps(json_safe(sarif(summary, settings)), indent=2)
    return "\n".join(text_lines(summary))
