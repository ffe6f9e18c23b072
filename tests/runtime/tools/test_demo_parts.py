"""The demo's and bench's own machinery, without the heavy commands: step runner, process
supervision, verdict collection over a real PUB socket, figures from synthetic verdicts, the report,
and bench's target table. tests/runtime/tools/test_demo.py runs the real thing end to end."""
from __future__ import annotations

import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
import zmq

from runtime.contracts import protocol
from runtime.tools.demo import analysis as an
from runtime.tools.demo import stream as st
from runtime.tools.demo import steps
from runtime.contracts.verdict import Region, Verdict


def test_demo_and_bench_import_no_torch():
    code = ("import sys, runtime.tools.demo, runtime.tools.demo.pipeline, runtime.tools.demo.stream, runtime.tools.demo.report, runtime.cli.bench;"
            "bad = [m for m in sys.modules if m.split('.')[0] in ('torch', 'diffusers', 'transformers', 'teacher', 'distill')];"
            "print(bad); sys.exit(1 if bad else 0)")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stdout + p.stderr


@pytest.mark.parametrize("text,expected", [
    ('progress\n{"a": 1}\n', {"a": 1}),
    ('{"a": 1}\n\n  \n', {"a": 1}),
    ('{"a": 1}\nnot json\n', {}),
    ('[1, 2]\n', {}),
    ("", {}),
])
def test_last_json_line(text, expected):
    assert steps.last_json_line(text) == expected


def _fake_tool(monkeypatch, script: str):
    monkeypatch.setattr(steps, "command", lambda tool: [sys.executable, "-c", textwrap.dedent(script)])


def test_step_runner_reads_last_line_and_logs(tmp_path, monkeypatch):
    _fake_tool(monkeypatch, """
        import sys, json
        print("working", file=sys.stderr)
        print("noise")
        print(json.dumps({"args": sys.argv[1:]}))
    """)
    r = steps.StepRunner(tmp_path, steps.child_env(1)).run("x", "teacher", ["a", 2])
    assert r.result == {"args": ["a", "2"]}
    log = (tmp_path / "x.log").read_text()
    assert "working" in log and "noise" in log
    assert r.wall_s > 0


def test_step_runner_failure_names_command_and_tail(tmp_path, monkeypatch):
    _fake_tool(monkeypatch, """
        import sys
        print("the reason it broke", file=sys.stderr)
        sys.exit(3)
    """)
    with pytest.raises(steps.StepError, match=r"(?s)status 3.*the reason it broke"):
        steps.StepRunner(tmp_path, steps.child_env(1)).run("bad", "teacher", [])


def test_step_runner_accepts_answer_exit_codes(tmp_path, monkeypatch):
    """`distill quantize` exits 2 with its report when the guard refuses INT8: an answer, not a crash."""
    _fake_tool(monkeypatch, """
        import sys
        print('{"chosen": null, "methods": {"ort": {"refused": "AU-PRO drop 0.9 pt > 0.5"}}}')
        sys.exit(2)
    """)
    runner = steps.StepRunner(tmp_path, steps.child_env(1))
    r = runner.run("q", "distill", [], ok_codes=(0, 2))
    assert r.returncode == 2 and r.result["chosen"] is None
    from runtime.tools.demo.summary import refusal
    assert "AU-PRO drop" in refusal(r.result)
    with pytest.raises(steps.StepError, match="status 2"):
        runner.run("q2", "distill", [])


def test_step_runner_requires_json_when_asked(tmp_path, monkeypatch):
    _fake_tool(monkeypatch, 'print("done")')
    runner = steps.StepRunner(tmp_path, steps.child_env(1))
    with pytest.raises(steps.StepError, match="no JSON"):
        runner.run("j", "teacher", [])
    assert runner.run("nj", "teacher", [], want_json=False).result == {}


def test_free_ports_distinct():
    ports = st.free_ports(6)
    assert len(set(ports)) == 6 and all(1024 < p < 65536 for p in ports)


