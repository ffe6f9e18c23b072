"""Inference backends behind one interface: ``open_backend(...)`` -> object with ``.name`` and
``.run(x) -> dict[output name, ndarray]``.

    onnxruntime  CPU; CUDA / TensorRT execution providers when this onnxruntime build has them
    openvino     CPU (or GPU); INFERENCE_PRECISION_HINT f32 so scores match the other backends
    tensorrt     native TensorRT 10 engine (plan built on the target, e.g. a Jetson) with pycuda buffers

Heavy libraries are imported only by the backend that is opened. "auto" picks, in order, a TensorRT
plan when the artifact has one and tensorrt/pycuda import, else ONNX Runtime, else OpenVINO, and logs
which it picked and why the others were skipped: no silent fallback.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Protocol

import numpy as np

from runtime.contracts.manifest import ArtifactManifest

log = logging.getLogger("lineside.backends")

BACKENDS = ("onnxruntime", "openvino", "tensorrt")
INPUT_NAME = "image"


class BackendError(RuntimeError):
    """A backend that cannot be opened here; the message says which and why."""


class Backend(Protocol):
    name: str  # e.g. "onnxruntime[CPUExecutionProvider]"

    def run(self, x: np.ndarray) -> dict[str, np.ndarray]: ...

    def close(self) -> None: ...


def model_file(artifact_dir: str | Path, manifest: ArtifactManifest, backend: str) -> Path:
    """The artifact file a backend runs: TensorRT its plan, OpenVINO its IR when present, else the ONNX
    model (the INT8 one when the artifact was quantized)."""
    models = manifest.models
    d = Path(artifact_dir)
    if backend == "tensorrt":
        if "tensorrt_plan" not in models:
            raise BackendError(f"tensorrt: artifact {d} has no models.tensorrt_plan; build one on the target "
                               "(deploy/tensorrt: trtexec --onnx=model.onnx --saveEngine=model.plan) and re-export")
        return d / models["tensorrt_plan"]
    if backend == "openvino" and "openvino_xml" in models:
        return d / models["openvino_xml"]
    for role in ("int8", "fp32"):
        if role in models:
            return d / models[role]
    raise BackendError(f"artifact {d} names no ONNX model (models has {sorted(models)}; need int8 or fp32)")


def _open(name: str, artifact_dir, manifest, threads: int, device: str | None) -> Backend:
    path = model_file(artifact_dir, manifest, name)
    if name == "onnxruntime":
        from runtime.backends.ort_backend import OrtBackend

        return OrtBackend(path, manifest.outputs, threads=threads, device=device or "auto")
    if name == "openvino":
        from runtime.backends.openvino_backend import OpenVinoBackend

        return OpenVinoBackend(path, manifest.outputs, threads=threads, device=device or "CPU")
    if name == "tensorrt":
        from runtime.backends.tensorrt_backend import TensorRTBackend

        return TensorRTBackend(path, manifest.outputs)
    raise BackendError(f"unknown backend {name!r}; backends are auto, {', '.join(BACKENDS)}")


def open_backend(artifact_dir: str | Path, manifest: ArtifactManifest, name: str = "auto", threads: int = 1,
                 device: str | None = None) -> Backend:
    """Open the named backend on the artifact's model, or the best available one for "auto"."""
    if name != "auto":
        try:
            return _open(name, artifact_dir, manifest, threads, device)
        except ImportError as e:
            raise BackendError(f"{name}: not installed here ({e})") from None
    skipped = []
    for cand in ("tensorrt", "onnxruntime", "openvino"):
        if cand == "tensorrt" and "tensorrt_plan" not in manifest.models:
            skipped.append("tensorrt: artifact has no plan")
            continue
        try:
            b = _open(cand, artifact_dir, manifest, threads, device)
        except (ImportError, BackendError) as e:
            skipped.append(f"{cand}: {e}")
            continue
        log.info("backend auto -> %s%s", b.name, f" (skipped: {'; '.join(skipped)})" if skipped else "")
        return b
    raise BackendError("no backend can run this artifact: " + "; ".join(skipped))


def available_backends() -> dict[str, str]:
    """Backend name -> "ok" or why it cannot be used on this machine (import check only)."""
    out = {}
    for name, mods in (("onnxruntime", ["onnxruntime"]), ("openvino", ["openvino"]),
                       ("tensorrt", ["tensorrt", "pycuda.driver"])):
        try:
            for m in mods:
                __import__(m)
            out[name] = "ok"
        except ImportError as e:
            out[name] = f"not installed ({e})"
    return out


def check_outputs(result: dict[str, np.ndarray], expected: list[str], backend: str) -> None:
    missing = [n for n in expected if n not in result]
    if missing:
        raise BackendError(f"{backend}: model has no output(s) {missing}; it has {sorted(result)}")
