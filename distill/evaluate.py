"""`distill eval`: the student against its teacher — fidelity, detection, the cascade, latency.

    distill eval ARTIFACT --teacher CKPT --data D/manifest.jsonl --json [--report DIR] [--split test]
    distill eval ARTIFACT --student-only --json [--size 256]        (timing only, no teacher)

* fidelity: per-level cosine of the student's projections (the artifact's full FP32 graph, onnxruntime) to the
  teacher's t=50 features;
* detection (runtime.metrics.compute_all) for the teacher (TeacherPipeline; absent if the checkpoint has
  neither head nor bank), student FP32, student INT8 (onnxruntime and OpenVINO), and the cascade: the INT8
  student's decision, except inside the band or out of distribution, where the teacher's decision is used
  (ground-truth labels stand in for it when the teacher cannot decide; ``cascade.fallback_source`` says);
* latency and peak memory per backend at batch 1 (distill.bench), and the teacher's feature extraction
  time measured in the same run (``--teacher-preset sd15`` times a random-init full-size teacher instead
  of the checkpoint: the speed target is against it), giving the speedup;
* ``--report DIR``: HTML (runtime.report) with ROC/PRO curves, latency bars and overlays.

The maps stream: every model (each student, then the teacher) scores :data:`CHUNK` images at a time and each
map is folded into its figures (runtime.metrics.StreamingMetrics, runtime.quality.QualityAccumulator) and
dropped; only per-image scores and the few overlaid maps are kept. Pixel figures come from histograms at
full map resolution (``pixel_method``, with ``pixel_auroc_bound`` / ``au_pro_bound``); iou and dice stay at
the pixel F1-max threshold (exact counts at that bin edge), the box mAP is taken at the calibrated threshold,
the one the edge draws its regions at (``box_threshold``): at the F1-max one it would need every map. The test images and the teacher's t=50 features (the fidelity targets, whose
centred cosine needs the split's mean first) are still held whole.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING
from pathlib import Path

import numpy as np

from distill.bank import ScoringParams, score_outputs
from distill.bench import BACKENDS, student_latency, teacher_latency
from distill.runners import OrtRunner, OvRunner, run_all
from runtime.progress import command_log

if TYPE_CHECKING:
    from runtime.metrics import StreamingMetrics
    from runtime.quality import QualityAccumulator


log = command_log("distill eval")
CHUNK = 16  # images a model scores at a time: the maps held at once
N_SHOWN = (3, 1)  # overlays in the report: the first defect and good images


def _cosine_sums(student_outs: list[dict], teacher_feats: dict, names: list[str], mean: dict | None = None
                 ) -> dict[str, tuple[float, int]]:
    """Per level (sum of per-location cosines, locations) of these images; ``mean``: both minus the teacher's
    channel mean over the split (level -> (1, C, 1, 1)) first."""
    out = {}
    for n in names:
        s = np.concatenate([o[n] for o in student_outs]).astype(np.float64)  # (B, C, h, w)
        t = teacher_feats[n].numpy().astype(np.float64)
        if mean is not None:
            s, t = s - mean[n], t - mean[n]
        num = (s * t).sum(1)
        den = np.sqrt((s * s).sum(1) * (t * t).sum(1)) + 1e-12
        out[n] = (float((num / den).sum()), int(num.size))
    return out


def _decision_metrics(decisions: np.ndarray, labels: np.ndarray, teacher: np.ndarray | None) -> dict:
    d = np.asarray(decisions, bool)
    y = np.asarray(labels) == 1
    tp, fp, fn = int((d & y).sum()), int((d & ~y).sum()), int((~d & y).sum())
    out = {"accuracy": float((d == y).mean()), "precision": tp / (tp + fp) if tp + fp else None,
           "recall": tp / (tp + fn) if tp + fn else None}
    if teacher is not None:
        out["agreement_with_teacher"] = float((d == teacher).mean())
    return out


def evaluate(artifact: str | Path, teacher_ckpt: str, data: str, *, split: str = "test", threads: int = 1,
             noise_draws: int = 4) -> dict:
    from distill.data import load_images
    from runtime.contracts.dataset import load_dataset
    from runtime.contracts.manifest import load_manifest

    art = Path(artifact)
    man = load_manifest(art)
    size = man.preprocess.size
    ds = load_dataset(data)
    try:
        test = load_images(ds, (split,), size)
    except ValueError:
        log(f"no {split} split; evaluating on val")
        split, test = "val", load_images(ds, ("val",), size)
    bank = np.load(art / man.scoring.bank_file).astype(np.float32)
    ms = man.scoring
    scoring = ScoringParams(k=ms.k, blur_sigma_px=ms.blur_sigma_px, score_topk=ms.score_topk, mode=ms.mode,
                            bank_norm=ms.bank_norm, head_norm=ms.head_norm)
    cal = man.calibration
    labels = test.labels
    res: dict = {"artifact": str(art), "student": man.student, "student_name": man.student, "split": split,
                 "n_images": len(test), "n_defect": int(labels.sum()), "calibration": cal.model_dump(),
                 "quantization": man.quantization, "models": dict(man.models), "forced": list(man.forced), "data_hash": ds.content_hash(),
                 # what a student that always predicts the teacher's mean feature reaches (fit.log's baseline, on
                 # the val split): a fidelity figure means something only above it
                 "fidelity_mean_predictor": dict((man.metrics.get("fidelity") or {}).get("val_cosine_mean_predictor")
                                                 or {})}
    tfeat = teacher_features(teacher_ckpt, man, test, noise_draws)
    runs = student_models(man)
    key = "int8" if "int8" in runs else ("int8_openvino" if "int8_openvino" in runs else "fp32")
    passes, fidelity, cascade_q = student_passes(art, man, test, bank, scoring, tfeat, runs, key, threads)
    res["fidelity_cosine"], res["fidelity_cosine_centred"] = fidelity
    res["fidelity_noise_draws"] = noise_draws
    log("cosine per level: " + ", ".join(f"{k} {v:.3f}" for k, v in res["fidelity_cosine"].items()))
    res["teacher"], t_pass = teacher_pass(teacher_ckpt, test, passes[key].fallback, cal.threshold, cascade_q)
    t_dec = None if t_pass is None else t_pass.decisions
    res["student"] = {k: {"runtime": runs[k][0], "file": runs[k][1], **p.metrics.result(),
                          **_decision_metrics(p.scores >= cal.threshold, labels, t_dec)} for k, p in passes.items()}
    res["cascade"], fb = cascade(passes[key], cal, labels, t_dec, key)
    res["quality"] = {**({"teacher": t_pass.quality.row()} if t_pass is not None else {}),
                      **{f"student {k}": p.quality.row() for k, p in passes.items()}}
    if t_pass is not None:
        res["quality"]["cascade"] = cascade_q.row()
        res["quality"]["cascade"]["fallback_rate"] = float(fb.mean())
    res["_plots"] = {"curves": passes, "teacher": t_pass, "test": test}
    return res


@dataclass
class ModelPass:
    """What one model's streamed pass over the split keeps: per image its score (and kNN distance, fallback
    flag), the figures' accumulators, and the maps of the overlaid images only."""
    scores: np.ndarray
    mean_nn: np.ndarray
    metrics: "StreamingMetrics"
    quality: "QualityAccumulator"
    shown: dict  # image index -> map, for the report's overlays
    fallback: np.ndarray | None = None  # the cascade's fallback frames (in band or out of distribution)
    decisions: np.ndarray | None = None

    @property
    def pro(self):
        """(fpr, pro) for plotting, thinned to 2000 points; None without defect regions or good pixels."""
        try:
            return self.metrics.pixels.pro_curve(max_points=2000)[:2]
        except ValueError:
            return None


