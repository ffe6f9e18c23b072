"""How many threads the math libraries under the judge may use: BLAS/OpenMP (bank scoring is one
matrix product per frame) and OpenCV (resize, blur, components).

Left alone, OpenBLAS starts a thread per core and spins them between calls: on a 4-core edge box that
is every core busy for one frame's matmul, next to the camera driver and the daemon's own threads. The
daemon pins them to the backend's ``threads`` (``BackendCfg.threads``), so one knob says how much of the
machine a judged frame may use; ``lineside bench`` times the raw engine under the same limit, so the
daemon is compared with what the same configuration does without it.

    with MathThreadLimit(1):            # raw_bench: restored afterwards
        ...
    MathThreadLimit(cfg.backend.threads)  # daemon: for the life of the process
"""
from __future__ import annotations

import logging

log = logging.getLogger("lineside.threads")


class MathThreadLimit:
    """Limit BLAS/OpenMP (threadpoolctl) and OpenCV to ``n`` threads now; ``restore()`` (or leaving the
    ``with`` block) puts back what was there."""

    def __init__(self, n: int):
        import cv2
        from threadpoolctl import threadpool_limits

        self.n = max(1, int(n))
        self._cv2, self._cv2_before = cv2, cv2.getNumThreads()
        self._pools = threadpool_limits(limits=self.n)  # applies at once; restore_original_limits() undoes
        cv2.setNumThreads(self.n)
        log.debug("math threads limited to %d (OpenCV had %d)", self.n, self._cv2_before)

    def restore(self) -> None:
        self._pools.restore_original_limits()
        self._cv2.setNumThreads(self._cv2_before)

    def __enter__(self) -> "MathThreadLimit":
        return self

    def __exit__(self, *exc) -> None:
        self.restore()