@pytest.mark.parametrize("ignore_term", [False, True])
def test_service_stop_term_then_kill(tmp_path, monkeypatch, ignore_term):
    code = ("import signal, time, sys\n"
            + ("signal.signal(signal.SIGTERM, signal.SIG_IGN)\n" if ignore_term else
               "signal.signal(signal.SIGTERM, lambda *a: sys.exit(0))\n")
            + "print('up', flush=True)\ntime.sleep(60)\n")
    monkeypatch.setattr(st, "command", lambda tool: [sys.executable, "-c", code])
    s = st.Service("svc", "lineside", [], tmp_path / "svc.log", steps.child_env(1)).start()
    deadline = time.monotonic() + 10
    while "up" not in (tmp_path / "svc.log").read_text().splitlines() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert s.alive()
    rc = s.stop(timeout_s=1.0)
    assert not s.alive()
    assert s.killed is ignore_term
    assert rc == (-9 if ignore_term else 0)


def test_service_death_is_reported_with_log(tmp_path, monkeypatch):
    monkeypatch.setattr(st, "command", lambda tool: [sys.executable, "-c", "import sys; print('bad flag'); sys.exit(2)"])
    s = st.Service("svc", "lineside", [], tmp_path / "svc.log", steps.child_env(1)).start()
    s.proc.wait(timeout=10)
    with pytest.raises(steps.StepError, match=r"(?s)status 2.*bad flag"):
        s.check_alive()


def test_request_status_silence_returns_none():
    ctx = zmq.Context()
    try:
        port, = st.free_ports(1)
        assert st.request_status(ctx, f"tcp://127.0.0.1:{port}", {"kind": "status"}, timeout_ms=100) is None
    finally:
        ctx.term()


def _v(fid, **kw) -> Verdict:
    return Verdict(frame_id=fid, **kw)


def test_collector_receives_and_settles():
    ctx = zmq.Context()
    pub = ctx.socket(zmq.PUB)
    pub.linger = 0
    port = pub.bind_to_random_port("tcp://127.0.0.1")
    store = st.Collected()
    col = st.VerdictCollector(ctx, f"tcp://127.0.0.1:{port}", store)
    col.start()
    try:
        # slow joiner: publish a probe until the subscriber sees it
        deadline = time.monotonic() + 10
        while "probe" not in store.verdicts and time.monotonic() < deadline:
            pub.send_multipart(protocol.encode({"kind": "verdict", **_v("probe").to_header()}))
            time.sleep(0.05)
        assert "probe" in store.verdicts
        pub.send_multipart([b"cam0"] + protocol.encode({"kind": "verdict", **_v(
            "a", score=0.9, decision="defect", pending=True, in_band=True).to_header()}))
        pub.send_multipart([b"not json"])
        deadline = time.monotonic() + 10
        while "a" not in store.verdicts and time.monotonic() < deadline:
            time.sleep(0.02)
        assert not store.settled(["a"]), "pending edge verdict without its teacher verdict"
        pub.send_multipart(protocol.encode({"kind": "verdict", **_v(
            "a", decided_by="teacher", decision="good", score=0.1, supersedes="edge").to_header()}))
        deadline = time.monotonic() + 10
        while not store.settled(["a"]) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert store.settled(["a"])
        assert store.final("a").decided_by == "teacher"
        assert store.edge("a").pending
        assert store.bad_messages >= 1
    finally:
        col.stop()
        pub.close(linger=0)
        ctx.term()


def _store(rows):
    """rows: (fid, label, edge score, pending, teacher decision or None or 'unreachable')."""
    s = st.Collected()
    for i, (fid, _, score, pending, teacher) in enumerate(rows):
        s.add(_v(fid, score=score, decision="defect" if score >= 0.5 else "good", pending=pending, in_band=pending,
                 latencies_ms={"preprocess": 1.0 + i, "backend": 3.0}, ts_frame=100.0, ts_verdict=100.01), 0.0)
        if teacher == "unreachable":
            s.add(_v(fid, status="teacher_unreachable", score=score, decision="defect" if score >= 0.5 else "good"), 0.0)
        elif teacher:
            s.add(_v(fid, decided_by="teacher", decision=teacher, confidence=0.8, score=0.0,
                     latencies_ms={"model": 40.0}, ts_frame=100.0, ts_verdict=100.2), 0.0)
    return s


