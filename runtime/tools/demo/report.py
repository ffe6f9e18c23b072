"""``DIR/index.html`` of the demo, built with runtime/report.py (the same builder the eval commands use)."""
from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Mapping

import numpy as np

from runtime.tools.demo import analysis as an
from runtime.quality import warnings_for
from runtime.plots import overlay, plot_bars, plot_curves, plot_stage_panels
from runtime.report import Report, calibration_words, chance_warnings, fmt_mb, fmt_number


def metric_table(fig: Mapping) -> list[dict]:
    """Rows teacher / student FP32 / student INT8 / edge (streamed) / cascade for the headline table."""
    rows = []
    for name, src in fig["table_sources"].items():
        row = {"model": name}
        row.update({k: src.get(k) for k in an.TABLE_METRICS})
        row["f1_at_threshold"] = src.get("f1_at_threshold")
        row["source"] = src.get("source", "")
        rows.append(row)
    return rows


def write_report(out: Path, fig: dict, overlays: list[tuple[str, np.ndarray, str]]) -> Path:
    """The demo's page: provenance, then one section per step of the story (quality, the line, curves, frames,
    fidelity, latency, size and speed, steps)."""
    rep = Report("lineside demo", out)
    rep.text(f"Run on {platform.node()} ({os.cpu_count()} CPUs, {platform.machine()}), "
             f"{fig['settings']['mode']} settings, total {fig['wall_s']:.0f} s. Every figure below is computed "
             f"from this run: the daemon's published verdicts, the artifact and checkpoints on disk, and the JSON "
             f"printed by `teacher eval` and `distill eval`.", note=True)

    for role, rel in (fig.get("forced") or {}).items():
        rep.warning(f"the artifact's {role} model ({rel}) was shipped past its INT8 accuracy guard (distill quantize "
                    "--force): the edge served it only because the demo allowed forced models")
    _quality_table(rep, fig)
    _line(rep, fig)
    _curves(rep, fig)
    _frames(rep, fig, overlays)
    _fidelity(rep, fig)
    _latency(rep, fig)
    _size_and_speed(rep, fig)
    _steps(rep, fig, out)
    return rep.write()


def _quality_table(rep, fig: dict) -> None:
    """The detectors side by side, each row with its chance warnings."""
    rep.section("Teacher vs student vs cascade", "test split; F1 = best F1 over thresholds (F1-max), "
                "'F1 @ thr' = F1 of the decisions actually made at the deployed threshold.")
    rows = []
    for r in metric_table(fig):
        if not str(r["source"]).startswith("daemon"):  # the streamed rows are warned about with their rates below
            for w in chance_warnings(r["model"], r):
                rep.warning(w)
        rows.append([r["model"], fmt_number(r["image_auroc"]), fmt_number(r["pixel_auroc"]), fmt_number(r["au_pro"]),
                     fmt_number(r["f1"]), fmt_number(r["f1_at_threshold"]), r["source"]])
    rep.table(rows, header=["model", "I-AUROC", "P-AUROC", "AU-PRO", "F1", "F1 @ thr", "from"])
    if fig.get("table_notes"):
        rep.text(" ".join(fig["table_notes"]), note=True)


