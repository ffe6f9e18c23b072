"""distill/edge_graph.py: which outputs the edge graph keeps, and that pruning keeps their numbers exactly."""
import numpy as np
import pytest

from tests.support.runtime_fixtures import SIZE, build_model


def test_edge_outputs_per_scoring_mode():
    from distill.edge_graph import edge_outputs

    names = ["embedding", "s8", "s16", "s32", "s64", "mask_logits", "class_logits", "defect_map"]
    assert edge_outputs(names, "bank") == ["embedding"]
    assert edge_outputs(names, "both") == ["embedding", "defect_map"]
    assert edge_outputs(names, "head") == ["embedding", "defect_map"]
    # no distilled map: the head's raw outputs, from which runtime.scoring.head_map makes it
    assert edge_outputs(names[:-1], "head") == ["embedding", "mask_logits", "class_logits"]
    with pytest.raises(ValueError, match="needs"):
        edge_outputs(["embedding", "s8"], "both")
    with pytest.raises(ValueError, match="no 'embedding'"):
        edge_outputs(["s8"], "bank")


def test_pruned_graph_drops_unused_nodes_and_keeps_the_numbers(tmp_path):
    import onnx
    import onnxruntime as ort

    from distill.edge_graph import onnx_outputs, prune_onnx

    full = tmp_path / "full.onnx"
    build_model(full)  # embedding = s8 (two convs); s16 needs a third conv
    edge = prune_onnx(full, tmp_path / "edge.onnx", ["embedding"])
    assert onnx_outputs(edge) == ["embedding"]
    g = onnx.load(str(edge)).graph
    assert "c3" not in {n.name for n in g.node} and "w3" not in {t.name for t in g.initializer}
    x = np.random.default_rng(0).standard_normal((1, 3, SIZE, SIZE)).astype(np.float32)
    a = ort.InferenceSession(str(full), providers=["CPUExecutionProvider"]).run(["embedding"], {"image": x})[0]
    b = ort.InferenceSession(str(edge), providers=["CPUExecutionProvider"]).run(None, {"image": x})[0]
    np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match="no output"):
        prune_onnx(full, tmp_path / "x.onnx", ["defect_map"])


def test_pruned_openvino_ir_keeps_only_the_edge_outputs(tmp_path):
    pytest.importorskip("openvino")
    from distill.edge_graph import openvino_outputs, prune_openvino
    from distill.export_targets import export_openvino

    build_model(tmp_path / "full.onnx")
    xml = export_openvino(tmp_path / "full.onnx", tmp_path / "ov" / "full.xml")
    assert set(openvino_outputs(xml)) == {"embedding", "s8", "s16"}
    pruned = prune_openvino(xml, tmp_path / "ov" / "edge.xml", ["embedding"])
    assert openvino_outputs(pruned) == ["embedding"]
