"""How far a group of sections can move against the rest: difference constraints.

Every pair of sections with PC-relative references between them bounds the difference
of their moves (:mod:`layoutkit.read.refs`). With the sections split into groups that move
as one (the rest fixed at 0), the constraints form a graph: an edge ``a -> b`` of
weight ``w`` means ``x_b <= x_a + w``. The system is feasible iff the graph has no
negative cycle; then the shortest path from the fixed group to a moved one is the
largest move allowed, and minus the shortest path back the smallest (networkx
Bellman-Ford).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import networkx as nx

from layoutkit.read.refs import Bound, PairRefs

FIXED = "(fixed)"


@dataclass(frozen=True)
class MoveRange:
    """Feasible offsets ``[lo, hi]`` (inclusive) for moving ``group`` as one."""

    group: tuple[str, ...]
    lo: int
    hi: int
    limit_lo: Bound | None  # the reference that sets lo
    limit_hi: Bound | None  # the reference that sets hi

    def allows(self, offset: int) -> bool:
        return self.lo <= offset <= self.hi


class Infeasible(Exception):  # noqa: N818 (a result, not a failure of layoutkit)
    """The references cannot all hold at once."""


def move_range(pairs: Iterable[PairRefs], moved: Iterable[str]) -> MoveRange:
    """Feasible offsets for moving the sections in ``moved`` together, the rest fixed."""
    group = tuple(sorted(set(moved)))
    node = {name: "moved" for name in group}
    graph: nx.DiGraph = nx.DiGraph()
    graph.add_nodes_from([FIXED, "moved"])
    bounds: dict[tuple[str, str], Bound] = {}

    def edge(a: str, b: str, bound: Bound) -> None:
        # x_b <= x_a + slack; keep the tightest per edge.
        if graph.has_edge(a, b) and graph[a][b]["weight"] <= bound.slack:
            return
        graph.add_edge(a, b, weight=bound.slack)
        bounds[(a, b)] = bound

    for pair in pairs:
        src, dst = node.get(pair.src, FIXED), node.get(pair.dst, FIXED)
        if src == dst:
            continue  # moved together: the displacement does not change
        edge(src, dst, pair.up)  # x_dst - x_src <= up
        edge(dst, src, pair.down)  # x_src - x_dst <= down
    if nx.negative_edge_cycle(graph, weight="weight"):
        raise Infeasible(f"references between {', '.join(group)} and the rest conflict")
    big = 1 << 62
    hi = big
    lo = -big
    if graph.has_edge(FIXED, "moved") or nx.has_path(graph, FIXED, "moved"):
        hi = int(nx.bellman_ford_path_length(graph, FIXED, "moved", weight="weight"))
    if nx.has_path(graph, "moved", FIXED):
        lo = -int(nx.bellman_ford_path_length(graph, "moved", FIXED, weight="weight"))
    return MoveRange(group, lo, hi, bounds.get(("moved", FIXED)), bounds.get((FIXED, "moved")))
