"""`distill quantize`: INT8 post-training quantization, accuracy-guarded.

    distill quantize RUN --data D/manifest.jsonl [--method nncf|ort|both] [--max-drop 0.5] [--force] [--json]

Methods, both on the FP32 edge graph (the ONNX export, BN folded, cut to the outputs the edge scores with:
distill/edge_graph.py) and a calibration split (train images, good and defect):

* ``ort``: ONNX Runtime static quantization, QDQ, per-channel INT8 weights, uint8 activations, Conv only
  (pooling/resize stay FP32: ORT's QLinearAveragePool/Resize are slower than the float ones): int8/ort.py.
* ``nncf``: NNCF PTQ on the OpenVINO model converted from the ONNX file (saved as IR): int8/nncf.py.

Guard (int8/guard.py): each INT8 model runs in its own runtime on the val split (at most ``--val-size`` of its
images, sampled by label share: ``bounded_sample``) and is scored with the run's bank exactly as the edge scores; image AUROC and AU-PRO (runtime.metrics) must not drop by more than
``--max-drop`` points against the FP32 model, decisions must agree on at least ``--min-agreement`` of the
images, and every output of the edge graph must keep a per-location cosine of ``--min-cosine`` to FP32 (a
sabotaged calibration shows there even when a small val split hides it in AUROC).
A failing model is not written (unless ``--force``); the message names the metric and the outputs with
the largest relative error. Before giving up, mixed precision is tried: the first conv, the projection
heads and the embedding stay FP32 (``mixed``), then also the last stage (``mixed+``); for NNCF finally its
accuracy-aware search (``nncf.quantize_with_accuracy_control`` on the guarded metric), which reports the
layers it had to keep in FP32.

Every written INT8 model's largest image-score difference to FP32 on the val split is recorded
(``methods.<m>.score_max_abs_diff``; for ``ort`` also as OpenVINO runs the same QDQ model,
``methods.ort.openvino``): `distill export` holds the shipped INT8 models to these measurements.
"""
from __future__ import annotations

import json
import re
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from distill.bank import ScoringParams
from distill.edge_graph import edge_outputs, prune_onnx
from distill.export_targets import export_onnx, export_openvino
from distill.int8.guard import (DEFAULT_MAX_DROP, DEFAULT_MIN_AGREEMENT, DEFAULT_MIN_COSINE, GUARDED_METRICS,
                                evaluate, guard, worst_drop)
from distill.int8.nncf import CompiledRunner, quantize_nncf, quantize_nncf_accuracy_aware
from distill.int8.ort import layer_errors, quantize_ort
from distill.runners import OrtRunner, OvRunner
from runtime.progress import command_log

# Calibration images, sampled deterministically (seed 0) from the train split; only these are decoded and only
# these reach the NNCF / ORT calibrators, so quantize's memory does not grow with the split. MinMax ranges
# and NNCF's statistics settle within a few dozen images of one product; a split smaller than the bound is
# used whole. MAX_CALIB_SIZE caps --calib-size: every calibration input is held in RAM (and by ORT's
# calibrator, its activations too).
DEFAULT_CALIB_SIZE = 64
MAX_CALIB_SIZE = 256
# Val images the guard scores, by the same rule (``bounded_sample``), but stratified by label: each label keeps
# its share of the split (at least one image of each, so AUROC and AU-PRO stay defined), so the guard's memory
# (every val input, its outputs and maps are held) does not grow with the split either. 256 images hold an
# AUROC's sampling error to a few points; a split smaller than the bound is used whole.
DEFAULT_VAL_SIZE = 256
METHODS = ("nncf", "ort")
QUANT_DIR = "quantize"
REPORT = "report.json"
INT8_FILES = {"ort": "model.int8.onnx", "nncf": "openvino/model.int8.xml"}
FULL_FILE = "model.full.onnx"  # every output (s8..s64 too): distill eval's fidelity; never quantized
EDGE_FILE = "model.onnx"  # the edge graph: what is quantized, guarded and served


log = command_log("distill quantize")


def conv_nodes(onnx_path: Path) -> list[str]:
    import onnx

    return [n.name for n in onnx.load(str(onnx_path)).graph.node if n.op_type == "Conv"]


def attempts(onnx_path: Path) -> list[tuple[str, list[str]]]:
    """Exclusion plans, most INT8 first. The first conv (3 input channels) is always FP32: its INT8 kernel
    is slower than the float one and the input quantization costs more than it saves."""
    convs = conv_nodes(onnx_path)
    first = convs[:1]
    heads = [n for n in convs if re.search(r"proj|embed|heads|/s\d+/", n)]
    last_stage = [n for n in convs if "/stages.3/" in n]
    return [("int8", first), ("mixed", first + heads), ("mixed+", first + heads + last_stage)]


