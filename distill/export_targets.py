"""Export targets: an enum plus one function per target (anomalib deploy/export.py). OpenVINO and
TensorRT are built from the ONNX file; TensorRT plans are built on the device (deploy/tensorrt/)."""
from __future__ import annotations

import enum
import warnings
from pathlib import Path

import numpy as np

ONNX_OPSET = 17


class ExportTarget(str, enum.Enum):
    ONNX = "onnx"  # FP32, BN folded: onnxruntime, and the source of every other target
    OPENVINO = "openvino"  # IR from the ONNX file
    TENSORRT = "tensorrt"  # plan built on the target device from the ONNX file (deploy/tensorrt)


def export_onnx(model, path: str | Path, image_size: int) -> Path:
    """The fused (BN-folded) eval copy of the student, batch 1, weights inline, opset 17."""
    import onnx
    import torch

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fused = model.fused() if hasattr(model, "fused") else model.eval()
    x = torch.zeros(1, 3, image_size, image_size)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # tracer warnings about python ints: they are meant to be constants
        torch.onnx.export(fused, (x,), str(path), input_names=["image"], output_names=list(fused.output_names),
                          opset_version=ONNX_OPSET, dynamo=False, do_constant_folding=True)
    m = onnx.load(str(path))
    onnx.checker.check_model(m)
    got = [o.name for o in m.graph.output]
    if got != list(fused.output_names):
        raise RuntimeError(f"exported outputs {got} != model outputs {list(fused.output_names)}")
    return path


def export_openvino(onnx_path: str | Path, xml_path: str | Path) -> Path:
    """OpenVINO IR (xml + bin) converted from an ONNX file (FP32 or QDQ INT8), weights kept in FP32."""
    import openvino as ov

    xml_path = Path(xml_path)
    xml_path.parent.mkdir(parents=True, exist_ok=True)
    ov.save_model(ov.convert_model(str(onnx_path)), str(xml_path), compress_to_fp16=False)
    return xml_path


def export_tensorrt(onnx_path: str | Path, plan_path: str | Path, **kw) -> Path:
    """Build a TensorRT plan on this machine (needs TensorRT and a GPU): deploy/tensorrt/build_engine.py."""
    import importlib.util
    import sys

    root = Path(__file__).resolve().parents[1] / "deploy" / "tensorrt" / "build_engine.py"
    spec = importlib.util.spec_from_file_location("build_engine", root)
    mod = importlib.util.module_from_spec(spec)
    sys.modules["build_engine"] = mod
    spec.loader.exec_module(mod)
    return mod.build_engine(onnx_path, plan_path, **kw)


def max_rel_error(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> dict[str, float]:
    """Per output of ``a``: max |a − b| / (max |b| + 1e-12). ``b`` (the reference) may have more outputs: an
    edge graph is compared with the full graph's torch outputs on the ones it has."""
    return {k: float(np.abs(a[k] - b[k]).max() / (np.abs(b[k]).max() + 1e-12)) for k in a}
