"""The accuracy guard of `distill quantize`: an INT8 model against the FP32 one, scored as the edge scores.

Each model runs on the val split at batch 1 and is scored with the run's bank; image AUROC and AU-PRO
(runtime.metrics) must not drop by more than ``max_drop`` points, decisions must agree on at least
``min_agreement`` of the images, and every output must keep a per-location cosine of ``min_cosine`` to FP32
(a sabotaged calibration shows there even when a small val split hides it in AUROC).
"""
from __future__ import annotations

import numpy as np

from distill.bank import ScoringParams, score_outputs
from distill.export_targets import max_rel_error
from distill.runners import run_all

DEFAULT_MAX_DROP = 0.5  # points of image AUROC / AU-PRO
DEFAULT_MIN_AGREEMENT = 0.9  # share of val images where INT8 and FP32 decide alike
DEFAULT_MIN_COSINE = 0.95  # per-location cosine INT8 vs FP32, every output (catches a broken calibration
# that a small or weak validation split would not show in AUROC)
GUARDED_METRICS = ("image_auroc", "au_pro")


def evaluate(runner, inputs, labels: np.ndarray, masks: np.ndarray, bank: np.ndarray, size: int,
             scoring: ScoringParams, threshold: float) -> dict:
    """Run every val image at batch 1, score as the edge does, and compute the guarded metrics."""
    from runtime import metrics as M

    outs = run_all(runner, inputs)
    sc = score_outputs(outs, bank, size, scoring)
    res = {"scores": sc.scores, "maps": sc.maps, "decisions": sc.scores >= threshold, "outputs": outs,
           "image_auroc": None, "au_pro": None}
    if 0 < labels.sum() < len(labels):
        res["image_auroc"] = float(M.image_auroc(labels, sc.scores))
    if masks.any():
        res["au_pro"] = float(M.au_pro(list(masks), list(sc.maps)))
    return res


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    """Mean over locations of the cosine over channels (dim 1)."""
    num = (a * b).sum(1)
    den = np.sqrt((a * a).sum(1) * (b * b).sum(1)) + 1e-12
    return float((num / den).mean())


def guard(fp32: dict, int8: dict, max_drop: float, min_agreement: float,
          min_cosine: float = DEFAULT_MIN_COSINE) -> tuple[bool, list[str], dict]:
    """-> (passed, failure messages, figures). Drops in points (100 × AUROC)."""
    figures: dict = {}
    fails: list[str] = []
    for m in GUARDED_METRICS:
        if fp32[m] is None or int8[m] is None:
            figures[m] = None
            continue
        drop = 100.0 * (fp32[m] - int8[m])
        figures[m] = {"fp32": fp32[m], "int8": int8[m], "drop_pt": drop}
        if drop > max_drop:
            fails.append(f"{m} drops {drop:.2f} pt ({100 * fp32[m]:.2f} -> {100 * int8[m]:.2f}) > max drop {max_drop} pt")
    agree = float((fp32["decisions"] == int8["decisions"]).mean())
    figures["decision_agreement"] = agree
    if agree < min_agreement:
        fails.append(f"decision agreement {agree:.3f} < {min_agreement}")
    rel, cos = {}, {}
    for a, b in zip(int8["outputs"], fp32["outputs"]):
        for k, v in max_rel_error(a, b).items():
            rel[k] = max(rel.get(k, 0.0), v)
            cos.setdefault(k, []).append(_cosine(a[k].astype(np.float64), b[k].astype(np.float64)))
    cos = {k: float(np.mean(v)) for k, v in cos.items()}
    figures["output_rel_error"] = rel
    figures["output_cosine"] = cos
    low = {k: v for k, v in cos.items() if v < min_cosine}
    if low:
        fails.append("outputs drift from FP32: " + ", ".join(f"{k} cosine {v:.3f}" for k, v in low.items()) +
                     f" < {min_cosine}")
    figures["score_max_abs_diff"] = float(np.abs(int8["scores"] - fp32["scores"]).max())
    if fails:
        worst = sorted(rel.items(), key=lambda kv: -kv[1])[:3]
        fails.append("largest relative output errors: " + ", ".join(f"{k} {v:.3f}" for k, v in worst))
    return not fails, fails, figures


def worst_drop(figs: dict) -> float:
    """The largest drop in points among a guard's figures (minus the decision agreement without any): how
    far a failing plan missed, to keep the least bad one."""
    d = [v["drop_pt"] for k, v in figs.items() if isinstance(v, dict) and "drop_pt" in v]
    return max(d) if d else -100.0 * figs.get("decision_agreement", 0.0)
