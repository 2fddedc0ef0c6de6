"""The command line: build the scenario, call one use case, hand the result to output/.

The cli package is the only place that imports click; the shared options live in
:mod:`layoutkit.cli.options`. Heavy modules (pyelftools, capstone, numpy,
networkx) are imported inside the command that needs them, so ``layoutkit --help``
and every command start lean.
"""

from __future__ import annotations

import os
import sys
from typing import Any

import click

from layoutkit.cli.options import (
    EXIT_CODES,
    LINKER_NAMES,
    PROFILE_NAMES,
    handled,
    jit_option,
    output_options,
    scenario_options,
    show,
    svg_option,
)
from layoutkit.config import scenario_from
from layoutkit.core import arches
from layoutkit.core.units import parse_address, parse_size
from layoutkit.errors import EXIT_FINDINGS, EXIT_INPUT, EXIT_INTERNAL, EXIT_USAGE, UsageError
from layoutkit.output import console

__all__ = ["EXIT_CODES", "LINKER_NAMES", "PROFILE_NAMES", "cli", "main"]


@click.group(epilog=EXIT_CODES)
@click.version_option(package_name="layoutkit")
@click.option("--debug", is_flag=True, envvar="LAYOUTKIT_DEBUG",
              help="Show a traceback on errors.")
def cli(debug: bool) -> None:
    """Where can a JIT put its code? Address-space layout analysis for programs that
    generate machine code at run time (LuaJIT and others)."""


@cli.command(epilog=EXIT_CODES)
@click.argument("binary", required=False)
@click.option("--anchor", metavar="SYMBOL|ADDR",
              help="What the JIT must reach (default: lj_vm_exit_handler, lj_vm_asm_begin, "
                   "else the executable segment).")
@scenario_options()
@svg_option
@output_options
@handled
def inspect(binary: str | None, anchor: str | None, svg_path: str | None, fmt: str,
            scenario_args: dict[str, Any]) -> None:
    """The ELF's layout, its JIT anchor, the reach window of every branch form, and the
    JIT allocator replayed over the kernel's ASLR: the chance of a trace abort with
    --states states, and how many states stay under 1%.

    With no BINARY, inspects a bundled AArch64 non-PIE executable linked at 0x400000.
    """
    from layoutkit.commands.inspect import inspect_binary
    from layoutkit.commands.samples import default_binary
    from layoutkit.output import document, svg, text

    scenario = scenario_from(scenario_args)
    bundled = binary is None
    path = str(default_binary()) if binary is None else binary
    result = inspect_binary(path, scenario, anchor=anchor)
    if svg_path:
        svg.write_svg(svg_path, result.prediction.worst, result.runtime_anchor,
                          f"{os.path.basename(path)}: {result.profile} window, "
                          "worst case over ASLR")
    show(fmt, lambda: text.inspection_lines(result, bundled=bundled),
          lambda: document.inspection_json(result, bundled=bundled), result.exit_code)


@cli.command(name="maps", epilog=EXIT_CODES)
@click.argument("target", metavar="PID|FILE")
@click.option("--anchor", metavar="SYMBOL|ADDR",
              help="What the JIT must reach: a symbol of a mapped object, or a run-time "
                   "address (default: lj_vm_exit_handler, lj_vm_asm_begin, else the "
                   "executable mappings of the JIT's object).")
@click.option("--arch", "arch_name", metavar="ARCH", default=None,
              help="Architecture, when the mapped files cannot be read here.")
@click.option("--path-map", "path_map", metavar="OLD=NEW", multiple=True,
              help="Read mapped files under NEW instead of OLD (a listing from elsewhere).")
@scenario_options()
@svg_option
@output_options
@handled
def maps_command(target: str, anchor: str | None, arch_name: str | None,
                 path_map: tuple[str, ...], svg_path: str | None, fmt: str,
                 scenario_args: dict[str, Any]) -> None:
    """The JIT window against a live process (PID) or a saved /proc/PID/maps (FILE).

    Finds the object holding the anchor and its load bias, the JIT code already mapped,
    every occupant of the window, the free slots, and replays --states new states on
    the layout as mapped: how many more the process can add (exit 1 when the new states
    abort traces in 1% of the runs or more).
    """
    from layoutkit.commands.maps import analyse_target
    from layoutkit.output import document, svg, text

    scenario = scenario_from(scenario_args)
    result = analyse_target(target, scenario, anchor=anchor, arch_name=arch_name,
                            path_map=path_map)
    if svg_path:
        svg.write_svg(svg_path, result.accounting, result.anchor.span,
                          f"{result.maps.source}: {result.profile} window as mapped",
                          tuple(a.span for a in result.jit_areas))
    show(fmt, lambda: text.maps_lines(result), lambda: document.maps_json(result),
          result.exit_code)


