"""Wall-clock timing of repeated calls, shared by the benches (``lineside bench``, ``distill eval``)."""
from __future__ import annotations

import time
from typing import Callable

import numpy as np


def time_calls(fn: Callable[[], object], runs: int, warmup: int = 0) -> np.ndarray:
    """Call ``fn`` ``warmup`` times untimed, then ``runs`` times: each call's wall time in ms."""
    for _ in range(warmup):
        fn()
    ms = np.empty(runs)
    for i in range(runs):
        t0 = time.perf_counter()
        fn()
        ms[i] = (time.perf_counter() - t0) * 1e3
    return ms