def _shown(labels: np.ndarray) -> list[int]:
    return list(np.flatnonzero(labels == 1)[:N_SHOWN[0]]) + list(np.flatnonzero(labels == 0)[:N_SHOWN[1]])


def _cols(rec) -> tuple:
    return rec.product, int(rec.is_defect), rec.defect_type


def teacher_features(teacher_ckpt: str, man, test, noise_draws: int) -> dict:
    """The teacher's t=50 features of the test images (the fidelity targets), averaged over ``noise_draws``."""
    import torch

    from teacher.checkpoint import load_teacher

    teacher = load_teacher(teacher_ckpt)
    man.spec.check_compatible(teacher.feature_spec, what="artifact")
    if man.teacher_hash and man.teacher_hash != teacher.checkpoint_hash:
        log(f"WARNING: artifact was distilled from teacher {man.teacher_hash[:16]}, evaluating against "
            f"{teacher.checkpoint_hash[:16]}")
    with torch.no_grad():
        tfeat: dict[str, list] = {}
        for s in range(0, len(test), 8):
            f = teacher.extract_features(test.teacher_inputs()[s:s + 8], noise_draws=noise_draws, seed=0)
            for k, v in f.items():
                tfeat.setdefault(k, []).append(v)
        return {k: torch.cat(v) for k, v in tfeat.items()}


