"""The student's memory bank and its scores, exactly as the edge computes them.

Embeddings of good training images -> greedy k-centre coreset (``teacher.bank.greedy_coreset``) -> bank
(float16 on disk). Scores go through ``runtime.scoring.score_embedding`` at the network input size (S, S),
as ``runtime.engine.Engine`` does, so calibration figures hold on the edge.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

DEFAULT_BANK_BUDGET = 4096  # bank vectors: the edge's kNN costs h·w·N·D per frame
DEFAULT_K = 1
DEFAULT_BLUR_SIGMA_PX = 4.0
DEFAULT_SCORE_TOPK = 1


@dataclass
class ScoringParams:
    k: int = DEFAULT_K
    blur_sigma_px: float = DEFAULT_BLUR_SIGMA_PX
    score_topk: int = DEFAULT_SCORE_TOPK

    def to_dict(self) -> dict:
        return {"k": self.k, "blur_sigma_px": self.blur_sigma_px, "score_topk": self.score_topk}


@dataclass
class Scores:
    scores: np.ndarray  # (N,) image scores
    mean_nn: np.ndarray  # (N,) mean nearest-bank distance (OOD statistic)
    maps: np.ndarray  # (N, S, S) float32 anomaly maps
    extra: dict = field(default_factory=dict)


def build_bank(embeddings: np.ndarray, budget: int = DEFAULT_BANK_BUDGET, seed: int = 0) -> tuple[np.ndarray, dict]:
    """(N, D, h, w) good-image embeddings -> (M, D) float32 coreset bank, info."""
    from teacher.bank import greedy_coreset

    n, d = embeddings.shape[:2]
    flat = np.ascontiguousarray(embeddings.transpose(0, 2, 3, 1).reshape(-1, d), np.float32)
    idx = greedy_coreset(flat, budget, seed)
    # stored as float16: score with the rounded bank everywhere, so calibration sees what the edge sees
    bank = flat[idx].astype(np.float16).astype(np.float32)
    return bank, {"n_images": int(n), "n_vectors": int(flat.shape[0]), "budget": int(budget),
                  "size": int(bank.shape[0]), "dim": int(d), "coreset": "teacher.bank.greedy_coreset", "seed": seed}


def score_embeddings(embeddings, bank: np.ndarray, size: int, params: ScoringParams) -> Scores:
    """Iterable of (1, D, h, w) or an (N, D, h, w) array -> Scores with maps at (size, size)."""
    from runtime.scoring import score_embedding

    sc, nn_, maps = [], [], []
    for e in embeddings:
        e = np.asarray(e)
        r = score_embedding(e if e.ndim == 4 else e[None], bank, (size, size), k=params.k,
                            blur_sigma_px=params.blur_sigma_px, score_topk=params.score_topk)
        sc.append(r.score)
        nn_.append(r.mean_nn_distance)
        maps.append(r.anomaly_map)
    return Scores(np.asarray(sc, np.float64), np.asarray(nn_, np.float64), np.stack(maps).astype(np.float32))
