"""Driver of test_replay_sanitized.py: the compiled replay engine at its parameter edges.

Run as ``python replay_extremes.py MODULE.so``: loads that build of ``_replay.c`` (under
AddressSanitizer and UBSan, preloaded by the test) and replays a grid of extreme
parameters: one state, windows of 1 to 65 columns, areas wider than the window, retries
0, far-range columns, fallback tops beyond the window, heap bounds far outside it. Each
case also checks what the rules give without any engine: with the classic allocator an
area wider than the window is never placed, and every state then aborts retries + 1
times (the 2025 allocator places it in a far range instead); no run holds more areas
than it placed or than its states may hold. Prints one line per
failed check; the test wants none, exit 0 and no sanitizer report.
"""

from __future__ import annotations

import importlib.util
import itertools
import sys

import numpy as np


def run(engine: object, *, gen: int, n_w: int, k: int, states: int, areas: int,
        retries: int, m_cols: int, fill: int, fallback_top: int, jr: int, timing: int,
        heap: tuple[int, int], lcg: list[int] | None, runs: int = 2, m_top: int | None = None,
        m_arenas: int = 0, m_hole: list[int] | None = None) -> tuple[np.ndarray, ...]:
    aborts = np.zeros((runs, states), dtype=np.int64)
    outs = [np.zeros(runs, dtype=np.int64) for _ in range(4)]
    engine.run(  # type: ignore[attr-defined]
        taken=np.full((runs, n_w), fill, dtype=np.uint8),
        heap_lo=np.full(runs, heap[0], dtype=np.int64),
        heap_hi=np.full(runs, heap[1], dtype=np.int64),
        lcg=np.asarray(lcg or [], dtype=np.int64), aborts=aborts, syscalls=outs[0],
        placed=outs[1], far=outs[2], held=outs[3], generation=gen, heap_timing=timing,
        runs=runs, states=states, areas=areas, k=k, retries=retries, seed=7,
        iterations=3, draw_lo=0, draw_n=max(1, n_w), accept_lo=1, accept_hi=n_w - 1, jr=jr,
        n_w=n_w, m_cols=m_cols, m_top=m_cols if m_top is None else m_top,
        fallback_top=fallback_top, m_arenas=m_arenas,
        m_hole=np.asarray(m_hole or [], dtype=np.int64))
    return (aborts, *outs)


def main(path: str) -> int:
    spec = importlib.util.spec_from_file_location("_replay", path)
    assert spec is not None and spec.loader is not None
    engine = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(engine)
    failed = 0
    grid = itertools.product((0, 1), (1, 2, 63, 64, 65), (1, 3, 70), (1, 3), (1, 4), (0, 2),
                             (0, 64), (0, 1), (-1, 0, 10**6), (17, 20))
    for n, (gen, n_w, k, states, areas, retries, m_cols, fill, top, jr) in enumerate(grid):
        if gen == 0 and m_cols:
            continue
        for heap in ((0, n_w // 2), (-2**62, 2**62)):
            aborts, _calls, placed, _far, held = run(
                engine, gen=gen, n_w=n_w, k=k, states=states, areas=areas, retries=retries,
                m_cols=m_cols, fill=fill, fallback_top=top, jr=jr, timing=n % 2, heap=heap,
                lcg=None if n % 3 else [0, 5, n_w + 9, 3])
            if gen == 0 and k > n_w and (placed.any() or held.any()
                                            or (aborts != retries + 1).any()):
                failed += 1
                print(f"gen {gen} n_w {n_w} k {k}: an area wider than the window was placed "
                      f"or aborts {aborts.tolist()} != {retries + 1}")
            if (held > placed).any() or (held > states * areas).any():
                failed += 1
                print(f"gen {gen} n_w {n_w} k {k}: held {held.tolist()} > placed "
                      f"{placed.tolist()} or > {states * areas}")
    # The 2025 allocator's arenas and the hole above them (a hole per run), at the edges
    # of the far columns: none, and filling them up to m_cols.
    for arenas, holes in ((0, [0, 0]), (4, [5, 0]), (4, [28, 28]), (32, [0, 0])):
        run(engine, gen=1, n_w=8, k=3, states=3, areas=4, retries=1, m_cols=64, fill=0,
            fallback_top=-1, jr=17, timing=0, heap=(0, 4), lcg=None, m_top=32,
            m_arenas=arenas, m_hole=holes)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