def test_verdict_figures():
    rows = [("g1", 0, 0.1, False, None), ("g2", 0, 0.45, True, "good"), ("g3", 0, 0.55, True, "unreachable"),
            ("d1", 1, 0.9, False, None), ("d2", 1, 0.48, True, "defect"), ("d3", 1, 0.3, False, None)]
    store = _store(rows)
    labels = {r[0]: r[1] for r in rows}
    fig = an.verdict_figures([r[0] for r in rows] + ["lost"], labels | {"lost": 0}, store, (0.4, 0.6), 0.5)
    assert fig["frames_sent"] == 7 and fig["edge_verdicts"] == 6
    assert fig["missing_edge_verdicts"] == ["lost"]
    assert fig["pending"] == 3 and fig["teacher_verdicts"] == 2 and fig["teacher_unreachable"] == 1
    assert fig["fallback_rate"] == pytest.approx(0.5)
    assert fig["decisions_changed_by_teacher"] == 1  # d2: edge good (0.48) -> teacher defect
    # edge: scores rank d3 (0.3) below two goods -> AUROC 6/9
    assert fig["edge"]["image_auroc"] == pytest.approx(6 / 9)
    # cascade: g2 -> good beyond lo, d2 -> defect beyond hi; only d3 misranked (below g1? no: 0.3 > 0.1) ...
    assert fig["cascade"]["image_auroc"] > fig["edge"]["image_auroc"]
    # decisions at threshold: edge TP d1, FN d2 d3, FP g3; cascade fixes d2
    assert fig["edge"]["f1_at_threshold"] == pytest.approx(2 * 1 / (2 * 1 + 1 + 2))
    assert fig["cascade"]["f1_at_threshold"] == pytest.approx(2 * 2 / (2 * 2 + 1 + 1))
    assert fig["confusion"]["d3"] == "FN" and fig["confusion"]["g3"] == "FP"
    assert fig["edge"]["confusion"] == {"tp": 1, "fp": 1, "fn": 2, "tn": 2}  # g3 0.55 >= 0.5: a false reject
    assert fig["edge"]["false_reject_rate"] == pytest.approx(1 / 3) and fig["edge"]["escape_rate"] == pytest.approx(2 / 3)
    assert fig["edge"]["recall_per_type"] == {"defect": pytest.approx(1 / 3)}  # no types given: one bucket
    assert fig["latency_ms"]["edge.backend"]["p50"] == pytest.approx(3.0)
    assert fig["latency_ms"]["teacher.model"]["n"] == 2
    assert fig["end_to_end_ms"]["teacher"]["p50"] == pytest.approx(200.0, rel=1e-3)


def test_cascade_score_places_teacher_decisions_outside_band():
    e = _v("a", score=0.5)
    assert an.cascade_score(e, None, (0.4, 0.6)) == 0.5
    assert an.cascade_score(e, _v("a", decided_by="teacher", decision="defect", confidence=0.0), (0.4, 0.6)) > 0.6
    assert an.cascade_score(e, _v("a", decided_by="teacher", decision="good", confidence=1.0), (0.4, 0.6)) < 0.4
    assert an.cascade_score(e, _v("a", status="teacher_unreachable"), (0.4, 0.6)) == 0.5


def test_reading_eval_json():
    teacher = {"split": "test", "metrics": {"image_auroc": 0.91, "pixel_auroc": 0.88, "au_pro": 0.7,
                                            "image_f1_max": 0.8}}
    assert an.metric_row(teacher) == {"image_auroc": 0.91, "pixel_auroc": 0.88, "au_pro": 0.7, "f1": 0.8}
    # the shape `distill eval --json` prints
    assert an.metric_row({"precision": 0.5, "recall": 1.0})["f1_at_threshold"] == pytest.approx(2 / 3)
    de = {"student": {"fp32": {"image_auroc": 0.9}, "int8": {"image_auroc": 0.89},
                      "int8_openvino": {"image_auroc": 0.88}},
          "fidelity_cosine": {"s8": 0.95, "s16": 0.93}, "teacher_latency": {"median_ms": 120.0},
          "latency": {"backends": {"torch": {"error": "x"}, "onnxruntime-int8": {"median_ms": 2.0},
                                   "openvino-int8": {"median_ms": 1.5}, "onnxruntime-fp32": {"median_ms": 4.0}}}}
    v = an.student_variants(de)
    assert an.find_metric(an.pick_variant(v, "int8"), "image_auroc") == 0.89
    assert an.feature_cosine(de) == {"s8": 0.95, "s16": 0.93}
    assert an.student_latency(de, "int8") == (1.5, "openvino-int8")
    assert an.student_latency(de, "fp32") == (4.0, "onnxruntime-fp32")
    from runtime.tools.demo.analysis import speed_figures
    sp = speed_figures({"distill-eval": de}, {}, {"teacher": 1000, "student_int8": 10})
    assert sp["speedup"] == pytest.approx(80.0) and sp["size_ratio"] == 100 and sp["int8_vs_fp32"] == pytest.approx(4 / 1.5)
    assert an.metric_row(None) == {m: None for m in an.TABLE_METRICS}


