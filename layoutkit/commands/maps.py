"""``layoutkit maps``: a JIT window against a live process or a saved maps listing.

Finds the object that holds the anchor (the executable, or a library such as
libluajit-5.1.so.2), its load bias from where its file offsets are mapped, the anchor
in that object's ELF (or ``--anchor``), the JIT code already there (anonymous
executable mappings; adjacent areas merge into one mapping, so bytes count, not
mappings), and accounts for the profile's window with the real occupants.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass, replace

from layoutkit.core import arches
from layoutkit.core.arches import Arch
from layoutkit.core.kinds import CodeRangeVerdict, OccupantKind, ReplayVerdict, Verdict
from layoutkit.core.model import Perm
from layoutkit.core.scenario import DEFAULT_SCENARIO, Scenario
from layoutkit.core.spans import Span, normalize
from layoutkit.core.text import shown
from layoutkit.core.units import parse_address
from layoutkit.elf import ElfReader
from layoutkit.errors import (
    EXIT_FINDINGS,
    EXIT_OK,
    InputError,
    LayoutkitError,
    MapsError,
    UsageError,
)
from layoutkit.read import stubs
from layoutkit.read.host import host
from layoutkit.read.maps import (
    Mapping,
    MappingKind,
    ProcessMaps,
    read_maps_file,
    read_process_maps,
)
from layoutkit.window.accounting import (
    STACK_GUARD_GAP,
    Accounting,
    Occupant,
    account,
    occupant_kind,
)
from layoutkit.window.anchor import (
    DEFAULT_ANCHORS,
    HowFound,
    PlacedAnchor,
    luajit_generation,
)
from layoutkit.window.forecast import Forecast, forecast_fixed
from layoutkit.window.kernel import KernelConfig
from layoutkit.window.opcache import PROFILE as OPCACHE
from layoutkit.window.opcache import Placement
from layoutkit.window.opcache import check_fits as check_opcache_fits
from layoutkit.window.opcache import in_process as opcache_in_process
from layoutkit.window.opcache import with_demand as opcache_demand
from layoutkit.window.profiles import (
    Generation,
    Profile,
    choose_profile,
    wants_generation,
    window_for_span,
)
from layoutkit.window.v8 import BLOB_SYMBOL, V8, V8Build, detect_v8
from layoutkit.window.v8_maps import V8Regions, blob_file_offset, find_v8_regions

# qemu-user maps one anonymous r-x page for its signal trampoline (qemu linux-user/
# signal.c setup_sigtramp, seen in fixtures/maps/x86_64-host-view-of-qemu-*.maps); a real
# JIT area is at least LuaJIT's sizemcode (32 KiB), so one page is not counted as JIT.
_TRAMPOLINE = 4096


@dataclass(frozen=True)
class JitArea:
    span: Span
    distance: int  # signed: from the anchor's first byte to the area's farthest byte


@dataclass(frozen=True)
class MapsAnalysis:
    maps: ProcessMaps
    arch: Arch
    kernel: KernelConfig
    anchor: PlacedAnchor
    anchor_object: str | None
    bias: int | None  # the load bias of anchor_object, when its ELF could be read
    generation: Generation | None
    profile: str
    jit_areas: tuple[JitArea, ...]
    ignored: tuple[Mapping, ...]
    accounting: Accounting
    forecast: Forecast  # the replay of the requested new states on this layout
    notes: tuple[str, ...]
    opcache: Placement | None = None  # php-opcache: the opcache segment as mapped
    v8: V8Regions | None = None  # V8's builtins, their remapped copy and the code range

    @property
    def exit_code(self) -> int:
        """1 when V8's code range lies out of reach (its builtins remapped, or called
        through a register); else when
        the requested new JIT states abort traces in 1% of the replay's runs or more on the
        layout as mapped (without a replay: when they do not fit the window as mapped)."""
        if self.v8 is not None and self.v8.verdict is CodeRangeVerdict.FAR:
            return EXIT_FINDINGS
        verdict = self.forecast.verdict()
        if verdict is not None:
            return EXIT_OK if verdict is ReplayVerdict.OK else EXIT_FINDINGS
        return EXIT_OK if self.accounting.capacity.verdict is Verdict.OK else EXIT_FINDINGS


@dataclass(frozen=True)
class _Found:
    """An anchor as found in a process: at run-time addresses, before it is placed."""

    name: str
    span: Span  # run-time
    how: HowFound
    detail: str


def parse_path_map(items: Iterable[str]) -> tuple[tuple[str, str], ...]:
    """``--path-map OLD=NEW`` values as (old, new) pairs."""
    pairs = []
    for item in items:
        old, sep, new = item.partition("=")
        if not sep or not old or not new:
            raise UsageError(f"--path-map {item!r}: write OLD=NEW")
        pairs.append((old, new))
    return tuple(pairs)


def analyse_target(target: str, scenario: Scenario = DEFAULT_SCENARIO, *,
                   anchor: str | None = None, arch_name: str | None = None,
                   path_map: Iterable[str] = ()) -> MapsAnalysis:
    """``maps PID|FILE``: read the live process (all digits) or the saved listing."""
    pairs = parse_path_map(path_map)
    maps = read_process_maps(int(target)) if target.isdigit() else read_maps_file(target)
    return analyse_maps(maps, scenario, anchor=anchor, arch_name=arch_name, path_map=pairs)


def _host_arch() -> Arch | None:
    machine = os.uname().machine
    try:
        return arches.by_name({"i686": "i386", "armv7l": "arm", "armv8l": "arm"}.get(
            machine, machine))
    except UsageError:
        return None


def _local_path(maps: ProcessMaps, path: str, path_map: tuple[tuple[str, str], ...]) -> str:
    """Where to read a mapped file: through /proc/PID/root for a live process, or where
    ``--path-map OLD=NEW`` says (a listing saved on another machine)."""
    for old, new in path_map:
        if path == old or path.startswith(old.rstrip("/") + "/"):
            return new.rstrip("/") + path[len(old.rstrip("/")):]
    if maps.source.startswith("pid "):
        via_root = f"/proc/{maps.source.split()[1]}/root{path}"
        if os.path.exists(via_root):
            return via_root
    return path


def _bias(reader: ElfReader, mappings: tuple[Mapping, ...], source: str) -> int | None:
    """Load bias: where a PT_LOAD's file offset is mapped, minus its p_vaddr.

    Every mapping of the object lies at or above it (an image is mapped at bias + p_vaddr,
    p_vaddr >= 0); a listing where one does not is inconsistent, and is refused."""
    for mapping in sorted(mappings, key=lambda m: m.offset):
        for seg in reader.image().loads:
            if mapping.offset <= seg.offset < mapping.offset + mapping.size and seg.filesz:
                bias = mapping.start + (seg.offset - mapping.offset) - seg.vaddr
                low = min(mappings, key=lambda m: m.start)
                if low.start < bias:
                    raise MapsError(
                        f"{shown(low.path)} is mapped at {low.start:#x}, below the load "
                        f"bias {bias:#x} that its mapping at {mapping.start:#x} (file "
                        f"offset {mapping.offset:#x}) gives: the listing is inconsistent",
                        path=source)
                return bias
    return None


def _candidates(maps: ProcessMaps) -> list[str]:
    objects = maps.objects()
    order = []
    if maps.executable in objects:
        order.append(maps.executable)
    order += sorted(p for p in objects if "luajit" in os.path.basename(p).lower()
                     and p not in order)
    order += [p for p, ms in objects.items()
              if p not in order and any(m.executable for m in ms)]
    return order


def _jit_areas(maps: ProcessMaps) -> tuple[list[Span], list[Mapping]]:
    spans, ignored = [], []
    for m in maps.mappings:
        if m.kind is MappingKind.ANONYMOUS and Perm.X in m.perms and not m.path.startswith("[v"):
            if m.size <= _TRAMPOLINE:
                ignored.append(m)
            else:
                spans.append(m.span)
    return normalize(spans), ignored


def _per_state(acc: Accounting) -> int:
    """Areas one state wants (its mcode over the area size, at least one)."""
    cap = acc.capacity
    return max(1, -(-cap.mcode_per_state // cap.area_size))


def analyse_maps(
    maps: ProcessMaps,
    scenario: Scenario = DEFAULT_SCENARIO,
    *,
    anchor: str | None = None,
    arch_name: str | None = None,
    path_map: tuple[tuple[str, str], ...] = (),
    jit_code: tuple[tuple[int, bytes], ...] | None = None,
) -> MapsAnalysis:
    """``jit_code`` (address, bytes) is the JIT code already read (the preload probe's
    child copies its own); without it a live process's code is read from /proc/PID/mem."""
    jit = scenario.jit
    overrides = scenario.kernel
    notes: list[str] = []
    found: _Found | None = None
    holder: str | None = None
    bias: int | None = None
    arch: Arch | None = arches.by_name(arch_name) if arch_name else None
    generation: Generation | None = None
    v8_build: tuple[V8Build, int] | None = None
    address = parse_address(anchor) if anchor and anchor[:1].isdigit() else None
    names = (anchor,) if anchor and address is None else DEFAULT_ANCHORS
    objects = maps.objects()
    readable: list[tuple[str, ElfReader, int | None]] = []
    try:
        for path in _candidates(maps):
            try:
                reader = ElfReader(_local_path(maps, path, path_map))
            except LayoutkitError:
                continue
            readable.append((path, reader, None))
            readable[-1] = (path, reader, _bias(reader, objects[path], maps.source))
        for path, reader, obj_bias in readable:
            if address is not None or obj_bias is None:
                continue
            for name in names:
                symbol = reader.symbol(name)
                if symbol is not None:
                    runtime = symbol.value + obj_bias
                    found = _Found(name, Span(runtime, runtime + 1), HowFound.SYMBOL,
                                   f"{symbol.binding} {symbol.visibility} {symbol.type} in "
                                   f"{symbol.table} of {path}, bias {obj_bias:#x}")
                    holder, bias = path, obj_bias
                    break
            if found:
                break
        if found is None and address is None and anchor is None and jit in (None, V8.name):
            v8 = _find_v8(readable)
            if v8 is not None:
                found, holder, bias, v8_build = v8
        if found is None and address is not None:
            found = _Found(f"{address:#x}", Span(address, address + 1), HowFound.ADDRESS,
                           "given with --anchor")
            holder = next((p for p, ms in objects.items()
                           if any(address in m.span for m in ms)), None)
        if found is None and anchor is not None:
            raise InputError(f"no mapped object defines {anchor!r}", path=maps.source)
        if found is None:
            # Stripped: the executable mappings of the likeliest JIT holder.
            holder = next((p for p in _candidates(maps) if "luajit" in p.lower()),
                          maps.executable)
            code = [m.span for m in objects.get(holder or "", ()) if m.executable]
            if not code:
                raise InputError("no anchor: no LuaJIT symbols and no executable mapping of "
                                 "the program; give --anchor", path=maps.source)
            span = Span(min(s.start for s in code), max(s.end for s in code))
            found = _from_jit_code(maps, span, readable, holder, notes, jit_code)
            if found is None:
                found = _Found("executable segment", span, HowFound.EXECUTABLE_SEGMENT,
                               f"no LuaJIT VM symbol in the mapped objects; the window "
                               f"must reach all of {holder}'s code")
        holder_reader = next((r for p, r, _ in readable if p == holder), None)
        if bias is None:
            bias = next((b for p, _, b in readable if p == holder), None)
        if arch is None and holder_reader is not None:
            arch = holder_reader.image().arch
        if arch is None and readable:
            arch = readable[0][1].image().arch
        if arch is None and maps.source.startswith("pid "):
            arch = _host_arch()  # a live process here runs on this machine's arch
        if arch is None:
            raise UsageError(f"{maps.source}: the mapped files are not readable here; "
                             "give --arch")
        # ``found`` was located at run-time addresses; place it once, as link-time + bias.
        placed = PlacedAnchor.at_runtime(found.name, found.span, found.how, found.detail,
                                         bias)
        if wants_generation(jit) and holder_reader is not None:
            generation = luajit_generation(holder_reader, placed.anchor)
    finally:
        for _, reader, _ in readable:
            reader.close()
    profile, note = choose_profile(arch, jit, generation)
    chosen: str | Profile = profile
    if v8_build is not None:
        v8_profile = V8.for_version(v8_build[0].rule)
        if scenario.code_range is not None:
            v8_profile = v8_profile.with_code_range(scenario.code_range)
        chosen, profile, note = v8_profile, v8_profile.name, None
    elif scenario.code_range is not None:
        raise UsageError(f"--code-range applies to --jit v8, not {profile}")
    if note:
        notes.append(note)
    # A live process runs on this machine's kernel; a saved listing's kernel is unknown
    # here (--kernel or --kernel-file names it).
    kernel = KernelConfig.resolve(arch, overrides,
                                  host=host() if maps.source.startswith("pid ") else None)
    window = window_for_span(chosen, arch, found.span, kernel.user_space,
                             form_name=scenario.form)
    spans, ignored = _jit_areas(maps)
    if ignored:
        notes.append(f"ignored {len(ignored)} one-page anonymous r-x mapping(s): qemu-user's "
                     "signal trampoline, not JIT code")
    occupants = _occupants(maps, spans, ignored, scenario.heap)
    opcache = None
    if profile == OPCACHE and holder is not None:
        image_start = min(m.start for m in objects.get(holder, ()) or maps.mappings)
        opcache = opcache_in_process(arch, maps.mappings, found.span, image_start)
        if opcache is not None and opcache.jit_buffer is not None:
            spans = sorted([*spans, opcache.jit_buffer])  # the r-xs half is its JIT code
    areas = tuple(JitArea(s, (s.end - 1 - found.span.start) if s.start >= found.span.start
                          else (s.start - found.span.start)) for s in spans)
    # php-opcache: the JIT buffer as mapped (else --opcache-size) must lie in reach
    if opcache is None:
        check_opcache_fits(profile, scenario.opcache, kernel.user_space)
    mapped = replace(scenario, opcache=opcache.size) if opcache is not None else scenario
    demand = opcache_demand(profile, mapped).demand
    acc = account(window, occupants, states=demand.states, mcode=demand.mcode)
    replayed = forecast_fixed(maps.source, kernel, window, [o.span for o in acc.occupants],
                              scenario, hint=acc.capacity.areas_free // _per_state(acc))
    regions = None
    if v8_build is not None and holder is not None and bias is not None:
        regions = find_v8_regions(maps, arch, holder, bias, v8_build[0], v8_build[1],
                                  window.profile.sizemcode)
        notes.extend(regions.notes() if regions is not None else ())
    return MapsAnalysis(maps, arch, kernel, placed, holder, bias, generation, profile, areas,
                        tuple(ignored), acc, replayed, tuple(notes), opcache, regions)


def _find_v8(readable: list[tuple[str, ElfReader, int | None]]
             ) -> tuple[_Found, str, int, tuple[V8Build, int]] | None:
    """The mapped object holding V8's embedded builtins (the blob symbols)."""
    for path, reader, obj_bias in readable:
        if obj_bias is None:
            continue
        build = detect_v8(reader)
        if build is None or build.blob is None:
            continue
        loads = tuple((seg.vaddr, seg.offset, seg.filesz) for seg in reader.image().loads)
        offset = blob_file_offset(loads, build.blob)
        if offset is None:
            continue
        span = build.blob.shifted(obj_bias)
        return (_Found(BLOB_SYMBOL, span, HowFound.SYMBOL,
                       f"{build.evidence} of {path}, bias {obj_bias:#x}"),
                path, obj_bias, (build, offset))
    return None


def _from_jit_code(maps: ProcessMaps, code: Span, readable: list[tuple[str, ElfReader,
                   int | None]], holder: str | None, notes: list[str],
                   jit_code: tuple[tuple[int, bytes], ...] | None = None) -> _Found | None:
    """``lj_vm_exit_handler`` recovered from the exit stubs in a live process's JIT code."""
    if jit_code is None and not maps.source.startswith("pid "):
        return None
    reader = next((r for p, r, _ in readable if p == holder), None)
    if reader is None or not stubs.supported(reader.image().arch):
        return None
    spans, _ = _jit_areas(maps)
    if not spans:
        return None
    if jit_code is not None:
        data, why = list(jit_code), None
    else:
        data, why = stubs.read_memory(int(maps.source.split()[1]), spans)
    if why:
        notes.append(f"exit handler not recovered from JIT code: {why}")
    found = stubs.recover(reader.image().arch, data, code)
    if found is None:
        return None
    return _Found("lj_vm_exit_handler", Span(found.address, found.address + 1), HowFound.JIT_CODE,
                  f"recovered from {found.votes} of {found.candidates} exit stubs in the JIT "
                  f"code ({found.pattern}); the binary is stripped")


def _occupants(maps: ProcessMaps, jit: list[Span], ignored: list[Mapping],
               heap: int) -> list[Occupant]:
    """Every mapping as an occupant, JIT code as the merged ``jit`` spans (sorted and
    disjoint, from :func:`_jit_areas`): one pass over the mappings, which come sorted
    too, with a cursor into ``jit``, so time is linear in the listing."""
    occupants = [Occupant(OccupantKind.JIT, s) for s in jit]
    ignored_ids = {id(m) for m in ignored}
    cursor = 0
    for m in maps.mappings:
        if m.kind is MappingKind.ANONYMOUS and Perm.X in m.perms:
            if id(m) in ignored_ids:
                occupants.append(Occupant(OccupantKind.ANONYMOUS, m.span, m.path))
                continue
            while cursor < len(jit) and jit[cursor].end <= m.start:
                cursor += 1
            if cursor < len(jit) and jit[cursor].contains(m.span):
                continue
        occupants.append(Occupant(occupant_kind(m.kind), m.span, m.path))
        if m.kind is MappingKind.STACK and m.start >= STACK_GUARD_GAP:
            occupants.append(Occupant(OccupantKind.STACK_GUARD,
                                      Span(m.start - STACK_GUARD_GAP, m.start)))
        if m.kind is MappingKind.HEAP:
            occupants.append(Occupant(OccupantKind.HEAP_RESERVE, Span(m.end, m.end + heap),
                                      "[heap]"))
    return occupants
