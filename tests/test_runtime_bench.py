"""runtime.bench_daemon: the figures `lineside bench` reports (no timing asserts: the machine is shared)."""
import math

from runtime_fixtures import build_tiny_artifact


def test_run_daemon_bench_reports_raw_and_end_to_end(tmp_path):
    from runtime.bench_daemon import run_daemon_bench

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
