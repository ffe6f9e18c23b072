"""`lineside demo --quick`: the integration test. Every real command runs as a subprocess (data synth,
teacher train-vae/train/finetune/bank, distill fit/quantize/export, both evals, teacher serve and
lineside run as processes on loopback), the test split is streamed through the daemon, and the
report is written. Not marked slow on purpose: it is the proof that the pieces compose."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

DEMO_TIMEOUT_S = 540  # target < 240 s on two cores; generous for a loaded CI machine


def _lineside() -> list[str]:
    exe = Path(sys.executable).parent / "lineside"
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "runtime"]


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo")
    out, cwd = root / "out", root / "cwd"
    cwd.mkdir()
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")
    p = subprocess.run(_lineside() + ["demo", "--quick", "--out", str(out), "--json"], cwd=cwd, env=env,
                       capture_output=True, text=True, timeout=DEMO_TIMEOUT_S)
    assert p.returncode == 0, f"lineside demo --quick exited {p.returncode}\n{p.stderr[-4000:]}"
    summary = json.loads(p.stdout.strip().splitlines()[-1])
    verdicts = [json.loads(line) for line in (out / "verdicts.jsonl").read_text().splitlines()]
    return {"out": out, "cwd": cwd, "summary": summary, "verdicts": verdicts, "stderr": p.stderr}


@pytest.mark.timeout(DEMO_TIMEOUT_S + 60)
def test_demo_ran_every_step(demo):
    s = demo["summary"]
    assert s["ok"] is True
    for step in ("synth", "train-vae", "train", "finetune", "bank", "fit", "quantize", "export", "teacher-eval",
                 "distill-eval", "baselines", "line (serve + run + stream)", "report"):
        assert s["timings_s"][step] > 0, step
        if step not in ("line (serve + run + stream)", "report"):
            assert (demo["out"] / "logs" / f"{step}.log").is_file(), step
    # services were real processes, stopped cleanly by SIGTERM (not killed)
    assert s["services"]["daemon_exit"] == 0 and s["services"]["teacher_exit"] == 0
    assert s["services"]["killed"] == []
    eps = s["services"]["endpoints"]
    assert eps["control"].startswith("ipc://")  # control is a private socket file, never an open port
    for name, ep in eps.items():
        if name != "control":
            assert ep.startswith("tcp://127.0.0.1:"), name
    # nothing written outside --out (the daemon's journal included)
    assert list(demo["cwd"].iterdir()) == []
    assert (demo["out"] / "journal.sqlite").is_file()
    # progress was shown on stderr
    assert "distil a student" in demo["stderr"] and "report written" in demo["stderr"]


def test_every_streamed_frame_got_its_verdicts(demo):
    s, vs = demo["summary"], demo["verdicts"]
    sent = s["stream"]["sent"]
    assert len(sent) >= 8 and not s["stream"]["send_errors"]
    by_frame: dict[str, list[dict]] = {}
    for v in vs:
        by_frame.setdefault(v["frame_id"], []).append(v)
    assert set(by_frame) == set(sent)
    n_pending = 0
    for fid in sent:
        edge = [v for v in by_frame[fid] if v["decided_by"] == "edge" and v["status"] != "teacher_unreachable"]
        assert len(edge) == 1, (fid, by_frame[fid])
        e = edge[0]
        assert e["status"] == "ok" and e["decision"] in ("good", "defect", "unknown")
        assert set(e["latencies_ms"]) and all(x >= 0 for x in e["latencies_ms"].values())
        if e["in_band"] or e["pending"]:
            n_pending += e["pending"]
            follow = [v for v in by_frame[fid] if v["decided_by"] == "teacher" or v["status"] == "teacher_unreachable"]
            assert follow, f"in-band frame {fid} got no teacher verdict nor teacher_unreachable"
            if follow[0]["decided_by"] == "teacher" and follow[0]["status"] == "ok":
                assert follow[0]["supersedes"] == "edge"
    # the foreign frame (colour bars) exercised the teacher path on every run
    fo = s["foreign_frame"]
    assert fo["frame_id"] in sent
    assert fo["edge"]["ood"] and fo["edge"]["pending"] and fo["edge"]["decision"] == "unknown"
    assert fo["resolution"] is not None
    f = s["frames"]
    assert f["teacher_verdicts"] >= 1, "no frame reached the teacher server"
    assert f["frames_sent"] == len(sent) == f["edge_verdicts"]
    assert f["pending"] == n_pending
    assert f["fallback_rate"] == pytest.approx(n_pending / len(sent))
    assert f["teacher_verdicts"] + f["teacher_unreachable"] == n_pending
    assert f["unresolved_pending"] == []


def _is_metric(x) -> bool:
    return isinstance(x, float) and 0.0 <= x <= 1.0 and math.isfinite(x)


def test_report_figures_present(demo):
    s, out = demo["summary"], demo["out"]
    t = s["table"]
    rows = {k.split(" (")[0] if k.startswith("teacher") else k: v for k, v in t.items()}
    assert _is_metric(rows["teacher"]["image_auroc"]) and _is_metric(rows["teacher"]["pixel_auroc"])
    assert _is_metric(rows["teacher"]["au_pro"]) and _is_metric(rows["teacher"]["f1"])
    for name in ("student FP32", "student INT8"):
        for m in ("image_auroc", "pixel_auroc", "au_pro", "f1"):
            assert _is_metric(rows[name][m]), (name, m)
    cascade = next(v for k, v in t.items() if k.startswith("cascade"))
    edge = next(v for k, v in t.items() if k.startswith("edge"))
    assert _is_metric(cascade["image_auroc"]) and _is_metric(cascade["f1_at_threshold"])
    assert _is_metric(edge["image_auroc"]) and _is_metric(edge["pixel_auroc"])
    assert set(s["feature_cosine"]) == {"s8", "s16", "s32", "s64"}
    assert all(-1.0 <= c <= 1.0 for c in s["feature_cosine"].values())
    assert s["model_bytes"]["teacher"] > s["model_bytes"]["student_int8"] > 0
    assert s["model_bytes"]["student_fp32"] > s["model_bytes"]["student_int8"]
    assert s["speed"]["speedup"] > 1.0 and s["speed"]["teacher_ms"] > s["speed"]["student_ms"] > 0
    assert all(isinstance(v, int) and v > 0 for v in s["params"].values()), s["params"]
    lat = s["frames"]["latency_ms"]
    assert any(k.startswith("edge.") for k in lat) and lat
    html = (out / "index.html").read_text()
    for needle in ("Teacher vs student vs cascade", "I-AUROC", "P-AUROC", "AU-PRO", "fallback rate", "roc.png",
                   "PatchCore, ImageNet EfficientNet-Lite0",
                   "pro.png", "latency_edge.png", "cosine.png", "speedup over the tiny teacher", "teacher-eval/index.html",
                   "student-eval/index.html"):
        assert needle in html, needle
    # every report as a new user sees it (tests/support/report_check.py: html.parser, no browser offline)
    from tests.support.report_check import check_report_page

    for index in (out / "index.html", out / "teacher-eval" / "index.html", out / "student-eval" / "index.html"):
        check_report_page(index)
    pngs = [p for p in out.glob("*.png")]
    assert any(p.name.startswith("frame_") for p in pngs)
    assert all(p.stat().st_size > 500 for p in pngs)
