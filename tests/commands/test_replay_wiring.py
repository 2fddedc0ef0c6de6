"""The allocator replay as the judging commands use it: the kernel they judge under, the
options that steer the replay, and the figures they report, against ground truths that
are not layoutkit's own: this machine's /proc/sys files and uname, the kernel source's
rules per release, a real relinked binary (GNU ld -Ttext-segment), and layouts where
LuaJIT's algorithm (src/lj_mcode.c) leaves exactly one outcome.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from layoutkit.cli import cli
from layoutkit.core.arches import by_name
from layoutkit.core.spans import Span
from layoutkit.read.host import capture
from layoutkit.window.forecast import as_image
from layoutkit.window.kernel import KernelConfig
from layoutkit.window.profiles import window_for_span
from layoutkit.window.replay import PrngModel, ReplayParams, replay
from tests.support import ELF_DIR, ROOT

SAMPLE = str(ROOT / "layoutkit" / "samples" / "aarch64-nopie")
FAST = ("--runs", "40")  # figures that do not depend on the number of runs


def invoke(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(cli, list(args))
    return result.exit_code, result.stdout, result.stderr


def as_json(*args: str, codes: tuple[int, ...] = (0,)) -> dict[str, Any]:
    code, out, err = invoke(args[0], "--format", "json", *args[1:])
    assert code in codes, err
    doc: dict[str, Any] = json.loads(out)
    return doc


def proc(name: str) -> int:
    """A sysctl read here, by the test itself."""
    return int(Path("/proc/sys", name).read_text())


HOST_ELF = ELF_DIR / os.uname().machine / "nopie"
on_a_fixture_arch = pytest.mark.skipif(not HOST_ELF.exists(),
                                       reason="no fixture binary of this machine's arch")


# -- which kernel ----------------------------------------------------------------------


def test_capture_is_this_machines_uname_and_proc_sys() -> None:
    facts = capture()
    assert (facts.release, facts.randomize_va_space, facts.mmap_min_addr,
            facts.mmap_rnd_bits, facts.legacy_va_layout) == (
        os.uname().release, proc("kernel/randomize_va_space"), proc("vm/mmap_min_addr"),
        proc("vm/mmap_rnd_bits"), bool(proc("vm/legacy_va_layout")))
    doc = as_json("kernel", "--capture")
    assert (doc["release"], doc["sysctl"]) == (os.uname().release, {
        "randomize_va_space": proc("kernel/randomize_va_space"),
        "mmap_min_addr": proc("vm/mmap_min_addr"),
        "mmap_rnd_bits": proc("vm/mmap_rnd_bits"),
        "legacy_va_layout": proc("vm/legacy_va_layout")})


@on_a_fixture_arch
def test_a_binary_of_this_machines_arch_is_judged_under_this_kernel() -> None:
    doc = as_json("inspect", str(HOST_ELF), *FAST)
    assert doc["kernel"]["release"] == os.uname().release
    assert doc["kernel"]["mmap_min_addr"] == hex(proc("vm/mmap_min_addr"))
    assert doc["replay"]["aslr"] is (proc("kernel/randomize_va_space") != 0)
    assert os.uname().release in doc["replay"]["kernel"]
    assert doc["replay"]["seed"] == 1 and doc["replay"]["runs"] == 40


def test_another_arch_is_judged_under_its_defaults_and_named() -> None:
    code, out, _ = invoke("inspect", SAMPLE, *FAST)
    assert code == 0
    assert "Kernel:      Linux (current rules) aarch64 (aarch64's defaults)" in out
    assert "300 runs" not in out and "40 runs, seed 1" in out


@on_a_fixture_arch
def test_kernel_file_from_a_capture(tmp_path: Path) -> None:
    """A capture says randomize_va_space=0: ASLR off unless --aslr says otherwise."""
    host = tmp_path / "host.json"
    _, out, _ = invoke("kernel", "--capture")
    doc = json.loads(out)
    doc["sysctl"]["randomize_va_space"] = 0
    doc["sysctl"]["mmap_min_addr"] = 0x20000
    host.write_text(json.dumps(doc))
    fixed = as_json("inspect", str(HOST_ELF), "--kernel-file", str(host), *FAST)
    assert fixed["kernel"]["mmap_min_addr"] == "0x20000"
    assert fixed["kernel"]["source"] == f"--kernel-file {host}"
    assert fixed["replay"]["aslr"] is False
    assert "randomize_va_space=0" in fixed["replay"]["aslr_how"]
    forced = as_json("inspect", str(HOST_ELF), "--kernel-file", str(host), "--aslr", "on",
                     *FAST)
    assert (forced["replay"]["aslr"], forced["replay"]["aslr_how"]) == (True, "--aslr on")


@pytest.mark.parametrize(("release", "brk_mib"), [("6.1.0-27-amd64", 32),
                                                  ("6.12.12-amd64", 1024)])
def test_kernel_release_picks_its_rules(release: str, brk_mib: int) -> None:
    """x86-64 randomised brk over 32 MiB until v6.9 and over 1 GiB since (commit
    44c76825d6ee, arch/x86/kernel/process.c arch_randomize_brk)."""
    doc = as_json("inspect", str(ELF_DIR / "x86_64" / "nopie"), "--kernel", release, *FAST)
    assert doc["kernel"]["release"] == release
    assert f"brk randomised over {brk_mib} MiB" in doc["replay"]["kernel"]
    assert doc["aslr"]["heap_start_max"] is not None


# -- bad input: one line, its exit code, a JSON document except for a usage error --------


@pytest.mark.parametrize(("args", "message"), [
    (("--kernel", "foo"), "--kernel 'foo': not a kernel release; known: Linux 5.10 to 6.18"),
    (("--kernel", "4.9.0-amd64"), "--kernel '4.9.0-amd64': no rules for it; known:"),
    (("--runs", "0"), "--runs 0: at least 1"),
    (("--seed", "-1"), "--seed -1: cannot be negative"),
    (("--retries", "-2"), "--retries -2: cannot be negative"),
    (("--aslr", "maybe"), "--aslr maybe: on or off"),
])
@pytest.mark.parametrize("command", ["inspect", "maps", "advise", "check"])
def test_bad_replay_options_are_usage_errors(command: str, args: tuple[str, ...],
                                             message: str) -> None:
    target = str(ROOT / "fixtures" / "maps" / "aarch64-nopie-jit4.maps") if command == "maps" \
        else SAMPLE
    code, out, err = invoke(command, target, "--format", "json", *args)
    assert (code, out) == (2, "")
    assert err.startswith(f"layoutkit: {message}") and err.count("\n") == 1


def test_kernel_file_that_is_not_a_capture_is_bad_input(tmp_path: Path) -> None:
    missing = tmp_path / "missing.json"
    code, out, err = invoke("inspect", SAMPLE, "--format", "json", "--kernel-file", str(missing))
    assert code == 3 and err.count("\n") == 1
    assert err.startswith(f"layoutkit: {missing}: kernel capture: cannot read it")
    doc = json.loads(out)
    assert (doc["schema"], doc["exit_code"], doc["error"]["error"]) == (
        "layoutkit/error/1", 3, "InputError")
    text = tmp_path / "text.json"
    text.write_text("release: 6.1\n")
    code, _, err = invoke("inspect", SAMPLE, "--kernel-file", str(text))
    assert code == 3 and "kernel capture: not a JSON document" in err


def test_kernel_file_of_another_arch_is_a_usage_error(tmp_path: Path) -> None:
    host = tmp_path / "host.json"
    host.write_text(json.dumps({
        "schema": "layoutkit/kernel/1", "command": "kernel", "release": "6.1.0-27-amd64",
        "machine": "x86_64", "source": "test", "sysctl": {
            "randomize_va_space": 2, "mmap_min_addr": 65536, "mmap_rnd_bits": 28,
            "legacy_va_layout": 0}}))
    code, out, err = invoke("inspect", SAMPLE, "--format", "json", "--kernel-file", str(host))
    assert (code, out) == (2, "")
    assert err == (f"layoutkit: --kernel-file {host} describes a x86_64 kernel, the input "
                   "is aarch64\n")


# -- figures with one possible outcome -----------------------------------------------------

# A saved listing whose mappings fill the whole luajit-2.1 window around the anchor
# 0x10001000 (target 0x10000000, +-62 MiB: [0xc200000, 0x13e00000)) but for the anchor's
# own code: every hint a state draws lands on a mapping.
FULL = """\
0c000000-10000000 rw-p 00000000 00:00 0
10000000-10010000 r-xp 00000000 08:01 1234                               /opt/app/bin/prog
10010000-14000000 rw-p 00000000 00:00 0
ffffb0000000-ffffb0021000 rw-p 00000000 00:00 0                          [stack]
"""


def test_maps_with_a_full_window_aborts_every_request(tmp_path: Path) -> None:
    """lj_mcode.c mcode_alloc: no hint in range is free, so every request fails
    (LJ_TRERR_MCODEAL) and the state aborts; it asks again --retries times. 3 states,
    2 retries: 3 x (2 + 1) = 9 aborts in every run, no area placed, no state to add."""
    listing = tmp_path / "full.maps"
    listing.write_text(FULL)
    args = ("maps", str(listing), "--arch", "aarch64", "--jit", "luajit-2.1",
            "--anchor", "0x10001000", "--states", "3", "--retries", "2", *FAST)
    doc = as_json(*args, codes=(1,))
    r = doc["replay"]
    assert (r["p_abort"], r["aborts"], r["states_aborted"], r["areas_placed"],
            r["safe_states"], r["aslr"], doc["replay_verdict"]) == (
        1.0, {"mean": 9.0, "p5": 9.0, "p50": 9.0, "p95": 9.0, "max": 9.0}, {"mean": 3.0},
        {"mean": 0.0}, 0, False, "aborts")
    code, out, _ = invoke(*args)
    assert code == 1
    assert out.rstrip().endswith("Verdict: aborts: 3 state(s): traces abort in 100.0% of 40 "
                                 "runs (>= 1.0%), 9 per run; up to 0 stay under 1.0%")


def lj_prng_bits(count: int, bits: int) -> list[int]:
    """LJ_PRNG_BITS of LuaJIT before 2020 (src/lj_jit.h): a zero-seeded LCG,
    prngstate * 1103515245 + 12345 mod 2^32, the top ``bits`` bits."""
    state, out = 0, []
    for _ in range(count):
        state = (state * 1103515245 + 12345) & 0xFFFFFFFF
        out.append(state >> (32 - bits))
    return out


def test_one_free_slot_and_the_zero_seeded_lcg() -> None:
    """A window with exactly one free slot, at the first hint the zero-seeded LCG gives
    that LuaJIT accepts (src/lj_mcode.c 4e308361: hint = LJ_PRNG_BITS(J, JR-16) << 16 at
    target - range + hint, kept when strictly within range of the target). Two states of
    one area each, every state drawing the same sequence: the first takes the slot with
    that hint, the second finds it taken and aborts on every request, 1 + retries times,
    in every run."""
    arm64 = by_name("aarch64")
    kernel = KernelConfig.for_arch(arm64)
    anchor = Span(0x10001000, 0x10001001)
    jit = window_for_span("luajit-2.1", arm64, anchor, kernel.user_space)
    jr, slot = 27, 64 << 10
    rng = (1 << (jr - 1)) - (2 << 20)
    first = jit.target - rng
    col = next(c for c in lj_prng_bits(64, jr - 16) if c > 0 and c + 1 < 2 * rng // slot)
    free = Span(first + col * slot, first + (col + 1) * slot)
    taken = [Span(0xC000000, free.start), Span(free.end, 0x14000000)]
    image = as_image("one-slot", kernel, taken)
    params = ReplayParams(states=2, mcode=slot, heap=0, runs=5, aslr=False, retries=3,
                          prng=PrngModel.LCG_ZERO_SEED)
    result = replay(image, kernel, jit, 0, params, search=False)
    assert (result.p_abort, result.aborts.mean, result.aborts.max, result.states_aborted,
            result.areas_placed) == (1.0, 4.0, 4.0, 1.0, 1.0)


# -- advise: the replay after a change is the replay of the changed binary ----------------


def test_advised_rebase_replays_as_the_real_relinked_binary() -> None:
    """advise's rebase moves the image wholly above mmap_min_addr; the fixture
    nopie-bfd-textseg is the same objects linked by GNU ld with -Ttext-segment, also
    wholly in user space: the replay, run on the edit applied to the image, and on the
    real relinked binary, sees the same layout around the anchor, so the same figures."""
    args = ("--states", "20", *FAST)
    advice = as_json("advise", str(ELF_DIR / "aarch64" / "nopie"), *args)
    rebase = next(r for r in advice["recommendations"] if r["kind"] == "rebase")
    real = as_json("inspect", str(ELF_DIR / "aarch64" / "nopie-bfd-textseg"), *args)
    assert rebase["replay"] == real["replay"]
    assert advice["current"]["replay"] == as_json("inspect", str(ELF_DIR / "aarch64" / "nopie"),
                                                  *args)["replay"]
    runtime = [r for r in advice["recommendations"] if r["kind"] == "runtime"]
    assert runtime and all(r["replay"] is None and r["replay_reason"] for r in runtime)


def test_generic_profile_has_no_replay_and_says_why() -> None:
    doc = as_json("inspect", SAMPLE, "--jit", "generic")
    assert doc["replay"] is None and doc["replay_verdict"] is None
    assert doc["replay_reason"].startswith("the replay models LuaJIT's allocators")


def test_luajit_2017_says_it_has_no_real_binary_to_check_against() -> None:
    code, out, _ = invoke("inspect", SAMPLE, "--jit", "luajit-2017", *FAST)
    assert code == 0 and "luajit-2017: no real binary checks this model here" in out


# -- check: the exit status follows --max-abort-probability -------------------------------


def check_json(*args: str, codes: tuple[int, ...]) -> dict[str, Any]:
    return as_json("check", SAMPLE, "--states", "96", *FAST, *args, codes=codes)


def test_check_gates_on_the_abort_probability(tmp_path: Path) -> None:
    doc = check_json(codes=(0, 1))
    p = doc["results"][0]["replay"]["p_abort"]
    assert 0 < p < 1  # 96 states on the sample's window: some runs abort, not all
    below, above = f"{p / 2}", f"{min(1.0, p * 2)}"
    failed = check_json("--max-abort-probability", below, codes=(1,))
    assert failed["results"][0]["failures"] == ["max_abort_probability"]
    assert failed["thresholds"]["max_abort_probability"] == float(below)
    passed = check_json("--max-abort-probability", above, codes=(0,))
    assert passed["results"][0]["status"] == "pass"
    config = tmp_path / "layoutkit.toml"
    config.write_text(f"max_abort_probability = {above}\nruns = 40\nseed = 1\n")
    assert as_json("check", SAMPLE, "--states", "96", "--config", str(config))["summary"][
        "exit_code"] == 0


@pytest.mark.parametrize("value", ["0", "1.5", "-0.1"])
def test_check_max_abort_probability_out_of_range(value: str) -> None:
    code, out, err = invoke("check", SAMPLE, "--format", "json", "--max-abort-probability",
                            value)
    assert (code, out) == (2, "")
    assert err.startswith(f"layoutkit: --max-abort-probability {float(value)}: a fraction")


def test_check_config_key_of_the_wrong_type(tmp_path: Path) -> None:
    config = tmp_path / "layoutkit.toml"
    config.write_text('max_abort_probability = "one percent"\n')
    code, _, err = invoke("check", SAMPLE, "--config", str(config))
    assert code == 2
    assert err == (f"layoutkit: {config}: max_abort_probability must be a number or integer, "
                   "not 'one percent'\n")
