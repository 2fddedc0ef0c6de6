"""The command line: parse arguments, call the library, hand the result to a renderer.

The only module that imports click.
"""

from __future__ import annotations

import functools
import io
import os
import sys
import tempfile
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

import click

from layoutkit.advice.advise import advise as advise_layout
from layoutkit.advice.advise import check_move
from layoutkit.advice.linkers import LINKERS
from layoutkit.boundary import internal
from layoutkit.commands.inspect import inspect_binary
from layoutkit.commands.maps import analyse_maps
from layoutkit.commands.samples import default_binary
from layoutkit.core import arches
from layoutkit.core.spans import Span
from layoutkit.core.units import parse_address, parse_size
from layoutkit.errors import (
    EXIT_FINDINGS,
    EXIT_INPUT,
    EXIT_INTERNAL,
    EXIT_PROBE,
    EXIT_USAGE,
    LayoutkitError,
    UsageError,
)
from layoutkit.output import document as report
from layoutkit.output import picture
from layoutkit.output.text import (
    advice_lines,
    forms_lines,
    inspection_lines,
    maps_lines,
    move_lines,
)
from layoutkit.ranges import REACH, forms
from layoutkit.read.maps import read_maps_file, read_process_maps
from layoutkit.window.accounting import Accounting
from layoutkit.window.layout import DEFAULT_HEAP
from layoutkit.window.profiles import PROFILES

F = TypeVar("F", bound=Callable[..., Any])

EXIT_CODES = f"""Exit codes: 0 ok; {EXIT_FINDINGS} a check failed or no advice is possible;
{EXIT_USAGE} usage error; {EXIT_INPUT} an input could not be analysed; {EXIT_PROBE} the
native probe is unavailable or failed; {EXIT_INTERNAL} internal error (a bug in layoutkit:
please report it; --debug shows the traceback)."""


def output_options(func: F) -> F:
    """``--format``, shared by every command."""
    return click.option(
        "--format", "fmt", type=click.Choice(["text", "json"]), default="text",
        show_default=True, help="Output format (JSON carries a schema version).",
    )(func)


def kernel_options(func: F) -> F:
    """The kernel configuration a layout is judged under."""
    func = click.option(
        "--mmap-min-addr", "mmap_min_addr", metavar="ADDR", default=None,
        help="vm.mmap_min_addr (default per arch, e.g. 0x10000 on x86-64).",
    )(func)
    return click.option(
        "--va-bits", "va_bits", type=int, default=None,
        help="User VA size of the kernel (arm64: 39/42/47/48/52; x86-64: 47/57).",
    )(func)


def jit_options(func: F) -> F:
    """The JIT profile and the demand placed on its window."""
    options = [
        click.option("--svg", "svg_path", metavar="FILE", default=None,
                     help="Also draw the address space around the anchor as SVG."),
        click.option("--mcode", metavar="SIZE", default=None,
                     help="Code per JIT state (default: the profile's maxmcode, 512K "
                          "for LuaJIT 2.1)."),
        click.option("--states", type=click.IntRange(min=1), default=1, show_default=True,
                     help="How many JIT states (threads with their own lua_State) compete."),
        click.option("--heap", metavar="SIZE", default=None,
                     help="How far the brk heap grows beyond its start (default 64M: "
                          "one glibc arena, HEAP_MAX_SIZE)."),
        click.option("--form", metavar="NAME", default=None,
                     help="Branch form for --jit generic (default: the direct branch)."),
        click.option("--jit", "jit", type=click.Choice(sorted(PROFILES)), default=None,
                     help="JIT allocator profile (default: detected from the binary)."),
    ]
    for option in options:
        func = option(func)
    return func


def _sizes(heap: str | None, mcode: str | None) -> tuple[int, int | None]:
    heap_bytes = DEFAULT_HEAP if heap is None else parse_size(heap)
    mcode_bytes = None if mcode is None else parse_size(mcode)
    if mcode_bytes == 0:
        raise UsageError("--mcode 0: a JIT state needs some code space")
    return heap_bytes, mcode_bytes


