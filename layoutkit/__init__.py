"""layoutkit: address-space layout analysis for programs that generate code at run time.

The public API, re-exported lazily (PEP 562 module ``__getattr__``): ``import layoutkit``
and ``import layoutkit.cli`` load none of pyelftools, capstone, numpy or networkx until a
name that needs them is used.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from layoutkit.commands.inspect import Inspection, inspect_binary
    from layoutkit.core.arches import ARCHES, Arch
    from layoutkit.core.model import ElfImage, LoadKind, Perm, Section, Segment, Symbol
    from layoutkit.core.scenario import Demand, KernelOverrides, Scenario
    from layoutkit.core.spans import Span
    from layoutkit.elf import ElfReader, read_elf
    from layoutkit.errors import (
        ElfError,
        InputError,
        LayoutkitError,
        MapsError,
        NoFitError,
        ProbeError,
        UnsupportedArchError,
        UsageError,
    )
    from layoutkit.ranges import REACH, BranchForm, FormKind
    from layoutkit.read.maps import (
        Mapping,
        MappingKind,
        ProcessMaps,
        parse_maps,
        read_maps_file,
        read_process_maps,
    )
    from layoutkit.window.anchor import Anchor, find_anchor
    from layoutkit.window.kernel import KernelConfig

_EXPORTS = {
    "layoutkit.commands.inspect": ("Inspection", "inspect_binary"),
    "layoutkit.core.arches": ("ARCHES", "Arch"),
    "layoutkit.core.model": ("ElfImage", "LoadKind", "Perm", "Section", "Segment", "Symbol"),
    "layoutkit.core.scenario": ("Demand", "KernelOverrides", "Scenario"),
    "layoutkit.core.spans": ("Span",),
    "layoutkit.elf": ("ElfReader", "read_elf"),
    "layoutkit.errors": ("ElfError", "InputError", "LayoutkitError", "MapsError", "NoFitError",
                         "ProbeError", "UnsupportedArchError", "UsageError"),
    "layoutkit.ranges": ("REACH", "BranchForm", "FormKind"),
    "layoutkit.read.maps": ("Mapping", "MappingKind", "ProcessMaps", "parse_maps",
                            "read_maps_file", "read_process_maps"),
    "layoutkit.window.anchor": ("Anchor", "find_anchor"),
    "layoutkit.window.kernel": ("KernelConfig",),
}
_WHERE = {name: module for module, names in _EXPORTS.items() for name in names}

__all__ = [
    "ARCHES",
    "REACH",
    "Anchor",
    "Arch",
    "BranchForm",
    "Demand",
    "ElfError",
    "ElfImage",
    "ElfReader",
    "FormKind",
    "InputError",
    "Inspection",
    "KernelConfig",
    "KernelOverrides",
    "LayoutkitError",
    "LoadKind",
    "Mapping",
    "MappingKind",
    "MapsError",
    "NoFitError",
    "Perm",
    "ProbeError",
    "ProcessMaps",
    "Scenario",
    "Section",
    "Segment",
    "Span",
    "Symbol",
    "UnsupportedArchError",
    "UsageError",
    "find_anchor",
    "inspect_binary",
    "parse_maps",
    "read_elf",
    "read_maps_file",
    "read_process_maps",
]


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'layoutkit' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
