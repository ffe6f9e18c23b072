"""Threshold, uncertainty band and out-of-distribution limit on the validation split.

* threshold: the score cut that best agrees with the reference decisions (the teacher's, from
  ``teacher.pipeline.TeacherPipeline``, else ground-truth labels; ``reference`` says which);
* band [lo, hi] ∋ threshold: the narrowest (fewest val images inside) such that outside it the
  student's decision agrees with the reference on at least ``target_agreement`` of the val images;
  inside the band the edge asks the teacher;
* OOD limit: ``OOD_MARGIN`` × the largest mean nearest-bank distance of a good val image;
* fallback rate: the share of val images inside the band or beyond the OOD limit.
"""
from __future__ import annotations

import numpy as np

OOD_MARGIN = 1.2
GOOD_ONLY_MARGIN = 1.05  # threshold above the largest good score when the reference has no defects


def best_threshold(scores: np.ndarray, ref: np.ndarray) -> float:
    """Midpoint cut maximising agreement (score >= thr -> defect) with the bool reference decisions."""
    s = np.sort(np.unique(scores))
    if ref.all() or (~ref).all() or len(s) < 2:
        return float(scores.max() * GOOD_ONLY_MARGIN if not ref.any() else scores.min())
    cands = np.r_[s[0] - 1e-6, (s[1:] + s[:-1]) / 2, s[-1] + 1e-6]
    agree = [((scores >= c) == ref).mean() for c in cands]
    best = np.flatnonzero(np.isclose(agree, np.max(agree)))
    return float(cands[best[len(best) // 2]])  # the middle of the best plateau


def fit_band(scores: np.ndarray, ref: np.ndarray, threshold: float, target: float) -> tuple[float, float, float, float]:
    """-> (lo, hi, agreement outside, share inside). Exhaustive over val scores (n is small)."""
    n = len(scores)
    pred = scores >= threshold
    lows = np.r_[threshold, np.sort(scores[scores < threshold])[::-1]]
    highs = np.r_[threshold, np.sort(scores[scores >= threshold])]
    best = None
    for lo in lows:
        for hi in highs:
            outside = (scores < lo) | (scores > hi)
            k = int(outside.sum())
            agree = float((pred[outside] == ref[outside]).mean()) if k else 1.0
            inside = 1.0 - k / n
            if agree >= target and (best is None or inside < best[3] - 1e-12):
                best = (float(lo), float(hi), agree, inside)
                break  # higher his only widen the band for this lo
    if best is None:  # everything inside
        best = (float(scores.min()), float(scores.max()), 1.0, 1.0)
    return best


def calibrate(scores: np.ndarray, mean_nn: np.ndarray, labels: np.ndarray, *,
              reference: np.ndarray | None = None, reference_name: str = "labels",
              target_agreement: float = 0.995) -> dict:
    """All arrays over the val split; labels 1 = defect; reference: bool teacher decisions (defect)."""
    scores = np.asarray(scores, float)
    ref = (np.asarray(labels) == 1) if reference is None else np.asarray(reference, bool)
    if reference is None:
        reference_name = "labels"
    thr = best_threshold(scores, ref)
    lo, hi, agree, inside = fit_band(scores, ref, thr, target_agreement)
    good = np.asarray(labels) == 0
    ood_limit = float(OOD_MARGIN * (mean_nn[good].max() if good.any() else mean_nn.max()))
    in_band = (scores >= lo) & (scores <= hi)
    ood = mean_nn > ood_limit
    fallback = in_band | ood
    pred = scores >= thr
    return {
        "threshold": thr, "band": (lo, hi), "ood_limit": ood_limit, "target_agreement": target_agreement,
        "val_agreement_outside_band": agree, "val_fallback_rate": float(fallback.mean()),
        "val_in_band_rate": float(in_band.mean()), "val_ood_rate": float(ood.mean()),
        "val_agreement_overall": float((pred == ref).mean()),
        "reference": reference_name, "n_val": int(len(scores)), "n_val_defect_reference": int(ref.sum()),
        "method": "threshold: max agreement with reference; band: narrowest meeting target outside; "
                  f"OOD: {OOD_MARGIN} x max good mean-NN distance",
    }
