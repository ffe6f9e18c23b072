"""Detection, segmentation and classification figures of the teacher pipeline on a split (`teacher eval`,
teacher/commands/eval.py).

    teacher eval --checkpoint CKPT --data D/manifest.jsonl --json [--report DIR] [--split test]

Runs TeacherPipeline (head, bank or both, as CKPT holds) on every image of the split and reports,
with runtime/metrics.py:

* image level: image_auroc, image_ap, f1_max (+ f1_threshold) on the verdict scores; accuracy of the
  good/defect decision at the calibrated threshold;
* pixel level (anomaly maps at image size vs ground-truth masks): pixel_auroc, au_pro (FPR ≤ 0.3);
* masks (verdict masks = union of the reported regions vs ground truth, pooled over the split): iou, dice;
* classification_accuracy: the image's class ("good", or the label of its most confident region) vs
  "good"/defect_type; with a bank only (regions are "anomaly") it is the binary decision accuracy;
* ``quality``: the runtime.quality row (per product and the mean over products) that `lineside bench
  quality` sets beside the reference detectors of `teacher baselines`;
* boxes: box_map@0.5 / box_map@0.75 (COCO 101-point), GT boxes from mask components labelled with the
  defect_type, predictions from the verdict regions (label-aware with a head, class-agnostic with a
  bank only).

A metric the split cannot support (e.g. one class only) is null. ``--report DIR`` writes index.html with
the metrics, ROC and PRO curves, score and latency histograms, and overlays of the worst and best
images (map, predicted regions and mask, ground-truth contour in green).
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np

METRIC_KEYS = ("image_auroc", "image_ap", "f1_max", "f1_threshold", "accuracy", "pixel_auroc", "au_pro",
               "iou", "dice", "classification_accuracy", "box_map@0.5", "box_map@0.75")
N_CASES = 4  # worst and best images shown in the report


def image_class(v) -> str:
    if v.decision != "defect":
        return "good"
    return max(v.regions, key=lambda r: r.confidence).label if v.regions else "defect"


def compute_metrics(verdicts, records, gt_masks: list[np.ndarray], threshold: float, labelled: bool) -> dict:
    """Every METRIC_KEYS entry (None where the split cannot support it)."""
    from runtime import metrics as M
    from runtime.quality import safe_metric

    y = np.asarray([int(r.is_defect) for r in records])
    s = np.asarray([v.score for v in verdicts], float)
    out: dict[str, float | None] = {k: None for k in METRIC_KEYS}
    out["n_images"], out["n_defect"] = int(len(y)), int(y.sum())
    out["threshold"] = float(threshold)
    out["image_auroc"] = safe_metric(M.image_auroc, y, s)
    out["image_ap"] = safe_metric(M.average_precision, y, s)
    try:
        out["f1_max"], out["f1_threshold"] = (float(x) for x in M.f1_max(y, s))
    except ValueError:
        pass
    out["accuracy"] = M.accuracy(y, np.asarray([int(v.decision == "defect") for v in verdicts]))
    maps = [v.anomaly_map for v in verdicts]
    out["pixel_auroc"] = safe_metric(M.pixel_auroc, gt_masks, maps)
    out["au_pro"] = safe_metric(M.au_pro, gt_masks, maps)
    pred = np.concatenate([v.mask.reshape(-1) for v in verdicts])
    gt = np.concatenate([m.reshape(-1) for m in gt_masks])
    out["iou"], out["dice"] = M.iou(pred, gt), M.dice(pred, gt)
    truth = [r.defect_type if r.is_defect else "good" for r in records]
    if labelled:
        out["classification_accuracy"] = M.accuracy(truth, [image_class(v) for v in verdicts])
    else:
        out["classification_accuracy"] = out["accuracy"]
    if y.any():
        gt_boxes = [M.mask_boxes(m) for m in gt_masks]
        gt_labels = [[t] * len(b) for t, b in zip(truth, gt_boxes)]
        pb = [np.asarray([r.bbox for r in v.regions], float).reshape(-1, 4) for v in verdicts]
        ps = [np.asarray([r.confidence for r in v.regions], float) for v in verdicts]
        pl = [[r.label for r in v.regions] for v in verdicts]
        bm = M.box_map(gt_boxes, pb, ps, gt_labels if labelled else None, pl if labelled else None)
        out["box_map@0.5"], out["box_map@0.75"] = bm.get("map@0.5"), bm.get("map@0.75")
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in out.items()}


def threshold_words(pipe) -> str:
    """How the pipeline's threshold and band were chosen, in a sentence a plant engineer can check."""
    from teacher.pipeline import HEAD_BAND

    parts = []
    if pipe.bank is not None:
        how = (pipe.bank.info or {}).get("calibration", "calibrated at `teacher bank`")
        parts.append(f"the memory bank's threshold {pipe.bank.threshold:.4g} was chosen by {how} (`teacher bank`); "
                     f"its band [{pipe.bank.band[0]:.4g}, {pipe.bank.band[1]:.4g}] is the threshold ± half the gap "
                     "to the good val images' 95th percentile score, at least 5 % of the threshold")
    if pipe.head is not None:
        how = (getattr(pipe.head, "info", None) or {}).get("calibration", "calibrated at `teacher finetune`")
        parts.append(f"the mask head's threshold {pipe.head.threshold:.4g} on its defect probability was chosen by "
                     f"{how} (`teacher finetune`); its band is ± {HEAD_BAND}")
    text = "; ".join(parts)
    if pipe.head is not None and pipe.bank is not None:
        text += ". In mode both each part's map is divided by its own threshold and the two averaged, so the " \
                "deployed threshold is 1 and the band the mean of the parts' bands in those units"
    return text[:1].upper() + text[1:] + "."


