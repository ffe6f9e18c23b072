"""The demo's sequence: build everything with lineside's commands, run the line, write the report."""
from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from runtime.cli.dispatch import json_default
from runtime.tools.demo import analysis as an
from runtime.tools.demo.steps import StepError, StepRunner, child_env
from runtime.tools.demo.summary import demo_summary, print_summary, refusal, table_notes, table_sources

PRESET = "tiny"
N_PROGRESS_STEPS = 13  # build 10 (synth … distill eval), services up, stream, report (+1: sd15 comparison)


class DemoError(RuntimeError):
    pass


def _console():
    from rich.console import Console

    c = Console(stderr=True, highlight=False)
    return c if c.is_terminal else Console(stderr=True, highlight=False, width=120)  # logs, CI: no 80-col wrap


def build(out: Path, s, runner: StepRunner, say, evaluate: bool = True) -> dict[str, dict]:
    """Steps 1-3: dataset, teacher, head/bank, student, INT8, artifact, and (``evaluate``) both evals.
    Returns each step's JSON by step name."""
    data, vae, ckpt = out / "data", out / "teacher-vae", out / "teacher"
    run_dir, art = out / "student-run", out / "artifact"
    manifest = data / "manifest.jsonl"
    j: dict[str, dict] = {}

    def step(name, desc, tool, args, want_json=True, ok_codes=(0,)):
        say(f"[bold]{desc}[/] …", start=name)
        r = runner.run(name, tool, args, want_json=want_json, ok_codes=ok_codes)
        j[name] = r.result
        note = "" if r.returncode == 0 else f" [yellow](exit {r.returncode})[/]"
        say(f"{desc} [green]done[/]{note} in {r.wall_s:.1f} s", end=name)
        return r.result

    step("synth", "make the line dataset (teacher data synth)", "teacher",
         ["data", "synth", data, "--n-good", s.n_good, "--n-defect", s.n_defect, "--size", s.size, "--seed", s.seed,
          "--json"])
    step("train-vae", "train the teacher's autoencoder (teacher train-vae)", "teacher",
         ["train-vae", "--preset", PRESET, "--data", manifest, "--out", vae, "--steps", s.vae_steps], want_json=False)
    step("train", "train the diffusion teacher (teacher train)", "teacher",
         ["train", "--preset", PRESET, "--data", manifest, "--out", ckpt, "--steps", s.train_steps, "--vae", vae,
          "--seed", s.seed, "--json"])
    step("finetune", "train the mask head (teacher finetune)", "teacher",
         ["finetune", "--checkpoint", ckpt, "--data", manifest, "--steps", s.finetune_steps,
          "--pseudo-defects", s.pseudo_defects, "--json"])
    step("bank", "build the teacher's memory bank (teacher bank)", "teacher",
         ["bank", "--checkpoint", ckpt, "--data", manifest, "--json"])
    step("fit", "distil a student (distill fit)", "distill",
         ["fit", "--teacher", ckpt, "--data", manifest, "--student", s.student, "--out", run_dir,
          "--steps", s.distill_steps, "--json"])
    # The guard may refuse INT8 (exit 2): the full demo shows that outcome and the edge runs FP32; the
    # quick one passes --force so CI exercises the INT8 path every time (the report says "forced").
    q = step("quantize", "quantize to INT8 with the accuracy guard (distill quantize)", "distill",
             ["quantize", run_dir, "--data", manifest, "--method", s.quantize_method, "--json"]
             + (["--force"] if s.force_int8 else []), ok_codes=(0, 2))
    if runner.results["quantize"].returncode == 2:
        say(f"[yellow]the accuracy guard refused every INT8 model[/]: the artifact will be FP32 "
            f"({refusal(q)})")
    step("export", "export the edge artifact (distill export)", "distill", ["export", run_dir, "--out", art, "--json"])
    if not evaluate:
        return j
    step("teacher-eval", "evaluate the teacher (teacher eval)", "teacher",
         ["eval", "--checkpoint", ckpt, "--data", manifest, "--split", "test", "--json", "--report", out / "teacher-eval"])
    step("distill-eval", "evaluate the student against the teacher (distill eval)", "distill",
         ["eval", art, "--teacher", ckpt, "--data", manifest, "--json", "--report", out / "student-eval"])
    step("baselines", "what a user would try instead, on the same images (teacher baselines)", "teacher",
         ["baselines", "--data", manifest, "--split", "test", "--size", s.size, "--json"])
    return j