@cli.command(epilog=EXIT_CODES)
@click.argument("binary", required=False)
@click.option("--arch", "arch_name", metavar="ARCH", default=None,
              help="Architecture (required without BINARY; checked against it otherwise).")
@click.option("--linker", type=click.Choice(LINKER_NAMES), default=None,
              help="Linker to advise for (default: the one that made BINARY, else bfd).")
@click.option("--anchor", metavar="SYMBOL|ADDR", help="What the JIT must reach.")
@click.option("--move", "move", metavar="SECTION[,SECTION...][=ADDR]", default=None,
              help="Check moving these sections (the rest stays): the feasible range from "
                   "the decoded PC-relative references, or which reference breaks at ADDR.")
@click.option("--allow-weaker", is_flag=True,
              help="Also show recommendations that lose a protection (W^X, RELRO, "
                   "BIND_NOW, NX stack, separate code), marked WEAKER.")
@click.option("--prove", is_flag=True,
              help="Relink a program of BINARY's shape with each recommendation and report "
                   "the protections measured (needs the arch's gcc; exit 4 without).")
@scenario_options()
@output_options
@handled
def advise(binary: str | None, arch_name: str | None, linker: str | None,
           anchor: str | None, move: str | None, allow_weaker: bool, prove: bool, fmt: str,
           scenario_args: dict[str, Any]) -> None:
    """Linker flags (or a runtime change) that widen the JIT window, with before/after
    figures (worst case over ASLR, and the allocator replay on the advised image), best
    first.

    Without BINARY, advises on the default link of --arch, as a calculator. Exit 1 when
    no change brings the requested states under a 1% chance of a trace abort.
    """
    from layoutkit.commands import advise as use_case
    from layoutkit.output import document, text

    scenario = scenario_from(scenario_args)
    if move is not None:
        if binary is None:
            raise UsageError("--move needs a BINARY: its references decide the range")
        check = use_case.move(binary, move)
        show(fmt, lambda: text.move_lines(check), lambda: document.move_json(check))
        return
    result = use_case.advise(binary, scenario, arch_name=arch_name, linker=linker,
                             anchor=anchor, allow_weaker=allow_weaker, prove=prove)
    show(fmt, lambda: text.advice_lines(result), lambda: document.advice_json(result))


@cli.command(epilog=EXIT_CODES)
@click.option("--arch", "arch_names", multiple=True, metavar="ARCH",
              help=f"Only these architectures ({', '.join(arches.arch_names())}; "
                   "aliases such as arm64 work).")
@output_options
@handled
def ranges(arch_names: tuple[str, ...], fmt: str) -> None:
    """The reach table: every PC-relative branch form and its exact reach."""
    from layoutkit.output import document, text
    from layoutkit.ranges import REACH, forms

    rows = REACH
    if arch_names:
        rows = tuple(f for name in arch_names for f in forms(arches.by_name(name)))
    show(fmt, lambda: text.forms_lines(rows), lambda: document.ranges_json(rows))


@cli.command(name="kernel", epilog=EXIT_CODES)
@click.option("--capture", is_flag=True, default=False,
              help="Write this machine's kernel facts as a JSON document (layoutkit/kernel/1) "
                   "for --kernel-file on another machine.")
@output_options
@handled
def kernel_command(capture: bool, fmt: str) -> None:
    """This machine's kernel: its release (uname) and the sysctls the layout model reads
    (kernel.randomize_va_space, vm.mmap_min_addr, vm.mmap_rnd_bits, vm.legacy_va_layout),
    and the randomisation ranges they give. The judging commands use them when the
    binary's arch is this machine's; elsewhere, --kernel-file FILE with a capture."""
    from layoutkit.commands.kernel import host_kernel
    from layoutkit.output import document, text

    facts, config = host_kernel()
    show("json" if capture else fmt, lambda: text.capture_lines(facts, config),
          lambda: document.capture_json(facts))


CHECK_EXIT_CODES = f"""Exit codes: 0 ok, every JIT-hosting binary passes; {EXIT_FINDINGS} at
least one fails; {EXIT_USAGE} usage error (an unknown config key too); {EXIT_INPUT} an input
could not be analysed (the others are still checked and reported); {EXIT_INTERNAL} internal
error on some path (a bug in layoutkit: please report it). {EXIT_INTERNAL} outranks
{EXIT_INPUT}, which outranks {EXIT_FINDINGS}."""


