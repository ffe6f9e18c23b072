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

The split streams through the pipeline a batch at a time (``evaluate_split``): each verdict is folded into
the figures (``EvalAccumulator``, runtime.quality's ``QualityAccumulator``) and dropped, so memory does not
grow with the split; only the :data:`N_CASES` worst and best images are kept, for the overlays. Pixel AUROC
and AU-PRO come from runtime.metrics.PixelAccumulator at full map resolution (thresholds at 65536 bin
edges, not downsampled): ``pixel_method`` names it, ``pixel_auroc_bound`` / ``au_pro_bound`` bound the
difference to the exact sort; every other figure is exact.
"""
from __future__ import annotations

import heapq
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

METRIC_KEYS = ("image_auroc", "image_ap", "f1_max", "f1_threshold", "accuracy", "pixel_auroc", "au_pro",
               "iou", "dice", "classification_accuracy", "box_map@0.5", "box_map@0.75")
N_CASES = 4  # worst and best images shown in the report


def image_class(v) -> str:
    if v.decision != "defect":
        return "good"
    return max(v.regions, key=lambda r: r.confidence).label if v.regions else "defect"


class EvalAccumulator:
    """``compute_metrics`` one verdict at a time: per image a few values (label, score, decision, class, boxes)
    and the map into a runtime.metrics.PixelAccumulator; the masks only as counts."""

    def __init__(self, threshold: float, labelled: bool):
        from runtime import metrics as M

        self.threshold, self.labelled = float(threshold), labelled
        self.y: list[int] = []
        self.s: list[float] = []
        self.decided: list[int] = []
        self.truth: list[str] = []
        self.classes: list[str] = []
        self.pixels = M.PixelAccumulator(relative=True)
        self.seg = np.zeros(3)  # |pred ∩ gt|, |pred|, |gt| over the split
        self.boxes: list[tuple] = []  # per image (gt boxes, gt labels, predicted boxes, scores, labels)

    def add(self, v, record, gt_mask: np.ndarray) -> None:
        from runtime import metrics as M

        self.y.append(int(record.is_defect))
        self.s.append(float(v.score))
        self.decided.append(int(v.decision == "defect"))
        truth = record.defect_type if record.is_defect else "good"
        self.truth.append(truth)
        self.classes.append(image_class(v))
        self.pixels.add(gt_mask, v.anomaly_map)
        gt = np.asarray(gt_mask, bool)
        self.seg += (np.logical_and(v.mask, gt).sum(), np.count_nonzero(v.mask), gt.sum())
        gb = M.mask_boxes(gt)
        self.boxes.append((gb, [truth] * len(gb), np.asarray([r.bbox for r in v.regions], float).reshape(-1, 4),
                           np.asarray([r.confidence for r in v.regions], float), [r.label for r in v.regions]))

    def metrics(self) -> dict:
        """Every METRIC_KEYS entry (None where the split cannot support it), and how the pixel figures were made."""
        from runtime import metrics as M
        from runtime.quality import safe_metric

        y, s = np.asarray(self.y), np.asarray(self.s, float)
        out: dict[str, float | str | None] = {k: None for k in METRIC_KEYS}
        out["n_images"], out["n_defect"] = int(len(y)), int(y.sum())
        out["threshold"] = self.threshold
        out["image_auroc"] = safe_metric(M.image_auroc, y, s)
        out["image_ap"] = safe_metric(M.average_precision, y, s)
        try:
            out["f1_max"], out["f1_threshold"] = (float(x) for x in M.f1_max(y, s))
        except ValueError:
            pass
        out["accuracy"] = M.accuracy(y, np.asarray(self.decided))
        out["pixel_auroc"] = safe_metric(self.pixels.pixel_auroc)
        out["au_pro"] = safe_metric(self.pixels.au_pro)
        out["pixel_method"] = self.pixels.method()
        out["pixel_auroc_bound"] = self.pixels.auroc_bound() if out["pixel_auroc"] is not None else None
        out["au_pro_bound"] = self.pixels.au_pro_bound() if out["au_pro"] is not None else None
        inter, n_pred, n_gt = self.seg
        out["iou"] = 1.0 if n_pred + n_gt - inter == 0 else float(inter / (n_pred + n_gt - inter))
        out["dice"] = 1.0 if n_pred + n_gt == 0 else float(2 * inter / (n_pred + n_gt))
        if self.labelled:
            out["classification_accuracy"] = M.accuracy(self.truth, self.classes)
        else:
            out["classification_accuracy"] = out["accuracy"]
        if y.any():
            gb, gl, pb, ps, pl = (list(c) for c in zip(*self.boxes))
            bm = M.box_map(gb, pb, ps, gl if self.labelled else None, pl if self.labelled else None)
            out["box_map@0.5"], out["box_map@0.75"] = bm.get("map@0.5"), bm.get("map@0.75")
        return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in out.items()}


def compute_metrics(verdicts, records, gt_masks: list[np.ndarray], threshold: float, labelled: bool) -> dict:
    """Every METRIC_KEYS entry (None where the split cannot support it): ``EvalAccumulator`` over these lists."""
    acc = EvalAccumulator(threshold, labelled)
    for v, r, m in zip(verdicts, records, gt_masks):
        acc.add(v, r, m)
    return acc.metrics()


@dataclass
class EvalRun:
    """What `teacher eval` keeps of a split: the figures, per image a few values, and the cases for the report."""
    metrics: dict
    quality: dict
    labels: np.ndarray  # (N,) 1 = defect
    scores: np.ndarray  # (N,) image scores
    stage_ms: dict  # stage -> mean ms per image (batches of ``batch_size``)
    pixel_curves: tuple | None  # ((fpr, tpr), (fpr, pro)) thinned for plotting, None without defect pixels
    cases: dict = field(default_factory=dict)  # "worst"/"best" -> [(image, verdict, record, gt mask)]
    seconds: float = 0.0  # reading the images and the pipeline (the figures' bookkeeping not counted)


def evaluate_split(pipe, ds, records, batch_size: int, n_cases: int = N_CASES) -> EvalRun:
    """The pipeline over ``records`` a batch at a time: each verdict is folded into the figures and dropped, so
    memory holds one batch, the histograms and the ``n_cases`` worst and best images (signed margin on the
    wrong side of the threshold), whatever the split's size."""
    from runtime.quality import QualityAccumulator

    threshold = pipe.threshold
    acc, quality = EvalAccumulator(threshold, labelled=pipe.head is not None), QualityAccumulator()
    worst: list = []  # min-heaps of (margin, -i, case) / (-margin, i, case): the n_cases largest / smallest
    best: list = []
    stage_sums: dict[str, float] = {}
    seconds = 0.0
    for b in range(0, len(records), batch_size):
        t0 = time.time()
        recs = records[b:b + batch_size]
        images = [ds.read_image(r) for r in recs]
        gt = [ds.read_mask(r, im.shape[:2]) for r, im in zip(recs, images)]
        verdicts = pipe.predict(images, frame_ids=[r.image for r in recs])
        seconds += time.time() - t0
        for k, ms in verdicts[0].latencies_ms.items():  # the batch's first verdict carries its stage times
            if k != "total":
                stage_sums[k] = stage_sums.get(k, 0.0) + ms
        for j, (v, r, im, m) in enumerate(zip(verdicts, recs, images, gt)):
            i = b + j
            acc.add(v, r, m)
            quality.add(r.product, int(r.is_defect), r.defect_type, v.score, v.anomaly_map, m,
                        int(v.decision == "defect"))
            margin = (threshold - v.score) if r.is_defect else (v.score - threshold)
            for heap, key in ((worst, (margin, -i)), (best, (-margin, i))):
                item = (*key, (im, v, r, m))
                (heapq.heappush if len(heap) < n_cases else heapq.heappushpop)(heap, item)
    n = len(records)
    curves = None
    if acc.pixels.defect.sum() and acc.pixels.good.sum():
        fpr, tpr, _ = acc.pixels.roc_curve(max_points=2000)
        pf, pro, _ = acc.pixels.pro_curve(max_points=2000)
        curves = ((fpr, tpr), (pf, pro))
    return EvalRun(acc.metrics(), quality.row(), np.asarray(acc.y), np.asarray(acc.s, float),
                   {k: v / n for k, v in stage_sums.items()}, curves,
                   {"worst": [c for *_, c in sorted(worst, reverse=True)],
                    "best": [c for *_, c in sorted(best, reverse=True)]},
                   seconds=seconds)


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


def write_report(out_dir, title: str, ev: EvalRun, info: dict, threshold_note: str = "") -> Path:
    """The HTML report of an ``evaluate_split`` run: ``ev.quality`` (confusion matrix, rates, per defect type),
    its curves and cases; ``threshold_note``: how the threshold and band were chosen (``threshold_words``)."""
    from runtime import metrics as M
    from runtime.plots import overlay, plot_bars, plot_histogram, plot_pro, plot_roc
    from runtime import report as R

    metrics, threshold = ev.metrics, ev.metrics["threshold"]
    rep = R.Report(title, out_dir, provenance={"model": info.get("model_hash"), "data": info.get("data"),
                                               "data hash": (info.get("data_hash") or "")[:16],
                                               "split": info.get("split")})
    rep.section("Summary", f"{info['n_images']} images of split {info['split']!r}; mode {info['mode']}; "
                           f"model hash {info['model_hash']}; threshold {threshold:.4g}.")
    if threshold_note:
        rep.text(threshold_note, note=True)
    rep.metrics(metrics)
    rep.section("Decisions at the deployed threshold", f"threshold {threshold:.4g}; 'defect' is the positive class")
    rep.decisions(ev.quality, "teacher")
    y, s = ev.labels, ev.scores
    rep.section("Curves")
    if 0 < y.sum() < len(y):
        fpr, tpr, _ = M.roc_curve(y, s)
        rep.figure(plot_roc(rep.path("roc_image.png"), fpr, tpr, metrics.get("image_auroc"), name="image"),
                   "image-level ROC")
    if ev.pixel_curves is not None:
        (fpr, tpr), (pf, pro) = ev.pixel_curves
        rep.figure(plot_roc(rep.path("roc_pixel.png"), fpr, tpr, metrics.get("pixel_auroc"), name="pixel"),
                   f"pixel-level ROC ({metrics.get('pixel_method')})")
        rep.figure(plot_pro(rep.path("pro.png"), pf, pro, metrics.get("au_pro")),
                   f"PRO curve (FPR ≤ 0.3; {metrics.get('pixel_method')})")
    rep.figure(plot_histogram(rep.path("scores.png"), {"good": s[y == 0], "defect": s[y == 1]},
                              xlabel="image score", vlines={"threshold": threshold}), "image scores")
    rep.figure(plot_bars(rep.path("latency.png"), ev.stage_ms, ylabel="ms per image"),
               f"mean stage time per image, batches of ≤{info['batch_size']} on {info['device']} "
               f"(total {sum(ev.stage_ms.values()):.1f} ms)")
    lo, hi = float(np.min(s)), float(np.max(s))

    def case(c, prefix, k):
        img, v, r, gt = c
        truth = r.defect_type if r.is_defect else "good"
        pic = overlay(img, anomaly_map=v.anomaly_map, regions=v.regions, gt_mask=gt, pred_mask=v.mask,
                      map_range=(lo, hi))
        rep.image(pic, f"{Path(r.image).name}: truth {truth}, {v.decision} score {v.score:.4g}",
                  name=f"{prefix}_{k}.png")

    rep.section("Worst cases", "largest margin on the wrong side of the threshold (green: ground truth, "
                               "yellow: predicted mask, magenta: regions)")
    for k, c in enumerate(ev.cases["worst"]):
        case(c, "worst", k)
    rep.section("Best cases")
    for k, c in enumerate(ev.cases["best"]):
        case(c, "best", k)
    rep.section("Run")
    rep.table([[k, ", ".join(map(str, v)) if isinstance(v, (list, tuple)) else v] for k, v in info.items()],
              header=["", "value"])
    return rep.write()