def teacher_pass(teacher_ckpt: str, test, fallback: np.ndarray, student_thr: float, cascade_q) -> tuple[dict, ModelPass | None]:
    """The teacher pipeline on the test images, :data:`CHUNK` at a time, when the checkpoint has a head or bank ->
    (its row, its ModelPass; None without). On the cascade's ``fallback`` frames its score and map, in the
    student's units (times the student's threshold over the teacher's), go into ``cascade_q``."""
    from runtime.metrics import StreamingMetrics
    from runtime.quality import QualityAccumulator

    try:
        from teacher.pipeline import TeacherPipeline

        pipe = TeacherPipeline.load(teacher_ckpt)
    except FileNotFoundError as e:
        return {"mode": None, "note": f"no head or bank: {e}"}, None
    k = student_thr / pipe.threshold if pipe.threshold else 1.0
    metrics, quality = StreamingMetrics(box_threshold=pipe.threshold), QualityAccumulator()
    scores, decisions = [], []
    chunk = pipe.max_batch * max(1, CHUNK // pipe.max_batch)  # whole pipeline batches: the same features as one call
    for b in range(0, len(test), chunk):
        for j, v in enumerate(pipe.predict(list(test.images[b:b + chunk]))):
            i, rec = b + j, test.records[b + j]
            d = v.decision == "defect"
            scores.append(v.score)
            decisions.append(d)
            metrics.add(test.labels[i], v.score, test.masks[i], v.anomaly_map)
            quality.add(*_cols(rec), v.score, v.anomaly_map, test.masks[i], int(d))
            if fallback[i]:
                cascade_q.add(*_cols(rec), v.score * k, v.anomaly_map * k, test.masks[i], int(d))
    tp = ModelPass(np.asarray(scores, float), np.zeros(len(scores)), metrics, quality, {},
                   decisions=np.asarray(decisions))
    row = {"mode": pipe.mode, **metrics.result()}
    row.update(_decision_metrics(tp.decisions, test.labels, None))
    return row, tp


def student_models(man) -> dict[str, tuple[str, str]]:
    """role -> (runtime, file) of every student model the artifact holds. The FP32 one is the full graph: it
    computes the edge graph's outputs with the same nodes (distill/edge_graph.py) and also the projected levels
    the fidelity needs."""
    runs = {"fp32": ("onnxruntime", man.full_model)}
    if "int8" in man.models:
        runs["int8"] = ("onnxruntime", man.models["int8"])
    if "openvino_xml" in man.models:
        runs["int8_openvino"] = ("openvino", man.models["openvino_xml"])
    return runs


def student_passes(art: Path, man, test, bank: np.ndarray, scoring: ScoringParams, tfeat: dict, runs: dict,
                   cascade_key: str, threads: int):
    """Every student model over the split, :data:`CHUNK` images at a time -> (ModelPass per model, (cosine, centred
    cosine) per level of the FP32 model to the teacher, the cascade's QualityAccumulator with the frames the
    student ``cascade_key`` keeps: outside the band and in distribution)."""
    from runtime.metrics import StreamingMetrics
    from runtime.quality import QualityAccumulator

    cal = man.calibration
    thr, (lo, hi) = cal.threshold, cal.band
    mean = {n: v.numpy().astype(np.float64).mean(axis=(0, 2, 3), keepdims=True) for n, v in tfeat.items()}
    sums: dict = {False: {}, True: {}}
    cascade_q = QualityAccumulator()
    shown = _shown(test.labels)
    passes = {}
    for key, (rt, rel) in runs.items():
        runner = OrtRunner(art / rel, threads) if rt == "onnxruntime" else OvRunner(art / rel, threads)
        mp = ModelPass(np.zeros(len(test)), np.zeros(len(test)), StreamingMetrics(threshold=thr, box_threshold=thr),
                       QualityAccumulator(), {})
        for b in range(0, len(test), CHUNK):
            idx = np.arange(b, min(b + CHUNK, len(test)))
            outs = run_all(runner, test.subset(idx).student_inputs(man.preprocess.mean, man.preprocess.std).numpy())
            sc = score_outputs(outs, bank, man.preprocess.size, scoring)
            if key == "fp32":
                chunk = {n: v[b:b + len(idx)] for n, v in tfeat.items()}
                for centred in (False, True):
                    for n, (tot, cnt) in _cosine_sums(outs, chunk, man.spec.names, mean if centred else None).items():
                        acc = sums[centred].setdefault(n, [0.0, 0])
                        acc[0] += tot
                        acc[1] += cnt
            for j, i in enumerate(idx):
                rec, m, a, score = test.records[i], test.masks[i], sc.maps[j], float(sc.scores[j])
                mp.scores[i], mp.mean_nn[i] = score, sc.mean_nn[j]
                mp.metrics.add(test.labels[i], score, m, a)
                mp.quality.add(*_cols(rec), score, a, m, int(score >= thr))
                if i in shown:
                    mp.shown[int(i)] = a.copy()
                if key == cascade_key and not (lo <= score <= hi or sc.mean_nn[j] > cal.ood_limit):
                    cascade_q.add(*_cols(rec), score, a, m, int(score >= thr))
        mp.fallback = ((mp.scores >= lo) & (mp.scores <= hi)) | (mp.mean_nn > cal.ood_limit)
        passes[key] = mp
    fidelity = tuple({n: tot / cnt for n, (tot, cnt) in sums[c].items()} for c in (False, True))
    return passes, fidelity, cascade_q


def cascade(sc, cal, labels, t_dec, key: str) -> tuple[dict, np.ndarray]:
    """The cascade on the deployed model ``key`` (INT8, FP32 if none; ``sc`` its ModelPass): its decision, except
    inside the band or out of distribution, where the teacher's is used (the labels when it cannot decide) ->
    (its row, the fallback frames)."""
    thr, (lo, hi) = cal.threshold, cal.band
    in_band = (sc.scores >= lo) & (sc.scores <= hi)
    ood = sc.mean_nn > cal.ood_limit
    fb = in_band | ood
    source = "teacher" if t_dec is not None else "labels (the teacher has neither head nor bank)"
    fallback = t_dec if t_dec is not None else labels == 1
    dec = np.where(fb, fallback, sc.scores >= thr)
    row = {"student": key, "fallback_rate": float(fb.mean()), "in_band_rate": float(in_band.mean()),
           "ood_rate": float(ood.mean()), "fallback_source": source, **_decision_metrics(dec, labels, t_dec)}
    if t_dec is not None:
        out_agree = (sc.scores[~fb] >= thr) == t_dec[~fb]
        row["student_agreement_outside_band"] = float(out_agree.mean()) if out_agree.size else None
    return row, fb


def report_warnings(res: dict) -> list[str]:
    """Warnings a report must show above its figures: a model forced past its INT8 guard, a fidelity figure at
    or below its mean-predictor baseline."""
    out = [f"{role} ({res.get('models', {}).get(role, role)}) was shipped past its INT8 accuracy guard (distill "
           "quantize --force): its figures below are of a model the guard refused" for role in res.get("forced") or []]
    base = res.get("fidelity_mean_predictor") or {}
    low = [k for k, v in (res.get("fidelity_cosine") or {}).items() if k in base and v <= base[k]]
    if low:
        out.append(f"fidelity of level(s) {', '.join(low)} is at or below the mean-predictor baseline: the student "
                   "there is no closer to the teacher than a constant feature map")
    return out


def write_report(res: dict, out_dir: str | Path) -> Path:
    from runtime.plots import overlay, plot_bars, plot_curves, plot_histogram
    from runtime import report as R
    from runtime.metrics import roc_curve

    out = Path(out_dir)
    # res["student"] holds the per-backend figures once evaluated; the student's name is kept apart
    name = res.get("student_name") or (res.get("student") if isinstance(res.get("student"), str) else "")
    rep = R.Report(f"lineside student {name}: distillation report", out,
                   provenance={"artifact": res.get("artifact"), "data hash": (res.get("data_hash") or "")[:16],
                               "split": res.get("split")})
    for w in report_warnings(res):
        rep.warning(w)
    plots = res.get("_plots")
    if plots:
        test = plots["test"]
        rep.section("Fidelity", "Mean per-location cosine of the student's projections to the teacher's t=50 features "
                                f"({res['split']} split, {res['n_images']} images), beside the baseline: the cosine a "
                                "constant prediction (the teacher's mean feature) reaches on the val split (fit.log).")
        base = res.get("fidelity_mean_predictor") or {}
        rep.table([[k, v, base.get(k, "n/a"), (v - base[k]) if k in base else "n/a"]
                   for k, v in res["fidelity_cosine"].items()],
                  header=["level", "cosine", "mean-predictor baseline", "over the baseline"])
        rep.section("Detection", f"Threshold {res['calibration']['threshold']:.4g}, band "
                                 f"[{res['calibration']['band'][0]:.4g}, {res['calibration']['band'][1]:.4g}]; "
                                 f"reference for calibration: {res['calibration'].get('reference', '?')}.")
        rep.text(R.calibration_words(res["calibration"]), note=True)
        rows = []
        for name, m in [("teacher", res["teacher"])] + [(f"student {k}", v) for k, v in res["student"].items()] + \
                [("cascade", res["cascade"])]:
            rows.append({"model": name, **{k: m.get(k) for k in ("image_auroc", "au_pro", "accuracy", "precision",
                                                                 "recall", "agreement_with_teacher", "fallback_rate")}})
        for r in rows:
            for w in R.chance_warnings(r["model"], r, keys=("image_auroc",)):
                rep.warning(w)
        rep.table(rows)
        for row_name, qrow in (res.get("quality") or {}).items():
            rep.decisions(qrow, row_name)
        rocs, pros = {}, {}
        labels = test.labels
        series = dict(plots["curves"])
        if plots["teacher"] is not None:
            series["teacher"] = plots["teacher"]
        for k, mp in series.items():
            if 0 < labels.sum() < len(labels):
                fpr, tpr, _ = roc_curve(labels, mp.scores)
                rocs[k] = (fpr, tpr)
            if test.masks.any() and mp.pro is not None:
                pros[k] = mp.pro
        if rocs:
            rep.figure(plot_curves(rep.path("roc.png"), rocs, xlabel="FPR", ylabel="TPR", diagonal=True), "image ROC")
        if pros:
            rep.figure(plot_curves(rep.path("pro.png"), pros, xlabel="FPR", ylabel="PRO", xlim=(0, 0.3)), "PRO")
        sc = plots["curves"][res["cascade"]["student"]]
        rep.figure(plot_histogram(rep.path("scores.png"), {"good": sc.scores[labels == 0], "defect": sc.scores[labels == 1]},
                                  xlabel="student score", vlines={"threshold": res["calibration"]["threshold"],
                                                                    "band lo": res["calibration"]["band"][0],
                                                                    "band hi": res["calibration"]["band"][1]}),
                   "student scores")
        for i in _shown(labels):
            rep.image(overlay(test.images[i], sc.shown[int(i)], gt_mask=test.masks[i],
                              text=f"score {sc.scores[i]:.3g}"), caption=test.records[i].image)
        rep.section("Cascade", "INT8 student; inside the band or out of distribution the teacher decides.")
        rep.metrics(res["cascade"])
    if "latency" in res:
        rep.section("Latency", f"batch 1, {res['latency']['threads']} thread(s), {res['latency']['size']} px; "
                               "shared machine: compare ratios, not absolute figures.")
        lat = {k: v["median_ms"] for k, v in res["latency"]["backends"].items() if "median_ms" in v}
        rep.table([{"backend": k, **v} for k, v in res["latency"]["backends"].items()])
        if lat:
            rep.figure(plot_bars(rep.path("latency.png"), lat, ylabel="median ms"), "median latency")
        if "teacher_latency" in res:
            tl = res["teacher_latency"]
            rep.text(f"The teacher timed here: {teacher_words(tl)}, {tl.get('size')} px, feature extraction at "
                     "batch 1; the speedups below are over that teacher.", note=True)
            rep.metrics({"teacher": tl, "speedup": res.get("speedup", {})})
    return rep.write()


def teacher_words(tl: dict) -> str:
    """Which teacher a latency figure is of: the full-size preset timed at random init, or the checkpoint's."""
    preset = tl.get("preset") or "?"
    if tl.get("random_init"):
        return f"a random-init {preset} teacher (`--teacher-preset {preset}`)"
    return f"the evaluated checkpoint (preset {preset})"


def evaluate_artifact(artifact: str | Path, *, teacher: str | None = None, data: str | None = None,
                      split: str = "test", report: str | None = None, runs: int = 30, size: int | None = None,
                      backends=BACKENDS, teacher_preset: str | None = None, teacher_runs: int = 3,
                      student_only: bool = False, noise_draws: int = 4, threads: int = 1) -> dict:
    """The whole `distill eval`: ``evaluate`` (unless ``student_only``), the student's latency per backend, the
    teacher's (a random-init ``teacher_preset``, else the checkpoint) and the speedup, and the HTML report."""
    t0 = time.time()
    res: dict = {}
    if not student_only:
        res = evaluate(artifact, teacher, data, split=split, threads=threads, noise_draws=noise_draws)
    lat = student_latency(artifact, backends, size=size, runs=runs, threads=threads)
    res["latency"] = lat
    res.setdefault("artifact", lat["artifact"])
    res.setdefault("student", lat["student"])
    tl = None
    if teacher_preset:
        from teacher.checkpoint import build_random_teacher

        log(f"timing a random-init {teacher_preset} teacher at {lat['size']} px")
        tl = teacher_latency(build_random_teacher(teacher_preset, image_size=lat["size"]), lat["size"],
                             runs=teacher_runs)
        tl["random_init"] = True
    elif teacher and not student_only:
        from teacher.checkpoint import load_teacher

        tl = teacher_latency(load_teacher(teacher), runs=teacher_runs)
        if tl["size"] != lat["size"]:
            tl["note"] = f"teacher timed at its own size {tl['size']} px, student at {lat['size']} px"
    if tl is not None:
        res["teacher_latency"] = tl
        res["speedup"] = {b: tl["median_ms"] / v["median_ms"] for b, v in lat["backends"].items() if "median_ms" in v}
        log("speedup over the teacher: " + ", ".join(f"{k} {v:.0f}x" for k, v in res["speedup"].items()))
    if report:
        p = write_report(res, report)
        res["report"] = str(p)
        log(f"report: {p}")
    res.pop("_plots", None)
    res["seconds"] = round(time.time() - t0, 2)
    return res