@cli.command(epilog=CHECK_EXIT_CODES)
@click.argument("paths", metavar="PATH...", nargs=-1, required=True)
@click.option("--min-window", "min_window", metavar="SIZE", default=None,
              help="Free bytes the JIT window must keep, worst case over ASLR (default 0).")
@click.option("--min-free-slots", "min_free_slots", type=click.IntRange(min=0), default=None,
              help="Free 64 KiB slots the window must keep (default 0).")
@click.option("--max-abort-probability", "max_abort_probability", type=float, default=None,
              help="A binary fails when the allocator replay has traces abort in this share "
                   "of its runs or more (a fraction, default 0.01).")
@click.option("--arch", "arch_names", multiple=True, metavar="ARCH",
              help="Judge only binaries of these architectures (the rest are n/a).")
@click.option("--config", "config_path", metavar="FILE", default=None,
              help="Settings file (default: layoutkit.toml or pyproject.toml "
                   "[tool.layoutkit] in the current directory).")
@click.option("-j", "--jobs", type=click.IntRange(min=1), default=None,
              help="Worker processes (default: one per core).")
@click.option("--format", "fmt", type=click.Choice(["text", "json", "junit", "sarif"]),
              default="text", show_default=True, help="Report format (one for the run).")
@scenario_options()
@handled
def check(paths: tuple[str, ...], min_window: str | None, min_free_slots: int | None,
          max_abort_probability: float | None, arch_names: tuple[str, ...],
          config_path: str | None, jobs: int | None, fmt: str,
          scenario_args: dict[str, Any]) -> None:
    """The pre-release gate: judge every binary under PATH (ELF files, directories,
    Debian .deb packages) that embeds or links a JIT target against thresholds.

    LuaJIT evidence (VM symbols, a version string, DT_NEEDED on libluajit) makes a
    binary judged: --min-window and --min-free-slots on the worst case over ASLR, the
    requested states on the allocator replay (--max-abort-probability); the others are
    n/a. Settings come from
    [tool.layoutkit] in pyproject.toml or layoutkit.toml; the options override them.
    On GitHub Actions (GITHUB_ACTIONS=true) failures are also printed as ::error
    annotations.
    """
    from layoutkit.commands.check import check_paths, settings_from
    from layoutkit.config import load_config
    from layoutkit.output import checkreport

    options = {**scenario_args, "min_window": min_window, "min_free_slots": min_free_slots,
               "max_abort_probability": max_abort_probability,
               "arch": list(arch_names) or None}
    settings = settings_from(options, load_config(config_path))
    tty = sys.stderr.isatty()
    done = [0]

    def progress(_result: object) -> None:
        done[0] += 1
        if tty:
            click.echo(f"\rlayoutkit check: {done[0]} paths checked", err=True, nl=False)

    summary = check_paths(list(paths), settings, jobs=jobs, on_result=progress)
    if tty and done[0]:
        click.echo("", err=True)
    click.echo(checkreport.render(summary, settings, fmt))
    if os.environ.get("GITHUB_ACTIONS") == "true":
        for line in checkreport.github_annotations(summary):
            click.echo(line, err=fmt != "text")
    if summary.exit_code:
        sys.exit(summary.exit_code)


@cli.command(name="probe", epilog=EXIT_CODES,
             context_settings={"allow_interspersed_args": False})
@click.option("--arch", "arch_name", metavar="ARCH", default=None,
              help="Architecture of the probe (default: this machine's).")
@click.option("--runner", type=click.Choice(["native", "qemu-user", "qemu-system"]),
              default="native", show_default=True,
              help="Where the probe runs: this kernel, qemu-user (quick; its "
                   "infidelities are stated in the output), or qemu-system (a guest booted "
                   "with Debian's kernel for the arch). With CMD: native or qemu-system.")
@jit_option("luajit-2.1")
@click.option("--anchor", metavar="ADDR|SYMBOL", default=None,
              help="Run-time address the window is around (default: a function of the "
                   "probe's own code, reported; 'stack': the probe's main stack). With "
                   "CMD: a symbol or address in CMD (default: lj_vm_exit_handler, "
                   "lj_vm_asm_begin, recovered from JIT code when stripped).")
@click.option("--radius", metavar="SIZE", default=None,
              help="Scan +-SIZE around the anchor instead of the profile's window.")
@click.option("--threads", type=click.IntRange(min=0, max=1024), default=0,
              show_default=True, help="Replay the allocator with N threads (0: scan).")
@click.option("--areas", type=click.IntRange(min=0, max=4096), default=8, show_default=True,
              help="Areas each replay thread allocates.")
@click.option("--seed", type=int, default=1, show_default=True,
              help="Seed of the replay's hint generator.")
