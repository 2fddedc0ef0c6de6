"""layoutkit: address-space layout analysis for programs that generate code at run time."""

from .anchor import Anchor, find_anchor
from .arches import ARCHES, Arch
from .elf import ElfReader, read_elf
from .errors import (
    ElfError,
    InputError,
    LayoutkitError,
    MapsError,
    NoFitError,
    ProbeError,
    UnsupportedArchError,
    UsageError,
)
from .inspection import Inspection, inspect_binary
from .kernel import KernelConfig
from .maps import Mapping, MappingKind, ProcessMaps, parse_maps, read_maps_file, read_process_maps
from .model import ElfImage, LoadKind, Perm, Section, Segment, Symbol
from .ranges import REACH, BranchForm, FormKind
from .spans import Span

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
