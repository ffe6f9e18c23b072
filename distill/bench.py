"""Student latency and peak memory per backend at batch 1 (``lineside bench``, ``distill eval``).

    from distill.bench import student_latency
    student_latency("ARTIFACT", ["onnxruntime-fp32", "onnxruntime-int8"], size=256, runs=50)

Each backend is timed in its own subprocess, so its peak RSS is its own (``peak_rss_mb``; ``model_rss_mb``
is the growth over the process after imports). At a size other than the artifact's, timing-only models
are built from the artifact's torch weights (the edge graph, FP32 ONNX at that size, INT8 with random
calibration data: right for speed, not for decisions) and the result says so. Threads default to 1 (set per backend).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from runtime.timing import time_calls

BACKENDS = ("torch", "onnxruntime-fp32", "onnxruntime-int8", "openvino-fp32", "openvino-int8")
DEFAULT_RUNS = 30
WARMUP = 5
CHILD_TIMEOUT_S = 600


def _files(artifact: Path, manifest) -> dict[str, Path]:
    m = manifest.models
    f = {"onnxruntime-fp32": artifact / m["fp32"], "openvino-fp32": artifact / m["fp32"]}
    if "int8" in m:
        f["onnxruntime-int8"] = artifact / m["int8"]
    if "openvino_xml" in m:
        f["openvino-int8"] = artifact / m["openvino_xml"]
    if "torch" in m:
        f["torch"] = artifact / m["torch"]
    return f


def _timing_models(artifact: Path, size: int, out: Path, outputs: list[str]) -> dict[str, Path]:
    """FP32/INT8 edge graphs (``outputs``: the manifest's) at another input size, from the artifact's torch
    weights (timing only)."""
    import torch

    from distill.edge_graph import prune_onnx
    from distill.export_targets import export_onnx, export_openvino
    from distill.int8.ort import quantize_ort
    from distill.int8.quantize import attempts
    from distill.run import build_model

    cfg = json.loads((artifact / "torch" / "config.json").read_text())
    model = build_model(cfg)
    model.load_state_dict(torch.load(artifact / "torch" / "student.pt", map_location="cpu", weights_only=True))
    fp32 = prune_onnx(export_onnx(model.eval(), out / "model.full.onnx", size), out / "model.onnx", outputs)
    calib = np.random.default_rng(0).standard_normal((4, 3, size, size)).astype(np.float32)
    int8 = quantize_ort(fp32, out / "model.int8.onnx", calib, attempts(fp32)[0][1])
    xml = export_openvino(int8, out / "openvino" / "model.int8.xml")
    return {"onnxruntime-fp32": fp32, "openvino-fp32": fp32, "onnxruntime-int8": int8, "openvino-int8": xml,
            "torch": artifact / "torch" / "student.pt"}


def student_latency(artifact_dir: str | Path, backends=None, size: int | None = None, runs: int = DEFAULT_RUNS,
                    threads: int = 1) -> dict:
    """-> {"size", "threads", "runs", "timing_only_models", "backends": {name: {median_ms, p90_ms, min_ms,
    mean_ms, peak_rss_mb, model_rss_mb, file} | {"error": why}}}."""
    from runtime.contracts.manifest import load_manifest

    art = Path(artifact_dir)
    man = load_manifest(art)
    s = int(size or man.preprocess.size)
    backends = list(backends or BACKENDS)
    unknown = [b for b in backends if b not in BACKENDS]
    if unknown:
        raise ValueError(f"unknown backends {unknown}; known: {list(BACKENDS)}")
    result = {"artifact": str(art), "student": man.student, "size": s, "threads": threads, "runs": runs,
              "timing_only_models": s != man.preprocess.size, "backends": {}}
    with tempfile.TemporaryDirectory() as td:
        files = _files(art, man) if s == man.preprocess.size else _timing_models(art, s, Path(td), man.outputs)
        for b in backends:
            if b not in files:
                result["backends"][b] = {"error": f"the artifact has no model for {b}"}
                continue
            result["backends"][b] = _run_child(b, files[b], s, runs, threads, art)
    return result


def _run_child(backend: str, path: Path, size: int, runs: int, threads: int, artifact: Path) -> dict:
    job = json.dumps({"backend": backend, "path": str(path), "size": size, "runs": runs, "threads": threads,
                      "artifact": str(artifact)})
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    try:
        p = subprocess.run([sys.executable, "-c", "import sys; from distill.bench import _child; _child(sys.argv[1])", job],
                           capture_output=True, text=True, timeout=CHILD_TIMEOUT_S, env=env)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {CHILD_TIMEOUT_S}s"}
    if p.returncode != 0:
        return {"error": (p.stderr.strip().splitlines() or ["failed"])[-1]}
    return json.loads(p.stdout.strip().splitlines()[-1])


def _rss_mb() -> float:
    """Peak RSS of this process (VmHWM: unlike ru_maxrss it is not inherited from the parent across exec)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _current_rss_mb() -> float:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2 ** 20
    except OSError:
        return _rss_mb()


def _child(job_json: str) -> None:
    job = json.loads(job_json)
    b, path, size, runs, threads = job["backend"], Path(job["path"]), job["size"], job["runs"], job["threads"]
    x = np.random.default_rng(0).standard_normal((1, 3, size, size)).astype(np.float32)
    if b == "torch":
        import torch

        from distill.run import build_model
        from distill.runners import TorchRunner

        torch.set_num_threads(threads)
        base = _current_rss_mb()
        cfg = json.loads((Path(job["artifact"]) / "torch" / "config.json").read_text())
        model = build_model(cfg)
        model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
        runner = TorchRunner(model.fused())
    else:
        from distill.runners import OrtRunner, OvRunner

        if b.startswith("onnxruntime"):
            import onnxruntime  # noqa: F401
        else:
            import openvino  # noqa: F401
        base = _current_rss_mb()
        runner = OrtRunner(path, threads) if b.startswith("onnxruntime") else OvRunner(path, threads)
    ts = time_calls(lambda: runner.run(x), runs, WARMUP)
    peak = _rss_mb()
    print(json.dumps({"median_ms": float(np.median(ts)), "p90_ms": float(np.percentile(ts, 90)),
                      "min_ms": float(ts.min()), "mean_ms": float(ts.mean()), "peak_rss_mb": round(peak, 1),
                      "model_rss_mb": round(max(0.0, peak - base), 1), "file": path.name}))


def teacher_latency(teacher, size: int | None = None, runs: int = 3, noise_draws: int = 1) -> dict:
    """Teacher feature extraction (VAE encode + U-Net at t=50) per image at batch 1, in this process."""
    import torch

    s = int(size or teacher.feature_spec.image_size)
    x = torch.rand(1, 3, s, s, generator=torch.Generator().manual_seed(0))
    ts = time_calls(lambda: teacher.extract_features(x, noise_draws=noise_draws), runs, warmup=1)
    return {"median_ms": float(np.median(ts)), "min_ms": float(np.min(ts)), "runs": runs, "size": s,
            "preset": getattr(teacher, "preset", ""), "noise_draws": noise_draws, "peak_rss_mb": round(_rss_mb(), 1)}