@click.option("--retries", type=click.IntRange(min=0), default=None,
              help="Replay: requests again per thread after an abort (default: the "
                   "model replay's).")
@click.option("--when", default="start", show_default=True,
              help="With CMD: when the probe forks: start, ms:N, or signal:USR1|USR2.")
@click.option("--object", "object_name", metavar="NAME", default=None,
              help="With CMD: scan around the mapped object whose name contains NAME "
                   "(default: the program itself).")
@click.option("--kill-after", is_flag=True, default=False,
              help="With CMD: terminate it once the report is in (default: let it finish).")
@click.argument("command", nargs=-1, type=click.UNPROCESSED)
@output_options
@handled
def probe_command(arch_name: str | None, runner: str, jit: str, anchor: str | None,
                  radius: str | None, threads: int, areas: int, seed: int,
                  retries: int | None, when: str,
                  object_name: str | None, kill_after: bool, command: tuple[str, ...],
                  fmt: str) -> None:
    """Ask a real kernel which slots of the JIT window are free (MAP_FIXED_NOREPLACE,
    never MAP_FIXED), or replay the allocator with N threads, in the probe's own process.

    The replay is the allocator's own algorithm (docs/allocator-replay.md, the same as
    the model's): the threads take turns, an allocation that fails aborts and flushes
    that thread's areas, and it asks again up to --retries times.

    Everything the probe maps it unmaps before it reports. Exit 1 when the window has
    no free slot or an allocation failed; 4 when no compiler or qemu is available.

    With ``-- CMD ARGS...`` (a dynamically linked program): CMD runs with a preloaded
    probe that forks at ``--when``; the copy scans around CMD's code and reports, CMD is
    never disturbed. Then CMD runs to completion (its stdin and stderr are layoutkit's;
    its stdout goes to stderr with --format json), or is terminated with --kill-after.
    A static CMD exits 4 (use ``layoutkit verify``, the layout twin).

    With ``--runner qemu-system -- CMD ARGS...``, CMD (a file of the guest's arch, given
    by --arch or read from CMD) runs to its end in a qemu-system guest with the probe
    preloaded the same way; a static CMD runs there beside its layout twin, which is
    measured instead (the output says so). CMD's output goes to stderr.
    """
    from layoutkit.commands.probe import probe
    from layoutkit.native.toolchain import Runner
    from layoutkit.output.probe import probe_json, probe_lines

    if command:
        where = Runner.named(runner)
        if where is Runner.QEMU_SYSTEM:
            if threads or radius or kill_after:
                raise UsageError("with CMD in the guest the probe scans around CMD's code "
                                 "and CMD runs to its end: --radius, --threads and "
                                 "--kill-after do not apply")
            _probe_guest_program(command, arch_name, jit, anchor, when, object_name, fmt)
            return
        if threads or radius or arch_name or where is not Runner.NATIVE:
            raise UsageError("with CMD the probe scans natively (or with --runner "
                             "qemu-system in a guest) around CMD's code: --arch, "
                             "--runner qemu-user, --radius and --threads do not apply")
        _probe_program(command, jit, anchor, when, object_name, kill_after, fmt)
        return

    report = probe(arch_name=arch_name, runner=runner, jit=jit,
                   anchor=anchor if anchor in (None, "stack") else parse_address(anchor or ""),
                   radius=None if radius is None else parse_size(radius),
                   threads=threads, areas=areas, seed=seed, retries=retries)
    show(fmt, lambda: probe_lines(report), lambda: probe_json(report), report.exit_code)


def _probe_program(command: tuple[str, ...], jit: str, anchor: str | None, when: str,
                   object_name: str | None, kill_after: bool, fmt: str) -> None:
    from layoutkit.native.preload import probe_program
    from layoutkit.output.probe import program_json, program_lines

    result = probe_program(command, when=when, jit=jit, anchor=anchor,
                           object_name=object_name, kill_after=kill_after,
                           stdout=2 if fmt == "json" else None)
    show(fmt, lambda: program_lines(result), lambda: program_json(result), result.exit_code)


def _probe_guest_program(command: tuple[str, ...], arch_name: str | None, jit: str,
                         anchor: str | None, when: str, object_name: str | None,
                         fmt: str) -> None:
    from layoutkit.commands.probe import probe_in_guest
    from layoutkit.output.probe import program_json, program_lines

    result = probe_in_guest(command, arch_name=arch_name, when=when, jit=jit, anchor=anchor,
                            object_name=object_name)
    click.echo(result.stdout, nl=False, err=True)
    click.echo(result.stderr, nl=False, err=True)
    show(fmt, lambda: program_lines(result), lambda: program_json(result), result.exit_code)