def test_sd15_speed_from_command_json():
    from runtime.tools.demo.analysis import sd15_speed

    tb = {"device": "cpu", "dtype": "float32", "unet_params": 859520964,
          "results": [{"size": 256, "latency_s_per_image": 3.0}]}
    sb = {"latency": {"backends": {"onnxruntime-int8": {"median_ms": 2.0}, "openvino-int8": {"median_ms": 1.5},
                                   "onnxruntime-fp32": {"median_ms": 5.0}}}}
    r = sd15_speed(tb, sb)
    assert r["speedup"] == pytest.approx(2000.0) and r["student_backend"] == "openvino-int8"
    assert "speedup" not in sd15_speed({"results": []}, sb) and "not measured" in sd15_speed({"results": []}, sb)["note"]


def test_report_written_from_figures(tmp_path):
    from runtime.tools.demo.report import overlay_panels, write_report

    rows = [("g1", 0, 0.1, False, None), ("d1", 1, 0.9, False, None), ("g2", 0, 0.45, True, "good"),
            ("d2", 1, 0.48, True, "defect")]
    store = _store(rows)
    labels = {r[0]: r[1] for r in rows}
    ids = [r[0] for r in rows]
    vfig = an.verdict_figures(ids, labels, store, (0.4, 0.6), 0.5, types={"d1": "crack", "d2": "stain"})
    rng = np.random.default_rng(0)
    imgs = {f: (rng.integers(0, 255, (32, 32, 3), dtype=np.uint8), np.zeros((32, 32), bool)) for f in ids}
    imgs["d1"][1][4:9, 4:9] = True
    store.final("d1").regions = [Region(bbox=(3, 3, 10, 10), area=40, label="scratch", confidence=0.9)]
    fig = {"settings": {"mode": "quick", "rate_hz": 10.0}, "verdicts": vfig, "wall_s": 12.0,
           "timings_s": {"synth": 1.0}, "table_notes": ["note"],
           "table_sources": {"teacher": {"image_auroc": 0.9, "source": "teacher eval"},
                             "cascade": {"image_auroc": vfig["cascade"]["image_auroc"], "source": "verdicts"}},
           "feature_cosine": {"s8": 0.9}, "model_bytes": {"teacher": 10_000_000, "student_int8": 100_000},
           "speed": {"size_ratio": 100.0, "teacher_ms": 100.0, "student_ms": 1.0, "speedup": 100.0},
           "speed_sd15": {"size": 256, "teacher_ms": 3000.0, "student_ms": 1.5, "speedup": 2000.0, "note": "n"},
           "student_local": {"image_auroc": 1.0, "au_pro": 0.5},
           "student_pro": ([0, 0.1, 0.3], [0, 0.5, 0.9]),
           "fidelity_mean_predictor": {"s8": 0.95}, "forced": {"int8": "model.int8.onnx"},
           "calibration": {"threshold": 0.5, "band": [0.4, 0.6], "reference": "teacher (both)", "n_val": 12,
                           "target_agreement": 0.995}, "teacher_preset": "tiny"}
    fig["table_sources"]["student INT8"] = {"image_auroc": 0.3, "source": "distill eval --json"}
    picks = an.sample_by_outcome(vfig["confusion"], 1)
    maps = {f: rng.random((32, 32)).astype(np.float32) for f in ids}
    panels = overlay_panels(imgs, picks, store, maps)
    fig["localisation"] = an.localisation_summary(imgs, store, maps)
    index = write_report(tmp_path, fig, panels)
    html = index.read_text()
    for s in ("Teacher vs student vs cascade", "The line", "Curves", "Frames", "Latency", "Size and speed", "Steps",
              "roc.png", "pro.png", "latency_edge.png", "frame_TP_d1.png", "speedup over the production teacher"):
        assert s in html, s
    assert (tmp_path / "roc.png").stat().st_size > 1000
    assert (tmp_path / "frame_TP_d1.png").is_file()
    # d1 (edge: defect, its box on the mask) is the one defect frame the edge called defect
    assert fig["localisation"].startswith("Of the 1 defect frame the edge called defect, its regions fall on the defect in 1")
    assert fig["localisation"] in html.replace("&#x27;", "'")
    # issue 14: what a report owes its reader
    assert "class='confusion'" in html and "escape rate" in html and "false-reject rate" in html
    assert "crack" in html and "stain" in html  # recall per defect type
    assert "mean-predictor baseline" in html and "at or below the mean-predictor baseline" in html  # 0.9 <= 0.95
    assert "past its INT8 accuracy guard" in html and "student INT8: I-AUROC 0.300 is at or below chance" in html
    assert "agrees best with the reference decisions (teacher (both)) on the 12 val images" in html
    assert "tiny teacher (this demo&#x27;s) ms / image" in html and "speedup over the tiny teacher" in html


