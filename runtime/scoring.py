"""From a student's (or the teacher's) patch embedding to an anomaly map, score, regions and decision.

PatchCore-style: each embedding location's distance to its nearest good-image bank vector, upsampled
and blurred to image size; the image score is the map's max (or top-k mean). One implementation for
distill's calibration, the teacher's good-images-only mode and the edge, so their numbers agree.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from kernels import dispatch
from runtime.verdict import Region


@dataclass
class ScoreResult:
    anomaly_map: np.ndarray  # float32 (H, W), image size
    score: float  # image anomaly score
    mean_nn_distance: float  # mean over locations of the nearest-bank distance: the OOD statistic
    regions: list[Region] = field(default_factory=list)
    mask: np.ndarray | None = None  # bool (H, W)


def embedding_to_queries(embedding: np.ndarray) -> tuple[np.ndarray, tuple[int, int]]:
    """(1, D, h, w) or (D, h, w) -> ((h*w, D) float32, (h, w))."""
    e = embedding[0] if embedding.ndim == 4 else embedding
    if e.ndim != 3:
        raise ValueError(f"embedding must be (1, D, h, w) or (D, h, w), got {embedding.shape}")
    d, h, w = e.shape
    return np.ascontiguousarray(e.reshape(d, h * w).T, dtype=np.float32), (h, w)


def score_embedding(embedding: np.ndarray, bank: np.ndarray, image_hw: tuple[int, int], *, k: int = 1,
                    blur_sigma_px: float = 4.0, score_topk: int = 1) -> ScoreResult:
    q, (h, w) = embedding_to_queries(embedding)
    dist = dispatch.knn_score(q, bank, k=k).reshape(h, w)
    amap, score = dispatch.anomaly_map(dist, image_hw, blur_sigma_px, score_topk)
    return ScoreResult(anomaly_map=amap, score=score, mean_nn_distance=float(dist.mean()))


def find_regions(anomaly_map: np.ndarray, level: float, min_area_px: int = 16,
                 label: str = "anomaly", threshold: float | None = None) -> tuple[list[Region], np.ndarray]:
    """Connected components of ``anomaly_map >= level`` as regions with boxes; confidence grows with
    how far the region's peak is above ``threshold`` (default ``level``)."""
    import cv2

    mask = anomaly_map >= level
    n, lab, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
    regions: list[Region] = []
    keep = np.zeros_like(mask)
    ref = level if threshold is None else threshold
    for i in range(1, n):
        x, y, bw, bh, area = (int(v) for v in stats[i])
        if area < min_area_px:
            continue
        box = (slice(y, y + bh), slice(x, x + bw))  # work inside the box, not over the whole map per region
        comp = lab[box] == i
        keep[box] |= comp
        peak = float(anomaly_map[box][comp].max())
        conf = float(np.clip(0.5 + (peak - ref) / (abs(ref) + 1e-6), 0.0, 1.0))
        regions.append(Region(bbox=(x, y, x + bw, y + bh), area=area, label=label, confidence=conf, score=peak))
    regions.sort(key=lambda r: -r.score)
    return regions, keep


def decide(score: float, threshold: float, band: tuple[float, float]) -> tuple[str, float, bool]:
    """(decision, confidence, in_band). Confidence is 0 at the threshold and 1 at the band's edge or beyond."""
    decision = "defect" if score >= threshold else "good"
    lo, hi = band
    in_band = lo <= score <= hi
    half = (hi - threshold) if score >= threshold else (threshold - lo)
    conf = 1.0 if half <= 0 else float(np.clip(abs(score - threshold) / half, 0.0, 1.0))
    return decision, conf, in_band