@cli.command(name="verify", epilog=EXIT_CODES)
@click.argument("binary", required=False)
@click.option("--workload", type=click.Choice(["luajit"]), default=None,
              help="Instead of BINARY: run the real LuaJIT workload (--jit luajit-2.1 or "
                   "luajit-2025, --states threads) and judge its aborts, areas and mmap "
                   "calls against the allocator replay's p5..p95 band.")
@click.option("--aslr", type=click.Choice(["on", "off"]), default="on", show_default=True,
              help="With --workload: run it with ASLR on or off (setarch -R).")
@click.option("--replay-runs", type=click.IntRange(min=2), default=300, show_default=True,
              help="With --workload: replay runs that make the band.")
@click.option("--seed", type=int, default=1, show_default=True,
              help="With --workload: the replay's seed.")
@click.option("--arch", "arch_name", metavar="ARCH", default=None,
              help="Architecture (checked against BINARY).")
@click.option("--runner", type=click.Choice(["native", "qemu-user", "qemu-system"]),
              default="native", show_default=True,
              help="Where the twin runs: this kernel, qemu-user (its infidelities are "
                   "stated), or qemu-system (only where that runner is installed).")
@click.option("--runs", type=click.IntRange(min=1, max=100), default=3, show_default=True,
              help="Runs of the twin (each under fresh ASLR).")
@click.option("--advice", type=click.Choice(["rebase", "relocate-text", "pie"]), default=None,
              help="Verify the layout that advise's recommendation of this kind gives.")
@click.option("--base", metavar="ADDR", default=None,
              help="Verify the non-PIE image rebased to ADDR (as -Ttext-segment moves it).")
@click.option("--anchor", metavar="SYMBOL|ADDR", default=None,
              help="What the JIT must reach (default: lj_vm_exit_handler, lj_vm_asm_begin; "
                   "a stripped binary needs it).")
@scenario_options(kernel=False)
@output_options
@handled
def verify_command(binary: str | None, workload: str | None, aslr: str, replay_runs: int,
                   seed: int, arch_name: str | None, runner: str, runs: int,
                   advice: str | None, base: str | None, anchor: str | None, fmt: str,
                   scenario_args: dict[str, Any]) -> None:
    """Measure BINARY's JIT window without running it: its layout twin (the probe linked
    so that its PT_LOAD segments are the target's) runs on the runner, and each run is
    compared with the accounting of its own /proc/self/maps (slot for slot) and with the
    kernel model's range over ASLR.

    With --workload luajit instead of BINARY: the real LuaJIT workload runs once with
    --states threads on the runner (native, or qemu-system for arm64), and its aborts,
    areas held and area mmap calls are judged against the replay of the same binary,
    scenario and kernel.

    Exit 0 when both hold and the capacity verdict is ok (with --workload: every figure
    inside the band), 1 when not, 4 when the runner or the cross compiler is not
    available (the message says what to install).
    """
    if workload is not None:
        _verify_workload(binary, workload, aslr == "on", replay_runs, seed, arch_name, runner,
                         fmt, scenario_args)
        return
    if binary is None:
        raise UsageError("verify needs a BINARY, or --workload luajit")
    from layoutkit.commands.verify import verify
    from layoutkit.core.kinds import AdviceKind
    from layoutkit.output.verify import verification_json, verification_lines

    result = verify(binary, scenario_from(scenario_args), arch_name=arch_name, runner=runner,
                    runs=runs, advice=None if advice is None else AdviceKind(advice),
                    base=None if base is None else parse_address(base), anchor_spec=anchor)
    show(fmt, lambda: verification_lines(result), lambda: verification_json(result),
          result.exit_code)


def _verify_workload(binary: str | None, workload: str, aslr: bool, replay_runs: int,
                     seed: int, arch_name: str | None, runner: str, fmt: str,
                     scenario_args: dict[str, Any]) -> None:
    from layoutkit.commands.verify_workload import verify_workload
    from layoutkit.output.verify_workload import workload_json, workload_lines

    if binary is not None:
        raise UsageError(f"--workload {workload} runs its own binary: leave out {binary}")
    result = verify_workload(workload, scenario_from(scenario_args), runner=runner,
                             arch_name=arch_name, aslr=aslr, runs=replay_runs, seed=seed)
    show(fmt, lambda: workload_lines(result), lambda: workload_json(result),
          result.exit_code)


def main(argv: list[str] | None = None) -> None:
    """The entry point: output that never fails on a closed pipe or an encoding."""
    console.install()
    cli.main(args=argv, prog_name="layoutkit")
