"""`lineside bench`: each section runs as a user runs it (`lineside bench PART --json --quick`) on a
tiny torch-free artifact (tests/support/runtime_fixtures.py plus an INT8 copy made with ONNX Runtime), and
the targets table reads its figures off the real output. No timing asserts: only that every figure
is measured, positive, and compared with its target."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.runtime_fixtures import build_tiny_artifact

TARGET_NAMES = {"int8_vs_sd15_teacher_256", "int8_vs_fp32", "daemon_overhead_p50_ms", "daemon_sustained_fraction",
                "knn_vs_matmul"}


def _bench(*args, timeout=240) -> dict:
    exe = Path(sys.executable).parent / "lineside"
    cmd = ([str(exe)] if exe.exists() else [sys.executable, "-m", "runtime"]) + ["bench", *map(str, args), "--json"]
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    assert p.returncode == 0, p.stderr[-3000:]
    return json.loads(p.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def artifact(tmp_path_factory):
    """The runtime fixture artifact plus an INT8 model (ORT dynamic quantization), both in the manifest."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from runtime.contracts.manifest import load_manifest, write_manifest

    d = tmp_path_factory.mktemp("bench") / "artifact"
    build_tiny_artifact(d)
    quantize_dynamic(str(d / "model.onnx"), str(d / "model.int8.onnx"), weight_type=QuantType.QUInt8)
    m = load_manifest(d)
    write_manifest(d, m.model_copy(update={"models": {"fp32": "model.onnx", "int8": "model.int8.onnx"},
                                           "quantization": "int8-ort"}))
    return d


def _targets(rep) -> dict:
    t = {r["target"]: r for r in rep["targets"]}
    assert set(t) == TARGET_NAMES
    for r in t.values():
        assert r["pass"] is None or r["pass"] == (r["measured"] >= float(r["limit"].split()[1])
                                                  if r["limit"].startswith(">=") else
                                                  r["measured"] <= float(r["limit"].split()[1]))
        if r["measured"] is None:
            assert r["pass"] is None and r["why"]
    return t


def test_student_section_times_fp32_and_int8(artifact):
    rep = _bench("student", "--artifact", artifact, "--quick")
    st = rep["student"]
    assert st["status"] == "ok" and st["input"] == [1, 3, 64, 64]
    ort = st["results"]["onnxruntime"]
    for role in ("fp32", "int8"):
        assert ort[role]["status"] == "ok", ort[role]
        assert 0 < ort[role]["min_ms"] <= ort[role]["p50_ms"] <= ort[role]["p90_ms"]
        assert ort[role]["backend"].startswith("onnxruntime")
    assert ort["int8"]["model"] == "model.int8.onnx" and ort["fp32"]["model"] == "model.onnx"
    for name, state in st["available"].items():  # every backend is either timed or skipped with its reason
        assert name in st["results"]
        if state != "ok":
            assert st["results"][name]["status"] == "skipped" and st["results"][name]["reason"]
    t = _targets(rep)
    assert t["int8_vs_fp32"]["measured"] > 0
    assert t["int8_vs_sd15_teacher_256"]["measured"] is None and t["int8_vs_sd15_teacher_256"]["why"] == "teacher section not run"
    assert "kernels" not in rep and "daemon" not in rep


def test_daemon_section(artifact):
    rep = _bench("daemon", "--artifact", artifact, "--quick")
    d = rep["daemon"]
    assert d["status"] == "ok", d
    assert d["overhead_p50_ms"] is not None and d["sustained_ratio"] > 0
    t = _targets(rep)
    assert t["daemon_overhead_p50_ms"]["measured"] == d["overhead_p50_ms"]
    assert t["daemon_sustained_fraction"]["measured"] == d["sustained_ratio"]
    if "daemon_scaled" in d:  # machines with more than one core
        assert t["daemon_sustained_fraction"]["measured_scaled"] == d["daemon_scaled"]["ratio_vs_raw"]


def test_kernels_only(artifact):
    rep = _bench("kernels", "--quick")
    k = rep["kernels"]
    assert k["status"] == "ok" and k["knn_vs_matmul"] > 0
    assert set(rep) >= {"kernels", "targets", "machine"} and "student" not in rep and "artifact" not in rep
    assert _targets(rep)["knn_vs_matmul"]["measured"] == k["knn_vs_matmul"]


def test_server_section_fake_model():
    rep = _bench("server", "--artifact", "/nonexistent", "--quick")
    s = rep["server"]
    assert s["status"] == "ok" and s["model"].startswith("fake") and s["checkpoint"] is None
    assert [r["clients"] for r in s["results"]] == [1, 4]
    assert all(r["throughput_rps"] > 0 and r["errors"] == 0 for r in s["results"])