def _line(rep, fig: dict) -> None:
    """What the line did with the streamed frames: counts, the calibration in words, decisions per detector."""
    v = fig["verdicts"]
    rep.section("The line", "frames streamed into `lineside run` by a simulated camera, "
                f"{fig['settings']['rate_hz']:g} Hz")
    rep.table([
        ["frames sent", v["frames_sent"]], ["edge verdicts", v["edge_verdicts"]],
        ["edge errors", v["edge_errors"]], ["in uncertainty band", v["in_band"]], ["out of distribution", v["ood"]],
        ["sent to the teacher (pending)", v["pending"]], ["fallback rate", fmt_number(v["fallback_rate"])],
        ["teacher verdicts", v["teacher_verdicts"]], ["teacher unreachable", v["teacher_unreachable"]],
        ["decisions the teacher changed", v["decisions_changed_by_teacher"]],
    ], header=["", "value"])
    if fig.get("calibration"):
        rep.text(calibration_words(fig["calibration"]), note=True)
    for name in ("edge", "cascade"):
        m = v.get(name) or {}
        if "confusion" not in m:
            continue
        for w in warnings_for({"mean": m}):  # runtime.quality's words: chance ranking, escapes, false rejects
            rep.warning(f"{name}: {w}")
        rep.confusion(m["confusion"], caption=f"{name} decisions at the deployed threshold "
                                              f"({fig.get('calibration', {}).get('threshold', float('nan')):.4g}), "
                                              f"{m['n']} labelled frames")
        if m.get("recall_per_type"):
            rep.table([[t, fmt_number(r), fmt_number(1 - r)] for t, r in m["recall_per_type"].items()],
                      header=["defect type", "recall", "escape rate"], caption=f"{name}, per defect type")
    fo = fig.get("foreign") or {}
    if fo.get("edge"):
        e, r = fo["edge"], fo.get("resolution") or {}
        rep.text(f"One foreign frame (colour bars, as from a switched or glitching camera feed) was streamed among the "
                 f"test frames: the edge said {e['decision']}" + (" (out of distribution)" if e["ood"] else "")
                 + (f", sent it to the teacher, which answered {r.get('decision')} ({r.get('status')})" if r else
                    (", and it was not sent to the teacher" if not e["pending"] else ", and no answer came"))
                 + ". It is not part of the detection metrics.", note=True)


def _curves(rep, fig: dict) -> None:
    """ROC of the streamed frames (edge, cascade) and the student's PRO."""
    v = fig["verdicts"]
    curves = {}
    for name in ("edge", "cascade"):
        m = v.get(name, {})
        if "roc" in m:
            curves[f"{name} (AUROC {m['image_auroc']:.3f})"] = m["roc"]
    rep.section("Curves")
    if curves:
        rep.figure(plot_curves(rep.path("roc.png"), curves, xlabel="false positive rate",
                               ylabel="true positive rate", title="image ROC", xlim=(0, 1), diagonal=True),
                   "image-level ROC of the streamed frames: the student on the edge, and the cascade")
    if fig.get("student_pro"):
        fpr, pro = fig["student_pro"]
        au = fig["student_local"].get("au_pro", float("nan"))
        rep.figure(plot_curves(rep.path("pro.png"), {f"student (AU-PRO {au:.3f})": (fpr, pro)},
                               xlabel="pixel false positive rate", ylabel="per-region overlap",
                               title="PRO", xlim=(0, 0.3)), "per-region overlap up to 30 % pixel FPR")
    if fig.get("student_local_note"):
        rep.text(fig["student_local_note"], note=True)


def _frames(rep, fig: dict, overlays: list) -> None:
    rep.section("Frames", "sampled true/false positives/negatives of the cascade's final decision; each panel one "
                "model's output: the student's anomaly map (heat map) with the edge verdict's regions (magenta), and "
                "where the teacher decided, the teacher's regions beside it (its maps are not published); green: "
                "ground truth. Each caption says whether the regions and the map's peak fall on the ground truth.")
    if fig.get("localisation"):
        rep.text(fig["localisation"], note=True)
    for name, img, cap in overlays:
        rep.image(img, cap, name=name)