def pick_frames(dataset, max_frames: int | None) -> list:
    """Test records to stream, good and defect interleaved so any prefix holds both classes."""
    test = dataset.split("test")
    good = [r for r in test if not r.is_defect]
    bad = [r for r in test if r.is_defect]
    mixed = []
    while good or bad:
        if good:
            mixed.append(good.pop(0))
        if bad:
            mixed.append(bad.pop(0))
    return mixed[:max_frames] if max_frames else mixed


def frame_id_of(rec, i: int) -> str:
    return f"{i:04d}-{Path(rec.image).stem}"


FOREIGN_FRAME_ID = "foreign-test-pattern"


def test_pattern(h: int, w: int) -> np.ndarray:
    """Colour bars: the frame a camera sends when its feed is switched or glitches. Nothing like the
    product, so the student calls it out of distribution and the cascade hands it to the teacher;
    the demo streams one to show that path on every run (it has no label and stays out of the metrics)."""
    colours = [(192, 192, 192), (192, 192, 0), (0, 192, 192), (0, 192, 0), (192, 0, 192), (192, 0, 0), (0, 0, 192)]
    img = np.zeros((h, w, 3), np.uint8)
    for i, c in enumerate(colours):
        img[:, i * w // len(colours):(i + 1) * w // len(colours)] = c
    return img


def run_line(out: Path, s, env: dict, ckpt: Path, art: Path, frames: list[tuple[str, np.ndarray]], say, progress_cb):
    """Step 4-5: teacher serve + lineside run as processes, stream, collect, stop (always)."""
    import zmq

    from runtime.tools.demo import stream as st

    p_teacher, p_ingress, p_verdicts = st.free_ports(3)
    ep = lambda p: f"tcp://127.0.0.1:{p}"  # noqa: E731
    control = st.control_endpoint(out)
    logs = out / "logs"
    teacher = st.Service("teacher-serve", "teacher",
                         ["serve", "--checkpoint", ckpt, "--bind", ep(p_teacher), "--max-batch", 4], logs / "teacher-serve.log", env)
    daemon = st.Service("lineside-run", "lineside",
                        ["run", "--artifact", art, "--teacher", ep(p_teacher), "--ingress", ep(p_ingress),
                         "--verdicts", ep(p_verdicts), "--control", control, "--journal", out / "journal.sqlite"]
                        + (["--allow-forced"] if s.force_int8 else []),  # the quick demo's INT8 is forced, knowingly
                        logs / "lineside-run.log", env)
    store = st.Collected()
    ctx = zmq.Context()
    collector = None
    info: dict = {"endpoints": {"teacher": ep(p_teacher), "ingress": ep(p_ingress), "verdicts": ep(p_verdicts),
                                "control": control}}
    t0 = time.perf_counter()
    try:
        say("start [bold]teacher serve[/] and [bold]lineside run[/] …", start="services")
        teacher.start()
        daemon.start()
        info["teacher_status"] = st.wait_ready(ctx, teacher, ep(p_teacher), {"kind": "status"})
        info["daemon_status"] = st.wait_ready(ctx, daemon, control, {"kind": "control", "cmd": "status"})
        info["startup_s"] = time.perf_counter() - t0
        say(f"services up in {info['startup_s']:.1f} s ({ep(p_ingress)} → daemon → {ep(p_teacher)})", end="services")
        collector = st.VerdictCollector(ctx, ep(p_verdicts), store)
        collector.start()
        if not collector.heard.wait(st.SUBSCRIBE_TIMEOUT_S):
            raise StepError(f"no heartbeat on the daemon's verdict socket {ep(p_verdicts)} within "
                            f"{st.SUBSCRIBE_TIMEOUT_S:.0f} s (log: {daemon.log})")
        say(f"stream {len(frames)} test frames at {s.rate_hz:g} Hz …", start="stream")
        res = st.stream_frames(ep(p_ingress), frames, s.rate_hz, store, [teacher, daemon],
                               on_frame=lambda k: progress_cb(k, len(frames)))
        info["stream"] = asdict(res)
        say(f"streamed in {res.wall_s:.1f} s; all verdicts in {res.settle_s:.1f} s later"
            + ("" if res.settled else " [red](not all settled)[/]"), end="stream")
    finally:
        if collector is not None:
            collector.stop()
        t_stop = time.perf_counter()
        info["daemon_exit"] = daemon.stop()
        info["teacher_exit"] = teacher.stop()
        info["killed"] = [x.name for x in (daemon, teacher) if x.killed]
        info["stop_s"] = time.perf_counter() - t_stop
        ctx.term()
    info["line_s"] = time.perf_counter() - t0
    return store, info


def student_local(art: Path, frames, masks) -> tuple[dict, str]:
    """The student's anomaly maps on the streamed frames, from the artifact in this process (the same
    runtime.engine the daemon runs): for the PRO curve, pixel metrics and overlays."""
    try:
        from runtime.engine import Engine
    except ImportError as e:
        return {}, {}, f"no local anomaly maps: runtime.engine is not available ({e})"
    try:
        import cv2

        eng = Engine(art, allow_forced=True)  # the same model the daemon served (forced only in the quick demo)
        maps, scores = {}, {}
        for fid, img in frames:
            v = eng.judge(img, frame_id=fid)
            if v.anomaly_map is None:
                return {}, {}, "no local anomaly maps: runtime.engine.Engine.judge returned no anomaly_map"
            m = np.asarray(v.anomaly_map, np.float32)
            h, w = masks[fid].shape
            if m.shape != (h, w):  # the engine maps at the network input size
                m = cv2.resize(m, (w, h), interpolation=cv2.INTER_LINEAR)
            maps[fid] = m
            scores[fid] = float(v.score)
        close = getattr(eng, "close", None)
        if close:
            close()
        return maps, scores, f"local anomaly maps: runtime.engine on {eng.backend_name}"
    except Exception as e:  # report it; the rest of the report still stands
        return {}, {}, f"no local anomaly maps: {type(e).__name__}: {e}"


def run_demo(out: Path, s, threads: int | None = None) -> dict:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
    from rich.text import Text

    console = _console()
    out.mkdir(parents=True, exist_ok=True)
    env = child_env(threads)
    runner = StepRunner(out / "logs", env)
    t0 = time.perf_counter()
    # a live bar on a terminal (steps done, elapsed); plain timestamped lines everywhere (logs, CI)
    progress = Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(bar_width=24),
                        MofNCompleteColumn(), TimeElapsedColumn(), console=console, transient=True,
                        disable=not console.is_terminal)
    overall = progress.add_task("lineside demo", total=N_PROGRESS_STEPS + int(s.sd15_compare))
    frames_task = [None]

    def say(msg: str, start: str | None = None, end: str | None = None):
        console.print(f"[dim]{time.perf_counter() - t0:6.1f}s[/] {msg}")
        if start:
            progress.update(overall, description=Text.from_markup(msg).plain)
        if end:
            progress.advance(overall)

    def on_frame(k: int, total: int):
        if frames_task[0] is None:
            frames_task[0] = progress.add_task("frames streamed", total=total)
        progress.update(frames_task[0], completed=k)

    console.print(f"[bold]lineside demo[/] ({s.mode}) → {out}/index.html   logs: {out}/logs/")
    progress.start()
    try:
        return _run(out, s, runner, env, t0, say, on_frame, console)
    finally:
        progress.stop()


