"""``layoutkit maps``: a JIT window against a live process or a saved maps listing.

Finds the object that holds the anchor (the executable, or a library such as
libluajit-5.1.so.2), its load bias from where its file offsets are mapped, the anchor
in that object's ELF (or ``--anchor``), the JIT code already there (anonymous
executable mappings; adjacent areas merge into one mapping, so bytes count, not
mappings), and accounts for the profile's window with the real occupants.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from layoutkit.core import arches
from layoutkit.core.arches import Arch
from layoutkit.core.model import Perm
from layoutkit.core.spans import Span, normalize
from layoutkit.core.units import parse_address
from layoutkit.elf import ElfReader
from layoutkit.errors import InputError, LayoutkitError, UsageError
from layoutkit.read import stubs
from layoutkit.read.maps import Mapping, MappingKind, ProcessMaps
from layoutkit.window.accounting import STACK_GUARD_GAP, Accounting, Occupant, account
from layoutkit.window.anchor import DEFAULT_ANCHORS, Anchor, luajit_generation
from layoutkit.window.kernel import KernelConfig
from layoutkit.window.layout import DEFAULT_HEAP
from layoutkit.window.profiles import Generation, choose_profile, window_for_span

# qemu-user maps one anonymous r-x page for its signal trampoline (facts.md §7); a real
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
    anchor: Anchor  # run-time addresses
    anchor_object: str | None
    bias: int | None
    generation: Generation | None
    profile: str
    jit_areas: tuple[JitArea, ...]
    ignored: tuple[Mapping, ...]
    accounting: Accounting
    notes: tuple[str, ...]


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


def _bias(reader: ElfReader, mappings: tuple[Mapping, ...]) -> int | None:
    """Load bias: where a PT_LOAD's file offset is mapped, minus its p_vaddr."""
    for mapping in sorted(mappings, key=lambda m: m.offset):
        for seg in reader.image().loads:
            if mapping.offset <= seg.offset < mapping.offset + mapping.size and seg.filesz:
                return mapping.start + (seg.offset - mapping.offset) - seg.vaddr
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


def analyse_maps(
    maps: ProcessMaps,
    *,
    anchor: str | None = None,
    arch_name: str | None = None,
    jit: str | None = None,
    form: str | None = None,
    va_bits: int | None = None,
    mmap_min_addr: int | None = None,
    heap: int = DEFAULT_HEAP,
    states: int = 1,
    mcode: int | None = None,
    path_map: tuple[tuple[str, str], ...] = (),
    jit_code: tuple[tuple[int, bytes], ...] | None = None,
) -> MapsAnalysis:
    """``jit_code`` (address, bytes) is the JIT code already read (the preload probe's
    child copies its own); without it a live process's code is read from /proc/PID/mem."""
    notes: list[str] = []
    found: Anchor | None = None
    holder: str | None = None
    bias: int | None = None
    arch: Arch | None = arches.by_name(arch_name) if arch_name else None
    generation: Generation | None = None
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
            readable.append((path, reader, _bias(reader, objects[path])))
        for path, reader, obj_bias in readable:
            if address is not None or obj_bias is None:
                continue
            for name in names:
                symbol = reader.symbol(name)
                if symbol is not None:
                    runtime = symbol.value + obj_bias
                    found = Anchor(name, Span(runtime, runtime + 1), "symbol",
                                   f"{symbol.binding} {symbol.visibility} {symbol.type} in "
                                   f"{symbol.table} of {path}, bias {obj_bias:#x}")
                    holder, bias = path, obj_bias
                    break
            if found:
                break
        if found is None and address is not None:
            found = Anchor(f"{address:#x}", Span(address, address + 1), "address",
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
                found = Anchor("executable segment", span, "executable-segment",
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
        if jit is None and holder_reader is not None:
            generation = luajit_generation(holder_reader.image(), found)
    finally:
        for _, reader, _ in readable:
            reader.close()
    profile, note = choose_profile(arch, jit, generation)
    if note:
        notes.append(note)
    host = os.uname().machine
    if mmap_min_addr is None and maps.source.startswith("pid ") and \
            arches.by_name({"x86_64": "x86_64", "aarch64": "aarch64"}.get(host, host)) is arch:
        with open("/proc/sys/vm/mmap_min_addr") as f:
            mmap_min_addr = int(f.read())
    kernel = KernelConfig.for_arch(arch, va_bits=va_bits, mmap_min_addr=mmap_min_addr)
    window = window_for_span(profile, arch, found.span, kernel.user_space, form_name=form)
    spans, ignored = _jit_areas(maps)
    if ignored:
        notes.append(f"ignored {len(ignored)} one-page anonymous r-x mapping(s): qemu-user's "
                     "signal trampoline, not JIT code")
    areas = tuple(JitArea(s, (s.end - 1 - found.span.start) if s.start >= found.span.start
                          else (s.start - found.span.start)) for s in spans)
    occupants = _occupants(maps, spans, ignored, heap)
    acc = account(window, occupants, states=states, mcode=mcode)
    return MapsAnalysis(maps, arch, kernel, found, holder, bias, generation, profile, areas,
                        tuple(ignored), acc, tuple(notes))


def _from_jit_code(maps: ProcessMaps, code: Span, readable: list[tuple[str, ElfReader,
                   int | None]], holder: str | None, notes: list[str],
                   jit_code: tuple[tuple[int, bytes], ...] | None = None) -> Anchor | None:
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
    return Anchor("lj_vm_exit_handler", Span(found.address, found.address + 1), "jit-code",
                  f"recovered from {found.votes} of {found.candidates} exit stubs in the JIT "
                  f"code ({found.pattern}); the binary is stripped")


def _occupants(maps: ProcessMaps, jit: list[Span], ignored: list[Mapping],
               heap: int) -> list[Occupant]:
    """Every mapping as an occupant, JIT code as the merged ``jit`` spans (sorted and
    disjoint, from :func:`_jit_areas`): one pass over the mappings, which come sorted
    too, with a cursor into ``jit``, so time is linear in the listing."""
    occupants = [Occupant("jit", s) for s in jit]
    ignored_ids = {id(m) for m in ignored}
    cursor = 0
    for m in maps.mappings:
        if m.kind is MappingKind.ANONYMOUS and Perm.X in m.perms:
            if id(m) in ignored_ids:
                occupants.append(Occupant("anonymous", m.span, m.path))
                continue
            while cursor < len(jit) and jit[cursor].end <= m.start:
                cursor += 1
            if cursor < len(jit) and jit[cursor].contains(m.span):
                continue
        kind = "image" if m.kind is MappingKind.EXECUTABLE else m.kind.value
        occupants.append(Occupant(kind, m.span, m.path))
        if m.kind is MappingKind.STACK and m.start >= STACK_GUARD_GAP:
            occupants.append(Occupant("stack-guard", Span(m.start - STACK_GUARD_GAP, m.start)))
        if m.kind is MappingKind.HEAP:
            occupants.append(Occupant("heap-reserve", Span(m.end, m.end + heap), "[heap]"))
    return occupants
