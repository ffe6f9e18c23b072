"""Detection and segmentation metrics, numpy + OpenCV only, so the edge can score itself.

Conventions
-----------
- Labels are 1/True/"defect" for *defect* (the positive class), 0/False/"good" for good. Scores: higher =
  more anomalous.
- A prediction is positive when ``score >= threshold``.
- Curves are computed exactly by sorting (every distinct score is a threshold; tied scores form one
  step), never with a fixed threshold grid: one ``argsort`` of all values, O(P log P). 100 images of
  256x256 (6.5 M pixels) take about a second on one core.
- AUROC is the trapezoid under that exact ROC curve, which equals the rank statistic
  P(s_defect > s_good) + 0.5 P(tie); identical to ``sklearn.metrics.roc_auc_score``.
- AU-PRO follows the MVTec AD papers (Bergmann et al., IJCV 2021, Sec. 5.2): for each threshold,
  PRO = mean over ground-truth connected components (8-connectivity, over all images) of the
  fraction of the component that is predicted positive; FPR = fraction of all good pixels (pixels
  outside every ground-truth mask, in every image) predicted positive. The PRO curve is integrated
  over FPR in [0, ``fpr_limit``] (default 0.3) with the trapezoid rule, linearly interpolating the
  curve at ``fpr_limit``, and divided by ``fpr_limit`` so a perfect map scores 1. Like the official
  MVTec evaluation code, the curve is exact (all distinct thresholds), not a 200-threshold grid.
- ``average_precision`` is the step-wise sum over the exact PR curve, AP = sum_n (R_n - R_{n-1}) P_n,
  identical to ``sklearn.metrics.average_precision_score``.
- ``box_map`` is COCO-style: greedy matching in descending score order at an IoU threshold, the
  precision envelope made monotone, then **101-point interpolation** at recall 0, 0.01, ..., 1.
  Boxes are ``(x0, y0, x1, y1)`` with exclusive ``x1, y1`` (pixel counts, like ``Region.bbox``).

Metrics that need both classes (AUROC, AU-PRO, AP) raise ``ValueError`` naming what is missing
rather than returning a number that means nothing.

Bounded pixel metrics
---------------------
The exact curves need every pixel of every map at once (a test split of 10^4 maps at 512 px is 10 GB of
float32, several times that while sorting). ``PixelAccumulator`` takes one (mask, map) at a time at full
resolution and keeps O(``HIST_BINS``) memory: histograms over one shared set of score bins of the good
pixels (the FPR, and the pixel ROC's negatives), the defect pixels (the ROC's positives) and the defect
pixels each weighted 1/|C_k| by the size of their connected component (8-connectivity, per image, as
above; divided by the number of components K at the end this is the PRO). Thresholds are the bin edges:
scores inside one bin count as tied, so pixel AUROC is off by at most half the share of defect/good pixel
pairs that share a bin, and the PRO curve is the exact one sampled at the edges (nothing is downsampled).
``relative=True`` (what the evaluations use: anomaly maps are non-negative distances and probabilities)
makes the bins even in the scores' float32 bit patterns (order-preserving integer keys), not in the scores:
the resolution is relative, the same in each power of two the scores span, so a probability map whose good
pixels sit at 1e-9..1e-3 and defects near 1 is resolved at every scale (bins even in the score put all
those good pixels in a few bins; on the head of a tiny teacher that cost 7e-4 of pixel AUROC, relative
bins 3e-7). Scores of both signs are still counted right there, only more coarsely (keys that cross
zero spend bins on the empty powers of two near it): the default, even in the score, suits them. The bins cover the keys seen so far and double their width
(merging neighbours, exactly) when a score falls outside. The exact functions stay the reference; ``tests/runtime/test_metrics.py`` holds the
accumulator within 0.005 of them. Each figure comes with a bound of its own binning error, computed from
the histograms (``auroc_bound``, ``au_pro_bound``): what the evaluations record beside the method
(``method()``, e.g. "histogram, 65536 bins"). ``StreamingMetrics`` is ``compute_all`` image by image on it:
the evaluations (`teacher eval`, `distill eval`, `teacher baselines`, runtime.quality) use it, so their
memory does not grow with the number of maps.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

__all__ = [
    "roc_curve", "image_auroc", "pixel_auroc", "auroc", "pro_curve", "au_pro", "pro_area", "precision_recall_curve",
    "average_precision", "f1_max", "iou", "dice", "accuracy", "mask_boxes", "map_boxes", "box_iou",
    "box_ap", "box_map", "box_map_from_maps", "compute_all", "PixelAccumulator", "StreamingMetrics",
]

FPR_LIMIT = 0.3
BOX_IOU_THRESHOLDS = (0.5, 0.75)
_RECALL_POINTS = np.linspace(0.0, 1.0, 101)


# --------------------------------------------------------------------------------------------- helpers

def _as_positive(labels) -> np.ndarray:
    """1/True/"defect" -> True; 0/False/"good" -> False. Any other string is refused, not guessed."""
    y = np.asarray(labels).reshape(-1)
    if y.dtype.kind in "USO":
        strs = y.astype(str)
        unknown = sorted(set(strs.tolist()) - {"good", "defect"})
        if unknown:
            raise ValueError(f"string labels must be 'good' or 'defect', got {unknown[:3]}")
        return strs == "defect"
    return y.astype(bool)


def _flat_labels_scores(labels, scores) -> tuple[np.ndarray, np.ndarray]:
    y = _as_positive(labels)
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    if y.shape != s.shape:
        raise ValueError(f"labels and scores differ in size: {y.size} vs {s.size}")
    if y.size == 0:
        raise ValueError("no samples")
    if not np.all(np.isfinite(s)):
        raise ValueError("scores contain NaN or infinity")
    return y, s


def _stack_pixels(masks, maps) -> tuple[np.ndarray, np.ndarray]:
    """Lists (or stacked arrays) of per-image masks and maps -> flat (P,) bool, (P,) float64."""
    masks = [np.asarray(m) for m in masks]
    maps = [np.asarray(a) for a in maps]
    if len(masks) != len(maps):
        raise ValueError(f"{len(masks)} masks but {len(maps)} anomaly maps")
    for i, (m, a) in enumerate(zip(masks, maps)):
        if m.shape != a.shape:
            raise ValueError(f"image {i}: mask shape {m.shape} differs from anomaly map shape {a.shape}")
    y = np.concatenate([m.reshape(-1) for m in masks]).astype(bool)
    s = np.concatenate([a.reshape(-1) for a in maps]).astype(np.float64)
    return y, s


def _cumulative_counts(y: np.ndarray, s: np.ndarray, weight_pos=None, weight_neg=None):
    """Sort by descending score; return (tp, fp, thresholds) at each distinct score (ties = one step).
    ``weight_*`` replace the 0/1 counts (used for PRO, where each pixel carries its component weight)."""
    order = np.argsort(-s)  # ties need no stable order: they are grouped into one step below
    s_sorted = s[order]
    wp = y[order].astype(np.float64) if weight_pos is None else weight_pos[order]
    wn = (~y[order]).astype(np.float64) if weight_neg is None else weight_neg[order]
    # Last index of every run of equal scores: the curve only moves once per distinct threshold.
    last = np.r_[np.nonzero(np.diff(s_sorted))[0], s_sorted.size - 1]
    tp = np.cumsum(wp)[last]
    fp = np.cumsum(wn)[last]
    return tp, fp, s_sorted[last]


def _thin(n: int, max_points: int | None) -> np.ndarray:
    if max_points is None or n <= max_points:
        return np.arange(n)
    return np.unique(np.round(np.linspace(0, n - 1, max_points)).astype(int))


# ----------------------------------------------------------------------------------------- ROC / AUROC

def roc_curve(labels, scores, max_points: int | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Exact ROC: (fpr, tpr, thresholds), starting at (0, 0) with threshold +inf, one point per distinct
    score in descending order. ``max_points`` thins the arrays for plotting (the AUROC uses all)."""
    y, s = _flat_labels_scores(labels, scores)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        raise ValueError(f"ROC needs both classes: {n_pos} defect and {n_neg} good samples")
    tp, fp, thr = _cumulative_counts(y, s)
    fpr = np.r_[0.0, fp / n_neg]
    tpr = np.r_[0.0, tp / n_pos]
    thr = np.r_[np.inf, thr]
    keep = _thin(fpr.size, max_points)
    return fpr[keep], tpr[keep], thr[keep]