def _magenta(panel: np.ndarray) -> np.ndarray:
    from runtime.plots import BOX_COLOR_RGB

    return (panel == np.array(BOX_COLOR_RGB, np.uint8)).all(axis=2)


def test_overlays_draw_each_models_own_regions_and_say_whether_they_hit_the_defect():
    """The quick demo's "TP" frame 0001-000025_grass_crack: the edge called it defect by score, but its only
    regions were a whole-frame box and a corner box and the student map peaked at a corner, off the crack. The
    caption must say so; and a frame the teacher decided must not draw the teacher's boxes on the student's map."""
    from runtime.tools.demo.report import overlay_panels

    size = 64
    img = np.full((size, size, 3), 128, np.uint8)
    gt = np.zeros((size, size), bool)
    gt[20:40, 30:34] = True  # a thin vertical crack
    corner = np.zeros((size, size), np.float32)
    corner[-4:, -4:], corner[-1, -1] = 1.0, 2.0  # the map peaks at a corner, away from the crack
    on_crack = np.zeros((size, size), np.float32)
    on_crack[28:31, 31:33], on_crack[28, 31] = 1.0, 2.0
    store = st.Collected()
    # "wide": TP by score, regions = the whole frame + a corner box (as the quick demo's grass crack)
    store.add(_v("wide", decision="defect", score=0.67, regions=[
        Region(bbox=(0, 0, size, size), area=1500, label="anomaly", confidence=0.97),
        Region(bbox=(0, 0, 9, 9), area=66, label="anomaly", confidence=0.55)]), 0.0)
    # "cascade": the edge's box on the crack, then the teacher decided with a box in the opposite corner
    store.add(_v("cascade", decision="good", score=0.45, pending=True, in_band=True,
                 regions=[Region(bbox=(28, 18, 36, 42), area=80, label="anomaly", confidence=0.6)]), 0.0)
    store.add(_v("cascade", decided_by="teacher", decision="defect", score=2.0,
                 regions=[Region(bbox=(2, 2, 12, 12), area=60, label="crack", confidence=0.8)]), 0.0)
    panels = overlay_panels({"wide": (img, gt), "cascade": (img, gt)}, {"TP": ["wide", "cascade"]}, store,
                            {"wide": corner, "cascade": on_crack})
    (_, wide, wide_cap), (_, casc, casc_cap) = panels
    assert "edge regions miss the defect: only a box over 100% of the frame covers it" in wide_cap, wide_cap
    assert "map peak at (63, 63) off the defect" in wide_cap, wide_cap
    assert "edge region on the defect" in casc_cap and "map peak at (31, 28) on the defect" in casc_cap, casc_cap
    assert "teacher regions miss the defect" in casc_cap, casc_cap

    # the cascade frame: frame | student map with the edge's box | the teacher's box, each titled above the frame
    title, scale, gap = 16, 4, 4  # overlay enlarges 64 px frames 4x (min_side 256)
    side = size * scale
    assert casc.shape == (title + side, 3 * side + 2 * gap, 3) and wide.shape[1] == 2 * side + gap
    student = _magenta(casc[title:, side + gap: 2 * side + gap])
    teacher = _magenta(casc[title:, 2 * side + 2 * gap:])
    assert student[18 * scale: 42 * scale, 28 * scale: 36 * scale].any()  # the edge's box, on the student's map
    assert not student[: 14 * scale, : 14 * scale].any()  # not the teacher's
    assert teacher[2 * scale: 12 * scale, 2 * scale: 12 * scale].any()


