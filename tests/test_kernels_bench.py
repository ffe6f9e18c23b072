"""kernels.bench.run: one JSON-able dict naming every implementation here beside its reference."""
import json
import os

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
