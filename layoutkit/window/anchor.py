"""The anchor: the address in static code that a JIT's generated code must reach.

LuaJIT aims its code areas at ``lj_vm_exit_handler`` (src/lj_mcode.c, mcode_alloc:
``uintptr_t target = (uintptr_t)(void *)lj_vm_exit_handler``); the symbol is emitted
``.globl`` + ``.hidden``, so in a linked binary it is only in ``.symtab`` and gone after
``strip``. The fallbacks are ``lj_vm_asm_begin`` (start of the VM's code), then the
whole executable segment: a conservative anchor, since the window must then reach
every byte of it.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from layoutkit.core.arches import Isa
from layoutkit.core.model import ElfImage, Perm, Symbol
from layoutkit.core.spans import Span
from layoutkit.core.units import parse_address
from layoutkit.elf import ElfReader
from layoutkit.errors import InputError, UsageError
from layoutkit.window.profiles import Generation, detect_generation

DEFAULT_ANCHORS = ("lj_vm_exit_handler", "lj_vm_asm_begin")


class HowFound(enum.Enum):
    """How an anchor was found."""

    SYMBOL = "symbol"  # a symbol of the ELF (lj_vm_exit_handler, lj_vm_asm_begin, --anchor)
    ADDRESS = "address"  # given with --anchor ADDR
    EXECUTABLE_SEGMENT = "executable-segment"  # no symbol: the whole code must be reached
    JIT_CODE = "jit-code"  # recovered from the exit stubs of live JIT code (stripped)

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True)
class Anchor:
    """Where the JIT must reach, at link-time addresses, as the holder's ELF states them.

    :class:`PlacedAnchor` adds a load bias; nothing else turns one into the other."""

    name: str
    span: Span  # one byte for a symbol or an address; the whole segment for the fallback
    how_found: HowFound
    detail: str

    @property
    def address(self) -> int:
        return self.span.start


@dataclass(frozen=True)
class PlacedAnchor:
    """An anchor at run time: its link-time :class:`Anchor` plus the load bias of the
    object that holds it (0 for a non-PIE image, or for an anchor known only at run time:
    an address given for a process whose files cannot be read)."""

    anchor: Anchor  # link-time
    bias: int

    @classmethod
    def at_runtime(cls, name: str, span: Span, how: HowFound, detail: str,
                   bias: int | None) -> PlacedAnchor:
        """An anchor found at run-time address ``span`` in an object loaded at ``bias``."""
        shift = bias or 0
        return cls(Anchor(name, span.shifted(-shift), how, detail), shift)

    @property
    def span(self) -> Span:
        """The run-time span."""
        return self.anchor.span.shifted(self.bias)

    @property
    def name(self) -> str:
        return self.anchor.name

    @property
    def how_found(self) -> HowFound:
        return self.anchor.how_found

    @property
    def detail(self) -> str:
        return self.anchor.detail


def _address_or_none(text: str) -> int | None:
    """``0x...`` (or decimal) as an int, None when ``text`` is a symbol name."""
    return parse_address(text) if text[:1].isdigit() or text[:1] == "-" else None


def _symbol_address(reader: ElfReader, symbol: Symbol) -> int:
    image = reader.image()
    address = symbol.value
    if image.arch.isa is Isa.ARM and symbol.type == "FUNC":
        address &= ~1  # Thumb functions have bit 0 set (ELF for the Arm Architecture §5.5.3)
    opd = image.section(".opd")
    if opd is not None and symbol.type == "FUNC" and address in opd.span:
        # ppc64 ELFv1: a function symbol names its descriptor; the entry is its first word
        # (64-bit PowerPC ELF ABI v1.9 §3.2.5).
        word = reader.read_vaddr(address, 8)
        address = int.from_bytes(word, "little" if image.little_endian else "big")
    return address


def _code_span(image: ElfImage) -> Span | None:
    code = image.code_segments
    if not code:
        return None
    return Span(min(seg.vaddr for seg in code), max(seg.vaddr + seg.memsz for seg in code))


def find_anchor(reader: ElfReader, spec: str | None = None) -> Anchor:
    """Resolve ``spec`` (a symbol name or an address), or the default chain."""
    image = reader.image()
    if spec is not None:
        address = _address_or_none(spec)
        if address is not None:
            if not any(address in seg.span for seg in image.loads):
                raise UsageError(f"--anchor {spec}: not inside any PT_LOAD of {image.path}")
            return Anchor(f"{address:#x}", Span(address, address + 1), HowFound.ADDRESS,
                          "given with --anchor")
        symbol = reader.symbol(spec)
        if symbol is None:
            raise InputError(f"no symbol {spec!r} in .symtab or .dynsym", path=image.path)
        return _from_symbol(reader, symbol)
    for name in DEFAULT_ANCHORS:
        symbol = reader.symbol(name)
        if symbol is not None:
            return _from_symbol(reader, symbol)
    span = _code_span(image)
    if span is None:
        raise InputError("no executable segment to anchor on", path=image.path)
    why = "stripped: no .symtab" if not image.has_symtab else "no LuaJIT VM symbols"
    return Anchor("executable segment", span, HowFound.EXECUTABLE_SEGMENT,
                  f"{why}; the window must reach the whole code span")


def luajit_generation(reader: ElfReader, anchor: Anchor) -> Generation | None:
    """The LuaJIT allocator generation of the binary behind ``reader``: OpenResty's fork by
    its exports (:mod:`layoutkit.window.openresty`), PHP by execute_ex
    (:mod:`layoutkit.window.opcache`), else its version string
    (streamed from the open file), else the evidence of its VM symbols or of DT_NEEDED on
    libluajit; None for no LuaJIT."""
    # Imported here: both import profiles.py, which registers V8 (v8.py imports this
    # module), so a top-level import makes `import layoutkit.window.openresty` circular.
    from layoutkit.window.opcache import php_generation
    from layoutkit.window.openresty import openresty_generation

    image = reader.image()
    fork = openresty_generation(reader) or php_generation(reader)
    if fork is not None:
        return fork
    return detect_generation(
        reader.raw_stream(), image.file_size,
        luajit_symbols=anchor.how_found in (HowFound.SYMBOL, HowFound.JIT_CODE)
        and anchor.name.startswith("lj_"),
        needs_libluajit=any("luajit" in name for name in image.needed))


def _from_symbol(reader: ElfReader, symbol: Symbol) -> Anchor:
    address = _symbol_address(reader, symbol)
    detail = f"{symbol.binding} {symbol.visibility} {symbol.type} in {symbol.table}"
    if not any(address in seg.span and Perm.X in seg.flags for seg in reader.image().loads):
        detail += " (not in an executable segment)"
    return Anchor(symbol.name, Span(address, address + 1), HowFound.SYMBOL, detail)