def auroc(labels, scores) -> float:
    """Area under the exact ROC curve (tied scores get half credit)."""
    fpr, tpr, _ = roc_curve(labels, scores)
    return float(np.trapezoid(tpr, fpr))


def image_auroc(labels, scores) -> float:
    """Image-level AUROC: ``labels`` (N,) 1 = defect, ``scores`` (N,) image anomaly scores."""
    return auroc(labels, scores)


def pixel_auroc(masks, maps) -> float:
    """Pixel-level AUROC over every pixel of every image: ``masks`` N bool (H, W) ground truths
    (all False for good images), ``maps`` N float (H, W) anomaly maps of the same sizes."""
    y, s = _stack_pixels(masks, maps)
    return auroc(y, s)


# ---------------------------------------------------------------------------------------------- AU-PRO

def _component_weights(masks) -> tuple[np.ndarray, int]:
    """Per pixel 1 / (K * |C_k|) inside component k (K components over all images), else 0."""
    import cv2

    weights = []
    sizes = []
    labelled = []
    for m in masks:
        m = np.asarray(m).astype(np.uint8)
        n, lab = cv2.connectedComponents(m, connectivity=8)
        counts = np.bincount(lab.reshape(-1), minlength=n).astype(np.float64)
        labelled.append((lab, counts, n))
        sizes.extend(counts[1:].tolist())
    k = len(sizes)
    for lab, counts, n in labelled:
        per_label = np.zeros(n, dtype=np.float64)
        if n > 1 and k > 0:
            per_label[1:] = 1.0 / (k * counts[1:])
        weights.append(per_label[lab].reshape(-1))
    return (np.concatenate(weights) if weights else np.zeros(0)), k


