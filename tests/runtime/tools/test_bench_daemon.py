"""runtime.tools.bench.daemon: the figures `lineside bench` reports (no timing asserts: the machine is shared)."""
import math

import pytest
from tests.support.runtime_fixtures import build_tiny_artifact


def test_run_daemon_bench_reports_raw_and_end_to_end(tmp_path):
    from runtime.tools.bench.daemon import run_daemon_bench

    art = build_tiny_artifact(tmp_path / "tiny")
    r = run_daemon_bench(art.dir, backend="onnxruntime", n_frames=30, warmup=5, scale_workers=2)
    assert r["backend"].startswith("onnxruntime")
    for k in ("p50_ms", "p99_ms", "rate_hz"):
        assert math.isfinite(r["raw"][k]) and r["raw"][k] > 0
    d = r["daemon"]
    assert d["lost"] == 0 and d["drops"] == 0 and d["exit_code"] == 0
    assert d["e2e_p50_ms"] > 0 and d["e2e_p99_ms"] >= d["e2e_p50_ms"] and d["sustained_rate_hz"] > 0
    assert math.isclose(r["overhead_p50_ms"], d["e2e_p50_ms"] - r["raw"]["p50_ms"])
    assert r["raw"]["cpu_ms_per_frame"] > 0 and "overhead_cpu_ms_per_frame" in r and "sustained_ratio_cpu" in r
    assert set(r["targets"]) == {"overhead_p50_ms_max", "sustained_ratio_min", "overhead_met", "sustained_met"}
    sc, un = r["daemon_scaled"], r["raw_unpinned"]
    assert sc["workers"] == 2 and sc["lost"] == 0 and sc["drops"] == 0 and sc["exit_code"] == 0
    assert math.isclose(sc["ratio_vs_raw"], sc["sustained_rate_hz"] / r["raw"]["rate_hz"])
    assert math.isclose(sc["ratio_vs_raw_unpinned"], sc["sustained_rate_hz"] / un["rate_hz"]) and un["rate_hz"] > 0
    assert "daemon_scaled" not in run_daemon_bench(art.dir, backend="onnxruntime", n_frames=5, warmup=1,
                                                   scale_workers=1)


def test_soak_samples_rss_and_latency_per_window_and_loses_nothing(tmp_path):
    from runtime.tools.bench.soak import run_soak, slope_per_h

    art = build_tiny_artifact(tmp_path / "tiny")
    r = run_soak(art.dir, backend="onnxruntime", duration_s=3.0, window_s=0.5, load=0.5, capacity_frames=30)
    assert r["exit_code"] == 0 and r["lost"] == 0 and r["sent"] > 0 and r["capacity_hz"] > 0
    assert math.isclose(r["rate_hz"], 0.5 * r["capacity_hz"])
    assert len(r["windows"]) >= 4 and all(w["rss_mb"] > 0 for w in r["windows"])
    assert [w["sent"] for w in r["windows"]] == sorted(w["sent"] for w in r["windows"])
    assert r["rss_slope_mb_per_h"] is not None and math.isfinite(r["p50_drift_ms_per_h"])
    assert math.isclose(slope_per_h([0, 1800, 3600], [10, 15, 20]), 10.0) and slope_per_h([0], [1]) is None


def test_bench_soak_command_refuses_a_load_above_capacity(tmp_path, capsys):
    import json

    from runtime.cli import main

    art = build_tiny_artifact(tmp_path / "tiny")
    rc = main(["bench", "soak", "--artifact", str(art.dir), "--duration", "1", "--load", "1.5", "--json"])
    assert rc == 1 and "load must be in (0, 1]" in json.loads(capsys.readouterr().out.strip().splitlines()[-1])["error"]


@pytest.mark.parametrize("ratio,code", [(0.1, 3), (0.9, 0)])
def test_bench_check_exits_non_zero_when_a_target_fails(monkeypatch, capsys, ratio, code):
    """`lineside bench --check`: CI and a plant's acceptance test gate on the targets (knn_vs_matmul >= 0.5 here)."""
    import argparse

    from runtime.cli import bench

    monkeypatch.setattr(bench, "bench_kernels", lambda quick: {"status": "ok", "knn_vs_matmul": ratio})
    p = argparse.ArgumentParser()
    bench.configure(p)
    assert bench.run(p.parse_args(["kernels", "--json", "--quick", "--check"])) == code
    assert bench.run(p.parse_args(["kernels", "--json", "--quick"])) == 0  # without --check: figures only
    assert "--check: target(s) failed: knn_vs_matmul" in capsys.readouterr().err or code == 0