def _runner(method: str, path: Path, threads: int):
    return OrtRunner(path, threads) if method == "ort" else OvRunner(path, threads)


@dataclass
class _Job:
    """What every method's quantization shares: the FP32 edge graph, the calibration and val inputs, the
    FP32 reference figures and the guard's bounds."""
    qdir: Path
    fp32: Path
    calib: np.ndarray
    x_val: np.ndarray
    ev: Callable  # runner -> guarded figures on the val split (int8/guard.py evaluate)
    ref: dict  # the FP32 model's figures
    max_drop: float
    min_agreement: float
    min_cosine: float
    threads: int

    def guard(self, res: dict) -> tuple[bool, list[str], dict]:
        return guard(self.ref, res, self.max_drop, self.min_agreement, self.min_cosine)


def quantize_run(run_dir: str | Path, data: str, *, methods=METHODS, max_drop: float = DEFAULT_MAX_DROP,
                 min_agreement: float = DEFAULT_MIN_AGREEMENT, min_cosine: float = DEFAULT_MIN_COSINE,
                 force: bool = False,
                 calib_size: int = DEFAULT_CALIB_SIZE, calib_override: np.ndarray | None = None,
                 val_size: int = DEFAULT_VAL_SIZE, threads: int = 1) -> dict:
    """Quantize a run with each method; keep the models that pass the guard. Returns the report.
    ``calib_override`` replaces the calibration inputs (tests sabotage it to check the guard)."""
    from distill.run import load_run

    t0 = time.time()
    run = load_run(run_dir)
    if run.bank is None:
        raise SystemExit(f"{run_dir}: the run has no bank.npy; rerun distill fit")
    qdir = run.dir / QUANT_DIR
    qdir.mkdir(exist_ok=True)
    scoring = ScoringParams(**run.config["scoring"])
    full, fp32, outputs = export_edge_graph(run, qdir, scoring)
    calib, val = calibration_and_val(run, data, calib_size, calib_override, val_size)
    x_val = val.student_inputs(run.mean, run.std).numpy()
    cal = run.config["calibration"]
    ev = lambda r: evaluate(r, x_val, val.labels, val.masks, run.bank, run.size, scoring, cal["threshold"])  # noqa: E731
    ref = ev(OrtRunner(fp32, threads))
    log(f"FP32 (onnxruntime) on {len(val)} val images: image AUROC {ref['image_auroc']}, AU-PRO {ref['au_pro']}")
    job = _Job(qdir, fp32, calib, x_val, ev, ref, max_drop, min_agreement, min_cosine, threads)
    report = {"run": str(run.dir), "data": str(Path(data).resolve()), "fp32": str(fp32.relative_to(run.dir)),
              "full": str(full.relative_to(run.dir)), "edge_outputs": outputs,
              "max_drop_pt": max_drop,
              "min_agreement": min_agreement, "min_cosine": min_cosine, "force": force, "calibration_images": int(len(calib)),
              "validation_images": int(len(val)), "val_size": val_size,
              "fp32_metrics": {"image_auroc": ref["image_auroc"], "au_pro": ref["au_pro"]}, "methods": {}}
    for method in methods:
        report["methods"][method] = quantize_method(job, method, force)
    report["chosen"] = choose(report["methods"])
    report["seconds"] = round(time.time() - t0, 2)
    (qdir / REPORT).write_text(json.dumps(report, indent=2, default=float))
    return report


def export_edge_graph(run, qdir: Path, scoring: ScoringParams) -> tuple[Path, Path, list[str]]:
    """-> (the full FP32 graph, the edge graph cut from it: what is quantized, guarded and served, its outputs)."""
    full = export_onnx(run.model, qdir / FULL_FILE, run.size)
    outputs = edge_outputs(run.model.output_names, scoring.mode)
    return full, prune_onnx(full, qdir / EDGE_FILE, outputs), outputs


