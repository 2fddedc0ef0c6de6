"""The allocator replay's free list: every run's free eligible hint columns, in an array
with O(1) removal, O(1) return and O(1) uniform draw (the closed-form fast path of
:meth:`layoutkit.window.replay_engine.Engine.step_fast` draws its hit from it).

``cols[run, :n[run]]`` are the run's free eligible columns in no order; ``pos[run, col]``
is where ``col`` sits in that list (-1: not listed). Only columns in ``[lo, hi)`` are
ever listed; ``sink`` fills the unused tail.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from layoutkit.window.replay_model import Ints


class FreeList:
    def __init__(self, runs: int, lo: int, hi: int, width: int, sink: int) -> None:
        self.lo, self.hi, self.sink = lo, hi, sink
        self.n = np.zeros(runs, dtype=np.int64)
        self.cols = np.zeros((runs, max(0, hi - lo)), dtype=np.int32)
        self.pos = np.zeros((runs, width), dtype=np.int32)

    def rebuild(self, taken: npt.NDArray[np.bool_]) -> None:
        """List every run's free columns of ``[lo, hi)`` afresh from ``taken``."""
        free = ~taken[:, self.lo:self.hi]
        which, col = np.nonzero(free)
        counts = free.sum(axis=1)
        starts = np.concatenate(([0], np.cumsum(counts)[:-1]))
        at = np.arange(which.size) - starts[which]
        self.cols[:] = self.sink
        self.cols[which, at] = col + self.lo
        self.pos[:] = -1
        self.pos[which, col + self.lo] = at
        self.n = counts.astype(np.int64)

    def remove(self, rows: Ints, cols: Ints) -> None:
        """Take the listed columns ``cols[i]`` of runs ``rows[i]`` off the lists."""
        # Flat indices: a 1-D gather costs numpy less than a 2-D one.
        pos, lst = self.pos.reshape(-1), self.cols.reshape(-1)
        prow, lrow = rows * self.pos.shape[1], rows * self.cols.shape[1]
        at = pos[prow + cols]
        end = self.n[rows] - 1
        last = lst[lrow + end]
        lst[lrow + at] = last
        pos[prow + last] = at
        pos[prow + cols] = -1
        self.n[rows] = end

    def put_back(self, rows: Ints, cols: Ints, count: Ints) -> None:
        """Put the first ``count[i]`` columns ``cols[i, :]`` of run ``rows[i]`` back on its
        list (they are eligible: only listed columns are ever placed)."""
        keep = np.arange(cols.shape[1])[None, :] < count[:, None]
        at = (self.n[rows][:, None] + np.arange(cols.shape[1])[None, :])[keep]
        back = cols[keep]
        lrow = np.repeat(rows * self.cols.shape[1], count)
        prow = np.repeat(rows * self.pos.shape[1], count)
        self.cols.reshape(-1)[lrow + at] = back
        self.pos.reshape(-1)[prow + back] = at
        self.n[rows] += count

    def pick(self, rows: Ints, u: npt.NDArray[np.float64]) -> Ints:
        """For each run ``rows[i]``, its listed column at the uniform fraction ``u[i]``."""
        at = (u * self.n[rows]).astype(np.int64)
        picked: Ints = self.cols.reshape(-1)[rows * self.cols.shape[1] + at]
        return picked
