"""Threshold, uncertainty band and out-of-distribution limit on the validation split.

* threshold: the score cut that best agrees with the reference decisions (the teacher's, from
  ``teacher.pipeline.TeacherPipeline``, else ground-truth labels; ``reference`` says which);
* band [lo, hi] ∋ threshold: the narrowest (fewest val images inside) such that outside it the
  student's decision agrees with the reference on at least ``target_agreement`` of the val images,
  holding at most ``max_fallback`` of them (less the out-of-distribution share). Inside the band the
  edge asks the teacher, so the budget is what the teacher servers must absorb: a student that ranks
  parts differently from its teacher (one that learned more than it, say) would otherwise need a band
  over half the line. When no band within the budget meets the target, the one that agrees most does;
* OOD limit: ``OOD_MARGIN`` × the largest mean nearest-bank distance of a good val image;
* fallback rate: the share of val images inside the band or beyond the OOD limit.
"""
from __future__ import annotations

import numpy as np

OOD_MARGIN = 1.2
GOOD_ONLY_MARGIN = 1.05  # threshold above the largest good score when the reference has no defects
DEFAULT_TARGET_AGREEMENT = 0.995
DEFAULT_MAX_FALLBACK = 0.10  # the share of frames a line sizes its teacher servers for


def best_threshold(scores: np.ndarray, ref: np.ndarray) -> float:
    """Midpoint cut maximising agreement (score >= thr -> defect) with the bool reference decisions."""
    s = np.sort(np.unique(scores))
    if ref.all() or (~ref).all() or len(s) < 2:
        return float(scores.max() * GOOD_ONLY_MARGIN if not ref.any() else scores.min())
    cands = np.r_[s[0] - 1e-6, (s[1:] + s[:-1]) / 2, s[-1] + 1e-6]
    agree = [((scores >= c) == ref).mean() for c in cands]
    best = np.flatnonzero(np.isclose(agree, np.max(agree)))
    return float(cands[best[len(best) // 2]])  # the middle of the best plateau


def fit_band(scores: np.ndarray, ref: np.ndarray, threshold: float, target: float,
             max_inside: float = 1.0) -> tuple[float, float, float, float]:
    """-> (lo, hi, agreement outside, share inside). Exhaustive over val scores (n is small): the narrowest
    band holding at most ``max_inside`` of the images whose outside agrees on >= ``target``; failing that,
    the band within ``max_inside`` whose outside agrees most (the narrower on ties)."""
    n = len(scores)
    pred = scores >= threshold
    lows = np.r_[threshold, np.sort(scores[scores < threshold])[::-1]]
    highs = np.r_[threshold, np.sort(scores[scores >= threshold])]
    met = fallback = None
    for lo in lows:
        for hi in highs:
            outside = (scores < lo) | (scores > hi)
            k = int(outside.sum())
            inside = 1.0 - k / n
            if inside > max_inside + 1e-12:
                break  # higher his only widen the band for this lo
            agree = float((pred[outside] == ref[outside]).mean()) if k else 1.0
            cand = (float(lo), float(hi), agree, inside)
            if agree >= target:
                if met is None or inside < met[3] - 1e-12:
                    met = cand
                break
            if fallback is None or agree > fallback[2] + 1e-12 or (
                    abs(agree - fallback[2]) <= 1e-12 and inside < fallback[3] - 1e-12):
                fallback = cand
    if met is not None:
        return met
    if fallback is not None:
        return fallback
    return float(threshold), float(threshold), float((pred == ref).mean()), float((scores == threshold).mean())


def calibrate(scores: np.ndarray, mean_nn: np.ndarray, labels: np.ndarray, *,
              reference: np.ndarray | None = None, reference_name: str = "labels",
              target_agreement: float = DEFAULT_TARGET_AGREEMENT, max_fallback: float = DEFAULT_MAX_FALLBACK) -> dict:
    """All arrays over the val split; labels 1 = defect; reference: bool teacher decisions (defect)."""
    scores = np.asarray(scores, float)
    ref = (np.asarray(labels) == 1) if reference is None else np.asarray(reference, bool)
    if reference is None:
        reference_name = "labels"
    thr = best_threshold(scores, ref)
    good = np.asarray(labels) == 0
    ood_limit = float(OOD_MARGIN * (mean_nn[good].max() if good.any() else mean_nn.max()))
    ood = mean_nn > ood_limit
    band_budget = max(0.0, max_fallback - float(ood.mean()))
    lo, hi, agree, inside = fit_band(scores, ref, thr, target_agreement, band_budget)
    in_band = (scores >= lo) & (scores <= hi)
    fallback = in_band | ood
    pred = scores >= thr
    return {
        "threshold": thr, "band": (lo, hi), "ood_limit": ood_limit, "target_agreement": target_agreement,
        "max_fallback": max_fallback, "target_met": bool(agree >= target_agreement),
        "val_agreement_outside_band": agree, "val_fallback_rate": float(fallback.mean()),
        "val_in_band_rate": float(in_band.mean()), "val_ood_rate": float(ood.mean()),
        "val_agreement_overall": float((pred == ref).mean()),
        "reference": reference_name, "n_val": int(len(scores)), "n_val_defect_reference": int(ref.sum()),
        "method": "threshold: max agreement with reference; band: narrowest meeting target outside within the "
                  f"{max_fallback:.0%} fallback budget (else the most agreeing within it); "
                  f"OOD: {OOD_MARGIN} x max good mean-NN distance",
    }