def pro_curve(masks, maps, max_points: int | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Exact per-region-overlap curve: (fpr, pro, thresholds), from (0, 0) at threshold +inf to (1, 1).
    ``masks`` N bool (H, W), ``maps`` N float (H, W). ``max_points`` thins the arrays for plotting."""
    y, s = _stack_pixels(masks, maps)
    if not np.all(np.isfinite(s)):
        raise ValueError("anomaly maps contain NaN or infinity")
    w_pos, k = _component_weights(masks)
    n_good = int((~y).sum())
    if k == 0 or n_good == 0:
        raise ValueError(f"PRO needs defect regions and good pixels: {k} regions, {n_good} good pixels")
    pro, fp, thr = _cumulative_counts(y, s, weight_pos=w_pos)
    fpr = np.r_[0.0, fp / n_good]
    pro = np.r_[0.0, np.minimum(pro, 1.0)]  # cumulative float sums can overshoot 1 by an ulp
    thr = np.r_[np.inf, thr]
    keep = _thin(fpr.size, max_points)
    return fpr[keep], pro[keep], thr[keep]


def _area_up_to(x: np.ndarray, y: np.ndarray, limit: float) -> float:
    """Trapezoid area under a monotone-in-x curve for x in [0, limit], interpolating y at ``limit``."""
    inside = x <= limit
    xs, ys = x[inside], y[inside]
    if xs[-1] < limit and inside.sum() < x.size:
        j = int(np.argmax(~inside))  # first point beyond the limit
        x0, y0, x1, y1 = x[j - 1], y[j - 1], x[j], y[j]
        y_lim = y0 + (y1 - y0) * (limit - x0) / (x1 - x0)
        xs, ys = np.r_[xs, limit], np.r_[ys, y_lim]
    return float(np.trapezoid(ys, xs))


def au_pro(masks, maps, fpr_limit: float = FPR_LIMIT) -> float:
    """Area under the PRO curve up to ``fpr_limit``, normalised by ``fpr_limit`` (1 = perfect)."""
    if not 0.0 < fpr_limit <= 1.0:
        raise ValueError(f"fpr_limit must be in (0, 1], got {fpr_limit}")
    fpr, pro, _ = pro_curve(masks, maps)
    return pro_area(fpr, pro, fpr_limit)


def pro_area(fpr: np.ndarray, pro: np.ndarray, fpr_limit: float = FPR_LIMIT) -> float:
    """AU-PRO of an exact PRO curve (``pro_curve``'s fpr, pro), normalised by ``fpr_limit``: for a caller
    that also keeps the curve, so it is computed once."""
    return _area_up_to(fpr, pro, fpr_limit) / fpr_limit


# --------------------------------------------------------------------------------------- PR / AP / F1

def precision_recall_curve(labels, scores) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(precision, recall, thresholds) at each distinct score, descending threshold (recall ascending)."""
    y, s = _flat_labels_scores(labels, scores)
    n_pos = int(y.sum())
    if n_pos == 0:
        raise ValueError("precision/recall need at least one defect sample")
    tp, fp, thr = _cumulative_counts(y, s)
    return tp / (tp + fp), tp / n_pos, thr


def average_precision(labels, scores) -> float:
    """AP = sum_n (R_n - R_{n-1}) P_n over the exact PR curve (no interpolation), as scikit-learn."""
    precision, recall, _ = precision_recall_curve(labels, scores)
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def f1_max(labels, scores) -> tuple[float, float]:
    """(best F1, its threshold): F1 of ``score >= threshold`` maximised over every distinct score."""
    y, s = _flat_labels_scores(labels, scores)
    n_pos = int(y.sum())
    if n_pos == 0:
        raise ValueError("F1 needs at least one defect sample")
    tp, fp, thr = _cumulative_counts(y, s)
    f1 = 2 * tp / (tp + fp + n_pos)  # = 2PR / (P + R)
    i = int(np.argmax(f1))
    return float(f1[i]), float(thr[i])


# ------------------------------------------------------------------------------ binary mask / decision

def iou(pred, target) -> float:
    """Intersection over union of two binary masks (any shape, stacked images allowed).
    Both empty -> 1.0 (nothing to find, nothing found)."""
    p, t = np.asarray(pred).astype(bool), np.asarray(target).astype(bool)
    if p.shape != t.shape:
        raise ValueError(f"pred shape {p.shape} differs from target shape {t.shape}")
    union = np.logical_or(p, t).sum()
    return 1.0 if union == 0 else float(np.logical_and(p, t).sum() / union)


def dice(pred, target) -> float:
    """Dice = 2|P∩T| / (|P| + |T|) of two binary masks. Both empty -> 1.0."""
    p, t = np.asarray(pred).astype(bool), np.asarray(target).astype(bool)
    if p.shape != t.shape:
        raise ValueError(f"pred shape {p.shape} differs from target shape {t.shape}")
    total = p.sum() + t.sum()
    return 1.0 if total == 0 else float(2 * np.logical_and(p, t).sum() / total)


def accuracy(labels, predictions) -> float:
    """Fraction of equal entries; works for 0/1, bool or string labels ("good"/"defect")."""
    a, b = np.asarray(labels).reshape(-1), np.asarray(predictions).reshape(-1)
    if a.shape != b.shape:
        raise ValueError(f"labels and predictions differ in size: {a.size} vs {b.size}")
    if a.size == 0:
        raise ValueError("no samples")
    return float(np.mean(a == b))


# ------------------------------------------------------------------------------------------- boxes

def mask_boxes(mask, min_area_px: int = 1) -> np.ndarray:
    """(K, 4) float64 boxes (x0, y0, x1, y1), exclusive ends, of the 8-connected components of ``mask``."""
    import cv2

    m = np.asarray(mask).astype(np.uint8)
    n, _, stats, _ = cv2.connectedComponentsWithStats(m, connectivity=8)
    boxes = [(x, y, x + w, y + h) for x, y, w, h, a in stats[1:] if a >= min_area_px]
    return np.asarray(boxes, dtype=np.float64).reshape(-1, 4)


def map_boxes(anomaly_map, threshold: float, min_area_px: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Predicted boxes from an anomaly map: components of ``map >= threshold``, each scored by the
    map's maximum inside it. Returns ((M, 4) boxes, (M,) scores)."""
    import cv2

    a = np.asarray(anomaly_map, dtype=np.float64)
    n, lab, stats, _ = cv2.connectedComponentsWithStats((a >= threshold).astype(np.uint8), connectivity=8)
    boxes, scores = [], []
    if n > 1:
        peaks = np.full(n, -np.inf)
        np.maximum.at(peaks, lab.reshape(-1), a.reshape(-1))
        for i in range(1, n):
            x, y, w, h, area = (int(v) for v in stats[i])
            if area >= min_area_px:
                boxes.append((x, y, x + w, y + h))
                scores.append(peaks[i])
    return np.asarray(boxes, dtype=np.float64).reshape(-1, 4), np.asarray(scores, dtype=np.float64)


def box_iou(a, b) -> np.ndarray:
    """(len(a), len(b)) IoU matrix of (x0, y0, x1, y1) boxes with exclusive ends."""
    a = np.asarray(a, dtype=np.float64).reshape(-1, 4)
    b = np.asarray(b, dtype=np.float64).reshape(-1, 4)
    ix = np.clip(np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0]), 0, None)
    iy = np.clip(np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1]), 0, None)
    inter = ix * iy
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


