"""`distill export RUN --out ARTIFACT`: the student artifact directory the edge runs.

    ARTIFACT/model.onnx                  FP32 edge graph, BN folded (onnxruntime; source of OpenVINO / TensorRT):
                                         only the outputs the edge scores with (distill/edge_graph.py)
    ARTIFACT/model.full.onnx             FP32 full graph, every output (s8..s64 too): distill eval's fidelity;
                                         the edge never opens it
    ARTIFACT/model.int8.onnx             ONNX Runtime static INT8 (QDQ, per-channel) edge graph, if it passed
                                         the guard
    ARTIFACT/openvino/model.int8.xml/bin OpenVINO IR of the best INT8 model (NNCF's, or the QDQ ONNX converted),
                                         or openvino/model.xml/bin (FP32) when the INT8 model fails the guard as
                                         OpenVINO runs it
    ARTIFACT/bank.npy                    float16 (N, D) memory bank
    ARTIFACT/bank.index                  with --index ivf|hnsw: its faiss index, search parameter checked
                                         against exact search (distill/export_index.py)
    ARTIFACT/manifest.json               runtime.contracts.manifest.ArtifactManifest, sha256 of every file
    ARTIFACT/manifest.sig                with --sign KEY: the manifest's Ed25519 signature (runtime/contracts/signing.py);
                                         through the sha256s it covers every file. An edge given
                                         --trusted-signers serves only artifacts signed by a key it trusts

Every model is re-run in its runtime on val images and compared with torch: outputs (max relative error)
and image scores (max absolute difference), against the stated tolerances recorded in
``manifest.tolerance`` (score, per backend) and ``manifest.metrics["export_check"]`` (everything measured).
FP32 runtimes must match torch tightly. An INT8 model is held to what ``distill quantize`` measured for it:
its largest image-score difference to FP32 on the quantize validation split (``score_max_abs_diff``), with
a margin, on the first images of that same split. So a model the guard passed is never refused for an error
it already had, and a model that computes something else than what quantize checked (a broken runtime or
conversion, a replaced file) still is.
TensorRT plans are built on the target from model.onnx (deploy/tensorrt/build_engine.py).
"""
from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np

from distill.bank import ScoringParams, score_outputs
from distill.edge_graph import edge_outputs, onnx_outputs, openvino_outputs, prune_onnx, prune_openvino
from distill.export_targets import export_onnx, export_openvino, max_rel_error
from distill.runners import OrtRunner, OvRunner, TorchRunner, run_all
from runtime.bank_index import DEFAULT_INDEX, INDEX_KINDS

# Stated tolerances, relative to the calibrated threshold (scores are distances, their scale is the run's).
FP32_SCORE_RTOL = 1e-3  # FP32 runtimes vs torch
FP32_OUTPUT_RTOL = 1e-3  # max |Δ| / max |torch| per output
# INT8 vs torch FP32: quantize's measured max score difference × INT8_MEASURED_MARGIN + FP32 tolerance
# (the check images are a subset of the ones quantize measured on; the margin covers thread-count rounding)
INT8_MEASURED_MARGIN = 1.5
INT8_SCORE_RTOL = 0.5  # fallback when nothing was measured (old report, or check images not from that split)
CHECK_IMAGES = 8
FORMATS = ("onnx", "openvino", "tensorrt")  # --format: what to write (ONNX FP32 always: every other is built from it)
PRECISIONS = ("fp32", "int8")  # --precision
DEFAULT_FORMATS = ("onnx", "openvino")  # what export has always written; a TensorRT plan needs TensorRT here
DEFAULT_PRECISIONS = ("fp32", "int8")
TENSORRT_PLAN = "model.plan"


def log(msg: str) -> None:
    print(f"[distill export] {msg}", file=sys.stderr, flush=True)


class ExportError(RuntimeError):
    pass