def write_report(out_dir, title: str, metrics: dict, verdicts, records, images, gt_masks, threshold: float,
                 info: dict, quality: dict | None = None, threshold_note: str = "") -> Path:
    """``quality``: the runtime.quality row of these verdicts (confusion matrix, rates, per defect type);
    ``threshold_note``: how the threshold and band were chosen (``threshold_words``)."""
    from runtime import metrics as M
    from runtime.plots import overlay, plot_bars, plot_histogram, plot_pro, plot_roc
    from runtime import report as R

    rep = R.Report(title, out_dir, provenance={"model": info.get("model_hash"), "data": info.get("data"),
                                               "data hash": (info.get("data_hash") or "")[:16],
                                               "split": info.get("split")})
    rep.section("Summary", f"{info['n_images']} images of split {info['split']!r}; mode {info['mode']}; "
                           f"model hash {info['model_hash']}; threshold {threshold:.4g}.")
    if threshold_note:
        rep.text(threshold_note, note=True)
    if quality is None:  # else rep.decisions below says it, with the rates
        for w in R.chance_warnings("teacher", metrics):
            rep.warning(w)
    rep.metrics(metrics)
    if quality is not None:
        rep.section("Decisions at the deployed threshold",
                    f"threshold {threshold:.4g}; 'defect' is the positive class")
        rep.decisions(quality, "teacher")
    y = np.asarray([int(r.is_defect) for r in records])
    s = np.asarray([v.score for v in verdicts], float)
    rep.section("Curves")
    if 0 < y.sum() < len(y):
        fpr, tpr, _ = M.roc_curve(y, s)
        rep.figure(plot_roc(rep.path("roc_image.png"), fpr, tpr, metrics.get("image_auroc"), name="image"),
                   "image-level ROC")
    if any(m.any() for m in gt_masks):
        maps = [v.anomaly_map for v in verdicts]
        fpr, tpr, _ = M.roc_curve(np.concatenate([m.ravel() for m in gt_masks]),
                                  np.concatenate([a.ravel() for a in maps]), max_points=2000)
        rep.figure(plot_roc(rep.path("roc_pixel.png"), fpr, tpr, metrics.get("pixel_auroc"), name="pixel"),
                   "pixel-level ROC")
        pf, pro, _ = M.pro_curve(gt_masks, maps, max_points=2000)
        rep.figure(plot_pro(rep.path("pro.png"), pf, pro, metrics.get("au_pro")), "PRO curve (FPR ≤ 0.3)")
    rep.figure(plot_histogram(rep.path("scores.png"), {"good": s[y == 0], "defect": s[y == 1]},
                              xlabel="image score", vlines={"threshold": threshold}), "image scores")
    firsts = verdicts[::max(1, info["batch_size"])]  # one verdict per batch carries that batch's stage times
    per_image = {k: sum(v.latencies_ms.get(k, 0.0) for v in firsts) / len(verdicts)
                 for k in verdicts[0].latencies_ms if k != "total"}
    rep.figure(plot_bars(rep.path("latency.png"), per_image, ylabel="ms per image"),
               f"mean stage time per image, batches of ≤{info['batch_size']} on {info['device']} "
               f"(total {sum(per_image.values()):.1f} ms)")
    # worst / best: signed margin on the wrong side of the threshold
    margin = np.where(y == 1, threshold - s, s - threshold)
    order = np.argsort(-margin)
    lo, hi = float(np.min(s)), float(np.max(s))

    def case(i, prefix, k):
        v, r = verdicts[i], records[i]
        truth = r.defect_type if r.is_defect else "good"
        img = overlay(images[i], anomaly_map=v.anomaly_map, regions=v.regions, gt_mask=gt_masks[i],
                      pred_mask=v.mask, map_range=(lo, hi))
        rep.image(img, f"{Path(r.image).name}: truth {truth}, {v.decision} score {v.score:.4g}",
                  name=f"{prefix}_{k}.png")

    rep.section("Worst cases", "largest margin on the wrong side of the threshold (green: ground truth, "
                               "yellow: predicted mask, magenta: regions)")
    for k, i in enumerate(order[:N_CASES]):
        case(i, "worst", k)
    rep.section("Best cases")
    for k, i in enumerate(order[::-1][:N_CASES]):
        case(i, "best", k)
    rep.section("Run")
    rep.table([[k, ", ".join(map(str, v)) if isinstance(v, (list, tuple)) else v] for k, v in info.items()],
              header=["", "value"])
    return rep.write()
