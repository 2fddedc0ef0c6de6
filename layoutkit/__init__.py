"""layoutkit: address-space layout analysis for programs that generate code at run time."""

from layoutkit.commands.inspect import Inspection, inspect_binary
from layoutkit.core.arches import ARCHES, Arch
from layoutkit.core.model import ElfImage, LoadKind, Perm, Section, Segment, Symbol
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

__all__ = [
    "ARCHES",
    "REACH",
    "Anchor",
    "Arch",
    "BranchForm",
    "ElfError",
    "ElfImage",
    "ElfReader",
    "FormKind",
    "InputError",
    "Inspection",
    "KernelConfig",
    "LayoutkitError",
    "LoadKind",
    "Mapping",
    "MappingKind",
    "MapsError",
    "NoFitError",
    "Perm",
    "ProbeError",
    "ProcessMaps",
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