def _write_svg(path: str, acc: Accounting, anchor: Span, title: str,
               jit_areas: tuple[Span, ...] = ()) -> None:
    """Write the picture atomically: a temporary file in the same folder, then rename."""
    text = picture.svg(acc, anchor, title=title, jit_areas=jit_areas)
    folder = os.path.dirname(os.path.abspath(path))
    try:
        fd, tmp = tempfile.mkstemp(prefix=".layoutkit-", suffix=".svg", dir=folder)
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(text)
        os.replace(tmp, path)
    except OSError as e:
        raise UsageError(f"--svg {path}: {e.strerror}") from None


def _emit(lines: Iterable[str]) -> None:
    click.echo("\n".join(lines))


def _handled(func: F) -> F:
    """Turn :class:`LayoutkitError` into one line on stderr and its exit code; anything
    else is a bug in layoutkit (the internal boundary): one line, exit 5."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        ctx = click.get_current_context()
        try:
            with internal(f"layoutkit {ctx.info_name}"):
                return func(*args, **kwargs)
        except LayoutkitError as err:
            if ctx.find_root().params.get("debug"):
                raise
            click.echo(f"layoutkit: {err}", err=True)
            ctx.exit(err.exit_code)

    return wrapper  # type: ignore[return-value]


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
@jit_options
@kernel_options
@output_options
@_handled
def inspect(binary: str | None, anchor: str | None, jit: str | None, form: str | None,
            heap: str | None, states: int, mcode: str | None, svg_path: str | None,
            va_bits: int | None, mmap_min_addr: str | None, fmt: str) -> None:
    """The ELF's layout, its JIT anchor and the reach window of every branch form.

    With no BINARY, inspects a bundled AArch64 non-PIE executable linked at 0x400000.
    """
    note = None
    if binary is None:
        binary = str(default_binary())
        note = (f"No BINARY given: inspecting the bundled sample {binary}\n"
                "(AArch64, non-PIE, GNU ld default base, LuaJIT-like anchor).")
    heap_bytes, mcode_bytes = _sizes(heap, mcode)
    result = inspect_binary(
        binary, anchor=anchor, va_bits=va_bits,
        mmap_min_addr=None if mmap_min_addr is None else parse_address(mmap_min_addr),
        jit=jit, form=form, heap=heap_bytes, states=states, mcode=mcode_bytes,
    )
    if svg_path:
        _write_svg(svg_path, result.prediction.worst, result.runtime_anchor,
                   f"{os.path.basename(binary)}: {result.profile} window, worst case over ASLR")
    if fmt == "json":
        doc = report.inspection_json(result)
        doc["bundled_default"] = note is not None
        click.echo(report.dumps(doc))
    else:
        _emit(inspection_lines(result, default_note=note))


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
@jit_options
@kernel_options
@output_options
@_handled
def maps_command(target: str, anchor: str | None, arch_name: str | None,
                 path_map: tuple[str, ...], jit: str | None, form: str | None,
                 heap: str | None, states: int, mcode: str | None, svg_path: str | None,
                 va_bits: int | None, mmap_min_addr: str | None, fmt: str) -> None:
    """The JIT window against a live process (PID) or a saved /proc/PID/maps (FILE).

    Finds the object holding the anchor and its load bias, the JIT code already mapped,
    every occupant of the window, the free slots and the capacity verdict.
    """
    pairs = []
    for item in path_map:
        old, sep, new = item.partition("=")
        if not sep or not old or not new:
            raise UsageError(f"--path-map {item!r}: write OLD=NEW")
        pairs.append((old, new))
    maps = (read_process_maps(int(target)) if target.isdigit()
            else read_maps_file(target))
    heap_bytes, mcode_bytes = _sizes(heap, mcode)
    result = analyse_maps(
        maps, anchor=anchor, arch_name=arch_name, jit=jit, form=form, va_bits=va_bits,
        mmap_min_addr=None if mmap_min_addr is None else parse_address(mmap_min_addr),
        heap=heap_bytes, states=states, mcode=mcode_bytes, path_map=tuple(pairs),
    )
    if svg_path:
        _write_svg(svg_path, result.accounting, result.anchor.span,
                   f"{maps.source}: {result.profile} window as mapped",
                   tuple(a.span for a in result.jit_areas))
    if fmt == "json":
        click.echo(report.dumps(report.maps_json(result)))
    else:
        _emit(maps_lines(result))
    if result.accounting.capacity.verdict != "ok":
        sys.exit(EXIT_FINDINGS)


@cli.command(epilog=EXIT_CODES)
@click.argument("binary", required=False)
@click.option("--arch", "arch_name", metavar="ARCH", default=None,
              help="Architecture (required without BINARY; checked against it otherwise).")
@click.option("--linker", type=click.Choice(list(LINKERS)), default=None,
              help="Linker to advise for (default: the one that made BINARY, else bfd).")
@click.option("--anchor", metavar="SYMBOL|ADDR", help="What the JIT must reach.")
@click.option("--move", "move", metavar="SECTION[,SECTION...][=ADDR]", default=None,
              help="Check moving these sections (the rest stays): the feasible range from "
                   "the decoded PC-relative references, or which reference breaks at ADDR.")
@jit_options
@kernel_options
@output_options
@_handled
def advise(binary: str | None, arch_name: str | None, linker: str | None,
           anchor: str | None, move: str | None, jit: str | None, form: str | None,
           heap: str | None, states: int, mcode: str | None, svg_path: str | None,
           va_bits: int | None, mmap_min_addr: str | None, fmt: str) -> None:
    """Linker flags (or a runtime change) that widen the JIT window, with before/after
    figures (worst case over ASLR), best first.

    Without BINARY, advises on the default link of --arch, as a calculator. Exit 1 when
    no change makes the requested states fit.
    """
    if move is not None:
        if binary is None:
            raise UsageError("--move needs a BINARY: its references decide the range")
        names, _, where = move.partition("=")
        sections = [n for n in names.split(",") if n]
        if not sections:
            raise UsageError(f"--move {move!r}: name a section, e.g. --move .text=0x7f000000")
        check = check_move(binary, sections, parse_address(where) if where else None)
        if fmt == "json":
            click.echo(report.dumps(report.move_json(check)))
        else:
            _emit(move_lines(check))
        return
    heap_bytes, mcode_bytes = _sizes(heap, mcode)
    result = advise_layout(
        binary, arch_name=arch_name, linker=linker, jit=jit, form=form, anchor=anchor,
        heap=heap_bytes, states=states, mcode=mcode_bytes, va_bits=va_bits,
        mmap_min_addr=None if mmap_min_addr is None else parse_address(mmap_min_addr),
    )
    if fmt == "json":
        click.echo(report.dumps(report.advice_json(result)))
    else:
        _emit(advice_lines(result))


@cli.command(epilog=EXIT_CODES)
@click.option("--arch", "arch_names", multiple=True, metavar="ARCH",
              help=f"Only these architectures ({', '.join(arches.arch_names())}; "
                   "aliases such as arm64 work).")
@output_options
@_handled
def ranges(arch_names: tuple[str, ...], fmt: str) -> None:
    """The reach table: every PC-relative branch form and its exact reach."""
    rows = REACH
    if arch_names:
        rows = tuple(f for name in arch_names for f in forms(arches.by_name(name)))
    if fmt == "json":
        click.echo(report.dumps(report.document("ranges", {
            "forms": [report.form_json(f) for f in rows]})))
    else:
        _emit(forms_lines(rows))


CHECK_EXIT_CODES = f"""Exit codes: 0 ok, every JIT-hosting binary passes; {EXIT_FINDINGS} at
least one fails; {EXIT_USAGE} usage error (an unknown config key too); {EXIT_INPUT} an input
could not be analysed (the others are still checked and reported); {EXIT_INTERNAL} internal
error on some path (a bug in layoutkit: please report it). {EXIT_INTERNAL} outranks
{EXIT_INPUT}, which outranks {EXIT_FINDINGS}."""


def _config_size(value: object) -> int | None:
    if value is None:
        return None
    return value if isinstance(value, int) else parse_size(str(value))


@cli.command(epilog=CHECK_EXIT_CODES)
@click.argument("paths", metavar="PATH...", nargs=-1, required=True)
@click.option("--min-window", "min_window", metavar="SIZE", default=None,
              help="Free bytes the JIT window must keep, worst case over ASLR (default 0).")
@click.option("--min-free-slots", "min_free_slots", type=click.IntRange(min=0), default=None,
              help="Free 64 KiB slots the window must keep (default 0).")
@click.option("--states", type=click.IntRange(min=1), default=None,
              help="JIT states that must fit in the free runs (default 1).")
@click.option("--mcode", metavar="SIZE", default=None,
              help="Code per JIT state (default: the profile's maxmcode).")
@click.option("--heap", metavar="SIZE", default=None,
              help="brk heap growth reserve (default 64M).")
@click.option("--jit", "jit", type=click.Choice(sorted(PROFILES)), default=None,
              help="JIT allocator profile (default: detected per binary).")
@click.option("--arch", "arch_names", multiple=True, metavar="ARCH",
              help="Judge only binaries of these architectures (the rest are n/a).")
@click.option("--config", "config_path", metavar="FILE", default=None,
              help="Settings file (default: layoutkit.toml or pyproject.toml "
                   "[tool.layoutkit] in the current directory).")
@click.option("-j", "--jobs", type=click.IntRange(min=1), default=None,
              help="Worker processes (default: one per core).")
@click.option("--format", "fmt", type=click.Choice(["text", "json", "junit", "sarif"]),
              default="text", show_default=True, help="Report format (one for the run).")
@kernel_options
@_handled
def check(paths: tuple[str, ...], min_window: str | None, min_free_slots: int | None,
          states: int | None, mcode: str | None, heap: str | None, jit: str | None,
          arch_names: tuple[str, ...], config_path: str | None, jobs: int | None, fmt: str,
          va_bits: int | None, mmap_min_addr: str | None) -> None:
    """The pre-release gate: judge every binary under PATH (ELF files, directories,
    Debian .deb packages) that embeds or links a JIT target against thresholds.

    LuaJIT evidence (VM symbols, a version string, DT_NEEDED on libluajit) makes a
    binary judged, worst case over ASLR; the others are n/a. Settings come from
    [tool.layoutkit] in pyproject.toml or layoutkit.toml; the options override them.
    On GitHub Actions (GITHUB_ACTIONS=true) failures are also printed as ::error
    annotations.
    """
    from layoutkit.commands.check import Settings, check_paths, resolve_arches
    from layoutkit.config import load_config
    from layoutkit.output import checkreport as gatereport

    cfg = load_config(config_path)

    def pick(value: Any, key: str) -> Any:
        return value if value is not None else cfg.get(key)

    profile = pick(jit, "jit")
    if profile is not None and profile not in PROFILES:
        raise UsageError(f"{cfg.source}: jit {profile!r} is not one of "
                         f"{', '.join(sorted(PROFILES))}")
    arch_cfg = cfg.get("arch")
    names = arch_names or ((arch_cfg,) if isinstance(arch_cfg, str) else tuple(arch_cfg or ()))
    address = pick(mmap_min_addr, "mmap_min_addr")
    mcode_bytes = _config_size(pick(mcode, "mcode"))
    if mcode_bytes == 0:
        raise UsageError("--mcode 0: a JIT state needs some code space")
    settings = Settings(
        min_window=_config_size(pick(min_window, "min_window")) or 0,
        min_free_slots=pick(min_free_slots, "min_free_slots") or 0,
        states=pick(states, "states") or 1,
        mcode=mcode_bytes,
        jit=profile,
        heap=_config_size(pick(heap, "heap")) or DEFAULT_HEAP,
        va_bits=pick(va_bits, "va_bits"),
        mmap_min_addr=(None if address is None else address if isinstance(address, int)
                       else parse_address(str(address))),
        arches=resolve_arches(names),
    )
    tty = sys.stderr.isatty()
    done = [0]

    def progress(_result: object) -> None:
        done[0] += 1
        if tty:
            click.echo(f"\rlayoutkit check: {done[0]} paths checked", err=True, nl=False)

    summary = check_paths(list(paths), settings, jobs=jobs, on_result=progress)
    if tty and done[0]:
        click.echo("", err=True)
    click.echo(gatereport.render(summary, settings, fmt))
    if os.environ.get("GITHUB_ACTIONS") == "true":
        for line in gatereport.github_annotations(summary):
            click.echo(line, err=fmt != "text")
    if summary.exit_code:
        sys.exit(summary.exit_code)


@cli.command(name="probe", epilog=EXIT_CODES,
             context_settings={"allow_interspersed_args": False})
@click.option("--arch", "arch_name", metavar="ARCH", default=None,
              help="Architecture of the probe (default: this machine's).")
@click.option("--runner", type=click.Choice(["native", "qemu-user"]), default="native",
              show_default=True, help="Where the probe runs: this kernel, or qemu-user "
                                      "(quick; its infidelities are stated in the output).")
@click.option("--jit", "jit", type=click.Choice(sorted(PROFILES)), default="luajit-2.1",
              show_default=True, help="JIT allocator profile: its window and, with "
                                      "--threads, its probe sequence.")
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
@click.option("--when", default="start", show_default=True,
              help="With CMD: when the probe forks: start, ms:N, or signal:USR1|USR2.")
@click.option("--object", "object_name", metavar="NAME", default=None,
              help="With CMD: scan around the mapped object whose name contains NAME "
                   "(default: the program itself).")
@click.option("--kill-after", is_flag=True, default=False,
              help="With CMD: terminate it once the report is in (default: let it finish).")
@click.argument("command", nargs=-1, type=click.UNPROCESSED)
@output_options
@_handled
def probe_command(arch_name: str | None, runner: str, jit: str, anchor: str | None,
                  radius: str | None, threads: int, areas: int, seed: int, when: str,
                  object_name: str | None, kill_after: bool, command: tuple[str, ...],
                  fmt: str) -> None:
    """Ask a real kernel which slots of the JIT window are free (MAP_FIXED_NOREPLACE,
    never MAP_FIXED), or replay the allocator with N threads, in the probe's own process.

    Everything the probe maps it unmaps before it reports. Exit 1 when the window has
    no free slot or an allocation failed; 4 when no compiler or qemu is available.

    With ``-- CMD ARGS...`` (a dynamically linked program): CMD runs with a preloaded
    probe that forks at ``--when``; the copy scans around CMD's code and reports, CMD is
    never disturbed. Then CMD runs to completion (its stdin and stderr are layoutkit's;
    its stdout goes to stderr with --format json), or is terminated with --kill-after.
    A static CMD exits 4 (use ``layoutkit verify``, the layout twin).
    """
    from layoutkit import native

    if command:
        if threads or radius or arch_name or runner != "native":
            raise UsageError("with CMD the probe scans natively around CMD's code: "
                             "--arch, --runner, --radius and --threads do not apply")
        _probe_program(command, jit, anchor, when, object_name, kill_after, fmt)
        return

    result = native.run_probe(
        arch_name, runner=runner, mode="replay" if threads else "scan", jit=jit,
        anchor=anchor if anchor in (None, "stack") else parse_address(anchor or ""),
        radius=None if radius is None else parse_size(radius),
        threads=max(threads, 1), areas=areas, seed=seed)
    if fmt == "json":
        click.echo(report.dumps(native.result_json(result)))
    else:
        _emit(native.result_lines(result))
    failed = (result.verdict in ("full", "rlimit_as") if isinstance(result, native.ScanResult)
              else bool(result.failed_allocations) or result.threads_started < result.threads)
    if failed:
        sys.exit(EXIT_FINDINGS)


def _probe_program(command: tuple[str, ...], jit: str, anchor: str | None, when: str,
                   object_name: str | None, kill_after: bool, fmt: str) -> None:
    from layoutkit.native import preload

    run = preload.start_program(command, when=when, jit=jit, anchor=anchor,
                                object_name=object_name,
                                stdout=2 if fmt == "json" else None)
    try:
        result = run.wait_report()
    except LayoutkitError:
        run.finish(kill=True)
        raise
    status = run.finish(kill=kill_after)
    if fmt == "json":
        click.echo(report.dumps(preload.program_json(result, status)))
    else:
        _emit(preload.program_lines(result, status))
    if not result.measured[1] or not result.jit_inside:
        sys.exit(EXIT_FINDINGS)


@cli.command(name="verify", epilog=EXIT_CODES)
@click.argument("binary")
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
@click.option("--jit", "jit", type=click.Choice(sorted(PROFILES)), default=None,
              help="JIT allocator profile (default: detected from the binary).")
@click.option("--states", type=click.IntRange(min=1), default=1, show_default=True,
              help="JIT states that must fit (the capacity verdict).")
@click.option("--mcode", metavar="SIZE", default=None,
              help="Code per JIT state (default: the profile's maxmcode).")
@click.option("--heap", metavar="SIZE", default=None,
              help="brk heap growth reserve of the model (default 64M).")
@output_options
@_handled
def verify_command(binary: str, arch_name: str | None, runner: str, runs: int,
                   advice: str | None, base: str | None, anchor: str | None, jit: str | None,
                   states: int, mcode: str | None, heap: str | None, fmt: str) -> None:
    """Measure BINARY's JIT window without running it: its layout twin (the probe linked
    so that its PT_LOAD segments are the target's) runs on the runner, and each run is
    compared with the accounting of its own /proc/self/maps (slot for slot) and with the
    kernel model's range over ASLR.

    Exit 0 when both hold and the capacity verdict is ok, 1 when not, 4 when the runner
    or the cross compiler is not available (the message says what to install).
    """
    from layoutkit.commands.verify import verification_json, verification_lines, verify

    heap_bytes, mcode_bytes = _sizes(heap, mcode)
    result = verify(binary, arch_name=arch_name, runner=runner, runs=runs, advice=advice,
                    base=None if base is None else parse_address(base), anchor_spec=anchor,
                    jit=jit,
                    heap=heap_bytes, states=states, mcode=mcode_bytes)
    if fmt == "json":
        click.echo(report.dumps(verification_json(result)))
    else:
        _emit(verification_lines(result))
    if result.exit_code:
        sys.exit(result.exit_code)


class _PipeWriter(io.RawIOBase):
    """A file descriptor for output; once its reader has gone (EPIPE, e.g. piped into
    `head`), the rest of the output is dropped, so the command ends quietly with the exit
    code of its work rather than an error of its own."""

    def __init__(self, fd: int) -> None:
        super().__init__()
        self._fd = fd
        self.gone = False

    def writable(self) -> bool:
        return True

    def fileno(self) -> int:
        return self._fd

    def isatty(self) -> bool:
        return os.isatty(self._fd)

    def write(self, data: Any) -> int:
        size = len(memoryview(data).cast("B"))
        if self.gone:
            return size
        try:
            return os.write(self._fd, data)
        except BrokenPipeError:
            self.gone = True
            return size


def _quiet_output(stream: Any) -> Any:
    """``stream`` (stdout) rebuilt over a :class:`_PipeWriter`; undecodable bytes and
    characters the locale cannot encode are written as backslash escapes."""
    try:
        fd = stream.fileno()
    except (AttributeError, OSError, ValueError):
        return stream  # not a real file (a test harness): leave it
    stream.flush()
    return io.TextIOWrapper(io.BufferedWriter(_PipeWriter(fd)), encoding=stream.encoding,
                            errors="backslashreplace", line_buffering=True)


def main(argv: list[str] | None = None) -> None:
    sys.stdout = _quiet_output(sys.stdout)
    if isinstance(sys.stderr, io.TextIOWrapper):
        sys.stderr.reconfigure(errors="backslashreplace")
    cli.main(args=argv, prog_name="layoutkit")
