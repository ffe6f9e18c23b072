"""knn_score: distance of each query vector to its nearest (mean of k nearest) memory-bank vectors."""
from __future__ import annotations

import numpy as np

CHUNK_ELEMS = 1 << 22  # M-chunk x N block kept under ~16 MB of float32 distances


def knn_score_reference(queries: np.ndarray, bank: np.ndarray, k: int = 1,
                        bank_sqnorm: np.ndarray | None = None) -> np.ndarray:
    """(M, D), (N, D) -> (M,) float32 Euclidean distance, mean over the k nearest.

    ‖q‖² − 2 q·b + ‖b‖² by chunks of queries through one BLAS matmul each, so the full M×N matrix is
    never held at once.
    """
    if queries.ndim != 2 or bank.ndim != 2 or queries.shape[1] != bank.shape[1]:
        raise ValueError(f"knn_score: queries {queries.shape} and bank {bank.shape} must be (M, D) and (N, D)")
    n = bank.shape[0]
    if not 1 <= k <= n:
        raise ValueError(f"knn_score: k={k} must be in [1, {n}]")
    q = np.ascontiguousarray(queries, dtype=np.float32)
    b = np.ascontiguousarray(bank, dtype=np.float32)
    bb = (b * b).sum(1) if bank_sqnorm is None else bank_sqnorm.astype(np.float32)
    out = np.empty(q.shape[0], np.float32)
    rows = max(1, CHUNK_ELEMS // max(n, 1))
    for s in range(0, q.shape[0], rows):
        qc = q[s:s + rows]
        d2 = qc @ b.T  # (m, N)
        d2 *= -2.0
        d2 += bb[None, :]
        d2 += (qc * qc).sum(1, keepdims=True)
        if k == 1:
            best = d2.min(1)
        else:
            best = np.partition(d2, k - 1, axis=1)[:, :k]
            best = np.sqrt(np.maximum(best, 0.0)).mean(1)
            out[s:s + rows] = best
            continue
        out[s:s + rows] = np.sqrt(np.maximum(best, 0.0))
    return out
