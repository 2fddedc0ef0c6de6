from typing import Any

import numpy as np
import numpy.typing as npt

_Array = npt.NDArray[Any]
_Ints = npt.NDArray[np.int64]

def run(*, taken: _Array, heap_lo: _Ints, heap_hi: _Ints, lcg: _Ints, aborts: _Ints,
        syscalls: _Ints, placed: _Ints, far: _Ints, held: _Ints, generation: int,
        heap_timing: int, runs: int, states: int, areas: int, k: int, retries: int,
        seed: int, iterations: int, draw_lo: int, draw_n: int, accept_lo: int,
        accept_hi: int, jr: int, n_w: int, m_cols: int, m_top: int,
        fallback_top: int, m_arenas: int, m_hole: _Ints) -> None: ...