def box_ap(gt_boxes: Sequence, pred_boxes: Sequence, pred_scores: Sequence, iou_threshold: float = 0.5) -> float:
    """COCO-style AP of one class: per image lists of GT (K_i, 4) and predicted (M_i, 4) boxes with
    scores. Predictions are taken in descending score order over all images (stable for ties); each
    matches the unmatched GT box of its image with the highest IoU >= ``iou_threshold``. Precision is
    made monotone (envelope) and sampled at 101 recall points. No GT boxes at all -> NaN (COCO's -1)."""
    if not (len(gt_boxes) == len(pred_boxes) == len(pred_scores)):
        raise ValueError(f"per-image lists differ in length: {len(gt_boxes)} GT, {len(pred_boxes)} boxes, "
                         f"{len(pred_scores)} scores")
    gts = [np.asarray(g, dtype=np.float64).reshape(-1, 4) for g in gt_boxes]
    n_gt = sum(len(g) for g in gts)
    if n_gt == 0:
        return float("nan")
    entries = []  # (score, image, box index)
    for i, (b, s) in enumerate(zip(pred_boxes, pred_scores)):
        b = np.asarray(b, dtype=np.float64).reshape(-1, 4)
        s = np.asarray(s, dtype=np.float64).reshape(-1)
        if len(b) != len(s):
            raise ValueError(f"image {i}: {len(b)} predicted boxes but {len(s)} scores")
        entries.extend((float(s[j]), i, j) for j in range(len(b)))
    if not entries:
        return 0.0
    entries.sort(key=lambda e: -e[0])
    ious = [box_iou(np.asarray(pred_boxes[i], dtype=np.float64).reshape(-1, 4), g) for i, g in enumerate(gts)]
    taken = [np.zeros(len(g), dtype=bool) for g in gts]
    tp = np.zeros(len(entries))
    for n, (_, i, j) in enumerate(entries):
        if len(gts[i]) == 0:
            continue
        cand = np.where(taken[i], -1.0, ious[i][j])
        best = int(np.argmax(cand))
        if cand[best] >= iou_threshold:
            taken[i][best] = True
            tp[n] = 1
    ctp = np.cumsum(tp)
    recall = ctp / n_gt
    precision = ctp / np.arange(1, len(entries) + 1)
    envelope = np.maximum.accumulate(precision[::-1])[::-1]
    idx = np.searchsorted(recall, _RECALL_POINTS, side="left")
    sampled = np.where(idx < len(envelope), envelope[np.minimum(idx, len(envelope) - 1)], 0.0)
    return float(sampled.mean())


