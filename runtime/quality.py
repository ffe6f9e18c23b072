"""One row of the quality table: the figures a plant reads first, per product and as the mean over products.

Every detector `lineside bench quality` compares (the teacher's modes, the students, the cascade and the
reference PatchCore detectors) is reduced here, from the same per-image scores, maps and decisions, so
the rows differ only in the detector. Columns: I-AUROC, P-AUROC, AU-PRO (FPR <= 0.3), F1-max, accuracy
at the detector's own calibrated threshold (not an oracle one), and recall per defect type at that
threshold. Products are scored separately (a line with several products deploys one threshold per
product only if it has one bank per product, but the ranking figures are per product either way) and
the headline is their unweighted mean, as MVTec AD papers report the mean over categories. Each product
also carries its ROC and PRO curves as a few points (``curves``), so a report can draw them without the
maps.

Pixel figures (P-AUROC, AU-PRO) come from ``runtime.metrics.PixelAccumulator``: a row is built image by
image (``QualityAccumulator``; ``quality_row`` on lists is the same thing), so an evaluation never holds
its maps. Each product says how (``pixel_method``, "histogram, 65536 bins") and how far from the exact
sort each figure can be (``pixel_auroc_bound``, ``au_pro_bound``); every other column is exact.
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from runtime import metrics as M

COLUMNS = ("image_auroc", "pixel_auroc", "au_pro", "f1_max", "accuracy")
CONFUSION = ("tp", "fp", "fn", "tn")  # at the detector's calibrated threshold; "defect" is positive
# Where a plant must be told in words: a ranking no better than a coin, or a threshold that lets most defects
# through / rejects many good parts. Chance is 0.5; below 0.55 a 60+60 image set cannot tell it from chance.
CHANCE_AUROC = 0.55
MAX_ESCAPE_RATE = 0.5
MAX_FALSE_REJECT_RATE = 0.2
ROC_POINTS = 64  # exact ROC points kept for plotting: a smooth line, and the JSON stays small
PRO_GRID = np.linspace(0.0, M.FPR_LIMIT, 31)  # the PRO curve where AU-PRO integrates it


def safe_metric(fn, *a, **kw) -> float | None:
    """``fn(*a, **kw)`` as a float, or None where the images cannot support it (one class only, no defect
    pixels: runtime.metrics raises ValueError) or it is not finite."""
    try:
        v = float(fn(*a, **kw))
    except ValueError:  # one class only, or no defect pixels
        return None
    return v if math.isfinite(v) else None


def row_figures(labels: Sequence[int], defect_types: Sequence[str], scores: Sequence[float],
                maps: Sequence[np.ndarray], masks: Sequence[np.ndarray], decisions: Sequence[int]) -> dict:
    """Figures of one group of images. ``decisions`` are 1 for "defect" at the calibrated threshold."""
    pixels = M.PixelAccumulator(relative=True)
    for m, a in zip(masks, maps):
        pixels.add(m, a)
    return _figures(labels, defect_types, scores, decisions, pixels)


def _figures(labels, defect_types, scores, decisions, pixels: M.PixelAccumulator) -> dict:
    y = np.asarray(labels, int)
    s = np.asarray(scores, float)
    d = np.asarray(decisions, int)
    try:  # the PRO curve, once: AU-PRO and the plotted points both come from it
        pro = pixels.pro_curve()[:2]
    except ValueError:  # no defect regions, or no good pixels
        pro = None
    p_auroc = safe_metric(pixels.pixel_auroc)
    out = {"n_images": int(len(y)), "n_defect": int(y.sum()),
           "image_auroc": safe_metric(M.image_auroc, y, s),
           "pixel_auroc": p_auroc,
           "au_pro": None if pro is None else safe_metric(M.pro_area, *pro),
           "f1_max": safe_metric(lambda a, b: M.f1_max(a, b)[0], y, s),
           "accuracy": float(M.accuracy(y, d)) if len(y) else None,
           "false_reject_rate": float(d[y == 0].mean()) if (y == 0).any() else None,
           "escape_rate": float(1 - d[y == 1].mean()) if (y == 1).any() else None,
           "pixel_method": pixels.method(),
           "pixel_auroc_bound": pixels.auroc_bound() if p_auroc is not None else None,
           "au_pro_bound": pixels.au_pro_bound() if pro is not None else None}
    types = np.asarray(defect_types)
    out["recall_per_type"] = {t: float(d[(y == 1) & (types == t)].mean())
                              for t in sorted(set(types[y == 1].tolist()))}
    out["confusion"] = {"tp": int(((y == 1) & (d == 1)).sum()), "fp": int(((y == 0) & (d == 1)).sum()),
                        "fn": int(((y == 1) & (d == 0)).sum()), "tn": int(((y == 0) & (d == 0)).sum())}
    out["curves"] = curve_points(y, s, pro)
    return out


def curve_points(labels, scores, pro: tuple[np.ndarray, np.ndarray] | None) -> dict:
    """{"roc": [fpr, tpr], "pro": [fpr, pro]} as short lists (ROC thinned to :data:`ROC_POINTS` exact
    points, the exact PRO curve ``pro`` interpolated on :data:`PRO_GRID`); a curve the images cannot
    support (one class only; ``pro`` None) is left out."""
    out = {}
    try:
        fpr, tpr, _ = M.roc_curve(labels, scores, max_points=ROC_POINTS)
        out["roc"] = [np.round(fpr, 4).tolist(), np.round(tpr, 4).tolist()]
    except ValueError:  # one class only
        pass
    if pro is not None:
        out["pro"] = [np.round(PRO_GRID, 4).tolist(), np.round(np.interp(PRO_GRID, *pro), 4).tolist()]
    return out


def warnings_for(row: dict) -> list[str]:
    """Plain-language warnings about one quality row's mean figures (empty when none applies)."""
    m, out = row["mean"], []
    if m.get("image_auroc") is not None and m["image_auroc"] <= CHANCE_AUROC:
        out.append(f"image ranking at chance (I-AUROC {m['image_auroc']:.3f}, chance 0.5): its scores do not "
                   "separate defective from good parts")
    if m.get("escape_rate") is not None and m["escape_rate"] >= MAX_ESCAPE_RATE:
        out.append(f"{m['escape_rate']:.0%} of defective parts pass at the calibrated threshold")
    if m.get("false_reject_rate") is not None and m["false_reject_rate"] >= MAX_FALSE_REJECT_RATE:
        out.append(f"{m['false_reject_rate']:.0%} of good parts are rejected at the calibrated threshold")
    return out


