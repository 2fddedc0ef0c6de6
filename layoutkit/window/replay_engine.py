"""The vectorised core of the allocator replay: all runs advance in lockstep, request by request.

The algorithm, per generation, with its sources, is docs/allocator-replay.md; the C replay
(layoutkit/native/probe.c, ``--mode replay``) follows the same page.

Address model. Space is counted in 64 KiB slots (LuaJIT's hint alignment) in one column
space per run: the JIT window ``W`` (columns ``[0, n_w)``, its first column at a per-run
address), then for the 2025 allocator the bottom of the top-down mmap area ``M``
(columns ``[n_w, n_w + n_m)``; above its column ``m_top`` the malloc arenas, taken,
then the hole their 64 MiB alignment leaves below the thread stacks, free, then the
stacks, taken; see :func:`layoutkit.window.replay.arena_hole`), then two sink columns:
``TAKEN`` (always taken: a hint outside the modelled space) and ``DUMP`` (where masked
writes go). ``taken[run, column]`` says
whether the slot is mapped.

Interleaving. States take turns: round after round, every state that still wants an area
asks for one (round-robin, state 0 first), as N threads compiling at the same pace would.
Within a round the brk heap has grown by ``heap / areas`` more (it reaches ``heap`` after
as many rounds as a state wants areas) unless a mapping blocks it: ``brk()`` fails when
the new range meets a mapping (mm/mmap.c, SYSCALL_DEFINE1(brk) checks the next VMA), and
glibc's main arena then moves to mmap.

Per generation (LuaJIT src/lj_mcode.c ``mcode_alloc``, src/lj_trace.c ``trace_abort``):
see :meth:`Engine.step_21` and :meth:`Engine.step_2025`. A failed allocation raises
LJ_TRERR_MCODEAL; ``trace_abort`` then calls ``lj_trace_flushall`` which frees every area
of the state (``lj_mcode_free``); the state, still hot, asks again for what it had, at
most ``retries`` times.

The same rules run compiled in ``_replay.c`` (the default engine, see
:mod:`layoutkit.window.replay_compiled`): a change to a rule here is a change there too,
and tests/window/test_replay_engines.py fails while the two disagree.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import numpy.typing as npt

from layoutkit.window.replay_freelist import FreeList
from layoutkit.window.replay_model import (
    Bools,
    Generation,
    HeapTiming,
    Ints,
    Outcome,
    Setup,
)

BLOCK = 64  # columns per free count of an mmap(NULL) span


class Engine:
    def __init__(self, s: Setup) -> None:
        self.s = s
        r, n = s.runs, s.states
        self.n_w = s.taken.shape[1]
        self.n_m = s.m_cols if s.generation is Generation.LJ2025 else 0
        self.sink = self.n_w + self.n_m  # TAKEN column
        self.dump = self.sink + 1
        self.taken = np.zeros((r, self.dump + 1), dtype=np.bool_)
        self.taken[:, : self.n_w] = s.taken
        if self.n_m and s.m_taken is not None:
            self.taken[:, self.n_w: self.sink] = s.m_taken
        elif self.n_m:
            self.taken[:, self.n_w + s.m_top: self.sink] = True
            if s.m_hole is not None:  # the arena-alignment hole below the stacks
                cols = np.arange(self.n_m, dtype=np.int64)[None, :]
                start = s.m_top + s.m_arenas
                hole = (cols >= start) & (cols < start + s.m_hole[:, None])
                self.taken[:, self.n_w: self.sink] &= ~hole
        self.taken[:, self.sink] = True
        self.held = np.full((n, r, s.areas), self.dump, dtype=np.int32)
        self.count = np.zeros((n, r), dtype=np.int64)
        self.mcarea = np.full((n, r), -1, dtype=np.int64)
        self.want = np.ones((n, r), dtype=np.bool_)
        self.aborts = np.zeros((n, r), dtype=np.int64)
        self.drawn = np.zeros((n, r), dtype=np.int64)  # LCG draws consumed
        self.syscalls = np.zeros(r, dtype=np.int64)
        self.placed = np.zeros(r, dtype=np.int64)
        self.far = np.zeros(r, dtype=np.int64)
        # 2025: each state's range [lo, lo + span) of hint columns, in-range starts
        # [lo, lo + nin), region it may use [reg_lo, reg_hi), and "switch after flush".
        nin0 = self.n_w - s.k + 1
        self.rng_lo = np.zeros((n, r), dtype=np.int64)
        self.rng_nin = np.full((n, r), nin0, dtype=np.int64)
        self.reg_lo = np.zeros((n, r), dtype=np.int64)
        self.reg_hi = np.full((n, r), self.n_w, dtype=np.int64)
        self.is_far = np.zeros((n, r), dtype=np.bool_)
        self.switch = np.zeros((n, r), dtype=np.bool_)
        self.heap_end = s.heap_lo.copy()
        self.heap_stuck = np.zeros(r, dtype=np.bool_)
        self.gens = [np.random.Generator(np.random.PCG64(np.random.SeedSequence([s.seed, i])))
                     for i in range(n)]
        self.cols_w = np.arange(self.n_w, dtype=np.int64)
        # Where mmap(NULL) searches, top-down: [first, top) columns, with the free slots
        # of every 64-column block counted per run (the highest free one is then found
        # in two small steps).
        self.spans: list[tuple[int, int, Ints]] = []
        bounds = [(0, s.fallback_top)] if s.fallback_top is not None else []
        if self.n_m:
            top = s.m_top if s.m_hole is None else s.m_top + s.m_arenas + int(s.m_hole.max())
            bounds.append((self.n_w, self.n_w + top))
        for base, top in bounds:
            nb = -(-(top - base) // BLOCK)
            free = np.zeros((r, nb * BLOCK), dtype=np.bool_)
            free[:, : top - base] = ~self.taken[:, base:top]
            self.spans.append((base, top, free.reshape(r, nb, BLOCK).sum(axis=2)))
        # Fast path (luajit-2.1 with per-state streams, one-slot areas): hints are
        # independent and uniform, so the first hit is geometric in the share of free
        # hint columns and lands uniformly on a free one; no need to draw every miss.
        self.fast = (s.closed_form and s.generation is not Generation.LJ2025 and s.k == 1
                     and s.lcg_table is None)
        self.elig_lo = max(s.draw_lo, s.accept_lo)
        self.elig_hi = min(s.draw_lo + s.draw_n, s.accept_hi - s.k + 1)
        self.free = FreeList(r, self.elig_lo, self.elig_hi, self.dump + 1, self.sink)
        self.inv_draw_n = 1.0 / max(1, s.draw_n)

    # --- occupancy ----------------------------------------------------------------------

    def free_k(self, rows: Ints, cols: Ints) -> Bools:
        """Whether the ``k`` slots from ``cols`` are free (``rows`` broadcast to ``cols``)."""
        free = ~self.taken[rows, cols]
        for j in range(1, self.s.k):
            nxt = np.where(cols == self.sink, self.sink, cols + j)
            free &= ~self.taken[rows, nxt]
        return free

    def mark(self, rows: Ints, cols: Ints, value: bool) -> None:
        cols = np.where(cols >= self.sink, self.dump, cols)
        for j in range(self.s.k):
            self.taken[rows, np.where(cols == self.dump, self.dump, cols + j)] = value

    def grow_heap(self, fraction: float) -> bool:
        """brk grows towards ``fraction`` of the heap reserve, stopping at the first mapping."""
        s = self.s
        goal = s.heap_lo + np.ceil((s.heap_hi - s.heap_lo) * fraction).astype(np.int64)
        goal = np.where(self.heap_stuck, self.heap_end, goal)
        cols = self.cols_w[None, :]
        new = (cols >= self.heap_end[:, None]) & (cols < goal[:, None])
        if not new.any():
            return False
        # The heap's first slot may share its 64 KiB with the image's last page.
        later = cols > self.s.heap_lo[:, None]
        block = np.logical_or.accumulate(new & later & self.taken[:, : self.n_w], axis=1)
        grow = new & ~block
        self.heap_stuck |= (new & block).any(axis=1)
        self.taken[:, : self.n_w] |= grow
        self.heap_end = self.heap_end + grow.sum(axis=1)
        return True

    # --- outcomes -----------------------------------------------------------------------

    def place(self, rows: Ints, st: int, cols: Ints) -> None:
        if self.fast:  # one slot, always on the free list
            self.taken.reshape(-1)[rows * self.taken.shape[1] + cols] = True
            self.free.remove(rows, cols)
        else:
            self.mark(rows, cols, True)
            self.far[rows] += self.is_far[st, rows]
        self.recount(rows[:, None], cols[:, None], -1)
        count_st = self.count[st]
        count = count_st[rows]
        self.held[st].reshape(-1)[rows * self.s.areas + count] = cols
        count += 1
        count_st[rows] = count
        self.mcarea[st][rows] = cols
        self.placed[rows] += 1
        self.want[st][rows] = count < self.s.areas

    def abort(self, rows: Ints, st: int) -> None:
        """LJ_TRERR_MCODEAL: trace_abort -> lj_trace_flushall -> lj_mcode_free."""
        aborts = self.aborts[st][rows] + 1
        self.aborts[st][rows] = aborts
        held = self.held[st][rows]
        count = self.count[st][rows]
        if self.fast:
            # Areas fill held[] from the left; all of them sit on eligible columns.
            self.taken.reshape(-1)[rows[:, None] * self.taken.shape[1] + held] = False
            self.free.put_back(rows, held, count)
        else:
            self.mark(np.broadcast_to(rows[:, None], held.shape), held, False)
        self.syscalls[rows] += count  # one munmap per area
        self.recount(rows[:, None], held, +1)
        self.held[st][rows] = self.dump
        self.count[st][rows] = 0
        self.mcarea[st][rows] = -1
        self.want[st][rows] = aborts <= self.s.retries

    # --- LuaJIT 2017-03-08 .. 2025-11-06 (and before) -----------------------------------

    def draws_21(self, st: int, rows: Ints, tries: int) -> Ints:
        s = self.s
        if s.lcg_table is not None:
            idx = self.drawn[st, rows][:, None] + np.arange(tries)[None, :]
            cols: Ints = s.draw_lo + s.lcg_table[np.minimum(idx, s.lcg_table.size - 1)]
            return cols
        raw = self.gens[st].integers(0, s.draw_n, size=(s.runs, tries), dtype=np.int64)
        return s.draw_lo + raw[rows]

    def step_21(self, st: int, rows: Ints) -> None:
        """One ``mcode_alloc`` (lj_mcode.c, LuaJIT 2.1 before 68354f44).

        ``hint = J->mcarea - sz`` first (no call when there is no area yet: hint 0 fails
        mcode_validptr), then each iteration draws ``target + (prng & (2^JR - 64K)) - range``
        (redrawn while ``hint + sz >= 2 * range``: uniform over the window's hint columns) and
        tries it. ``mmap(hint)`` returns the hint when the range is free; otherwise the
        kernel puts the area elsewhere (far above the window here) and LuaJIT unmaps it:
        two calls. An area is kept only strictly inside (target - range, target + range).
        After JR iterations: LJ_TRERR_MCODEAL.
        """
        s = self.s
        mc = self.mcarea[st, rows]
        has = mc >= 0
        c0 = mc - s.k
        c0 = np.where(has & (c0 >= s.accept_lo), c0, self.sink)
        ok0 = has & self.free_k(rows, c0)
        calls = np.where(has, np.where(ok0, 1, 2), 0)
        tries = s.iterations - 1
        cols = self.draws_21(st, rows, tries)
        cols = np.where((cols >= s.accept_lo) & (cols + s.k <= s.accept_hi), cols, self.sink)
        free = self.free_k(rows[:, None], cols)
        hit = free.any(axis=1)
        first = free.argmax(axis=1)
        rest = ~ok0
        calls += np.where(rest, np.where(hit, 2 * first + 1, 2 * tries), 0)
        self.syscalls[rows] += calls
        if s.lcg_table is not None:
            self.drawn[st, rows] += np.where(ok0, 0, np.where(hit, first + 1, s.iterations))
        good = ok0 | hit
        chosen = np.where(ok0, c0, cols[np.arange(rows.size), first])
        if s.fallback_top is not None:
            # The first try that fails lands where mmap(NULL) would; LuaJIT keeps it
            # when that is in range (one call instead of the two counted above).
            fell = ~ok0 & (has | ~free[:, 0])
            if fell.any():
                p = self.topdown(rows[fell])
                keep = (p >= s.accept_lo) & (p + s.k <= s.accept_hi)
                idx = np.flatnonzero(fell)[keep]
                self.syscalls[rows[idx]] -= calls[idx] - 1
                good[idx] = True
                chosen[idx] = p[keep]
        if good.any():
            self.place(rows[good], st, chosen[good])
        if (~good).any():
            self.abort(rows[~good], st)

    def step_fast(self, st: int, rows: Ints, log_u: npt.NDArray[np.float64],
                  cand: npt.NDArray[np.float64]) -> None:
        """:meth:`step_21` for independent uniform hints and one-slot areas, in closed form.

        The misses before the first free hint are geometric in the run's share of free
        hint columns; the hit is uniform over the free ones (drawn from the free list
        with ``cand``).
        """
        s = self.s
        tries = s.iterations - 1
        mc = self.mcarea[st][rows]
        has = mc >= 0
        c0 = mc - 1
        okc = has & (c0 >= s.accept_lo)
        flat = rows * self.taken.shape[1] + np.where(okc, c0, self.sink)
        ok0 = okc & ~self.taken.reshape(-1)[flat]
        share = self.free.n[rows] * self.inv_draw_n
        first = np.minimum(np.floor(log_u / np.log1p(-share)), tries)
        rest = ~ok0
        hit = rest & (first < tries)
        calls = has * (2 - ok0) + rest * np.where(hit, 2 * first + 1, 2 * tries)
        chosen = c0
        if hit.any():
            hit_idx = np.flatnonzero(hit)
            hit_rows = rows[hit_idx]
            chosen = c0.copy()
            chosen[hit_idx] = self.free.pick(hit_rows, cand[hit_idx])
        good = ok0 | hit
        if s.fallback_top is not None:
            fell = rest & (has | (first > 0))
            if fell.any():
                p = self.topdown(rows[fell])
                keep = (p >= s.accept_lo) & (p + s.k <= s.accept_hi)
                idx = np.flatnonzero(fell)[keep]
                calls[idx] = 1
                good[idx] = True
                chosen = chosen.copy()
                chosen[idx] = p[keep]
        self.syscalls[rows] += calls.astype(np.int64)
        if good.all():
            self.place(rows, st, chosen)
            return
        if good.any():
            self.place(rows[good], st, chosen[good])
        self.abort(rows[~good], st)

    # --- LuaJIT since 68354f44 (2025-11-06) ---------------------------------------------

    def topdown(self, rows: Ints) -> Ints:
        """mmap(NULL): the highest free ``k`` slots below the thread stacks and arenas.

        mm/mmap.c unmapped_area_topdown: the highest gap below mmap_base that fits. The
        same place takes a mapping whose hint the kernel cannot honour
        (arch_get_unmapped_area_topdown falls back to the search). With a library anchor
        the search starts inside the window and continues in ``M`` below it.
        """
        found = np.full(rows.size, self.sink, dtype=np.int64)
        todo = np.arange(rows.size)
        for base, top, counts in self.spans:
            if not todo.size:
                break
            if self.s.k == 1:
                todo = self._highest(rows, todo, base, top, counts, found)
            else:
                todo = self._scan(rows, todo, base, top, found)
        return found  # sink: the modelled space is full (M is sized so that it is not)

    def _highest(self, rows: Ints, todo: Ints, base: int, top: int, counts: Ints,
                 found: Ints) -> Ints:
        run = rows[todo]
        has = counts[run] > 0
        some = has.any(axis=1)
        blk = has.shape[1] - 1 - has[:, ::-1].argmax(axis=1)
        cols = base + blk[:, None] * BLOCK + np.arange(BLOCK)[None, :]
        free = (cols < top) & ~self.taken[run[:, None], np.minimum(cols, top - 1)]
        last = BLOCK - 1 - free[:, ::-1].argmax(axis=1)
        found[todo[some]] = cols[some, last[some]]
        return todo[~some]

    def recount(self, rows: Ints, cols: Ints, delta: int) -> None:
        """Keep the per-block free counts of the mmap(NULL) spans in step with ``taken``."""
        for base, top, counts in self.spans:
            inside = (cols >= base) & (cols < top)
            if inside.any():
                runs = np.broadcast_to(rows, cols.shape)[inside]
                np.add.at(counts, (runs, (cols[inside] - base) // BLOCK), delta)

    def _scan(self, rows: Ints, todo: Ints, base: int, top: int, found: Ints) -> Ints:
        hi = top
        while todo.size and hi - base >= self.s.k:
            lo = max(base, hi - 512 - self.s.k + 1)
            window = ~self.taken[rows[todo], lo:hi]
            fit = window[:, : window.shape[1] - self.s.k + 1].copy()
            for j in range(1, self.s.k):
                fit &= window[:, j: window.shape[1] - self.s.k + 1 + j]
            has = fit.any(axis=1)
            last = fit.shape[1] - 1 - fit[:, ::-1].argmax(axis=1)
            found[todo[has]] = lo + last[has]
            todo = todo[~has]
            hi = lo + self.s.k - 1
        return todo

    def step_2025(self, st: int, rows: Ints) -> None:
        """One ``mcode_alloc`` (lj_mcode.c since commit 68354f44).

        The range ``[mcmin, mcmax)`` starts around lj_vm_exit_handler. ``J->mcarea - sz`` is
        tried first when it is in range (``i = 0``), else the loop is entered at ``probe:``;
        either way 15 random tries follow (``i = 1..15``), each preceded by drawing
        ``mcmin + (prng & MCODE_RANGE64)`` until in range, at most 15 draws (all out of
        range: give up at once). A mapping the kernel places elsewhere is kept when it is in
        range (``mcode_inrange(p)``): near a far range the top-down search lands there. A
        state without areas then takes ``mmap(NULL)`` and centres a new range on it
        (``mcode_setrange(p + sz/2)``); a state with areas sets ``mcmax = 0`` and raises
        LJ_TRERR_MCODEAL: after the flush its next request goes to ``mmap(NULL)``.
        """
        s = self.s
        r = rows.size
        mc = self.mcarea[st, rows]
        sw = self.switch[st, rows]
        lo, nin = self.rng_lo[st, rows], self.rng_nin[st, rows]
        rlo, rhi = self.reg_lo[st, rows], self.reg_hi[st, rows]
        c0 = mc - s.k
        first_in = (mc >= 0) & ~sw & (c0 >= lo) & (c0 < lo + nin)
        c0 = np.where(first_in & (c0 >= rlo) & (c0 + s.k <= rhi), c0, self.sink)
        ok0 = first_in & self.free_k(rows, c0)
        calls = np.where(first_in, np.where(ok0, 1, 2), 0)
        gen = self.gens[st]
        u = gen.random(size=(s.runs, 15))[rows]
        v = gen.random(size=(s.runs, 15))[rows]
        space = 1 << (s.jr - 16)  # MCODE_RANGE64 >> 16 + 1 hint columns per draw
        miss15 = (1.0 - nin / space) ** 15  # all 15 draws out of range
        made = ~np.logical_or.accumulate(v < miss15[:, None], axis=1)
        cols = lo[:, None] + np.floor(u * nin[:, None]).astype(np.int64)
        inside = (cols >= rlo[:, None]) & (cols + s.k <= rhi[:, None])
        cols = np.where(inside & made, cols, self.sink)
        free = self.free_k(rows[:, None], cols) & made
        active = ~ok0 & ~sw
        hit = active & free.any(axis=1)
        first = free.argmax(axis=1)
        calls += np.where(active, np.where(hit, 2 * first + 1, 2 * made.sum(axis=1)), 0)
        good = ok0 | hit
        chosen = np.where(ok0, c0, cols[np.arange(r), first])
        fell = active & np.where(first_in, True, made[:, 0] & ~free[:, 0])
        if fell.any():
            p = self.topdown(rows[fell])
            idx = np.flatnonzero(fell)
            keep = ((p >= lo[idx]) & (p < lo[idx] + nin[idx]) & (p >= rlo[idx])
                    & (p + s.k <= rhi[idx]))
            idx = idx[keep]
            calls[idx] = 1
            good[idx] = True
            chosen[idx] = p[keep]
        fail = ~good
        newrange = fail & (sw | (mc < 0))
        self.syscalls[rows] += calls + newrange
        if good.any():
            self.place(rows[good], st, chosen[good])
        if newrange.any():
            nr = rows[newrange]
            p = self.topdown(nr)
            half = 1 << (s.jr - 17)
            # mcode_setrange(p + sz/2): mcmin = p + 64K - 2^(JR-1) for a slot-aligned p.
            self.rng_lo[st, nr] = p - half + 1
            self.rng_nin[st, nr] = space - s.k
            in_w = p < self.n_w
            self.reg_lo[st, nr] = np.where(in_w, 0, self.n_w)
            self.reg_hi[st, nr] = np.where(in_w, self.n_w, self.sink)
            self.is_far[st, nr] = True
            self.switch[st, nr] = False
            self.place(nr, st, p)
        stuck = fail & ~newrange
        if stuck.any():
            self.switch[st, rows[stuck]] = True
            self.abort(rows[stuck], st)

    # --- the run ------------------------------------------------------------------------

    def run(self) -> Outcome:
        s = self.s
        step = self.step_2025 if s.generation is Generation.LJ2025 else self.step_21
        rnd = 0
        with np.errstate(divide="ignore", invalid="ignore"):
            while self.want.any():
                self.round(rnd, step)
                rnd += 1
        return Outcome(self.aborts.T, self.syscalls, self.placed, self.far,
                       self.count.sum(axis=0))

    def round(self, rnd: int, step: Callable[[int, Ints], None]) -> None:
        """Round ``rnd``: the heap grows, then every state that wants an area asks once."""
        s = self.s
        grown = False
        if s.heap_timing is HeapTiming.BEFORE and rnd == 0:
            grown = self.grow_heap(1.0)
        elif s.heap_timing is HeapTiming.DURING and rnd < s.areas:
            grown = self.grow_heap((rnd + 1) / s.areas)
        if self.fast and (grown or rnd == 0):
            self.free.rebuild(self.taken)
        if self.fast:
            # One block of uniforms per round, row ``state``: the same numbers for a
            # state whatever the number of states (common random numbers).
            gen = np.random.Generator(np.random.PCG64(
                np.random.SeedSequence([s.seed, 1 << 20, rnd])))
            log_u = np.log1p(-gen.random((s.states, s.runs)))  # log(1 - u) for the geometric law
            pick = gen.random((s.states, s.runs))
        for st in range(s.states):
            rows = np.flatnonzero(self.want[st])
            if not rows.size:
                continue
            if self.fast:
                self.step_fast(st, rows, log_u[st, rows], pick[st, rows])
            else:
                step(st, rows)