def box_map(gt_boxes: Sequence, pred_boxes: Sequence, pred_scores: Sequence,
            gt_labels: Sequence | None = None, pred_labels: Sequence | None = None,
            iou_thresholds: Sequence[float] = BOX_IOU_THRESHOLDS) -> dict[str, float]:
    """mAP over classes at each IoU threshold: {"map@0.5": .., "map@0.75": ..}. Without labels all boxes
    are one class ("defect"). Classes with no GT box are left out of the mean (as COCO does)."""
    n_img = len(gt_boxes)
    if gt_labels is None:
        gt_labels = [["defect"] * len(np.asarray(g).reshape(-1, 4)) for g in gt_boxes]
    if pred_labels is None:
        pred_labels = [["defect"] * len(np.asarray(b).reshape(-1, 4)) for b in pred_boxes]
    classes = sorted({c for labs in gt_labels for c in labs})
    out: dict[str, float] = {}
    for t in iou_thresholds:
        aps = []
        for c in classes:
            g_c, b_c, s_c = [], [], []
            for i in range(n_img):
                g = np.asarray(gt_boxes[i], dtype=np.float64).reshape(-1, 4)
                b = np.asarray(pred_boxes[i], dtype=np.float64).reshape(-1, 4)
                s = np.asarray(pred_scores[i], dtype=np.float64).reshape(-1)
                gl, pl = np.asarray(gt_labels[i], dtype=object), np.asarray(pred_labels[i], dtype=object)
                g_c.append(g[gl == c] if len(g) else g)
                b_c.append(b[pl == c] if len(b) else b)
                s_c.append(s[pl == c] if len(s) else s)
            aps.append(box_ap(g_c, b_c, s_c, t))
        out[f"map@{t:g}"] = float(np.mean(aps)) if aps else float("nan")
    return out


def box_map_from_maps(gt_masks, maps, threshold: float, min_area_px: int = 1,
                      iou_thresholds: Sequence[float] = BOX_IOU_THRESHOLDS) -> dict[str, float]:
    """Class-agnostic box mAP: GT boxes from mask components, predicted boxes from ``map >= threshold``
    components scored by their peak."""
    gts = [mask_boxes(m) for m in gt_masks]
    preds = [map_boxes(a, threshold, min_area_px) for a in maps]
    return box_map(gts, [p[0] for p in preds], [p[1] for p in preds], iou_thresholds=iou_thresholds)


# ------------------------------------------------------------------------------------------ summary

def _one_sort_stats(y: np.ndarray, s: np.ndarray) -> dict[str, float]:
    """auroc, ap, f1_max, f1_threshold from one sort (the same numbers as the separate functions)."""
    return _stats_from_counts(*_cumulative_counts(y, s))


def _stats_from_counts(tp: np.ndarray, fp: np.ndarray, thr: np.ndarray) -> dict[str, float]:
    """auroc, ap, f1_max, f1_threshold of cumulative (tp, fp) counts at descending thresholds ``thr``."""
    n_pos, n_neg = tp[-1], fp[-1]
    f1 = 2 * tp / (tp + fp + n_pos)
    i = int(np.argmax(f1))
    return {"auroc": float(np.trapezoid(np.r_[0.0, tp / n_pos], np.r_[0.0, fp / n_neg])),
            "ap": float(np.sum(np.diff(np.r_[0.0, tp / n_pos]) * tp / (tp + fp))),
            "f1_max": float(f1[i]), "f1_threshold": float(thr[i])}


def compute_all(labels, scores, masks=None, maps=None, threshold: float | None = None,
                pixel_threshold: float | None = None, fpr_limit: float = FPR_LIMIT) -> dict[str, float]:
    """Every metric that the inputs allow, as one flat dict of floats (for ``--json`` reports).

    ``labels`` (N,) 1 = defect, ``scores`` (N,) image scores; optional ``masks``/``maps`` N x (H, W).
    ``threshold`` (image decision) defaults to the F1-max threshold; ``pixel_threshold`` (segmentation
    and boxes) defaults to the pixel F1-max threshold. Metrics a split cannot support (one class only)
    are left out rather than faked."""
    y, s = _flat_labels_scores(labels, scores)
    out: dict[str, float] = {"n_images": float(y.size), "n_defect": float(y.sum())}
    if 0 < y.sum() < y.size:
        out.update({f"image_{k}": v for k, v in _one_sort_stats(y, s).items()})
    if threshold is None:
        threshold = out.get("image_f1_threshold")
    if threshold is not None:
        out["threshold"] = float(threshold)
        out["accuracy"] = accuracy(y, s >= threshold)
    if masks is not None and maps is not None:
        py, ps = _stack_pixels(masks, maps)
        if 0 < py.sum() < py.size:
            out.update({f"pixel_{k}": v for k, v in _one_sort_stats(py, ps).items()})
            out["au_pro"] = au_pro(masks, maps, fpr_limit)
        if pixel_threshold is None:
            pixel_threshold = out.get("pixel_f1_threshold")
        if pixel_threshold is not None:
            pred = ps >= pixel_threshold
            out["pixel_threshold"] = float(pixel_threshold)
            out["iou"] = iou(pred, py)
            out["dice"] = dice(pred, py)
            if py.any():
                out.update({f"box_{k}": v for k, v in
                            box_map_from_maps(masks, maps, pixel_threshold).items()})
    return out


