"""`distill export`'s parity check: every model of the artifact re-run in its runtime and compared with torch.

Every model is re-run in its runtime on val images and compared with torch: outputs (max relative error)
and image scores (max absolute difference), against the stated tolerances recorded in
``manifest.tolerance`` (score, per backend) and ``manifest.metrics["export_check"]`` (everything measured).
FP32 runtimes must match torch tightly. An INT8 model is held to what ``distill quantize`` measured for it:
its largest image-score difference to FP32 on the quantize validation split (``score_max_abs_diff``), with
a margin, on the first images of that same split. So a model the guard passed is never refused for an error
it already had, and a model that computes something else than what quantize checked (a broken runtime or
conversion, a replaced file) still is.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from distill.bank import ScoringParams, score_outputs
from distill.export_targets import max_rel_error
from distill.int8.quantize import FULL_FILE
from distill.runners import OrtRunner, OvRunner, TorchRunner, run_all
from runtime.progress import command_log

# Stated tolerances, relative to the calibrated threshold (scores are distances, their scale is the run's).
FP32_SCORE_RTOL = 1e-3  # FP32 runtimes vs torch
FP32_OUTPUT_RTOL = 1e-3  # max |Δ| / max |torch| per output
# INT8 vs torch FP32: quantize's measured max score difference × INT8_MEASURED_MARGIN + FP32 tolerance
# (the check images are a subset of the ones quantize measured on; the margin covers thread-count rounding)
INT8_MEASURED_MARGIN = 1.5
INT8_SCORE_RTOL = 0.5  # fallback when nothing was measured (old report, or check images not from that split)


log = command_log("distill export")


class ExportError(RuntimeError):
    pass


@dataclass
class CheckInputs:
    """The images every model is re-run on: ``x`` (val images of the run's dataset, or seeded noise when it
    moved) and, for the INT8 models, ``x_int8`` from the split quantize measured them on."""
    x: np.ndarray
    source: str
    x_int8: np.ndarray
    int8_source: str
    int8_measured: bool  # quantize's measurement applies to x_int8
    val: object | None  # the run's val images (distill.data), None when the dataset moved


def check_inputs(run, qrep: dict, check_images: int, want_int8: bool) -> CheckInputs:
    from distill.data import load_images
    from runtime.contracts.dataset import load_dataset

    manifest_path = Path(run.config["dataset"]["manifest"])
    val = None
    if manifest_path.is_file():
        val = load_images(load_dataset(manifest_path), ("val",), run.size)
        x = val.student_inputs(run.mean, run.std).numpy()[:check_images]
        check_source = f"{len(x)} val images of {manifest_path}"
    else:  # the dataset moved: the comparison still runs, on seeded noise images
        log(f"WARNING: dataset {manifest_path} not found; comparing runtimes on {check_images} seeded noise images")
        x = np.random.default_rng(0).standard_normal((check_images, 3, run.size, run.size)).astype(np.float32)
        check_source = f"{check_images} seeded noise images (dataset not found)"
    # INT8 models: on the split quantize measured them on (its --data), so its measured error bounds theirs
    x_int8, int8_source, int8_measured = x, check_source, True
    qdata = Path(qrep.get("data") or "")
    if not qrep.get("data"):
        int8_measured = False  # a report from before `data` was recorded
    elif qdata.resolve() != manifest_path.resolve() or not manifest_path.is_file():
        if qdata.is_file():
            qval = load_images(load_dataset(qdata), ("val",), run.size)
            x_int8 = qval.student_inputs(run.mean, run.std).numpy()[:check_images]
            int8_source = f"{len(x_int8)} val images of {qdata} (the quantize split)"
        else:
            int8_measured = False
    if not int8_measured and want_int8:
        log("WARNING: INT8 models are checked against the fallback tolerance "
            f"{INT8_SCORE_RTOL} x threshold (no quantize measurement on these images)")
    return CheckInputs(x, check_source, x_int8, int8_source, int8_measured, val)


def torch_reference(fused, bank: np.ndarray, size: int, scoring: ScoringParams):
    """inputs -> (torch outputs, image scores), computed once per input array."""
    refs = {}

    def reference(inputs: np.ndarray) -> tuple[list, np.ndarray]:
        if id(inputs) not in refs:
            o = run_all(TorchRunner(fused), inputs)
            refs[id(inputs)] = (o, score_outputs(o, bank, size, scoring).scores)
        return refs[id(inputs)]

    return reference


def int8_tolerance(qrep: dict, measured_at: tuple[str, ...], measured: bool, thr: float) -> tuple[float, str]:
    """An INT8 model's score tolerance: what quantize measured for it (at ``measured_at`` in its report) with a
    margin, or the fallback when nothing applies -> (tolerance, its basis in words)."""
    entry = qrep["methods"]
    for key in measured_at:
        entry = entry.get(key) or {}
    diff = entry.get("score_max_abs_diff")
    if not measured or diff is None:
        return INT8_SCORE_RTOL * thr, f"fallback {INT8_SCORE_RTOL} x threshold"
    return (INT8_MEASURED_MARGIN * float(diff) + FP32_SCORE_RTOL * thr,
            f"{INT8_MEASURED_MARGIN} x the {float(diff):.3g} quantize measured ({'/'.join(measured_at)}) "
            "+ FP32 tolerance")


def check_backends(out: Path, models: dict[str, str], qrep: dict, formats: tuple[str, ...], inputs: CheckInputs,
                   reference, bank, size: int, scoring: ScoringParams, thr: float, forced: list[str],
                   threads: int) -> tuple[dict, dict]:
    """Every model re-run in its runtime and compared with torch -> (score tolerance per backend, everything
    measured); a model outside its tolerance raises ExportError."""
    chosen = qrep.get("chosen")
    # backend -> (runner factory, where quantize's measurement of that model is in its report; None: FP32)
    backends = {"onnxruntime-fp32": (lambda: OrtRunner(out / "model.onnx", threads), None),
                "openvino-fp32": (lambda: OvRunner(out / "model.onnx", threads), None),
                "onnxruntime-full": (lambda: OrtRunner(out / FULL_FILE, threads), None)}
    if "openvino" not in formats:
        backends.pop("openvino-fp32")
    if "int8" in models:
        backends["onnxruntime-int8"] = (lambda: OrtRunner(out / models["int8"], threads), ("ort",))
    if models.get("openvino_xml") == "openvino/model.xml":  # FP32 IR: torch parity like any FP32 model
        backends["openvino-ir-fp32"] = (lambda: OvRunner(out / models["openvino_xml"], threads), None)
    elif "openvino_xml" in models:  # NNCF's own IR, or the ORT QDQ model as OpenVINO runs it (measured apart)
        backends["openvino-int8"] = (lambda: OvRunner(out / models["openvino_xml"], threads),
                                     ("nncf",) if chosen == "nncf" else ("ort", "openvino"))
    tolerance, check = {}, {}
    for name, (make, measured_at) in backends.items():
        int8 = measured_at is not None
        xi = inputs.x_int8 if int8 else inputs.x
        ref_out, ref_sc = reference(xi)
        outs = run_all(make(), xi)
        sc = score_outputs(outs, bank, size, scoring).scores
        rel = {}
        for a, b in zip(outs, ref_out):
            for k, v in max_rel_error(a, b).items():
                rel[k] = max(rel.get(k, 0.0), v)
        diff = float(np.abs(sc - ref_sc).max())
        tol, basis = int8_tolerance(qrep, measured_at, inputs.int8_measured, thr) if int8 else \
            (FP32_SCORE_RTOL * thr, f"{FP32_SCORE_RTOL} x threshold")
        tolerance[name] = tol
        check[name] = {"score_max_abs_diff": diff, "score_tolerance": tol, "tolerance_basis": basis,
                       "output_max_rel_error": rel, "inputs": inputs.int8_source if int8 else inputs.source,
                       "decision_agreement": float(((sc >= thr) == (ref_sc >= thr)).mean()), "images": len(xi)}
        bad = [f"image score differs by {diff:.3g} > {tol:.3g} ({basis})"] if diff > tol else []
        if not int8:
            bad += [f"output {k} max relative error {v:.2e} > {FP32_OUTPUT_RTOL}" for k, v in rel.items()
                    if v > FP32_OUTPUT_RTOL]
        if bad:
            raise ExportError(f"{name} does not match torch: " + "; ".join(bad))
        role = {"onnxruntime-int8": "int8", "openvino-int8": "openvino_xml"}.get(name)
        log(f"{name}: matches torch (score diff {diff:.2e} <= {tol:.2e}; worst output rel. error "
            f"{max(rel.values()):.2e})" + (" as quantized, but FORCED past its INT8 guard" if role in forced else ""))
    return tolerance, check


TENSORRT_SCORE_RTOL = 1e-2  # TensorRT FP32 builds may use TF32 tensor cores: looser than the CPU runtimes


def tensorrt_check(plan: Path, outputs: list[str], x: np.ndarray, reference, bank, size, scoring, thr: float) -> dict:
    """The plan re-run through the edge's own TensorRT backend and its image scores compared with torch."""
    from runtime.backends.tensorrt_backend import TensorRTBackend

    ref_out, ref_sc = reference(x)
    be = TensorRTBackend(plan, outputs)
    try:
        outs = [be.run(xi[None]) for xi in x]
    finally:
        getattr(be, "close", lambda: None)()
    sc = score_outputs(outs, bank, size, scoring).scores
    diff, tol = float(np.abs(sc - ref_sc).max()), TENSORRT_SCORE_RTOL * thr
    if diff > tol:
        raise ExportError(f"tensorrt-fp32 does not match torch: image score differs by {diff:.3g} > {tol:.3g}")
    return {"score_max_abs_diff": diff, "score_tolerance": tol, "tolerance_basis": f"{TENSORRT_SCORE_RTOL} x threshold",
            "images": len(x), "decision_agreement": float(((sc >= thr) == (ref_sc >= thr)).mean())}