def test_localisation_counts_no_box_that_covers_the_frame():
    gt = np.zeros((32, 32), bool)
    gt[10:12, 10:20] = True  # rows 10..11
    box = lambda *b: Region(bbox=b, area=1, label="anomaly", confidence=1.0)  # noqa: E731
    assert an.localisation(gt, [box(8, 8, 22, 14)])["on_defect"] is True
    wide = an.localisation(gt, [box(0, 0, 32, 32), box(25, 25, 32, 32)])
    assert wide["on_defect"] is False and wide["wide_only"] and wide["box_share"] == 1.0
    assert an.localisation(gt, [box(25, 25, 32, 32)]) | {"box_share": 0} == {
        "regions": 1, "on_defect": False, "wide_only": False, "box_share": 0, "peak_xy": None, "peak_on_defect": None}
    good = an.localisation(np.zeros((32, 32), bool), [box(0, 0, 4, 4)], np.ones((32, 32), np.float32))
    assert good["on_defect"] is None and good["peak_on_defect"] is None and good["peak_xy"] == (0, 0)
    # the map's peak may sit PEAK_TOLERANCE_PX off a thin mask
    m = np.zeros((32, 32), np.float32)
    m[11 + an.PEAK_TOLERANCE_PX, 15] = 1.0
    assert an.localisation(gt, [], m)["peak_on_defect"] is True
    m[:] = 0
    m[11 + an.PEAK_TOLERANCE_PX + 1, 15] = 1.0
    assert an.localisation(gt, [], m)["peak_on_defect"] is False


def test_bench_targets_from_report():
    from runtime.tools.bench.targets import targets

    rep = {
        "teacher": {"sd15": {"results": [{"size": 256, "latency_s_per_image": 0.4}]},
                    "tiny": {"results": [{"size": 128, "latency_s_per_image": 0.005}]}},
        "student": {"input": [1, 3, 256, 256],
                    "results": {"onnxruntime": {"fp32": {"status": "ok", "p50_ms": 2.0, "backend": "ort"},
                                                "int8": {"status": "ok", "p50_ms": 1.0, "backend": "ort"}},
                                "openvino": {"status": "skipped", "reason": "x"}}},
        "daemon": {"overhead_p50_ms": 0.8, "sustained_ratio": 0.95, "raw": {"p50_ms": 1.0}},
        "kernels": {"knn": {"gflops": 10}, "knn_vs_matmul": 0.4},
    }
    t = {r["target"]: r for r in targets(rep)}
    assert t["int8_vs_sd15_teacher_256"]["measured"] == pytest.approx(400.0) and t["int8_vs_sd15_teacher_256"]["pass"]
    assert t["int8_vs_fp32"]["measured"] == pytest.approx(2.0) and t["int8_vs_fp32"]["pass"]
    assert t["daemon_overhead_p50_ms"]["pass"] is True
    assert t["daemon_sustained_fraction"]["pass"] is True
    assert t["knn_vs_matmul"]["pass"] is False
    # a 128-px artifact: the 300x target uses the student timed at 256 px (distill eval --student-only --size 256)
    rep["student"]["input"] = [1, 3, 128, 128]
    assert {r["target"]: r for r in targets(rep)}["int8_vs_sd15_teacher_256"]["measured"] is None
    rep["student"]["at_256"] = {"backends": {"onnxruntime-int8": {"median_ms": 2.0}, "onnxruntime-fp32": {"median_ms": 1.0},
                                             "torch": {"error": "x"}}}
    t = {r["target"]: r for r in targets(rep)}
    assert t["int8_vs_sd15_teacher_256"]["measured"] == pytest.approx(200.0) and t["int8_vs_sd15_teacher_256"]["pass"] is False
    t = {r["target"]: r for r in targets({"teacher": {"tiny": {}}, "daemon": {"status": "skipped", "reason": "no daemon"}})}
    assert t["int8_vs_sd15_teacher_256"]["pass"] is None and "--full" in t["int8_vs_sd15_teacher_256"]["why"]
    assert t["daemon_overhead_p50_ms"]["why"] == "no daemon"
    assert t["knn_vs_matmul"]["why"] == "kernels section not run"
