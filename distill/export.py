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
    ARTIFACT/bank.int8.onnx              with --index int8: the int8 distance GEMM + exact re-rank graph
                                         (runtime.bank_index.build_int8_graph), rerank checked the same way
    ARTIFACT/manifest.json               runtime.contracts.manifest.ArtifactManifest, sha256 of every file
    ARTIFACT/manifest.sig                with --sign KEY: the manifest's Ed25519 signature (runtime/contracts/signing.py);
                                         through the sha256s it covers every file. An edge given
                                         --trusted-signers serves only artifacts signed by a key it trusts

Every model is re-run in its runtime and compared with torch at a stated tolerance (distill/export_check.py).
TensorRT plans are built on the target from model.onnx (deploy/tensorrt/build_engine.py).
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np

from distill.bank import ScoringParams, score_outputs
from distill.edge_graph import edge_outputs, onnx_outputs, openvino_outputs, prune_onnx, prune_openvino
from distill.export_check import (CheckInputs, ExportError, check_backends, check_inputs, tensorrt_check,
                                  torch_reference)
from distill.export_targets import export_onnx, export_openvino
from distill.int8.quantize import FULL_FILE, QUANT_DIR, REPORT
from distill.runners import TorchRunner, run_all
from runtime.bank_index import DEFAULT_INDEX, FAISS_KINDS, INDEX_KINDS
from runtime.progress import command_log

CHECK_IMAGES = 8
FORMATS = ("onnx", "openvino", "tensorrt")  # --format: what to write (ONNX FP32 always: every other is built from it)
PRECISIONS = ("fp32", "int8")  # --precision
DEFAULT_FORMATS = ("onnx", "openvino")  # what export has always written; a TensorRT plan needs TensorRT here
DEFAULT_PRECISIONS = ("fp32", "int8")
TENSORRT_PLAN = "model.plan"


log = command_log("distill export")


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
    from distill.run import load_run

    formats, precisions = check_request(formats, precisions, sign, index)
    want_int8 = "int8" in precisions
    run = load_run(run_dir)
    qrep = read_quantize_report(run, want_int8)
    out = Path(out)
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    scoring = ScoringParams(**run.config["scoring"])
    outputs = edge_outputs(run.model.output_names, scoring.mode)
    models = write_models(run, out, qrep, outputs, formats, want_int8)
    forced = forced_roles(qrep, models)
    for role in forced:
        log(f"WARNING: {models[role]} is shipped past its INT8 accuracy guard (quantize --force); the manifest marks "
            "it forced and the edge serves it only with --allow-forced")
    bank = write_bank_and_torch(run, out, models)
    inputs = check_inputs(run, qrep, check_images, want_int8)
    thr = abs(float(run.config["calibration"]["threshold"])) or 1.0
    fused = run.model.fused()
    reference = torch_reference(fused, bank, run.size, scoring)
    tolerance, check = check_backends(out, models, qrep, formats, inputs, reference, bank, run.size, scoring, thr,
                                      forced, threads)
    if "tensorrt" in formats:  # FP32 plan from the edge graph, on this machine's GPU (a plan is tied to its GPU)
        from distill.export_targets import export_tensorrt

        export_tensorrt(out / "model.onnx", out / TENSORRT_PLAN)
        models["tensorrt_plan"] = TENSORRT_PLAN
        check["tensorrt-fp32"] = tensorrt_check(out / TENSORRT_PLAN, outputs, inputs.x, reference, bank, run.size,
                                                scoring, thr)
        tolerance["tensorrt-fp32"] = check["tensorrt-fp32"]["score_tolerance"]
        log(f"tensorrt-fp32: plan {TENSORRT_PLAN}, score diff {check['tensorrt-fp32']['score_max_abs_diff']:.2e} "
            f"<= {tolerance['tensorrt-fp32']:.2e}")
    index_spec = build_index(index, bank, reference(inputs.x)[0] if index != "exact" else None, run, scoring, out,
                             threads)
    cal = dict(run.config["calibration"])
    cal["normalization"] = val_normalization(cal, inputs, fused, bank, run, scoring)
    quant = f"int8-{qrep.get('chosen')}" if qrep.get("chosen") else "fp32"
    write_artifact_manifest(out, run, qrep, outputs, scoring, index_spec, cal, quant, models, forced, tolerance,
                            check, inputs.source)
    signer = None
    if sign is not None:
        from runtime.contracts.signing import sign_artifact

        signer = sign_artifact(out, sign)
        log(f"signed {out} with key {signer} ({Path(sign).name})")
    log(f"wrote {out} ({quant}; models {sorted(models)})")
    return {"artifact": str(out), "quantization": quant, "models": models, "forced": forced, "tolerance": tolerance,
            "export_check": check, "signer": signer, "outputs": outputs, "index": index_spec.model_dump(),
            "formats": list(formats), "precisions": list(precisions)}