def test_teacher_section_tiny():
    rep = _bench("teacher")
    t = rep["teacher"]
    assert t["status"] == "ok" and "sd15" not in t
    r = t["tiny"]["results"][0]
    assert r["size"] == 128 and r["latency_s_per_image"] > 0


def test_artifact_is_built_once_then_reused(tmp_path, monkeypatch):
    """Without --artifact bench builds with the demo's quick pipeline into --work, then reuses it."""
    import argparse

    import runtime.tools.demo.pipeline as pipeline
    from runtime.cli import bench

    calls = []

    def fake_build(out, settings, runner, say, evaluate=True):
        calls.append((out, settings.mode, evaluate))
        (out / "artifact").mkdir(parents=True)
        (out / "artifact" / "manifest.json").write_text("{}")
        (out / "teacher").mkdir()
        return {}

    monkeypatch.setattr(pipeline, "build", fake_build)
    args = argparse.Namespace(artifact=None, checkpoint=None, work=str(tmp_path / "w"), rebuild=False)
    art, ckpt, how = bench.ensure_artifact(args, {})
    assert calls == [(tmp_path / "w", "quick", False)] and art == tmp_path / "w" / "artifact"
    assert ckpt == tmp_path / "w" / "teacher" and how["artifact"].startswith("built")
    art2, _, how2 = bench.ensure_artifact(args, {})
    assert len(calls) == 1 and art2 == art and how2["artifact"].startswith("cached")
    args.rebuild = True  # starts clean (the build commands refuse an existing --out)
    bench.ensure_artifact(args, {})
    assert len(calls) == 2


EDGE_STAGES = {"decode", "preprocess", "backend", "scoring", "knn", "map", "regions"}


def test_edge_part_times_every_stage(artifact):
    """`lineside bench edge`: rows per size × threads × bank, every stage timed; the 64 px fixture has no
    torch weights, so the 256 px row says why it is missing; --quick skips the peers."""
    rep = _bench("edge", "--artifact", artifact, "--quick")
    assert rep["part"] == "edge" and rep["status"] == "ok" and rep["artifact_size"] == 64
    rows = rep["rows"]
    assert {(r["threads"], r["bank_factor"]) for r in rows} == {(t, f) for t in rep["threads"] for f in (1, 4)}
    assert 1 in rep["threads"] and max(rep["threads"]) == (os.cpu_count() or 1)
    for r in rows:
        assert set(r["stages_ms"]) == EDGE_STAGES and all(v > 0 for v in r["stages_ms"].values()), r
        assert r["total_ms"] > 0 and r["scoring_over_backend"] > 0 and not r["timing_only"]
    x1, x4 = (next(r for r in rows if r["threads"] == 1 and r["bank_factor"] == f) for f in (1, 4))
    assert x4["bank_rows"] == 4 * x1["bank_rows"] and x4["bank_dim"] == x1["bank_dim"]
    assert rep["at_256"]["status"] == "skipped" and "torch weights" in rep["at_256"]["reason"]
    assert rep["peers"]["status"] == "skipped"
    t = {r["target"]: r for r in rep["targets"]}
    assert t["edge_vs_efficientad_s"]["pass"] is None and t["edge_vs_efficientad_s"]["why"]


def test_edge_bench_at_256_reports_the_scoring_targets(tmp_path):
    """At 256 px (the fixture built at that size) the scoring / backend target is measured per bank size."""
    from runtime.tools.bench.edge import EDGE_SIZE_PX, run_edge_bench

    art = build_tiny_artifact(tmp_path / "tiny256", size=EDGE_SIZE_PX)
    rep = run_edge_bench(art.dir, env=dict(os.environ), runs=2, quick=True)
    assert rep["sizes"] == [EDGE_SIZE_PX] and "at_256" not in rep
    t = {r["target"]: r for r in rep["targets"]}
    for f in (1, 4):
        row = t[f"scoring_over_backend_{EDGE_SIZE_PX}_bank_x{f}"]
        assert row["measured"] > 0 and row["pass"] == (row["measured"] <= 0.25)
        # the other searches on the same bank, each its own row and target (exact is the artifact's here)
        assert row["search"] == "exact" and t[f"scoring_over_backend_{EDGE_SIZE_PX}_bank_x{f}_int8"]["measured"] > 0
    rows = [r for r in rep["rows"] if r["threads"] == 1 and r["search"] == "int8"]
    assert [r["bank_factor"] for r in rows] == [1, 4] and all(r["search_params"]["rerank"] >= 1 for r in rows)