def _fidelity(rep, fig: dict) -> None:
    """Student fidelity per level beside the mean-predictor baseline."""
    cos = fig.get("feature_cosine") or {}
    base = fig.get("fidelity_mean_predictor") or {}
    rep.section("Student fidelity", "cosine similarity of student and teacher features per level (distill eval), "
                "beside the baseline: the cosine a constant prediction (the teacher's mean feature) reaches (fit.log)")
    if cos:
        low = [k for k, x in cos.items() if k in base and x <= base[k]]
        if low:
            rep.warning(f"fidelity of level(s) {', '.join(low)} is at or below the mean-predictor baseline")
        rep.table([[k, fmt_number(x), fmt_number(base.get(k)), fmt_number(x - base[k]) if k in base else "—"] for k, x in cos.items()],
                  header=["level", "cosine", "mean-predictor baseline", "over the baseline"])
        rep.figure(plot_bars(rep.path("cosine.png"), cos, ylabel="cosine", ylim=(0, 1), title="feature cosine"))
    else:
        rep.text("distill eval reported no per-level cosine.", note=True)


def _latency(rep, fig: dict) -> None:
    """Per-stage latencies of every verdict, one panel per stage."""
    v = fig["verdicts"]
    rep.section("Latency", "per stage, from the latencies_ms of every verdict")
    lat = v["latency_ms"]
    rep.table([[k, s.get("n"), fmt_number(s.get("p50"), 2), fmt_number(s.get("p99"), 2), fmt_number(s.get("max"), 2)]
               for k, s in lat.items()] +
              [[f"end to end ({k})", s.get("n"), fmt_number(s.get("p50"), 2), fmt_number(s.get("p99"), 2), fmt_number(s.get("max"), 2)]
               for k, s in v["end_to_end_ms"].items()], header=["stage", "n", "p50 ms", "p99 ms", "max ms"])
    edge_s = {k: x for k, x in v["latency_samples_ms"].items() if k.startswith("edge.")}
    teach_s = {k: x for k, x in v["latency_samples_ms"].items() if k.startswith("teacher.")}
    # one panel per stage on its own axis (log where it spans decades): a 1 ms stage and a 900 ms one never share
    # a linear axis, and a stage seen once is a labelled point
    if edge_s:
        rep.figure(plot_stage_panels(rep.path("latency_edge.png"), edge_s, title="edge stages"), "edge, per stage")
    if teach_s:
        rep.figure(plot_stage_panels(rep.path("latency_teacher.png"), teach_s, title="teacher stages"),
                   "teacher server, per stage")
    e2e = {k: x for k, x in v["end_to_end_samples_ms"].items() if x}
    if e2e:
        rep.figure(plot_stage_panels(rep.path("latency_e2e.png"), e2e, title="frame sent → verdict"),
                   "end to end, frame timestamp to verdict")


def _size_and_speed(rep, fig: dict) -> None:
    """Parameters, bytes and speed of the demo's models, and the production teacher when measured."""
    rep.section("Size and speed")
    sizes = fig["model_bytes"]
    sp = fig["speed"]
    params = {k: v for k, v in (fig.get("params") or {}).items() if v}
    if params:
        student = next((v for k, v in params.items() if k.startswith("student")), None)
        rep.table([[k, f"{v / 1e6:.3f} M", (f"{v / student:.3g}×" if student else "—")] for k, v in params.items()],
                  header=["parameters", "count", "÷ student"])
    # the demo's teacher is the tiny preset (a few M parameters, can be smaller than the student): every teacher
    # row names which teacher it is, and the production sd15 teacher has its own table below
    tp = fig.get("teacher_preset", "tiny")
    tt = f"{tp} teacher (this demo's)"
    labels = {"teacher": f"{tt}: inference weights (EMA U-Net, VAE, encoders, head, bank)",
              "student_fp32": "student FP32 (ONNX)", "student_int8": "student INT8 (ONNX)",
              "student_openvino_xml": "student (OpenVINO IR)", "student_torch": "student (torch weights, not used on the edge)"}
    rep.table([[labels.get(k, k), fmt_mb(b)] for k, b in sizes.items()] +
              [[f"{tt} / student size", fmt_number(sp.get("size_ratio"), 1) + "×"],
               [f"{tt} ms / image", fmt_number(sp.get("teacher_ms"), 2)],
               ["student ms / image", fmt_number(sp.get("student_ms"), 2)],
               [f"speedup over the {tt}", fmt_number(sp.get("speedup"), 1) + "×"]], header=["", "value"])
    if sp.get("size_ratio") is not None and sp["size_ratio"] < 1:
        rep.text(f"The {tp} teacher of this demo is smaller than the student: it is a test-size preset that runs "
                 "the same code on two CPU cores. The speedup above is over it; the production sd15 teacher "
                 "(860M-parameter U-Net) is compared below when measured.", note=True)
    if sp.get("note"):
        rep.text(sp["note"], note=True)
    s15 = fig.get("speed_sd15") or {}
    if s15.get("speedup"):
        rep.table([[f"production teacher (sd15) ms / image at {s15['size']} px", fmt_number(s15["teacher_ms"], 1)],
                   [f"student INT8 ms / image at {s15['size']} px", fmt_number(s15["student_ms"], 2)],
                   ["speedup over the production teacher", fmt_number(s15["speedup"], 0) + "×"]], header=["", "value"])
    if s15.get("note"):
        rep.text(s15["note"], note=True)