def bounded_sample(n_items: int, bound: int, labels=None, seed: int = 0) -> np.ndarray:
    """The one subset rule of calibration and guard: indices of at most ``bound`` of ``n_items``, sorted (manifest
    order), drawn by a ``seed``ed permutation, so the same images whatever else changes; ``n_items <= bound``:
    all of them. With ``labels`` (one per item) the draw is stratified: each label gets its share of ``bound``
    (largest remainder, at least one image of every label present) and its first images of the permutation."""
    if n_items <= bound:
        return np.arange(n_items)
    rng = np.random.default_rng(seed)
    if labels is None:
        return np.sort(rng.permutation(n_items)[:bound])
    labels = np.asarray(labels)
    kinds, counts = np.unique(labels, return_counts=True)
    if bound < len(kinds):
        raise ValueError(f"a sample of {bound} cannot hold one image of each of {len(kinds)} labels")
    quota = np.maximum(1, np.floor(bound * counts / n_items)).astype(int)
    rest = bound * counts / n_items - np.floor(bound * counts / n_items)
    for i in np.argsort(-rest, kind="stable"):  # the images left over go to the largest remainders
        if quota.sum() >= bound:
            break
        if quota[i] < counts[i]:
            quota[i] += 1
    while quota.sum() > bound:  # the minimum of one per label overshot: take back from the largest
        quota[int(np.argmax(quota))] -= 1
    perm = rng.permutation(n_items)
    pick = [perm[labels[perm] == k][:q] for k, q in zip(kinds, quota)]
    return np.sort(np.concatenate(pick))


def calibration_and_val(run, data: str, calib_size: int, calib_override: np.ndarray | None,
                        val_size: int = DEFAULT_VAL_SIZE):
    """-> (calibration inputs: ``calib_size`` train images, ``val_size`` val images stratified by label: both the
    same whatever the split's size, both ``bounded_sample``)."""
    from distill.data import load_records
    from runtime.contracts.dataset import load_dataset

    if not 0 < calib_size <= MAX_CALIB_SIZE:
        raise SystemExit(f"--calib-size {calib_size}: must be between 1 and {MAX_CALIB_SIZE} images")
    if val_size < 2:
        raise SystemExit(f"--val-size {val_size}: must be at least 2 images (one good, one defect)")
    ds = load_dataset(data)
    train_recs = ds.split("train")
    if not train_recs:
        raise SystemExit(f"{data}: no train records to calibrate on")
    pick = bounded_sample(len(train_recs), calib_size)
    calib = load_records(ds, [train_recs[i] for i in pick], run.size).student_inputs(run.mean, run.std).numpy()
    val_recs = ds.split("val")
    if not val_recs:
        raise SystemExit(f"{data}: no val records to guard on")
    pick = bounded_sample(len(val_recs), val_size, labels=[r.is_defect for r in val_recs])
    val = load_records(ds, [val_recs[i] for i in pick], run.size)
    if calib_override is not None:
        calib = np.asarray(calib_override, np.float32)
    return calib, val


def quantize_method(job: _Job, method: str, force: bool) -> dict:
    """One method's report entry: its plans tried in turn until one passes the guard (NNCF's accuracy-aware
    search last); the best model is written to INT8_FILES[method], or refused."""
    final = job.qdir / INT8_FILES[method]
    _remove(final)
    tried, best = try_plans(job, method, final)
    if method == "nncf" and not (best and best[2]):
        best = try_accuracy_aware(job, final, tried, best)
    entry = {"attempts": tried, "file": None, "passed": False}
    if best is not None and (best[2] or force):
        entry.update(file=INT8_FILES[method], plan=best[0], passed=best[2], forced=not best[2], **best[1])
        if not best[2]:
            log(f"{method}: no plan passes the guard; --force: keeping plan {best[0]} anyway")
        if method == "ort":
            entry["openvino"] = measure_in_openvino(job, final)
    else:
        _remove(final)
        msg = tried[-1].get("failures") or [tried[-1].get("error", "")] if tried else ["nothing tried"]
        entry["refused"] = f"{method}: INT8 model refused (no plan passed the guard): " + "; ".join(msg)
        log(entry["refused"] + " (--force writes it anyway)")
    return entry


def try_plans(job: _Job, method: str, final: Path) -> tuple[list[dict], tuple | None]:
    """The exclusion plans (attempts) in turn, most INT8 first, until one passes; the best so far is kept at
    ``final``. -> (every attempt's record, (plan, figures, passed) of the best, or None)."""
    tried: list[dict] = []
    best = None
    for plan, exclude in attempts(job.fp32):
        with tempfile.TemporaryDirectory(dir=job.qdir) as td:
            tmp = Path(td) / Path(INT8_FILES[method]).name
            try:
                (quantize_ort if method == "ort" else quantize_nncf)(job.fp32, tmp, job.calib, exclude)
                res = job.ev(_runner(method, tmp, job.threads))
            except Exception as e:  # a quantizer failure is reported, the other method still runs
                tried.append({"plan": plan, "excluded": exclude, "error": f"{type(e).__name__}: {e}"})
                log(f"{method}/{plan}: failed: {e}")
                continue
            ok, fails, figs = job.guard(res)
            if not ok and method == "ort":  # name the layers, not only the outputs
                worst = layer_errors(job.fp32, tmp, job.x_val[:1])
                figs["layer_rel_error"] = dict(worst)
                fails.append("most affected layers: " + ", ".join(f"{n} {e:.3f}" for n, e in worst[:3]))
            tried.append({"plan": plan, "excluded": exclude, "passed": ok, "failures": fails, **figs})
            log(f"{method}/{plan} (FP32 kept: {len(exclude)} convs): " + ("passes the guard" if ok else "; ".join(fails)))
            if ok or best is None or worst_drop(figs) < worst_drop(best[1]):
                best = (plan, figs, ok)
                _keep(tmp, final)
            if ok:
                break
    return tried, best


