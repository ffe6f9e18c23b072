"""NNCF post-training quantization on the OpenVINO model converted from the ONNX file (saved as IR), and NNCF's
accuracy-aware search, which reverts layers to FP32 until a metric holds."""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np


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


class CompiledRunner:
    """An already compiled OpenVINO model (what NNCF's validation_fn receives) behind the runner interface."""

    def __init__(self, compiled):
        self.compiled = compiled
        self.names = [o.get_any_name() for o in compiled.outputs]

    def run(self, x: np.ndarray) -> dict[str, np.ndarray]:
        res = self.compiled(np.ascontiguousarray(x, np.float32))
        return {n: np.asarray(res[o]) for n, o in zip(self.names, self.compiled.outputs)}