def check_request(formats, precisions, sign, index: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """What to write, checked before anything is exported (so a wrong key, a missing TensorRT or faiss costs
    nothing) -> (formats, precisions)."""
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
    if sign is not None:
        from runtime.contracts.signing import load_signing_key

        load_signing_key(sign)
    if index not in INDEX_KINDS:
        raise ExportError(f"--index must be one of {INDEX_KINDS}, got {index!r}")
    if index in FAISS_KINDS:  # int8 needs only onnx and onnxruntime, distill's own
        from runtime.bank_index import require_faiss

        try:
            require_faiss()  # before anything is exported, like the key
        except ImportError as e:
            raise ExportError(f"--index {index}: {e}") from None
    return formats, precisions


def read_quantize_report(run, want_int8: bool) -> dict:
    """`distill quantize`'s report; without int8 it is not read: no INT8 model is shipped, so none is forced or
    checked."""
    qdir = run.dir / QUANT_DIR
    if want_int8 and not (qdir / REPORT).is_file():
        raise ExportError(f"{run.dir}: not quantized yet; run `distill quantize {run.dir} --data D/manifest.jsonl` "
                          "first (or export --precision fp32: no INT8 model)")
    return json.loads((qdir / REPORT).read_text()) if want_int8 else {"methods": {}}


def write_models(run, out: Path, qrep: dict, outputs: list[str], formats: tuple[str, ...],
                 want_int8: bool) -> dict[str, str]:
    """The FP32 graphs (full and edge), the ORT INT8 edge graph and the OpenVINO IR -> models (role -> file)."""
    qdir = run.dir / QUANT_DIR
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
    return models


def write_bank_and_torch(run, out: Path, models: dict[str, str]) -> np.ndarray:
    """bank.npy (float16), and the torch weights + run config: what distill eval / bench time as the "torch"
    backend (the edge ignores them). -> the bank as the edge reads it (float16 round trip, float32)."""
    np.save(out / "bank.npy", run.bank.astype(np.float16))
    (out / "torch").mkdir()
    shutil.copyfile(run.dir / "student.pt", out / "torch" / "student.pt")
    (out / "torch" / "config.json").write_text(json.dumps(run.config, indent=2))
    models["torch"] = "torch/student.pt"
    return np.load(out / "bank.npy").astype(np.float32)


def build_index(index: str, bank: np.ndarray, ref_out: list | None, run, scoring: ScoringParams, out: Path,
                threads: int):
    """The bank's search as the manifest records it: exact, or an index (faiss, int8) whose search parameter is checked
    against exact search on ``ref_out`` (the torch outputs of the check images)."""
    from runtime.contracts.manifest import IndexSpec

    if index == "exact":
        return IndexSpec()
    from distill.export_index import IndexCheckError, build_checked_index

    try:
        index_spec = IndexSpec(**build_checked_index(bank, ref_out, run.size, scoring, index,
                                                     float(run.config["calibration"]["threshold"]), out, threads))
    except IndexCheckError as e:
        raise ExportError(str(e)) from None
    c = index_spec.check
    log(f"{index} index {index_spec.params}: image scores within {c['score_max_abs_diff']:.2e} of exact search "
        f"(<= {c['score_tolerance']:.2e}); kNN {c['knn_ms_per_image']}")
    return index_spec


def val_normalization(cal: dict, inputs: CheckInputs, fused, bank: np.ndarray, run, scoring: ScoringParams) -> dict:
    """score_normalization on the val split calibration ran on, scored by the same FP32 model and scoring."""
    if inputs.val is None:
        return score_normalization(cal, None, None)
    val = inputs.val
    val_sc = score_outputs(run_all(TorchRunner(fused), val.student_inputs(run.mean, run.std).numpy()), bank,
                           run.size, scoring).scores
    return score_normalization(cal, val.labels, val_sc)


def write_artifact_manifest(out: Path, run, qrep: dict, outputs: list[str], scoring: ScoringParams, index_spec,
                            cal: dict, quant: str, models: dict[str, str], forced: list[str], tolerance: dict,
                            check: dict, check_source: str) -> None:
    """manifest.json with the sha256 of every file, read back as the edge will (versions and checksums)."""
    from runtime.contracts.manifest import (MANIFEST_FORMAT_VERSION, ArtifactManifest, Calibration, Preprocess,
                                            Producer, Scoring, load_manifest, write_manifest)

    cfg = run.config
    manifest = ArtifactManifest(
        format_version=MANIFEST_FORMAT_VERSION, name=f"student-{cfg['student']}", student=cfg["student"],
        feature_spec=run.spec.to_dict(), preprocess=Preprocess(**cfg["preprocess"]),
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