class QualityAccumulator:
    """A quality row image by image: per product the image columns (label, defect type, score, decision: a few
    values an image) and a ``PixelAccumulator`` of the maps, so memory stays O(products), whatever the split."""

    def __init__(self):
        self._groups: dict[str, dict] = {}

    def add(self, product: str, label: int, defect_type: str, score: float, anomaly_map, mask, decision: int) -> None:
        g = self._groups.setdefault(str(product), {"labels": [], "types": [], "scores": [], "decisions": [],
                                                   "pixels": M.PixelAccumulator(relative=True)})
        g["labels"].append(int(label))
        g["types"].append(defect_type)
        g["scores"].append(float(score))
        g["decisions"].append(int(decision))
        g["pixels"].add(mask, anomaly_map)

    def row(self) -> dict:
        """{"mean": {...}, "per_product": {product: {...}}}; the mean is over products of each column
        (a column a product cannot support is left out of that product's share)."""
        per = {p: _figures(g["labels"], g["types"], g["scores"], g["decisions"], g["pixels"])
               for p, g in sorted(self._groups.items())}
        mean = {}
        for c in COLUMNS + ("false_reject_rate", "escape_rate"):
            vals = [r[c] for r in per.values() if r[c] is not None]
            mean[c] = float(np.mean(vals)) if vals else None
        types = sorted({t for r in per.values() for t in r["recall_per_type"]})
        mean["recall_per_type"] = {t: float(np.mean([r["recall_per_type"][t] for r in per.values()
                                                     if t in r["recall_per_type"]])) for t in types}
        mean["n_images"] = int(sum(r["n_images"] for r in per.values()))
        mean["confusion"] = {k: int(sum(r["confusion"][k] for r in per.values())) for k in CONFUSION}
        mean["pixel_method"] = next((r["pixel_method"] for r in per.values()), None)
        return {"mean": mean, "per_product": per}


def quality_row(products: Sequence[str], labels, defect_types, scores, maps, masks, decisions) -> dict:
    """``QualityAccumulator``'s row of these lists (one entry per image)."""
    acc = QualityAccumulator()
    for i in range(len(products)):
        acc.add(products[i], labels[i], defect_types[i], scores[i], maps[i], masks[i], decisions[i])
    return acc.row()
