"""ONNX Runtime static quantization: QDQ, per-channel INT8 weights, uint8 activations, Conv only (pooling and
resize stay FP32: ORT's QLinearAveragePool/Resize are slower than the float ones); and, when the guard
refuses such a model, the conv layers whose outputs drift most."""
from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

from distill.runners import OrtRunner


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
