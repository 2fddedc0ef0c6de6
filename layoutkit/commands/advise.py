"""``layoutkit advise``: open the binary once and rank the changes that widen its JIT
window (advice/candidates.py), or bound a move of some sections (advice/move.py)."""

from __future__ import annotations

from layoutkit.advice.candidates import Advice, candidates
from layoutkit.advice.move import RelocationCheck, check_move, parse_move
from layoutkit.core.scenario import DEFAULT_SCENARIO, Scenario
from layoutkit.elf import ElfReader


def advise(
    binary: str | None,
    scenario: Scenario = DEFAULT_SCENARIO,
    *,
    arch_name: str | None = None,
    linker: str | None = None,
    anchor: str | None = None,
    allow_weaker: bool = False,
    prove: bool = False,
) -> Advice:
    """Ranked recommendations for ``binary`` (None: the default link of ``arch_name``),
    each predicted under ``scenario``. The binary is opened once, for the whole advice.
    ``prove``: each recommendation's safety measured on a relink (native/relink.py)."""
    if binary is None:
        result = candidates(None, scenario, arch_name=arch_name, linker=linker,
                            anchor=anchor, allow_weaker=allow_weaker)
    else:
        with ElfReader(binary) as reader:
            result = candidates(reader, scenario, arch_name=arch_name, linker=linker,
                                anchor=anchor, allow_weaker=allow_weaker)
    if prove:
        from layoutkit.native.relink import prove as relink
        result = relink(result, allow_weaker)
    return result


def move(binary: str, spec: str) -> RelocationCheck:
    """``--move SECTION[,SECTION...][=ADDR]`` on ``binary``."""
    sections, where = parse_move(spec)
    return check_move(binary, sections, where)