def _run(out, s, runner, env, t0, say, on_frame, console) -> dict:
    """Build, run the line, read the figures, write the report and summary: the demo's steps in order."""
    from runtime.contracts.manifest import load_manifest

    try:
        j = build(out, s, runner, say)
    except StepError as e:
        raise DemoError(str(e)) from None
    ckpt, art = out / "teacher", out / "artifact"
    manifest = load_manifest(art)
    fr = _line_frames(out, s)
    t_line = time.perf_counter()
    store, info, sd15 = _run_line_phase(out, s, runner, env, ckpt, art, fr.frames, say, on_frame)
    timings = runner.timings()
    timings["info-sd15 (beside the line)"] = timings.pop("info-sd15")
    timings["line (serve + run + stream)"] = round(time.perf_counter() - t_line, 2)
    speed_sd15: dict = {}
    if s.sd15_compare:  # after the line: its latencies are not disturbed by an 860M-parameter model
        speed_sd15 = _time_sd15(runner, art, say)
        timings = {**timings, **{k: v for k, v in runner.timings().items() if k in ("bench-sd15", "student-256")}}

    say("compute figures and write the report …", start="report")
    t_rep = time.perf_counter()
    fig, maps = _figures(s, j, store, manifest, fr, art, runner)
    fig.update(timings_s=timings, speed_sd15=speed_sd15)
    sizes = an.model_sizes(ckpt, art, manifest)
    fig["model_bytes"] = sizes
    fig["speed"] = an.speed_figures(j, fig["verdicts"], sizes)
    fig["params"] = {"teacher (tiny, this run)": an.teacher_params(ckpt),
                     f"student {s.student}": (j.get("fit") or {}).get("n_params"),
                     "teacher (sd15, production)": ((sd15.get("params") or {}).get("total"))}
    fig["subreports"] = {"teacher eval": "teacher-eval", "distill eval": "student-eval"}
    index = _write_report(out, s, fig, fr, store, maps, t0)
    timings["report"] = round(time.perf_counter() - t_rep, 2)
    say(f"report written: {index}", end="report")

    total = time.perf_counter() - t0
    summary = demo_summary(s, j, fig, info, index, total)
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=json_default))
    (out / "verdicts.jsonl").write_text("".join(
        json.dumps(v.to_header(), default=json_default) + "\n" for f, _ in fr.frames for v in store.verdicts.get(f, [])))
    print_summary(console, summary, fig, index)
    return summary