def _steps(rep, fig: dict, out: Path) -> None:
    """Every step's wall time and links to the detailed reports."""
    rep.section("Steps", "every step is a lineside command run as a subprocess; logs in logs/")
    rep.table([[k, f"{t:.1f}"] for k, t in fig["timings_s"].items()], header=["step", "wall s"])
    links = [f'<a href="{p}/index.html">{n}</a>' for n, p in fig.get("subreports", {}).items()
             if (out / p / "index.html").is_file()]
    if links:
        rep.html("<p>Detailed reports: " + " · ".join(links) + "</p>")


def overlay_panels(records: Mapping[str, tuple], picks: Mapping[str, list[str]], store, maps: Mapping) -> list:
    """(file name, RGB overlay, caption) for the sampled frames. records: frame id -> (image, gt_mask).

    Each panel draws one model's output only: the student's map with the edge verdict's regions (the map and the
    boxes of the same model), and, where the teacher decided, the teacher's regions on a panel of their own (its
    maps are not published). The caption says whether each model's regions and the map's peak fall on the ground
    truth, so a TP by score whose region misses the defect says so."""
    out = []
    for kind, fids in picks.items():
        for fid in fids:
            img, gt = records[fid]
            final = store.final(fid)
            edge = store.edge(fid)
            amap = maps.get(fid)
            gt_or_none = gt if gt.any() else None
            words = [an.localisation_words(an.localisation(gt, edge.regions, amap), "edge")]
            panels = [_titled(overlay(img, gt_mask=gt_or_none), "frame, ground truth"),
                      _titled(overlay(img, anomaly_map=amap, regions=edge.regions, gt_mask=gt_or_none),
                              "student (edge): map, regions" if amap is not None else "student (edge): regions")]
            if final.decided_by != "edge":
                words.append(an.localisation_words(an.localisation(gt, final.regions), final.decided_by))
                panels.append(_titled(overlay(img, regions=final.regions, gt_mask=gt_or_none),
                                      f"{final.decided_by}: regions (map not published)"))
            cap = " · ".join([kind, fid, f"{final.decision} by {final.decided_by}",
                              f"edge score {edge.score:.3g}" + (" (in band)" if edge.in_band else ""), *words])
            gap = np.full((panels[0].shape[0], 4, 3), 255, np.uint8)
            row = [panels[0]]
            for q in panels[1:]:
                row += [gap, q]
            out.append((f"frame_{kind}_{fid}.png", np.concatenate(row, axis=1), cap))
    return out


def _titled(panel: np.ndarray, title: str) -> np.ndarray:
    """The panel under a white strip naming what it shows (above the frame, so no box label hides it)."""
    import cv2

    strip = np.full((16, panel.shape[1], 3), 255, np.uint8)
    cv2.putText(strip, title, (3, 12), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (0, 0, 0), 1, cv2.LINE_AA)
    return np.concatenate([strip, panel], axis=0)
