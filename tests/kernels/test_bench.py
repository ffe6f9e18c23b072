"""kernels.bench.run: one JSON-able dict naming every implementation here beside its reference."""
import json
import os
import sys

import pytest

_TRITON_PRELOADED = "triton" in sys.modules and os.environ.get("TRITON_INTERPRET") != "1"
os.environ["TRITON_INTERPRET"] = "1"  # before triton is imported (the GPU-branch test interprets its kernels)
os.environ.setdefault("OMP_NUM_THREADS", "1")

from kernels import bench  # noqa: E402


def test_bench_quick_reports_each_op_with_units():
    res = bench.run(json=True, quick=True, repeats=1)
    json.dumps(res)  # JSON-able
    assert res["kind"] == "kernels" and set(res["implementations"]) == {"preprocess", "knn_score", "anomaly_map"}
    cpu = res["cpu"]
    assert cpu["matmul"]["gflops"] > 0
    assert cpu["knn_score"] and all(r["gflops"] > 0 and r["fraction_of_matmul"] > 0 for r in cpu["knn_score"])
    assert cpu["preprocess"] and all(r["gbps"] > 0 for r in cpu["preprocess"])
    assert cpu["anomaly_map"] and all(r["gbps"] > 0 for r in cpu["anomaly_map"])
    assert res["gpu"] is not None or "gpu_skipped" in res
    k1 = [r["fraction_of_matmul"] for r in cpu["knn_score"] if r["k"] == 1]
    assert res["knn_vs_matmul"] == min(k1)  # what `lineside bench` reads as its knn target


def test_bench_gpu_path_through_triton_interpreter():
    """The GPU branch (Triton kernels beside torch cdist / interpolate / conv2d) on tiny shapes, run on
    the CPU through the Triton interpreter: the code path a CUDA machine takes, minus pycuda."""
    if _TRITON_PRELOADED:
        pytest.skip("triton was imported before TRITON_INTERPRET=1 was set; run with TRITON_INTERPRET=1")
    pytest.importorskip("torch")
    pytest.importorskip("triton")
    shapes = {"knn_score": [(5, 70, 17, 1), (4, 9, 16, 3)], "preprocess": [((9, 13, 3), 8, "BGR"), ((6, 5, 1), 7, "GRAY")],
              "anomaly_map": [((3, 3), (6, 9), 1.0, 2)]}
    res = bench._gpu(quick=True, repeats=1, device="cpu", shapes=shapes)
    impls = {op: sorted({r["impl"] for r in res[op]}) for op in ("knn_score", "preprocess", "anomaly_map")}
    assert impls == {"knn_score": ["torch-cdist", "triton"], "preprocess": ["torch-interpolate", "triton"],
                     "anomaly_map": ["torch-conv2d", "triton"]}
    rows = res["knn_score"] + res["preprocess"] + res["anomaly_map"]
    assert all(r["ms"] > 0 for r in rows)
    tol = {"knn_score": 1e-3, "preprocess": 1e-4, "anomaly_map": 1e-5}  # kernels vs torch on the same device
    for op in tol:
        checked = [r for r in res[op] if r["impl"] == "triton"]
        assert checked and all(r["max_abs_diff_vs_torch"] <= tol[op] for r in checked), res[op] and res["cuda_kernels"] is None
