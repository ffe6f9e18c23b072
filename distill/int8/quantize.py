"""`distill quantize`: INT8 post-training quantization, accuracy-guarded.

    distill quantize RUN --data D/manifest.jsonl [--method nncf|ort|both] [--max-drop 0.5] [--force] [--json]

Methods, both on the FP32 edge graph (the ONNX export, BN folded, cut to the outputs the edge scores with:
distill/edge_graph.py) and a calibration split (train images, good and defect):

* ``ort``: ONNX Runtime static quantization, QDQ, per-channel INT8 weights, uint8 activations, Conv only
  (pooling/resize stay FP32: ORT's QLinearAveragePool/Resize are slower than the float ones).
* ``nncf``: NNCF PTQ on the OpenVINO model converted from the ONNX file (saved as IR).

Guard: each INT8 model runs in its own runtime on the val split and is scored with the run's bank exactly
as the edge scores; image AUROC and AU-PRO (runtime.metrics) must not drop by more than ``--max-drop``
points against the FP32 model, decisions must agree on at least ``--min-agreement`` of the images, and
every output of the edge graph must keep a per-location cosine of ``--min-cosine`` to FP32 (a sabotaged calibration shows
there even when a small val split hides it in AUROC).
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
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from distill.bank import ScoringParams, score_outputs
from distill.edge_graph import edge_outputs, prune_onnx
from distill.export_targets import export_onnx, export_openvino, max_rel_error
from distill.runners import OrtRunner, OvRunner, run_all

DEFAULT_MAX_DROP = 0.5  # points of image AUROC / AU-PRO
DEFAULT_MIN_AGREEMENT = 0.9  # share of val images where INT8 and FP32 decide alike
DEFAULT_MIN_COSINE = 0.95  # per-location cosine INT8 vs FP32, every output (catches a broken calibration
# that a small or weak validation split would not show in AUROC)
# Calibration images, sampled deterministically (seed 0) from the train split; only these are decoded and only
# these reach the NNCF / ORT calibrators, so quantize's memory does not grow with the split. MinMax ranges
# and NNCF's statistics settle within a few dozen images of one product; a split smaller than the bound is
# used whole. MAX_CALIB_SIZE caps --calib-size: every calibration input is held in RAM (and by ORT's
# calibrator, its activations too).
DEFAULT_CALIB_SIZE = 64
MAX_CALIB_SIZE = 256
QUANT_DIR = "quantize"
REPORT = "report.json"
INT8_FILES = {"ort": "model.int8.onnx", "nncf": "openvino/model.int8.xml"}
FULL_FILE = "model.full.onnx"  # every output (s8..s64 too): distill eval's fidelity; never quantized
EDGE_FILE = "model.onnx"  # the edge graph: what is quantized, guarded and served


def log(msg: str) -> None:
    print(f"[distill quantize] {msg}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------------- evaluation

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
    for m in ("image_auroc", "au_pro"):
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


# ------------------------------------------------------------------------------------- quantizers

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


def quantize_ort(fp32: Path, out: Path, calib: np.ndarray, exclude: list[str]) -> Path:
    from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType,
                                          quant_pre_process, quantize_static)

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter([{"image": calib[i:i + 1]} for i in range(len(calib))])

        def get_next(self):
            return next(self.it, None)

    with tempfile.TemporaryDirectory() as td:
        pre = Path(td) / "pre.onnx"
        quant_pre_process(str(fp32), str(pre))
        quantize_static(str(pre), str(out), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        op_types_to_quantize=["Conv"], nodes_to_exclude=exclude,
                        calibrate_method=CalibrationMethod.MinMax)
    return out


def quantize_nncf(fp32: Path, out_xml: Path, calib: np.ndarray, exclude: list[str]) -> Path:
    import logging

    import nncf
    import openvino as ov

    nncf.set_log_level(logging.ERROR)  # its per-op INFO lines would drown the guard's messages

    model = ov.convert_model(str(fp32))
    ds = nncf.Dataset([calib[i:i + 1] for i in range(len(calib))])
    scope = nncf.IgnoredScope(patterns=[re.escape(n) + "(/.*)?$" for n in exclude], validate=False)
    q = nncf.quantize(model, ds, subset_size=len(calib), ignored_scope=scope,
                      preset=nncf.QuantizationPreset.MIXED)  # asymmetric activations: ReLU outputs are one-sided
    out_xml.parent.mkdir(parents=True, exist_ok=True)
    ov.save_model(q, str(out_xml), compress_to_fp16=False)
    return out_xml


def quantize_nncf_accuracy_aware(fp32: Path, out_xml: Path, calib: np.ndarray, exclude: list[str],
                                 val_inputs: np.ndarray, metric, max_drop_pt: float) -> tuple[Path, list[str]]:
    """NNCF's accuracy-aware PTQ: layers are reverted to FP32, most harmful first, until ``metric``
    (compiled OpenVINO model -> float in [0, 1]) is within ``max_drop_pt`` points of FP32.
    Returns the IR and the convolutions it left in FP32 (the "ignored scopes" it found)."""
    import logging

    import nncf
    import openvino as ov

    nncf.set_log_level(logging.ERROR)
    model = ov.convert_model(str(fp32))
    cal = nncf.Dataset([calib[i:i + 1] for i in range(len(calib))])
    val = nncf.Dataset([val_inputs[i:i + 1] for i in range(len(val_inputs))])
    scope = nncf.IgnoredScope(patterns=[re.escape(n) + "(/.*)?$" for n in exclude], validate=False)
    q = nncf.quantize_with_accuracy_control(
        model, cal, val, validation_fn=lambda compiled, data: (float(metric(compiled)), None),
        max_drop=max(0.0, max_drop_pt) / 100.0, drop_type=nncf.DropType.ABSOLUTE, subset_size=len(calib),
        ignored_scope=scope, advanced_quantization_parameters=None,
        preset=nncf.QuantizationPreset.MIXED)
    fp32_convs = [op.get_friendly_name().removesuffix("/WithoutBiases") for op in q.get_ordered_ops()
                  if op.get_type_name() == "Convolution" and
                  op.input_value(0).get_node().get_type_name() != "FakeQuantize"]
    out_xml.parent.mkdir(parents=True, exist_ok=True)
    ov.save_model(q, str(out_xml), compress_to_fp16=False)
    return out_xml, fp32_convs


def layer_errors(fp32: Path, int8: Path, x: np.ndarray, top: int = 5) -> list[tuple[str, float]]:
    """The conv layers whose outputs drift most under INT8 (ONNX models): every Conv output is exposed
    as a graph output in both models and compared on ``x`` (max |Δ| / max |FP32|)."""
    import onnx

    def with_outputs(path: Path, names: list[str], out: Path) -> None:
        m = onnx.load(str(path))
        have = {o for n in m.graph.node for o in n.output}
        known = {o.name for o in m.graph.output}
        for n in names:
            if n in have and n not in known:
                m.graph.output.append(onnx.helper.make_empty_tensor_value_info(n))
        onnx.save(m, str(out))

    g = onnx.load(str(fp32)).graph
    convs = {n.output[0]: n.name for n in g.node if n.op_type == "Conv"}
    with tempfile.TemporaryDirectory() as td:
        a, b = Path(td) / "a.onnx", Path(td) / "b.onnx"
        with_outputs(fp32, list(convs), a)
        with_outputs(int8, list(convs), b)
        ra, rb = OrtRunner(a).run(x), OrtRunner(b).run(x)
    errs = [(convs[t], float(np.abs(rb[t] - ra[t]).max() / (np.abs(ra[t]).max() + 1e-12)))
            for t in convs if t in ra and t in rb]
    return sorted(errs, key=lambda e: -e[1])[:top]


class _CompiledRunner:
    """An already compiled OpenVINO model (what NNCF's validation_fn receives) behind the runner interface."""

    def __init__(self, compiled):
        self.compiled = compiled
        self.names = [o.get_any_name() for o in compiled.outputs]

    def run(self, x: np.ndarray) -> dict[str, np.ndarray]:
        res = self.compiled(np.ascontiguousarray(x, np.float32))
        return {n: np.asarray(res[o]) for n, o in zip(self.names, self.compiled.outputs)}


def _runner(method: str, path: Path, threads: int):
    return OrtRunner(path, threads) if method == "ort" else OvRunner(path, threads)


def quantize_run(run_dir: str | Path, data: str, *, methods=("nncf", "ort"), max_drop: float = DEFAULT_MAX_DROP,
                 min_agreement: float = DEFAULT_MIN_AGREEMENT, min_cosine: float = DEFAULT_MIN_COSINE,
                 force: bool = False,
                 calib_size: int = DEFAULT_CALIB_SIZE, calib_override: np.ndarray | None = None,
                 threads: int = 1) -> dict:
    """Quantize a run with each method; keep the models that pass the guard. Returns the report.
    ``calib_override`` replaces the calibration inputs (tests sabotage it to check the guard)."""
    from distill.data import load_images, load_records
    from distill.run import load_run
    from runtime.contracts.dataset import load_dataset

    t0 = time.time()
    run = load_run(run_dir)
    if run.bank is None:
        raise SystemExit(f"{run_dir}: the run has no bank.npy; rerun distill fit")
    qdir = run.dir / QUANT_DIR
    qdir.mkdir(exist_ok=True)
    scoring = ScoringParams(**run.config["scoring"])
    full = export_onnx(run.model, qdir / FULL_FILE, run.size)
    outputs = edge_outputs(run.model.output_names, scoring.mode)
    fp32 = prune_onnx(full, qdir / EDGE_FILE, outputs)  # quantized and guarded: the graph the edge serves
    if not 0 < calib_size <= MAX_CALIB_SIZE:
        raise SystemExit(f"--calib-size {calib_size}: must be between 1 and {MAX_CALIB_SIZE} images")
    ds = load_dataset(data)
    train_recs = ds.split("train")
    if not train_recs:
        raise SystemExit(f"{data}: no train records to calibrate on")
    rng = np.random.default_rng(0)
    pick = np.sort(rng.permutation(len(train_recs))[:calib_size])  # the same images whatever the split's size
    calib = load_records(ds, [train_recs[i] for i in pick], run.size).student_inputs(run.mean, run.std).numpy()
    val = load_images(ds, ("val",), run.size)
    if calib_override is not None:
        calib = np.asarray(calib_override, np.float32)
    x_val = val.student_inputs(run.mean, run.std).numpy()
    cal = run.config["calibration"]
    ev = lambda r: evaluate(r, x_val, val.labels, val.masks, run.bank, run.size, scoring, cal["threshold"])  # noqa: E731
    ref = ev(OrtRunner(fp32, threads))
    log(f"FP32 (onnxruntime) on {len(val)} val images: image AUROC {ref['image_auroc']}, AU-PRO {ref['au_pro']}")
    report = {"run": str(run.dir), "data": str(Path(data).resolve()), "fp32": str(fp32.relative_to(run.dir)),
              "full": str(full.relative_to(run.dir)), "edge_outputs": outputs,
              "max_drop_pt": max_drop,
              "min_agreement": min_agreement, "min_cosine": min_cosine, "force": force, "calibration_images": int(len(calib)),
              "validation_images": int(len(val)),
              "fp32_metrics": {"image_auroc": ref["image_auroc"], "au_pro": ref["au_pro"]}, "methods": {}}
    for method in methods:
        final = qdir / INT8_FILES[method]
        for p in (final, final.with_suffix(".bin")):
            p.unlink(missing_ok=True)
        tried = []
        best = None
        for plan, exclude in attempts(fp32):
            with tempfile.TemporaryDirectory(dir=qdir) as td:
                tmp = Path(td) / Path(INT8_FILES[method]).name
                try:
                    (quantize_ort if method == "ort" else quantize_nncf)(fp32, tmp, calib, exclude)
                    res = ev(_runner(method, tmp, threads))
                except Exception as e:  # a quantizer failure is reported, the other method still runs
                    tried.append({"plan": plan, "excluded": exclude, "error": f"{type(e).__name__}: {e}"})
                    log(f"{method}/{plan}: failed: {e}")
                    continue
                ok, fails, figs = guard(ref, res, max_drop, min_agreement, min_cosine)
                if not ok and method == "ort":  # name the layers, not only the outputs
                    worst = layer_errors(fp32, tmp, x_val[:1])
                    figs["layer_rel_error"] = dict(worst)
                    fails.append("most affected layers: " + ", ".join(f"{n} {e:.3f}" for n, e in worst[:3]))
                tried.append({"plan": plan, "excluded": exclude, "passed": ok, "failures": fails, **figs})
                log(f"{method}/{plan} (FP32 kept: {len(exclude)} convs): " + ("passes the guard" if ok else "; ".join(fails)))
                if ok or best is None or _worst_drop(figs) < _worst_drop(best[1]):
                    best = (plan, figs, ok)
                    _keep(tmp, final)
                if ok:
                    break
        if method == "nncf" and not (best and best[2]):
            # last resort: NNCF's accuracy-aware search picks which layers stay FP32
            with tempfile.TemporaryDirectory(dir=qdir) as td:
                tmp = Path(td) / "model.int8.xml"
                try:
                    guarded = [m for m in ("image_auroc", "au_pro") if ref[m] is not None]
                    guard_metric = "worst of " + "/".join(guarded) if guarded else "decision agreement"

                    def metric(compiled) -> float:
                        # one scalar for NNCF: 1 + the worst change of a guarded metric against FP32
                        # (1.0 for the FP32 model), so its max_drop bounds every guarded metric at once
                        r = ev(_CompiledRunner(compiled))
                        if not guarded:
                            return float((r["decisions"] == ref["decisions"]).mean())
                        return 1.0 + min(r[m] - ref[m] for m in guarded)

                    _, kept = quantize_nncf_accuracy_aware(fp32, tmp, calib, attempts(fp32)[0][1], x_val, metric,
                                                           max_drop)
                    res = ev(_runner(method, tmp, threads))
                    ok, fails, figs = guard(ref, res, max_drop, min_agreement, min_cosine)
                    figs["fp32_layers"] = kept
                    tried.append({"plan": "accuracy-aware", "excluded": kept, "passed": ok, "failures": fails, **figs})
                    log(f"nncf/accuracy-aware ({guard_metric}; FP32 kept: {len(kept)} convs: {', '.join(kept[:4])}"
                        f"{' …' if len(kept) > 4 else ''}): " + ("passes the guard" if ok else "; ".join(fails)))
                    if ok or best is None or _worst_drop(figs) < _worst_drop(best[1]):
                        best = ("accuracy-aware", figs, ok)
                        _keep(tmp, final)
                except Exception as e:
                    tried.append({"plan": "accuracy-aware", "error": f"{type(e).__name__}: {e}"})
                    log(f"nncf/accuracy-aware: failed: {e}")
        entry = {"attempts": tried, "file": None, "passed": False}
        if best is not None and (best[2] or force):
            entry.update(file=INT8_FILES[method], plan=best[0], passed=best[2], forced=not best[2], **best[1])
            if not best[2]:
                log(f"{method}: no plan passes the guard; --force: keeping plan {best[0]} anyway")
            if method == "ort":
                entry["openvino"] = _measure_in_openvino(final, ref, ev, max_drop, min_agreement, min_cosine,
                                                         threads)
        else:
            for p in (final, final.with_suffix(".bin")):
                p.unlink(missing_ok=True)
            msg = tried[-1].get("failures") or [tried[-1].get("error", "")] if tried else ["nothing tried"]
            entry["refused"] = f"{method}: INT8 model refused (no plan passed the guard): " + "; ".join(msg)
            log(entry["refused"] + " (--force writes it anyway)")
        report["methods"][method] = entry
    chosen = _choose(report["methods"])
    report["chosen"] = chosen
    report["seconds"] = round(time.time() - t0, 2)
    (qdir / REPORT).write_text(json.dumps(report, indent=2, default=float))
    return report


def _measure_in_openvino(onnx_int8: Path, ref: dict, ev, max_drop: float, min_agreement: float,
                         min_cosine: float, threads: int) -> dict:
    """The ORT QDQ model as OpenVINO runs it (export ships it as openvino/model.int8.xml when ort is chosen):
    OpenVINO's INT8 kernels round differently, so its error to FP32 is measured on its own, with the guard's
    figures; `distill export` holds that backend to this measurement, and ships OpenVINO IR of the FP32 model
    instead when this fails the guard (the ORT file itself is not refused for OpenVINO's rounding)."""
    try:
        with tempfile.TemporaryDirectory(dir=onnx_int8.parent) as td:
            res = ev(OvRunner(export_openvino(onnx_int8, Path(td) / "model.int8.xml"), threads))
    except Exception as e:  # noqa: BLE001 - reported; export then falls back to its loose tolerance
        log(f"ort model in OpenVINO: failed: {e}")
        return {"error": f"{type(e).__name__}: {e}"}
    ok, fails, figs = guard(ref, res, max_drop, min_agreement, min_cosine)
    log("ort model in OpenVINO: " + ("passes the guard" if ok else "; ".join(fails)) +
        f" (score max abs diff to FP32 {figs['score_max_abs_diff']:.3g})")
    return {"passed": ok, "failures": fails, **figs}


def _keep(tmp: Path, final: Path) -> None:
    final.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(tmp, final)
    if tmp.suffix == ".xml":
        shutil.copyfile(tmp.with_suffix(".bin"), final.with_suffix(".bin"))


def _worst_drop(figs: dict) -> float:
    d = [v["drop_pt"] for k, v in figs.items() if isinstance(v, dict) and "drop_pt" in v]
    return max(d) if d else -100.0 * figs.get("decision_agreement", 0.0)


def _choose(methods: dict) -> str | None:
    """The best written INT8 model: passing before forced, then the smallest worst drop, then ort."""
    written = [(m, e) for m, e in methods.items() if e.get("file")]
    if not written:
        return None
    written.sort(key=lambda me: (not me[1]["passed"], round(_worst_drop(me[1]), 6), me[0] != "ort"))
    return written[0][0]


# ------------------------------------------------------------------------------------- CLI

def configure(p) -> None:
    p.add_argument("run", help="run directory written by distill fit")
    p.add_argument("--data", required=True, help="dataset manifest.jsonl (train: calibration, val: guard)")
    p.add_argument("--method", choices=("nncf", "ort", "both"), default="both",
                   help="INT8 toolchain: NNCF (OpenVINO), ONNX Runtime static, or both")
    p.add_argument("--max-drop", type=float, default=DEFAULT_MAX_DROP, help="points of image AUROC / AU-PRO")
    p.add_argument("--min-agreement", type=float, default=DEFAULT_MIN_AGREEMENT,
                   help="share of val images where INT8 and FP32 must decide alike")
    p.add_argument("--min-cosine", type=float, default=DEFAULT_MIN_COSINE,
                   help="per-location cosine INT8 vs FP32 required of every output")
    p.add_argument("--calib-size", type=int, default=DEFAULT_CALIB_SIZE, help=f"calibration images sampled from the train split (at most {MAX_CALIB_SIZE})")
    p.add_argument("--force", action="store_true", help="write the best INT8 model even if it fails the guard")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", action="store_true")


def run(args) -> int:
    methods = ("nncf", "ort") if args.method == "both" else (args.method,)
    report = quantize_run(args.run, args.data, methods=methods, max_drop=args.max_drop,
                          min_agreement=args.min_agreement, min_cosine=args.min_cosine, force=args.force, calib_size=args.calib_size,
                          threads=args.threads)
    refused = [e["refused"] for e in report["methods"].values() if e.get("refused")]
    if args.json:
        print(json.dumps(report, default=float))
    if report["chosen"] is None:
        print("distill quantize: " + " | ".join(refused), file=sys.stderr)
        return 2
    return 0