def parse_choice(text: str | list | tuple, allowed: tuple[str, ...], what: str) -> tuple[str, ...]:
    """"onnx,openvino" (or a list) -> ("onnx", "openvino"), in ``allowed``'s order; an unknown name raises."""
    names = [t.strip().lower() for t in (text.split(",") if isinstance(text, str) else text) if t.strip()]
    bad = [n for n in names if n not in allowed]
    if bad or not names:
        raise ExportError(f"{what} must be a comma-separated choice of {', '.join(allowed)}; got {text!r}")
    return tuple(a for a in allowed if a in names)


def tensorrt_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("tensorrt") is not None


def export_run(run_dir: str | Path, out: str | Path, *, threads: int = 1, check_images: int = CHECK_IMAGES,
               sign: str | Path | None = None, index: str = DEFAULT_INDEX,
               formats: tuple[str, ...] | str = DEFAULT_FORMATS,
               precisions: tuple[str, ...] | str = DEFAULT_PRECISIONS) -> dict:
    """``sign``: an Ed25519 private key file (``lineside keys DIR --name NAME --signing``) to sign the
    artifact with; read before anything is exported, so a wrong key costs nothing. ``index``: the bank's
    nearest-neighbour search (runtime/bank_index.py INDEX_KINDS); faiss is needed here for ivf/hnsw.
    ``formats`` (FORMATS) and ``precisions`` (PRECISIONS): what to write. The FP32 ONNX graphs are always
    written (every other model is built from them, and they are the edge's reference); "int8" adds the
    quantized models (and needs `distill quantize` first), "openvino" the IR (INT8 where it passed its guard,
    else FP32), "tensorrt" an FP32 plan built here (needs TensorRT: checked before anything is written)."""
    formats = parse_choice(formats, FORMATS, "--format")
    precisions = parse_choice(precisions, PRECISIONS, "--precision")
    if "onnx" not in formats:
        log("the FP32 ONNX graphs are written anyway: every other format is built from them")
    if "fp32" not in precisions:
        log("the FP32 models are written anyway: the INT8 ones are checked against them, and the edge falls back "
            "to them")
    if "tensorrt" in formats and not tensorrt_available():
        raise ExportError("--format tensorrt needs TensorRT, which is not importable here; build the plan on the "
                          "target (deploy/tensorrt/build_engine.py ARTIFACT/model.onnx) or leave tensorrt out")
    want_int8 = "int8" in precisions
    from distill.data import load_images
    from distill.quantize import FULL_FILE, QUANT_DIR, REPORT
    from distill.run import load_run
    from runtime.contracts.dataset import load_dataset
    from runtime.contracts.manifest import (MANIFEST_FORMAT_VERSION, ArtifactManifest, Calibration, IndexSpec, Preprocess,
                                  Producer, Scoring, load_manifest, write_manifest)

    if sign is not None:
        from runtime.contracts.signing import load_signing_key

        load_signing_key(sign)
    if index not in INDEX_KINDS:
        raise ExportError(f"--index must be one of {INDEX_KINDS}, got {index!r}")
    if index != "exact":
        from runtime.bank_index import require_faiss

        try:
            require_faiss()  # before anything is exported, like the key
        except ImportError as e:
            raise ExportError(f"--index {index}: {e}") from None
    run = load_run(run_dir)
    qdir = run.dir / QUANT_DIR
    if want_int8 and not (qdir / REPORT).is_file():
        raise ExportError(f"{run.dir}: not quantized yet; run `distill quantize {run.dir} --data D/manifest.jsonl` "
                          "first (or export --precision fp32: no INT8 model)")
    # without int8 the quantize report is not read: no INT8 model is shipped, so none is forced or checked
    qrep = json.loads((qdir / REPORT).read_text()) if want_int8 else {"methods": {}}
    out = Path(out)
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    cfg = run.config
    scoring = ScoringParams(**cfg["scoring"])
    outputs = edge_outputs(run.model.output_names, scoring.mode)
    models: dict[str, str] = {}
    export_onnx(run.model, out / FULL_FILE, run.size)
    models["full"] = FULL_FILE
    prune_onnx(out / FULL_FILE, out / "model.onnx", outputs)
    models["fp32"] = "model.onnx"
    ort_int8 = qrep["methods"].get("ort", {})
    if ort_int8.get("file"):
        _edge_copy(qdir / ort_int8["file"], out / "model.int8.onnx", outputs, onnx_outputs, prune_onnx)
        models["int8"] = "model.int8.onnx"
    chosen = qrep.get("chosen")
    if "openvino" not in formats:
        pass
    elif not want_int8:
        export_openvino(out / "model.onnx", out / "openvino" / "model.xml")
        models["openvino_xml"] = "openvino/model.xml"
    elif chosen == "nncf":
        _edge_copy(qdir / qrep["methods"]["nncf"]["file"], out / "openvino" / "model.int8.xml", outputs,
                   openvino_outputs, prune_openvino)
        models["openvino_xml"] = "openvino/model.int8.xml"
    elif chosen == "ort":
        in_ov = qrep["methods"]["ort"].get("openvino") or {}
        if in_ov.get("passed") or qrep["methods"]["ort"].get("forced"):
            export_openvino(out / "model.int8.onnx", out / "openvino" / "model.int8.xml")
            models["openvino_xml"] = "openvino/model.int8.xml"
        else:  # the guard holds per runtime: OpenVINO's INT8 kernels lost too much on this model, so it gets FP32
            why = "; ".join(in_ov.get("failures") or [in_ov.get("error", "not measured")])
            log(f"WARNING: the INT8 model fails the guard as OpenVINO runs it ({why}); "
                "shipping OpenVINO IR of the FP32 model instead")
            export_openvino(out / "model.onnx", out / "openvino" / "model.xml")
            models["openvino_xml"] = "openvino/model.xml"
    forced = forced_roles(qrep, models)
    for role in forced:
        log(f"WARNING: {models[role]} is shipped past its INT8 accuracy guard (quantize --force); the manifest marks "
            "it forced and the edge serves it only with --allow-forced")
    np.save(out / "bank.npy", run.bank.astype(np.float16))
    # torch weights + run config: what distill eval / bench time as the "torch" backend (the edge ignores them)
    (out / "torch").mkdir()
    shutil.copyfile(run.dir / "student.pt", out / "torch" / "student.pt")
    (out / "torch" / "config.json").write_text(json.dumps(run.config, indent=2))
    models["torch"] = "torch/student.pt"
    bank = np.load(out / "bank.npy").astype(np.float32)

    # re-run every model in its runtime and compare with torch
    manifest_path = Path(cfg["dataset"]["manifest"])
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
    thr = abs(float(cfg["calibration"]["threshold"])) or 1.0
    fused = run.model.fused()
    refs = {}

    def reference(inputs: np.ndarray) -> tuple[list, np.ndarray]:
        if id(inputs) not in refs:
            o = run_all(TorchRunner(fused), inputs)
            refs[id(inputs)] = (o, score_outputs(o, bank, run.size, scoring).scores)
        return refs[id(inputs)]

    def int8_tolerance(measured_at: tuple[str, ...]) -> tuple[float, str]:
        entry = qrep["methods"]
        for key in measured_at:
            entry = entry.get(key) or {}
        measured = entry.get("score_max_abs_diff")
        if not int8_measured or measured is None:
            return INT8_SCORE_RTOL * thr, f"fallback {INT8_SCORE_RTOL} x threshold"
        return (INT8_MEASURED_MARGIN * float(measured) + FP32_SCORE_RTOL * thr,
                f"{INT8_MEASURED_MARGIN} x the {float(measured):.3g} quantize measured ({'/'.join(measured_at)}) "
                "+ FP32 tolerance")

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
        xi = x_int8 if int8 else x
        ref_out, ref_sc = reference(xi)
        outs = run_all(make(), xi)
        sc = score_outputs(outs, bank, run.size, scoring).scores
        rel = {}
        for a, b in zip(outs, ref_out):
            for k, v in max_rel_error(a, b).items():
                rel[k] = max(rel.get(k, 0.0), v)
        diff = float(np.abs(sc - ref_sc).max())
        tol, basis = int8_tolerance(measured_at) if int8 else (FP32_SCORE_RTOL * thr, f"{FP32_SCORE_RTOL} x threshold")
        tolerance[name] = tol
        check[name] = {"score_max_abs_diff": diff, "score_tolerance": tol, "tolerance_basis": basis,
                       "output_max_rel_error": rel, "inputs": int8_source if int8 else check_source,
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

    if "tensorrt" in formats:  # FP32 plan from the edge graph, on this machine's GPU (a plan is tied to its GPU)
        from distill.export_targets import export_tensorrt

        export_tensorrt(out / "model.onnx", out / TENSORRT_PLAN)
        models["tensorrt_plan"] = TENSORRT_PLAN
        check["tensorrt-fp32"] = tensorrt_check(out / TENSORRT_PLAN, outputs, x, reference, bank, run.size, scoring,
                                                thr)
        tolerance["tensorrt-fp32"] = check["tensorrt-fp32"]["score_tolerance"]
        log(f"tensorrt-fp32: plan {TENSORRT_PLAN}, score diff {check['tensorrt-fp32']['score_max_abs_diff']:.2e} "
            f"<= {tolerance['tensorrt-fp32']:.2e}")

    index_spec = IndexSpec()
    if index != "exact":
        from distill.export_index import IndexCheckError, build_checked_index

        ref_out, _ = reference(x)
        try:
            index_spec = IndexSpec(**build_checked_index(bank, ref_out, run.size, scoring, index,
                                                         float(cfg["calibration"]["threshold"]), out, threads))
        except IndexCheckError as e:
            raise ExportError(str(e)) from None
        c = index_spec.check
        log(f"{index} index {index_spec.params}: image scores within {c['score_max_abs_diff']:.2e} of exact search "
            f"(<= {c['score_tolerance']:.2e}); kNN {c['knn_ms_per_image']}")

    spec = run.spec
    cal = dict(cfg["calibration"])
    if manifest_path.is_file():  # the val split calibration ran on, scored by the same FP32 model and scoring
        val_sc = score_outputs(run_all(TorchRunner(fused), val.student_inputs(run.mean, run.std).numpy()), bank,
                               run.size, scoring).scores
        cal["normalization"] = score_normalization(cal, val.labels, val_sc)
    else:
        cal["normalization"] = score_normalization(cal, None, None)
    quant = f"int8-{chosen}" if chosen else "fp32"
    manifest = ArtifactManifest(
        format_version=MANIFEST_FORMAT_VERSION, name=f"student-{cfg['student']}", student=cfg["student"],
        feature_spec=spec.to_dict(), preprocess=Preprocess(**cfg["preprocess"]),
        outputs=outputs, full_outputs=list(run.model.output_names),
        scoring=Scoring(bank_file="bank.npy", embedding_output="embedding", index=index_spec, **scoring.to_dict()),
        calibration=Calibration(**cal), labels=list(cfg["dataset"].get("labels", [])),
        teacher_hash=cfg["teacher"]["hash"], quantization=quant, models=models, forced=forced, tolerance=tolerance,
        metrics={"fidelity": cfg.get("fidelity", {}), "val": cfg.get("val_metrics", {}), "bank": cfg.get("bank", {}),
                 "embedding": cfg["embedding"], "embedding_pca_variance": cfg.get("embedding_pca_variance"),
                 "n_params": cfg.get("n_params"),
                 "quantize": {m: {k: v for k, v in e.items() if k != "attempts"} for m, e in qrep["methods"].items()},
                 "quantize_fp32": qrep.get("fp32_metrics"), "export_check": check,
                 "export_check_inputs": check_source},
        producer=Producer.now("distill export"),
    )
    write_manifest(out, manifest)
    load_manifest(out)  # what the edge will do: versions and checksums
    signer = None
    if sign is not None:
        from runtime.contracts.signing import sign_artifact

        signer = sign_artifact(out, sign)
        log(f"signed {out} with key {signer} ({Path(sign).name})")
    log(f"wrote {out} ({quant}; models {sorted(models)})")
    return {"artifact": str(out), "quantization": quant, "models": models, "forced": forced, "tolerance": tolerance,
            "export_check": check, "signer": signer, "outputs": outputs, "index": index_spec.model_dump(),
            "formats": list(formats), "precisions": list(precisions)}


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


def score_normalization(cal: dict, labels, scores) -> dict:
    """The constants of the operator's 0-1 score (runtime.scoring.ScoreNorm), written into the manifest's
    calibration: the calibrated threshold (-> 0.5), the lowest good and the highest of the val ``scores`` the
    threshold was calibrated on (-> 0 and 1). Raw scores, threshold and decisions are untouched. Without val
    scores (the dataset moved): the default's."""
    from runtime.scoring import ScoreNorm

    thr = float(cal["threshold"])
    if scores is None or not len(scores):
        n = ScoreNorm.default(thr, tuple(cal["band"]))
        return {"low": n.low, "threshold": thr, "high": n.high, "source": "default (val split not found)"}
    scores, good = np.asarray(scores, float), np.asarray(labels) == 0
    n = ScoreNorm.checked(float(scores[good].min()) if good.any() else None, thr, float(scores.max()))
    return {"low": n.low, "threshold": thr, "high": n.high,
            "source": f"{len(scores)} val images: lowest good and highest score, FP32 model"}


def _edge_copy(src: Path, dst: Path, outputs: list[str], read_outputs, prune) -> None:
    """Ship a quantized model as the edge graph: copied as it is when quantize already wrote the edge graph,
    pruned to ``outputs`` when it holds more (a run quantized before the edge graph existed)."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    have = read_outputs(src)
    if have == outputs:
        for suf in (".xml", ".bin") if src.suffix == ".xml" else (src.suffix,):
            shutil.copyfile(src.with_suffix(suf), dst.with_suffix(suf))
        return
    log(f"{src.name} has outputs {have}: pruned to the edge graph's {outputs} (re-run distill quantize to guard "
        "the edge graph itself; pruning keeps every value it computes for those outputs)")
    prune(src, dst, outputs)


def forced_roles(qrep: dict, models: dict[str, str]) -> list[str]:
    """Model roles whose INT8 model failed its accuracy guard and was written anyway (quantize --force): the ORT
    QDQ model, and the OpenVINO INT8 IR when it is NNCF's forced model or the QDQ model that failed as OpenVINO
    runs it (export ships that one only when the ORT model was forced too)."""
    methods, out = qrep.get("methods", {}), []
    ort = methods.get("ort", {})
    if "int8" in models and ort.get("forced"):
        out.append("int8")
    if models.get("openvino_xml", "").endswith("model.int8.xml"):
        if qrep.get("chosen") == "nncf":
            bad = methods.get("nncf", {}).get("forced")
        else:
            bad = not (ort.get("openvino") or {}).get("passed")  # its own guard, as OpenVINO runs it
        if bad:
            out.append("openvino_xml")
    return out


def configure(p) -> None:
    p.add_argument("run", help="run directory (distill fit, then distill quantize)")
    p.add_argument("--out", required=True, help="artifact directory to write (replaced)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--index", choices=INDEX_KINDS, default=DEFAULT_INDEX,
                   help="the bank's nearest-neighbour search: exact BLAS, or a faiss IVF / HNSW index "
                        "(needs lineside[ann]) tuned until scores match exact search")
    p.add_argument("--sign", metavar="KEY", help="sign the artifact with this Ed25519 private key "
                   "(lineside keys DIR --name NAME --signing); edges with --trusted-signers serve only signed ones")
    p.add_argument("--format", dest="formats", default=",".join(DEFAULT_FORMATS),
                   help=f"what to write, comma-separated of {', '.join(FORMATS)} (the FP32 ONNX graphs always: the "
                        "source of the others); tensorrt builds an FP32 plan here and needs TensorRT")
    p.add_argument("--precision", dest="precisions", default=",".join(DEFAULT_PRECISIONS),
                   help=f"comma-separated of {', '.join(PRECISIONS)}: int8 ships the quantized models "
                        "(needs distill quantize first)")
    p.add_argument("--json", action="store_true")


def run(args) -> int:
    try:
        res = export_run(args.run, args.out, threads=args.threads, sign=args.sign, index=args.index,
                         formats=args.formats, precisions=args.precisions)
    except ExportError as e:
        print(f"distill export: {e}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(res, default=float))
    return 0
