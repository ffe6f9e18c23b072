"""From a student's (or the teacher's) patch embedding to an anomaly map, score, regions and decision.

PatchCore-style: each embedding location's distance to its nearest good-image bank vector (exact, or through
the artifact's approximate index: runtime/bank_index.py), upsampled and blurred to image size in one pass
(kernels.dispatch.anomaly_map); the image score is the map's max (or top-k mean). One implementation for
distill's calibration, the teacher's good-images-only mode and the edge, so their numbers agree.

A student distilled from a teacher with a mask head also emits the head's outputs ("class_logits",
"mask_logits", and their map "defect_map"); ``score_outputs`` then scores as the teacher pipeline does in
that mode: the head's defect-probability map (``head_map``), or (mode "both") the bank map and the head map
each divided by its own norm and averaged, so that each part's evidence counts whatever its units.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from kernels import dispatch
from runtime.contracts.verdict import Region

# The scoring defaults, written here once: the manifest, both banks and the CLIs take them from here.
DEFAULT_K = 1  # mean distance to the k nearest bank vectors
DEFAULT_BLUR_SIGMA_PX = 4.0  # Gaussian on the full-size map
DEFAULT_SCORE_TOPK = 1  # image score = mean of the top-k map values (1 = max)


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


def score_embedding(embedding: np.ndarray, bank: np.ndarray, image_hw: tuple[int, int], *, k: int = DEFAULT_K,
                    blur_sigma_px: float = DEFAULT_BLUR_SIGMA_PX, score_topk: int = DEFAULT_SCORE_TOPK,
                    index=None) -> ScoreResult:
    """``index``: a runtime.bank_index.BankIndex of ``bank`` to search instead of the exact scan."""
    q, (h, w) = embedding_to_queries(embedding)
    dist = (dispatch.knn_score(q, bank, k=k) if index is None else index.knn(q, k)).reshape(h, w)
    amap, score = dispatch.anomaly_map(dist, image_hw, blur_sigma_px, score_topk)
    return ScoreResult(anomaly_map=amap, score=score, mean_nn_distance=float(dist.mean()))


SCORING_MODES = ("bank", "head", "both")
HEAD_OUTPUTS = ("class_logits", "mask_logits")  # the head's raw outputs; "defect_map" (their map) if distilled
HEAD_MAP_OUTPUT = "defect_map"


def head_probability_map(class_logits: np.ndarray, mask_logits: np.ndarray, image_hw: tuple[int, int]) -> np.ndarray:
    """(1, N, K+1) class logits (no-object last) and (1, N, h0, w0) mask logits -> (H, W) float32 map of
    max_i (1 - p_i(no object)) * sigmoid(m_i), bilinear to the image: teacher.head.model.defect_probability_map
    in numpy, so the edge needs no torch."""
    import cv2

    c = np.asarray(class_logits, np.float64).reshape(-1, np.shape(class_logits)[-1])
    c = np.exp(c - c.max(axis=-1, keepdims=True))
    p_obj = 1.0 - c[:, -1] / c.sum(axis=-1)  # (N,)
    m = np.asarray(mask_logits, np.float64)
    m = m.reshape((-1,) + m.shape[-2:])
    pm = (p_obj[:, None, None] / (1.0 + np.exp(-m))).max(axis=0).astype(np.float32)
    return cv2.resize(pm, (image_hw[1], image_hw[0]), interpolation=cv2.INTER_LINEAR)


def head_map(outputs: dict[str, np.ndarray], image_hw: tuple[int, int]) -> np.ndarray:
    """The head's (H, W) defect-probability map from a network's outputs: the distilled "defect_map" (sigmoid
    of its logits) when present, else made from the query outputs (``head_probability_map``)."""
    if HEAD_MAP_OUTPUT in outputs:
        import cv2

        z = np.asarray(outputs[HEAD_MAP_OUTPUT], np.float64).reshape(np.shape(outputs[HEAD_MAP_OUTPUT])[-2:])
        return cv2.resize((1.0 / (1.0 + np.exp(-z))).astype(np.float32), (image_hw[1], image_hw[0]),
                          interpolation=cv2.INTER_LINEAR)
    missing = [n for n in HEAD_OUTPUTS if n not in outputs]
    if missing:
        raise ValueError(f"scoring needs {HEAD_MAP_OUTPUT!r} or the head outputs {missing}; the network has "
                         f"{sorted(outputs)}")
    return head_probability_map(outputs["class_logits"], outputs["mask_logits"], image_hw)


def top_score(amap: np.ndarray, score_topk: int = DEFAULT_SCORE_TOPK) -> float:
    """Image score of a map: the mean of its ``score_topk`` largest values (1: the max)."""
    top = np.partition(amap.ravel(), -score_topk)[-score_topk:] if score_topk > 1 else amap.max(keepdims=True)
    return float(top.mean())


def score_outputs(outputs: dict[str, np.ndarray], bank: np.ndarray, image_hw: tuple[int, int], *,
                  mode: str = "bank", k: int = DEFAULT_K, blur_sigma_px: float = DEFAULT_BLUR_SIGMA_PX,
                  score_topk: int = DEFAULT_SCORE_TOPK,
                  bank_norm: float = 1.0, head_norm: float = 1.0, embedding_output: str = "embedding",
                  index=None) -> ScoreResult:
    """Score one image from the network's outputs. The bank's nearest-neighbour distances always give the
    OOD statistic; ``mode`` picks the map (see the module doc); ``index`` as in ``score_embedding``."""
    if mode not in SCORING_MODES:
        raise ValueError(f"scoring mode must be one of {SCORING_MODES}, got {mode!r}")
    r = score_embedding(outputs[embedding_output], bank, image_hw, k=k, blur_sigma_px=blur_sigma_px,
                        score_topk=score_topk, index=index)
    if mode == "bank":
        return r
    hm = head_map(outputs, image_hw)
    amap = hm if mode == "head" else (r.anomaly_map / bank_norm + hm / head_norm) / 2
    return ScoreResult(anomaly_map=amap.astype(np.float32), score=top_score(amap, score_topk),
                       mean_nn_distance=r.mean_nn_distance)


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


@dataclass(frozen=True)
class ScoreNorm:
    """The operator's 0-1 score, as anomalib normalises: the calibrated threshold maps to 0.5.

    Piecewise linear, clipped: [low .. threshold] -> [0, 0.5] and [threshold .. high] -> [0.5, 1], with ``low``
    the lowest good validation score and ``high`` the highest validation score (distill export records them in
    the manifest's ``calibration.normalization``). Two pieces rather than anomalib's one min-max line shifted to
    the threshold: a threshold that sits near one end of the validation range (the usual case: good scores
    crowd close below it) would saturate that side of a single line and squash the other, and the threshold
    must land on exactly 0.5 either way. A monotone map: rankings, and so every AUROC, are those of the raw
    score, which the verdict keeps (``score``) and every metric is computed from.
    """
    low: float
    threshold: float
    high: float

    @classmethod
    def default(cls, threshold: float, band: tuple[float, float] = (0.0, 0.0)) -> "ScoreNorm":
        """Without validation figures (an artifact exported before they were recorded, the teacher): scores are
        non-negative (distances, probabilities), so 0 -> 0, and the high side mirrors it, widened to the band."""
        t = float(threshold)
        low = min(0.0, float(band[0])) if t > 0 else t - max(abs(t), 1.0)
        return cls.checked(low, t, max(t + (t - low), float(band[1])))

    @classmethod
    def checked(cls, low: float | None, threshold: float, high: float | None) -> "ScoreNorm":
        """``low`` < ``threshold`` < ``high``, each side replaced by the default's where it is missing or not."""
        t = float(threshold)
        span = max(abs(t), 1e-6)
        lo = float(low) if low is not None and np.isfinite(low) and low < t else (0.0 if t > 0 else t - span)
        hi = float(high) if high is not None and np.isfinite(high) and high > t else t + (t - lo)
        return cls(low=lo, threshold=t, high=hi)

    def __call__(self, score: float) -> float:
        s = float(score)
        if not np.isfinite(s):
            return float("nan")
        if s <= self.threshold:
            v = 0.5 * (s - self.low) / (self.threshold - self.low)
        else:
            v = 0.5 + 0.5 * (s - self.threshold) / (self.high - self.threshold)
        return float(np.clip(v, 0.0, 1.0))


def decide(score: float, threshold: float, band: tuple[float, float],
           norm: ScoreNorm | None = None) -> tuple[str, float, bool]:
    """(decision, confidence, in_band). The decision and in_band depend on the raw score only. Confidence is 0 at
    the threshold and grows with the distance from it: with ``norm``, in normalised units (|norm(score) - 0.5| x 2,
    1 at the validation range's ends); without, relative to the band's half-width (1 at its edge or beyond), and
    for a band of zero width in the units of ``ScoreNorm.default`` (not 1.0 everywhere)."""
    decision = "defect" if score >= threshold else "good"
    lo, hi = band
    in_band = lo <= score <= hi
    if norm is None:
        half = (hi - threshold) if score >= threshold else (threshold - lo)
        if half > 0:
            return decision, float(np.clip(abs(score - threshold) / half, 0.0, 1.0)), in_band
        norm = ScoreNorm.default(threshold, band)
    n = norm(score)
    conf = float(np.clip(abs(n - 0.5) * 2.0, 0.0, 1.0)) if np.isfinite(n) else 0.0
    return decision, conf, in_band