def try_accuracy_aware(job: _Job, final: Path, tried: list[dict], best: tuple | None) -> tuple | None:
    """Last resort for NNCF: its accuracy-aware search picks which layers stay FP32. Appends its attempt to
    ``tried``; -> the best (plan, figures, passed) so far, kept at ``final``."""
    ref = job.ref
    with tempfile.TemporaryDirectory(dir=job.qdir) as td:
        tmp = Path(td) / "model.int8.xml"
        try:
            guarded = [m for m in GUARDED_METRICS if ref[m] is not None]
            guard_metric = "worst of " + "/".join(guarded) if guarded else "decision agreement"

            def metric(compiled) -> float:
                # one scalar for NNCF: 1 + the worst change of a guarded metric against FP32
                # (1.0 for the FP32 model), so its max_drop bounds every guarded metric at once
                r = job.ev(CompiledRunner(compiled))
                if not guarded:
                    return float((r["decisions"] == ref["decisions"]).mean())
                return 1.0 + min(r[m] - ref[m] for m in guarded)

            _, kept = quantize_nncf_accuracy_aware(job.fp32, tmp, job.calib, attempts(job.fp32)[0][1], job.x_val,
                                                   metric, job.max_drop)
            res = job.ev(_runner("nncf", tmp, job.threads))
            ok, fails, figs = job.guard(res)
            figs["fp32_layers"] = kept
            tried.append({"plan": "accuracy-aware", "excluded": kept, "passed": ok, "failures": fails, **figs})
            log(f"nncf/accuracy-aware ({guard_metric}; FP32 kept: {len(kept)} convs: {', '.join(kept[:4])}"
                f"{' …' if len(kept) > 4 else ''}): " + ("passes the guard" if ok else "; ".join(fails)))
            if ok or best is None or worst_drop(figs) < worst_drop(best[1]):
                best = ("accuracy-aware", figs, ok)
                _keep(tmp, final)
        except Exception as e:
            tried.append({"plan": "accuracy-aware", "error": f"{type(e).__name__}: {e}"})
            log(f"nncf/accuracy-aware: failed: {e}")
    return best


def measure_in_openvino(job: _Job, onnx_int8: Path) -> dict:
    """The ORT QDQ model as OpenVINO runs it (export ships it as openvino/model.int8.xml when ort is chosen):
    OpenVINO's INT8 kernels round differently, so its error to FP32 is measured on its own, with the guard's
    figures; `distill export` holds that backend to this measurement, and ships OpenVINO IR of the FP32 model
    instead when this fails the guard (the ORT file itself is not refused for OpenVINO's rounding)."""
    try:
        with tempfile.TemporaryDirectory(dir=onnx_int8.parent) as td:
            res = job.ev(OvRunner(export_openvino(onnx_int8, Path(td) / "model.int8.xml"), job.threads))
    except Exception as e:  # noqa: BLE001 - reported; export then falls back to its loose tolerance
        log(f"ort model in OpenVINO: failed: {e}")
        return {"error": f"{type(e).__name__}: {e}"}
    ok, fails, figs = job.guard(res)
    log("ort model in OpenVINO: " + ("passes the guard" if ok else "; ".join(fails)) +
        f" (score max abs diff to FP32 {figs['score_max_abs_diff']:.3g})")
    return {"passed": ok, "failures": fails, **figs}


def _remove(final: Path) -> None:
    for p in (final, final.with_suffix(".bin")):
        p.unlink(missing_ok=True)


def _keep(tmp: Path, final: Path) -> None:
    final.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(tmp, final)
    if tmp.suffix == ".xml":
        shutil.copyfile(tmp.with_suffix(".bin"), final.with_suffix(".bin"))


def choose(methods: dict) -> str | None:
    """The best written INT8 model: passing before forced, then the smallest worst drop, then ort."""
    written = [(m, e) for m, e in methods.items() if e.get("file")]
    if not written:
        return None
    written.sort(key=lambda me: (not me[1]["passed"], round(worst_drop(me[1]), 6), me[0] != "ort"))
    return written[0][0]
