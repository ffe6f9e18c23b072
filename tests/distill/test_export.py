"""Every student × every export target: exported, re-run in its runtime, compared with torch."""
import importlib.util

import numpy as np
import pytest
import torch

from distill.embedding import EmbeddingRecipe
from distill.export_targets import ExportTarget, export_onnx, export_openvino, export_tensorrt, max_rel_error
from distill.int8.nncf import quantize_nncf
from distill.int8.ort import quantize_ort
from distill.int8.quantize import attempts
from distill.runners import OrtRunner, OvRunner, TorchRunner
from distill.students import create_student, list_students
from runtime.contracts.featurespec import FeatureSpec, LevelSpec

SIZE = 64
SPEC = FeatureSpec(image_size=SIZE, levels=(LevelSpec("s8", 8, 12), LevelSpec("s16", 16, 20),
                                            LevelSpec("s32", 32, 24), LevelSpec("s64", 64, 24)))
FP32_RTOL = 1e-4  # max |Δ| / max |torch| per output, FP32 runtimes


def _student(name):
    torch.manual_seed(0)
    m = create_student(name, spec=SPEC, embedding=EmbeddingRecipe(dim=8))
    for mod in m.modules():
        if isinstance(mod, torch.nn.BatchNorm2d):
            mod.running_mean.normal_(0, 0.1)
            mod.running_var.uniform_(0.5, 1.5)
    return m.eval()


def _inputs(n=3):
    return np.random.default_rng(0).standard_normal((n, 3, SIZE, SIZE)).astype(np.float32)


def _compare(runner, model, rtol):
    ref = TorchRunner(model.fused())
    for i, x in enumerate(_inputs()):
        a, b = runner.run(x[None]), ref.run(x[None])
        assert list(a) == list(model.output_names)
        for k, err in max_rel_error(a, b).items():
            assert err <= rtol, f"image {i} output {k}: relative error {err:.2e} > {rtol}"


@pytest.mark.parametrize("target", list(ExportTarget))
@pytest.mark.parametrize("name", list_students())
def test_export_target(name, target, tmp_path):
    m = _student(name)
    onnx_path = export_onnx(m, tmp_path / "model.onnx", SIZE)
    if target is ExportTarget.ONNX:
        _compare(OrtRunner(onnx_path), m, FP32_RTOL)
    elif target is ExportTarget.OPENVINO:
        xml = export_openvino(onnx_path, tmp_path / "ov" / "model.xml")
        assert xml.with_suffix(".bin").is_file()
        _compare(OvRunner(xml), m, FP32_RTOL)  # f32 hint: no silent bf16
    else:  # plans are built on the device; here the builder must say so
        if importlib.util.find_spec("tensorrt") is not None:
            pytest.skip("TensorRT present: covered by the gpu tests")
        with pytest.raises(SystemExit, match="TensorRT is not installed"):
            export_tensorrt(onnx_path, tmp_path / "model.plan", fp16=True)


@pytest.mark.parametrize("method", ["ort", "nncf"])
@pytest.mark.parametrize("name", list_students())
def test_int8_export(name, method, tmp_path):
    """INT8 models run in their runtime, stay close to torch, and only Conv is quantized (ort)."""
    import onnx

    m = _student(name)
    fp32 = export_onnx(m, tmp_path / "model.onnx", SIZE)
    calib = _inputs(8)
    exclude = attempts(fp32)[0][1]
    first_conv = next(n.name for n in onnx.load(str(fp32)).graph.node if n.op_type == "Conv")
    assert exclude == [first_conv]  # the stem conv that reads the raw input stays FP32
    if method == "ort":
        q = quantize_ort(fp32, tmp_path / "model.int8.onnx", calib, exclude)
        ops = [n.op_type for n in onnx.load(str(q)).graph.node]
        assert "QuantizeLinear" in ops and "DequantizeLinear" in ops
        runner = OrtRunner(q)
    else:
        q = quantize_nncf(fp32, tmp_path / "ov" / "model.int8.xml", calib, exclude)
        runner = OvRunner(q)
    ref = TorchRunner(m.fused())
    x = calib[:1]
    a, b = runner.run(x), ref.run(x)
    cos = float((a["embedding"] * b["embedding"]).sum() /
                (np.linalg.norm(a["embedding"]) * np.linalg.norm(b["embedding"])))
    assert cos > 0.95, f"INT8 embedding cosine to torch {cos:.3f}"


def test_export_keeps_the_output_contract(tmp_path):
    import onnx

    m = _student("tiny")
    p = export_onnx(m, tmp_path / "model.onnx", SIZE)
    g = onnx.load(str(p)).graph
    assert [i.name for i in g.input] == ["image"]
    assert [o.name for o in g.output] == ["embedding", "s8", "s16", "s32", "s64"]
    assert not any(n.op_type == "BatchNormalization" for n in g.node)  # folded
    dims = [d.dim_value for d in g.input[0].type.tensor_type.shape.dim]
    assert dims == [1, 3, SIZE, SIZE]
