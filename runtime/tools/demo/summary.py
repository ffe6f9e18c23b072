"""What the demo prints and keeps: the quality table's rows from the commands' JSON, the summary.json it
writes and the closing lines on the terminal."""
from __future__ import annotations

import os
import platform
from dataclasses import asdict
from pathlib import Path

from runtime.report import fmt_mb, fmt_number
from runtime.tools.bench.quality import REFERENCE_ROWS
from runtime.tools.demo import analysis as an


def table_sources(j: dict, vfig: dict, local: dict, manifest) -> dict:
    """One row per detector: the teacher and the student from their eval commands, the edge and the cascade
    from the daemon's verdicts (the edge's pixel metrics from the same artifact's maps, computed locally on
    the streamed frames), and the reference detectors of `teacher baselines`."""
    variants = an.student_variants(j.get("distill-eval"))
    fp32 = an.pick_variant(variants, "fp32") or j.get("distill-eval")
    int8 = an.pick_variant(variants, "int8")
    sources = {
        "teacher (tiny)": {**an.metric_row(j.get("teacher-eval")), "source": "teacher eval --json"},
        "student FP32": {**an.metric_row(fp32), "source": "distill eval --json"},
        "student INT8": {**an.metric_row(int8), "source": "distill eval --json"},
    }
    edge_m, casc_m = vfig.get("edge", {}), vfig.get("cascade", {})
    sources[f"edge ({manifest.quantization}, streamed)"] = {
        "image_auroc": edge_m.get("image_auroc"), "f1": edge_m.get("f1"), "f1_at_threshold": edge_m.get("f1_at_threshold"),
        "pixel_auroc": local.get("pixel_auroc"), "au_pro": local.get("au_pro"), "source": "daemon verdicts (+ local maps)"}
    sources["cascade (edge + teacher)"] = {
        "image_auroc": casc_m.get("image_auroc"), "f1": casc_m.get("f1"), "f1_at_threshold": casc_m.get("f1_at_threshold"),
        "source": "daemon + teacher verdicts"}
    for key, row in ((j.get("baselines") or {}).get("rows") or {}).items():  # the reference rows
        sources[REFERENCE_ROWS.get(key, key)] = {**an.metric_row(row.get("mean")), "source": "teacher baselines --json"}
    return sources


def table_notes(q: dict, quantize_returncode: int) -> list[str]:
    notes = ["Cascade pixel metrics are not computed: teacher anomaly maps are not published on the verdict socket. "
             "Cascade I-AUROC ranks teacher-decided frames beyond the band on the teacher's side."]
    if quantize_returncode == 2:
        notes.append(f"INT8 was refused by the accuracy guard ({refusal(q)}); the edge ran FP32.")
    elif q.get("forced") or any(isinstance(m, dict) and m.get("forced") for m in (q.get("methods") or {}).values()):
        notes.append("INT8 was written with --force (quick demo): the guard's verdict is in logs/quantize.log.")
    return notes


def refusal(q: dict) -> str:
    """Why `distill quantize` refused, from its JSON (methods.<m>.refused)."""
    why = [f"{m}: {r.get('refused')}" for m, r in (q.get("methods") or {}).items()
           if isinstance(r, dict) and r.get("refused")]
    return "; ".join(why)[:300] or "see logs/quantize.log"


def demo_summary(s, j: dict, fig: dict, info: dict, index: Path, total: float) -> dict:
    """summary.json (and `lineside demo --json`): the figures people and CI read off a demo run."""
    vfig = fig["verdicts"]
    edge_m, casc_m = vfig.get("edge", {}), vfig.get("cascade", {})
    return {
        "ok": bool(vfig["edge_verdicts"] == vfig["frames_sent"] and not vfig["unresolved_pending"]),
        "report": str(index),
        "wall_s": round(total, 2),
        "timings_s": fig["timings_s"],
        "settings": asdict(s),
        "machine": {"node": platform.node(), "cpus": os.cpu_count(), "arch": platform.machine()},
        "frames": {k: v for k, v in vfig.items() if k not in ("latency_samples_ms", "end_to_end_samples_ms",
                                                              "confusion", "edge", "cascade")},
        "edge": {k: v for k, v in edge_m.items() if k != "roc"},
        "cascade": {k: v for k, v in casc_m.items() if k != "roc"},
        "table": {k: {m: v.get(m) for m in (*an.TABLE_METRICS, "f1_at_threshold")} for k, v in fig["table_sources"].items()},
        "feature_cosine": fig["feature_cosine"],
        "model_bytes": fig["model_bytes"],
        "params": fig["params"],
        "speed": fig["speed"],
        "speed_sd15": fig["speed_sd15"],
        "student_local": fig.get("student_local", {}),
        "student_local_note": fig["student_local_note"],
        "services": {k: info.get(k) for k in ("endpoints", "startup_s", "daemon_exit", "teacher_exit", "killed", "stop_s")},
        "stream": info.get("stream"),
        "foreign_frame": fig["foreign"],
        "teacher_eval": j.get("teacher-eval"),
        "distill_eval": j.get("distill-eval"),
    }


def print_summary(console, summary: dict, fig: dict, index: Path) -> None:
    """The closing table and lines on the terminal."""
    from rich.table import Table

    vfig, sizes, params, sp, speed_sd15 = (fig["verdicts"], fig["model_bytes"], fig["params"], fig["speed"],
                                           fig["speed_sd15"])
    t = Table(title=f"lineside demo — {summary['wall_s']:.0f} s on {summary['machine']['cpus']} CPUs", show_lines=False)
    for c in ("model", "I-AUROC", "P-AUROC", "AU-PRO", "F1"):
        t.add_column(c)
    for k, v in summary["table"].items():
        t.add_row(k, *(fmt_number(v.get(m)) for m in an.TABLE_METRICS))
    console.print(t)
    console.print(f"frames {vfig['frames_sent']} · edge verdicts {vfig['edge_verdicts']} · to the teacher "
                  f"{vfig['pending']} (fallback {fmt_number(vfig['fallback_rate'])}) · teacher verdicts {vfig['teacher_verdicts']}"
                  f" · unreachable {vfig['teacher_unreachable']}")
    pv = list(params.values())
    if pv[1]:
        console.print(f"student {pv[1] / 1e6:.2f} M parameters: " + " · ".join(
            _ratio_words(v / pv[1], k) for k, v in params.items() if v and not k.startswith("student")))
    console.print(f"student {fmt_mb(sizes.get('student_int8') or sizes.get('student_fp32'))} vs teacher {fmt_mb(sizes.get('teacher'))}"
                  f" · speedup over the teacher {fmt_number(sp.get('speedup'), 1)}×"
                  + (f" · over the production sd15 teacher at {speed_sd15['size']} px {speed_sd15['speedup']:.0f}×"
                     if speed_sd15.get("speedup") else "") + f"   report: [bold]{index}[/]")


def _ratio_words(r: float, other: str) -> str:
    """Teacher/student parameter ratio in words: "258× fewer than the X" or "1.3× more than the X"."""
    return f"{r:.0f}× fewer than the {other}" if r >= 1.5 else (
        f"about as many as the {other}" if r >= 0.8 else f"{1 / r:.1f}× more than the {other}")


