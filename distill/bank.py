"""The student's memory bank and its scores, exactly as the edge computes them.

Embeddings of good training images -> greedy k-centre coreset (``teacher.bank.greedy_coreset``) -> bank
(float16 on disk). Scores go through ``runtime.scoring.score_outputs`` at the network input size (S, S),
as ``runtime.engine.Engine`` does, so calibration figures hold on the edge.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace

import numpy as np

from runtime.scoring import DEFAULT_BLUR_SIGMA_PX, DEFAULT_K, DEFAULT_SCORE_TOPK

DEFAULT_BANK_BUDGET = 4096  # bank vectors: the edge's kNN costs h·w·N·D per frame


@dataclass
class ScoringParams:
    """runtime.scoring.score_outputs' parameters; ``mode``/norms are set by `distill fit` when the student
    carries the teacher's head (see fit_head_norms)."""
    k: int = DEFAULT_K
    blur_sigma_px: float = DEFAULT_BLUR_SIGMA_PX
    score_topk: int = DEFAULT_SCORE_TOPK
    mode: str = "bank"
    bank_norm: float = 1.0
    head_norm: float = 1.0

    def to_dict(self) -> dict:
        return asdict(self)


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


def score_outputs(outputs: list[dict], bank: np.ndarray, size: int, params: ScoringParams, index=None) -> Scores:
    """Network outputs per image (name -> array with batch 1) -> Scores with maps at (size, size).
    ``index``: a runtime.bank_index.BankIndex of ``bank`` searched instead of the exact scan."""
    from runtime.scoring import score_outputs as score_one

    res = [score_one(o, bank, (size, size), **params.to_dict(), index=index) for o in outputs]
    return Scores(np.asarray([r.score for r in res], np.float64), np.asarray([r.mean_nn_distance for r in res], np.float64),
                  np.stack([r.anomaly_map for r in res]).astype(np.float32))


def fit_head_norms(outputs: list[dict], bank: np.ndarray, size: int, params: ScoringParams) -> ScoringParams:
    """Mode "both" with each part's norm at its good-image level (teacher.bank.calibrate_threshold on
    ``outputs`` of good images: a high percentile), as the teacher pipeline divides by its thresholds."""
    from runtime.scoring import head_map, top_score
    from teacher.bank import calibrate_threshold

    bank_s = score_outputs(outputs, bank, size, replace(params, mode="bank")).scores
    head_s = np.asarray([top_score(head_map(o, (size, size)), params.score_topk) for o in outputs])  # no second kNN
    return replace(params, mode="both", bank_norm=max(calibrate_threshold(bank_s, None)[0], 1e-6),
                   head_norm=max(calibrate_threshold(head_s, None)[0], 1e-6))