# ------------------------------------------------------------------------- bounded pixel metrics

def _order_keys(a) -> np.ndarray:
    """float32 scores -> int64 keys in the same order (their bit patterns, negatives mirrored; -0 = +0)."""
    i = np.asarray(a, dtype=np.float32).view(np.int32).astype(np.int64)
    return np.where(i < 0, -(i & 0x7FFFFFFF), i)


def _key_values(k) -> np.ndarray:
    """``_order_keys``' inverse: integer keys -> the float32 scores they stand for, as float64."""
    k = np.clip(np.asarray(k), -0x7F800000, 0x7F800000).astype(np.int64)  # edges of empty bins: at most ±inf
    bits = np.where(k < 0, (-k) | 0x80000000, k).astype(np.uint32)
    return bits.view(np.float32).astype(np.float64)


HIST_BINS = 1 << 16  # score bins of PixelAccumulator: 3 float64 histograms, 1.5 MB, whatever the split


class PixelAccumulator:
    """Pixel AUROC and AU-PRO image by image in O(HIST_BINS) memory (see the module doc)."""

    def __init__(self, bins: int = HIST_BINS, relative: bool = False):
        if bins < 2 or bins % 2:
            raise ValueError(f"bins must be an even number >= 2, got {bins}")
        self.bins = bins
        self.lo: float | None = None  # left edge of bin 0, in keys (``_key``)
        self.width = 0.0  # bin width, in keys
        self.log_scale = relative  # keys: the scores' float32 bit patterns (True) or the scores (False)
        self.good = np.zeros(bins)  # good-pixel counts
        self.defect = np.zeros(bins)  # defect-pixel counts
        self.region = np.zeros(bins)  # defect pixels weighted 1/|C_k|
        self.n_regions = 0
        self.n_images = 0

    def _cover(self, vmin: float, vmax: float) -> None:
        if self.lo is None:
            span = vmax - vmin
            self.lo = vmin
            floor = 1.0 if self.log_scale else max(abs(vmin), 1.0) * 1e-6  # one float32 step, or a relative one
            self.width = max(span, floor) / (self.bins - 1)
        while vmin < self.lo or vmax >= self.lo + self.width * self.bins:
            # double the width, merging neighbour pairs; the old range becomes one half of the new one
            left = vmin < self.lo
            for h in (self.good, self.defect, self.region):
                merged = h.reshape(-1, 2).sum(1)
                h[:] = 0.0
                if left:
                    h[self.bins // 2:] = merged
                else:
                    h[:self.bins // 2] = merged
            if left:
                self.lo -= self.width * self.bins
            self.width *= 2.0

    def add(self, mask, anomaly_map) -> None:
        """One image: ``mask`` bool (H, W) ground truth (all False on a good image), ``anomaly_map`` (H, W)."""
        import cv2

        m = np.asarray(mask).astype(bool)
        a = np.asarray(anomaly_map, dtype=np.float64)
        if m.shape != a.shape:
            raise ValueError(f"image {self.n_images}: mask shape {m.shape} differs from anomaly map shape {a.shape}")
        if not np.all(np.isfinite(a)):
            raise ValueError(f"image {self.n_images}: anomaly map contains NaN or infinity")
        k = self._key(a)
        self._cover(float(k.min()), float(k.max()))
        idx = np.minimum(((k - self.lo) / self.width).astype(np.int64), self.bins - 1).reshape(-1)
        flat = m.reshape(-1)
        self.good += np.bincount(idx[~flat], minlength=self.bins)
        if flat.any():
            self.defect += np.bincount(idx[flat], minlength=self.bins)
            n, lab = cv2.connectedComponents(m.astype(np.uint8), connectivity=8)
            counts = np.bincount(lab.reshape(-1), minlength=n).astype(np.float64)
            per_label = np.zeros(n)
            per_label[1:] = 1.0 / counts[1:]
            self.region += np.bincount(idx[flat], weights=per_label[lab.reshape(-1)[flat]], minlength=self.bins)
            self.n_regions += n - 1
        self.n_images += 1

    def _descending(self, h: np.ndarray) -> np.ndarray:
        """Cumulative counts at thresholds = bin left edges, from the top bin down (ties within a bin)."""
        return np.cumsum(h[::-1])

    def pixel_auroc(self) -> float:
        n_pos, n_neg = self.defect.sum(), self.good.sum()
        if n_pos == 0 or n_neg == 0:
            raise ValueError(f"ROC needs both classes: {int(n_pos)} defect and {int(n_neg)} good pixels")
        tpr = np.r_[0.0, self._descending(self.defect) / n_pos]
        fpr = np.r_[0.0, self._descending(self.good) / n_neg]
        return float(np.trapezoid(tpr, fpr))

    def pro_curve(self, max_points: int | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(fpr, pro, thresholds) at the edges of the non-empty bins, from (0, 0) at +inf, as ``pro_curve``;
        ``max_points`` thins it for plotting."""
        n_good = self.good.sum()
        if self.n_regions == 0 or n_good == 0:
            raise ValueError(f"PRO needs defect regions and good pixels: {self.n_regions} regions, "
                             f"{int(n_good)} good pixels")
        keep = ((self.defect + self.good) > 0)[::-1]
        fpr = np.r_[0.0, (self._descending(self.good) / n_good)[keep]]
        pro = np.r_[0.0, np.minimum(self._descending(self.region) / self.n_regions, 1.0)[keep]]
        thr = np.r_[np.inf, self._edges_desc()[keep]]
        keep = _thin(fpr.size, max_points)
        return fpr[keep], pro[keep], thr[keep]

    def au_pro(self, fpr_limit: float = FPR_LIMIT) -> float:
        if not 0.0 < fpr_limit <= 1.0:
            raise ValueError(f"fpr_limit must be in (0, 1], got {fpr_limit}")
        fpr, pro, _ = self.pro_curve()
        return pro_area(fpr, pro, fpr_limit)

    def _key(self, a: np.ndarray) -> np.ndarray:
        return _order_keys(a) if self.log_scale else a

    def method(self) -> str:
        """How the pixel figures were computed, for a report: "histogram, <bins> bins[, relative]"."""
        return f"histogram, {self.bins} bins" + (", relative (float32 keys)" if self.log_scale else "")

    def _edges_desc(self) -> np.ndarray:
        """Bin left edges as scores, top bin first: the least float32 score in each bin."""
        edges = self.lo + self.width * np.arange(self.bins)
        return (_key_values(np.ceil(edges)) if self.log_scale else edges)[::-1]

    def auroc_bound(self) -> float:
        """The most ``pixel_auroc`` can differ from the exact one: half the share of (defect, good) pixel pairs
        that share a bin (inside a bin, the order the exact curve sees is unknown)."""
        n_pos, n_neg = self.defect.sum(), self.good.sum()
        return float(0.5 * np.dot(self.defect, self.good) / (n_pos * n_neg)) if n_pos and n_neg else 0.0

    def au_pro_bound(self, fpr_limit: float = FPR_LIMIT) -> float:
        """The most ``au_pro`` can differ from the exact one: between two bin edges the exact (monotone) curve
        stays in the box the two points span, so each step's area is off by at most half that box."""
        fpr, pro, _ = self.pro_curve()
        inside = fpr[:-1] < fpr_limit
        df = np.minimum(fpr[1:], fpr_limit) - fpr[:-1]
        return float(0.5 * np.sum((df * np.diff(pro))[inside]) / fpr_limit)

    def _occupied(self):
        """Cumulative (defect, good) counts and thresholds at the left edge of every non-empty bin, descending."""
        keep = ((self.defect + self.good) > 0)[::-1]
        return (self._descending(self.defect)[keep], self._descending(self.good)[keep], self._edges_desc()[keep])

    def roc_curve(self, max_points: int | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(fpr, tpr, thresholds) at the edges of the non-empty bins, from (0, 0) at +inf, as ``roc_curve``."""
        tp, fp, thr = self._occupied()
        if tp.size == 0 or tp[-1] == 0 or fp[-1] == 0:
            raise ValueError(f"ROC needs both classes: {int(self.defect.sum())} defect and "
                             f"{int(self.good.sum())} good pixels")
        fpr, tpr, thr = np.r_[0.0, fp / fp[-1]], np.r_[0.0, tp / tp[-1]], np.r_[np.inf, thr]
        keep = _thin(fpr.size, max_points)
        return fpr[keep], tpr[keep], thr[keep]

    def pixel_stats(self) -> dict[str, float]:
        """auroc, ap, f1_max and f1_threshold (a bin edge) of the pixels, as ``compute_all``'s pixel_* figures."""
        tp, fp, thr = self._occupied()
        if tp.size == 0 or tp[-1] == 0 or fp[-1] == 0:
            raise ValueError(f"pixel figures need both classes: {int(self.defect.sum())} defect and "
                             f"{int(self.good.sum())} good pixels")
        return _stats_from_counts(tp, fp, thr)

    def counts_at(self, threshold: float) -> tuple[float, float]:
        """(defect, good) pixels scoring at or above ``threshold``, exact when it is a bin edge (``pixel_stats``'
        f1_threshold), else to the nearest edge."""
        k = float(self._key(np.asarray([threshold], np.float64))[0])
        b = int(np.clip(np.floor((k - self.lo) / self.width + 1e-9), 0, self.bins))  # the bin it opens
        return float(self.defect[b:].sum()), float(self.good[b:].sum())


class StreamingMetrics:
    """``compute_all`` one image at a time, in memory that does not grow with the maps: image scores and labels
    are kept (two floats an image), the maps go into a ``PixelAccumulator`` (``relative`` bins: pixel
    AUROC/AP/F1 and AU-PRO from its histograms) and, when ``pixel_threshold`` is given, each map's
    segmentation counts and boxes at it are taken as it arrives (exact: iou, dice and box mAP as
    ``compute_all``). Without one, iou and dice are at the pixel F1-max threshold as in ``compute_all`` (a bin
    edge: the counts are exact there), and the box mAP, which would need every map at a threshold known only
    at the end, is taken at ``box_threshold`` instead (said as ``box_threshold``; left out without one).
    ``result()`` also says ``pixel_method``, ``pixel_auroc_bound`` and ``au_pro_bound``."""

    def __init__(self, threshold: float | None = None, pixel_threshold: float | None = None,
                 fpr_limit: float = FPR_LIMIT, bins: int = HIST_BINS, box_threshold: float | None = None):
        self.threshold, self.pixel_threshold, self.fpr_limit = threshold, pixel_threshold, fpr_limit
        self.box_threshold = pixel_threshold if pixel_threshold is not None else box_threshold
        self.labels: list[bool] = []
        self.scores: list[float] = []
        self.pixels = PixelAccumulator(bins, relative=True)
        self.seg = np.zeros(3)  # |pred ∩ gt|, |pred|, |gt| at pixel_threshold
        self.gt_boxes: list[np.ndarray] = []
        self.pred_boxes: list[tuple[np.ndarray, np.ndarray]] = []

    def add(self, label, score: float, mask=None, anomaly_map=None) -> None:
        self.labels.append(bool(_as_positive([label])[0]))
        self.scores.append(float(score))
        if mask is None or anomaly_map is None:
            return
        self.pixels.add(mask, anomaly_map)
        m = np.asarray(mask).astype(bool)
        if self.pixel_threshold is not None:
            pred = np.asarray(anomaly_map) >= self.pixel_threshold
            self.seg += (np.logical_and(pred, m).sum(), pred.sum(), m.sum())
        if self.box_threshold is not None:
            self.gt_boxes.append(mask_boxes(m))
            self.pred_boxes.append(map_boxes(anomaly_map, self.box_threshold))

    def result(self) -> dict:
        y, s = _flat_labels_scores(self.labels, self.scores)
        out: dict = {"n_images": float(y.size), "n_defect": float(y.sum())}
        if 0 < y.sum() < y.size:
            out.update({f"image_{k}": v for k, v in _one_sort_stats(y, s).items()})
        threshold = self.threshold if self.threshold is not None else out.get("image_f1_threshold")
        if threshold is not None:
            out["threshold"] = float(threshold)
            out["accuracy"] = accuracy(y, s >= threshold)
        acc = self.pixels
        if acc.n_images == 0:
            return out
        n_pos, n_neg = acc.defect.sum(), acc.good.sum()
        out["pixel_method"] = acc.method()
        if n_pos and n_neg:
            out.update({f"pixel_{k}": v for k, v in acc.pixel_stats().items()})
            out["pixel_auroc_bound"] = acc.auroc_bound()
            out["au_pro"] = acc.au_pro(self.fpr_limit)
            out["au_pro_bound"] = acc.au_pro_bound(self.fpr_limit)
        if self.pixel_threshold is not None:
            inter, n_pred, n_gt = self.seg
            out["pixel_threshold"] = float(self.pixel_threshold)
        elif "pixel_f1_threshold" in out:
            out["pixel_threshold"] = out["pixel_f1_threshold"]
            inter, n_fp = acc.counts_at(out["pixel_threshold"])
            n_pred, n_gt = inter + n_fp, n_pos
        else:
            return out
        out["iou"] = 1.0 if n_pred + n_gt - inter == 0 else float(inter / (n_pred + n_gt - inter))
        out["dice"] = 1.0 if n_pred + n_gt == 0 else float(2 * inter / (n_pred + n_gt))
        if self.box_threshold is not None and n_pos:
            if self.pixel_threshold is None:
                out["box_threshold"] = float(self.box_threshold)
            out.update({f"box_{k}": v for k, v in box_map(self.gt_boxes, [b for b, _ in self.pred_boxes],
                                                            [c for _, c in self.pred_boxes]).items()})
        return out