@dataclass
class LineFrames:
    """The test frames streamed to the line, with what the figures need to judge them."""
    frames: list  # (frame id, image), the foreign frame among them
    labelled: list  # the same without the foreign frame
    labels: dict  # frame id -> 1 defect / 0 good
    masks: dict  # frame id -> ground-truth mask
    types: dict  # frame id -> defect type


def _line_frames(out: Path, s) -> LineFrames:
    from runtime.contracts.dataset import load_dataset

    ds = load_dataset(out / "data" / "manifest.jsonl", check_files=False)
    recs = pick_frames(ds, s.max_frames)
    frames = [(frame_id_of(r, i), ds.read_image(r)) for i, r in enumerate(recs)]
    labelled = list(frames)
    labels = {fid: int(r.is_defect) for (fid, _), r in zip(frames, recs)}
    masks = {fid: ds.read_mask(r, img.shape[:2]) for (fid, img), r in zip(frames, recs)}
    types = {fid: r.defect_type for (fid, _), r in zip(labelled, recs)}
    frames.insert(len(frames) // 2, (FOREIGN_FRAME_ID, test_pattern(*frames[0][1].shape[:2])))
    return LineFrames(frames, labelled, labels, masks, types)


def _run_line_phase(out, s, runner, env, ckpt, art, frames, say, on_frame):
    """The services up and the frames streamed; beside it, the production teacher's size (a config look-up,
    no weights), for scale. -> (verdict store, service info, sd15 info)."""
    bg = runner.start("info-sd15", "teacher", ["info", "--preset", "sd15", "--json"])
    try:
        store, info = run_line(out, s, env, ckpt, art, frames, say, on_frame)
        sd15 = runner.finish(bg).result
    except StepError as e:
        raise DemoError(str(e)) from None
    finally:
        if bg.proc.poll() is None:
            bg.proc.kill()
            bg.proc.wait()
    return store, info, sd15


def _time_sd15(runner, art, say) -> dict:
    """The production teacher (sd15) and the student timed at the comparison size; a missing figure keeps its
    reason and the rest of the report stands."""
    say(f"time the production teacher (sd15) and the student at {an.SD15_SIZE} px (teacher bench, distill eval) …",
        start="sd15")
    try:
        tb = runner.run("bench-sd15", "teacher", ["bench", "--preset", "sd15", "--sizes", an.SD15_SIZE, "--runs", 1,
                                                  "--json"]).result
        sb = runner.run("student-256", "distill", ["eval", art, "--student-only", "--size", an.SD15_SIZE, "--runs", 10,
                                                   "--json"]).result
        speed = an.sd15_speed(tb, sb)
        say(f"sd15 {speed.get('teacher_ms', float('nan')):.0f} ms/image vs student "
            f"{speed.get('student_ms', float('nan')):.2f} ms: {speed.get('speedup', float('nan')):.0f}×", end="sd15")
    except StepError as e:
        speed = {"note": f"not measured: {str(e).splitlines()[0]}"}
        say(f"[yellow]sd15 comparison skipped[/]: {speed['note']}", end="sd15")
    return speed


def _figures(s, j: dict, store, manifest, fr: LineFrames, art: Path, runner) -> tuple[dict, dict]:
    """The report's figures from the verdicts, the local maps and the commands' JSON -> (figures, maps)."""
    cal = manifest.calibration
    ids = [f for f, _ in fr.frames]
    vfig = an.verdict_figures(ids, fr.labels, store, tuple(cal.band), cal.threshold, types=fr.types)
    maps, local_scores, local_note = student_local(art, fr.labelled, fr.masks)
    fe, fres = store.edge(FOREIGN_FRAME_ID), store.resolution(FOREIGN_FRAME_ID)
    foreign = {"frame_id": FOREIGN_FRAME_ID,
               "edge": None if fe is None else {k: getattr(fe, k) for k in ("decision", "ood", "in_band", "pending", "score")},
               "resolution": None if fres is None else {k: getattr(fres, k) for k in ("decided_by", "status", "decision")}}
    fig: dict = {"settings": asdict(s), "verdicts": vfig, "table_notes": [], "foreign": foreign}
    if maps:
        fig.update(_local_metrics(fr, maps, local_scores))
    fig["student_local_note"] = local_note
    fig["table_sources"] = table_sources(j, vfig, fig.get("student_local", {}), manifest)
    fig["table_notes"] += table_notes(j.get("quantize") or {}, runner.results["quantize"].returncode)
    fig["feature_cosine"] = an.feature_cosine(j.get("distill-eval"))
    fig["fidelity_mean_predictor"] = (j.get("distill-eval") or {}).get("fidelity_mean_predictor") or \
        ((manifest.metrics.get("fidelity") or {}).get("val_cosine_mean_predictor") or {})
    fig["calibration"] = cal.model_dump()
    fig["forced"] = {role: manifest.models.get(role, role) for role in manifest.forced}
    fig["teacher_preset"] = PRESET
    return fig, maps


def _local_metrics(fr: LineFrames, maps: dict, local_scores: dict) -> dict:
    """Pixel metrics of the student's own maps on the labelled streamed frames (the daemon publishes none)."""
    from runtime import metrics

    ids = [f for f, _ in fr.labelled]
    y = np.array([fr.labels[f] for f in ids])
    sc = np.array([local_scores[f] for f in ids])
    local: dict = {"n": len(ids)}
    out: dict = {}
    if 0 < y.sum() < y.size:
        mlist, alist = [fr.masks[f] for f in ids], [maps[f] for f in ids]
        local["image_auroc"] = metrics.image_auroc(y, sc)
        local["pixel_auroc"] = metrics.pixel_auroc(mlist, alist)
        local["au_pro"] = metrics.au_pro(mlist, alist)
        pf, pro, _ = metrics.pro_curve(mlist, alist, max_points=2000)
        out["student_pro"] = (pf.tolist(), pro.tolist())
    out["student_local"] = local
    return out


def _write_report(out: Path, s, fig: dict, fr: LineFrames, store, maps: dict, t0: float) -> Path:
    from runtime.tools.demo.report import overlay_panels, write_report

    picks = an.sample_by_outcome(fig["verdicts"].get("confusion", {}), s.overlays_per_kind)
    img_of = {fid: img for fid, img in fr.labelled}
    records = {f: (img_of[f], fr.masks[f]) for f in img_of}
    panels = overlay_panels(records, picks, store, maps)
    fig["localisation"] = an.localisation_summary(records, store, maps)
    fig["wall_s"] = time.perf_counter() - t0
    return write_report(out, fig, panels)
