"""`lineside bench`: one run, side by side, on the machine it runs on.

    lineside bench                       # a table for people
    lineside bench --json                # one JSON object (last stdout line) for machines
    lineside bench --full                # adds the sd15 teacher at 256 px (the 300x target needs it)
    lineside bench --artifact ART        # an existing student artifact (else: see below)
    lineside bench kernels --json        # only the kernels part
    lineside bench quality --data M      # detection quality beside reference detectors (runtime/tools/bench/quality.py)
    lineside bench soak --duration 3600  # the daemon at --load of its capacity for an hour: RSS slope, latency drift
                                         # (runtime/tools/bench/soak.py)
    lineside bench edge --json           # the whole edge path per stage, 256 px, 1 thread / all cores, bank x1 / x4,
                                         # beside EfficientAD-S and PatchCore (runtime/tools/bench/edge.py)
    lineside bench scale --report DIR    # time and peak RSS of every chain step at N = 100, 400, 1600 good images
                                         # and once at 256 px, growth exponents, plot (runtime/tools/bench/scale.py)

Sections: ``teacher`` (`teacher bench --preset tiny --json`, and sd15 at 256 px with --full: a
subprocess, torch stays out of this process), ``student`` (FP32 and INT8 on every backend this
machine has, timed here with runtime.backends on the artifact's own model files — exactly what the
daemon runs, torch-free), ``kernels`` (kernels.bench.run), ``daemon`` (runtime.tools.bench.daemon: p50/p99,
maximum sustained rate, overhead over the raw backend), ``server`` (`teacher serve --bench --json`,
a subprocess), and ``targets``: each target named in the issues, the measured value, pass/fail.

Artifact: ``--artifact DIR`` benchmarks that artifact (and ``--checkpoint CKPT`` a real teacher for
the server section). Without it, bench builds a small one with the demo's quick pipeline (teacher
data synth → … → distill export, about two minutes on two cores) into ``--work`` (default
``$XDG_CACHE_HOME/lineside/bench``) and reuses it on later runs (``--rebuild`` to redo it).
A section that cannot run here says why (``status: skipped``) instead of failing the whole bench.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from runtime.tools.bench import scale as bench_scale
from runtime.tools.bench import soak as bench_soak
from runtime.cli.dispatch import positive_float
from runtime.tools.demo.steps import StepError, child_env, command, last_json_line
from runtime.timing import time_calls

PARTS = ("all", "teacher", "student", "kernels", "daemon", "server")
SEPARATE_PARTS = ("quality", "edge", "soak", "scale")  # asked for by name only: quality trains and evaluates;
# soak runs for --duration (an hour by default); edge re-exports the student at 256 px and times the peers in
# torch; scale runs the whole chain at several N
STUDENT_WARMUP = 5
STUDENT_RUNS = 50
SUBPROCESS_TIMEOUT_S = 900
EXIT_TARGET_FAILED = 3  # --check: a measured target failed (1: a section could not run, 2: usage)
FULL_TEACHER_SIZE = 256  # px: the sd15 comparison of the distill issue
TARGETS = {
    # name: (what, comparison, limit, unit)
    "int8_vs_sd15_teacher_256": ("student INT8 vs sd15 teacher feature extraction at 256 px", ">=", 300.0, "x faster"),
    "int8_vs_fp32": ("student INT8 vs FP32, same backend", ">=", 2.0, "x faster"),
    "daemon_overhead_p50_ms": ("daemon overhead over the raw backend, p50", "<=", 1.5, "ms"),
    "daemon_sustained_fraction": ("daemon sustained rate / raw backend rate", ">=", 0.90, ""),
    "knn_vs_matmul": ("knn scoring throughput / matmul throughput", ">=", 0.5, ""),
}


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("part", nargs="?", default="all", choices=PARTS + SEPARATE_PARTS,
                   help="run only this part (default: all but quality)")
    p.add_argument("--json", action="store_true", help="one JSON object as the last stdout line")
    p.add_argument("--full", action="store_true", help="also the sd15 teacher at 256 px (slow without a GPU)")
    p.add_argument("--artifact", help="student artifact directory (default: build a small one, see --work); "
                   "quality: a student of --teacher to judge beside it (with no --teacher, the recipe distils one)")
    p.add_argument("--checkpoint", help="teacher checkpoint for the server section (default: the built one, "
                                        "or a fake model with --artifact)")
    p.add_argument("--work", default=None, help="where the built artifact is cached")
    p.add_argument("--rebuild", action="store_true", help="rebuild the cached artifact")
    p.add_argument("--runs", type=int, default=STUDENT_RUNS, help="timed student runs per model and backend")
    p.add_argument("--threads", type=int, default=1, help="threads per backend / child BLAS threads")
    p.add_argument("--quick", action="store_true", help="small shapes and few runs (seconds; for tests)")
    p.add_argument("--check", action="store_true", help="exit 3 when a measured target fails (CI, a plant's "
                   "acceptance test); a target not measured here does not fail it")
    q = p.add_argument_group("quality")
    q.add_argument("--data", help="quality: dataset manifest.jsonl to judge")
    q.add_argument("--teacher", help="quality: teacher checkpoint with bank/ or head/ (default: train one with "
                                     "the demo's recipe in --work)")
    q.add_argument("--split", default="test", choices=("train", "val", "test"), help="quality: split to judge")
    q.add_argument("--size", type=int, default=128, help="quality: input size of the reference detectors and of "
                                                        "the recipe's teacher (a multiple of 64)")
    q.add_argument("--report", help="quality: write an HTML report to this directory; scale: scale.json and "
                                    "scale.png")
    bench_scale.configure(p)
    s = p.add_argument_group("soak")
    s.add_argument("--duration", type=positive_float, default=bench_soak.DEFAULT_DURATION_S, help="soak: seconds")
    s.add_argument("--load", type=positive_float, default=bench_soak.DEFAULT_LOAD,
                   help="soak: share of the daemon's measured capacity to send (at most 1)")
    s.add_argument("--window", type=positive_float, default=bench_soak.DEFAULT_WINDOW_S,
                   help="soak: seconds per sample of RSS and latency")


def _say(msg: str) -> None:
    print(f"lineside bench: {msg}", file=sys.stderr, flush=True)


def _skipped(reason: str) -> dict:
    return {"status": "skipped", "reason": reason}


def _error(e: BaseException) -> dict:
    return {"status": "error", "error": f"{type(e).__name__}: {e}"}


def run_json_command(tool: str, args: list, env: dict, timeout_s: float = SUBPROCESS_TIMEOUT_S) -> dict:
    """Run a lineside command, return its last-line JSON; raises StepError with stderr's tail."""
    argv = command(tool) + [str(a) for a in args]
    p = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=timeout_s)
    if p.returncode != 0:
        raise StepError(f"`{' '.join(argv)}` exited {p.returncode}: {p.stderr.strip()[-800:]}")
    out = last_json_line(p.stdout)
    if not out:
        raise StepError(f"`{' '.join(argv)}` printed no JSON on its last stdout line")
    return out


# ------------------------------------------------------------------------------------------- artifact

def default_work() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "lineside" / "bench"


def ensure_artifact(args, env: dict) -> tuple[Path, Path | None, dict]:
    """(artifact dir, teacher checkpoint or None, how it was obtained)."""
    if args.artifact:
        return Path(args.artifact), (Path(args.checkpoint) if args.checkpoint else None), {"artifact": "given"}
    work = Path(args.work) if args.work else default_work()
    art, ckpt = work / "artifact", work / "teacher"
    if (art / "manifest.json").is_file() and not args.rebuild:
        return art, ckpt if ckpt.is_dir() else None, {"artifact": f"cached in {work}"}
    from runtime.tools.demo import QUICK
    from runtime.tools.demo import pipeline
    from runtime.tools.demo.steps import StepRunner

    if work.exists():  # a stale or half-built one: the commands refuse to overwrite, so start clean
        import shutil

        shutil.rmtree(work)
    _say(f"no --artifact: building a small one with the demo's quick pipeline in {work} (reused next time)")
    runner = StepRunner(work / "logs", env)
    t0 = time.perf_counter()
    pipeline.build(work, QUICK, runner, lambda msg, start=None, end=None: _say(msg.replace("[bold]", "").replace("[/]", "")
                                                                        .replace("[green]", "")),
          evaluate=False)
    return art, ckpt, {"artifact": f"built in {work}", "build_s": round(time.perf_counter() - t0, 1)}


# ------------------------------------------------------------------------------------------- sections

def bench_teacher(full: bool, env: dict) -> dict:
    """Feature extraction (t=50, all levels) per image: the tiny preset at its size, and with ``full``
    the sd15 preset (random-init weights: latency does not depend on them) at 256 px."""
    out: dict = {"status": "ok"}
    out["tiny"] = run_json_command("teacher", ["bench", "--preset", "tiny", "--json"], env)
    if full:
        out["sd15"] = run_json_command("teacher", ["bench", "--preset", "sd15", "--json", "--sizes", FULL_TEACHER_SIZE],
                                       env)
    return out


def _time_backend(backend, x: np.ndarray, runs: int) -> dict:
    a = time_calls(lambda: backend.run(x), runs, STUDENT_WARMUP)
    return {"p50_ms": float(np.percentile(a, 50)), "p90_ms": float(np.percentile(a, 90)),
            "mean_ms": float(a.mean()), "min_ms": float(a.min()), "runs": runs}


def bench_student(art: Path, runs: int, threads: int) -> dict:
    """FP32 and INT8 of the artifact on each available backend, timed on the model alone (preprocessed
    input of the manifest's size, random pixels: latency does not depend on content)."""
    from runtime.backends import BackendError, available_backends, open_backend
    from runtime.contracts.manifest import load_manifest

    m = load_manifest(art)
    s = m.preprocess.size
    x = np.random.default_rng(0).standard_normal((1, 3, s, s)).astype(np.float32)
    avail = available_backends()
    out: dict = {"status": "ok", "input": [1, 3, s, s], "threads": threads, "available": avail, "results": {}}
    roles = [r for r in ("fp32", "int8") if r in m.models]
    for name, state in avail.items():
        if state != "ok":
            out["results"][name] = _skipped(str(state))
            continue
        per = {}
        for role in roles:
            # open_backend runs models["int8"] when present: hide the other role to pick one
            keep = {k: v for k, v in m.models.items() if k == role or k not in ("fp32", "int8", "openvino_xml")}
            mm = m.model_copy(update={"models": keep})
            try:
                b = open_backend(art, mm, name=name, threads=threads)
            except BackendError as e:
                per[role] = _skipped(str(e))
                continue
            try:
                per[role] = {"status": "ok", "backend": b.name, "model": keep[role],
                             "bytes": (art / keep[role]).stat().st_size, **_time_backend(b, x, runs)}
            except Exception as e:  # a backend that opens but cannot run this model: report, go on
                per[role] = _error(e)
            finally:
                close = getattr(b, "close", None)
                if close:
                    close()
        out["results"][name] = per
    return out


def bench_student_at(art: Path, size: int, runs: int, env: dict) -> dict:
    """The student timed at another input size (`distill eval --student-only --size`, a subprocess:
    it rebuilds timing-only ONNX models from the artifact's torch weights): for the sd15 comparison
    at 256 px when the artifact was made for a smaller image."""
    r = run_json_command("distill", ["eval", art, "--student-only", "--size", size, "--runs", runs, "--json"], env)
    lat = r.get("latency", r)
    return {"status": "ok", "size": size, "backends": lat.get("backends", {}),
            "timing_only_models": lat.get("timing_only_models")}


def _student_section(art: Path | None, runs: int, args, env: dict) -> dict:
    if not art:
        return _skipped("no artifact")
    out = bench_student(art, runs, args.threads)
    if args.full and out["input"][-1] != FULL_TEACHER_SIZE:
        try:
            out[f"at_{FULL_TEACHER_SIZE}"] = bench_student_at(art, FULL_TEACHER_SIZE, runs, env)
        except (StepError, subprocess.TimeoutExpired) as e:
            out[f"at_{FULL_TEACHER_SIZE}"] = _error(e)
    return out


def bench_kernels(quick: bool) -> dict:
    try:
        from kernels import bench as kb
    except ImportError as e:
        return _skipped(f"kernels.bench not available ({e})")
    r = kb.run(json=True, quick=quick)
    return {"status": "ok", **r} if isinstance(r, dict) else {"status": "ok", "result": r}


def bench_daemon(art: Path, threads: int, quick: bool) -> dict:
    try:
        from runtime.tools.bench.daemon import run_daemon_bench
    except ImportError as e:
        return _skipped(f"runtime.tools.bench.daemon not available ({e})")
    r = run_daemon_bench(art, threads=threads, **({"n_frames": 40, "warmup": 5} if quick else {}))
    return {"status": "ok", **r}


def bench_server(ckpt: Path | None, env: dict, quick: bool) -> dict:
    """`teacher serve --bench`: a server in that process, 1/4/16 concurrent clients; the built (or
    --checkpoint) teacher when there is one, else the server's fake model (8 ms + 1 ms/image)."""
    args = ["serve", "--bench", "--json"] + (["--bench-requests", "10", "--bench-clients", "1", "4"] if quick else [])
    if ckpt is not None:
        args += ["--checkpoint", ckpt]
    r = run_json_command("teacher", args, env)
    return {"status": "ok", **r, "checkpoint": str(ckpt) if ckpt else None}


# ------------------------------------------------------------------------------------------- targets

def _num(v) -> float | None:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) and np.isfinite(v) else None


def student_best(student: dict, role: str) -> tuple[float | None, str | None]:
    best, where = None, None
    for name, per in (student.get("results") or {}).items():
        r = per.get(role) if isinstance(per, dict) else None
        if isinstance(r, dict) and r.get("status") == "ok":
            if best is None or r["p50_ms"] < best:
                best, where = r["p50_ms"], r.get("backend", name)
    return best, where


def teacher_ms(teacher: dict, preset: str, size: int | None = None) -> float | None:
    """ms per image of `teacher bench --json` for a preset (at ``size`` px if given):
    ``results[i].latency_s_per_image`` (best of its runs)."""
    t = teacher.get(preset)
    if not isinstance(t, dict):
        return None
    for r in t.get("results") or []:
        if size is None or r.get("size") == size:
            v = _num(r.get("latency_s_per_image"))
            return None if v is None else v * 1e3
    return None


def targets(report: dict) -> list[dict]:
    """Each target, its measured value and pass/fail (None: not measured in this run, with why)."""
    rows = []

    def add(key, value, why="", **extra):
        what, cmp, limit, unit = TARGETS[key]
        ok = None if value is None else (value >= limit if cmp == ">=" else value <= limit)
        rows.append({"target": key, "what": what, "limit": f"{cmp} {limit:g} {unit}".strip(),
                     "measured": value, "pass": ok, **({"why": why} if value is None else {}),
                     **{k: v for k, v in extra.items() if v is not None}})

    st = report.get("student") or {}
    i8, _ = student_best(st, "int8")
    at = st.get(f"at_{FULL_TEACHER_SIZE}") or {}
    i8_at = [_num(r.get("median_ms")) for k, r in (at.get("backends") or {}).items()
             if str(k).endswith("-int8") and isinstance(r, dict) and _num(r.get("median_ms"))]
    if i8_at or (st.get("input") or [0])[-1] == FULL_TEACHER_SIZE:
        i8 = min(i8_at) if i8_at else i8  # the student at 256 px too
    else:
        i8 = None
    sd15 = teacher_ms(report.get("teacher") or {}, "sd15", FULL_TEACHER_SIZE)
    why = ("needs --full (sd15 teacher at 256 px)" if not sd15 else
           f"no INT8 student timing at {FULL_TEACHER_SIZE} px" + (f" ({at.get('error')})" if at.get("error") else ""))
    if "teacher" not in report:
        why = "teacher section not run"
    add("int8_vs_sd15_teacher_256", sd15 / i8 if (sd15 and i8) else None, why)
    # same backend for the INT8/FP32 ratio
    ratio = None
    for name, per in (st.get("results") or {}).items():
        a, b = (per or {}).get("int8", {}), (per or {}).get("fp32", {})
        if a.get("status") == "ok" and b.get("status") == "ok":
            r = b["p50_ms"] / a["p50_ms"]
            ratio = r if ratio is None else max(ratio, r)
    add("int8_vs_fp32", ratio, "needs both FP32 and INT8 timings on one backend" if "student" in report
        else "student section not run")
    d = report.get("daemon") or {"reason": "daemon section not run"}
    # runtime.tools.bench.daemon.run_daemon_bench: overhead_p50_ms, sustained_ratio
    # wall-clock figures decide; the CPU-time ones (load-independent, from /proc) ride along for a busy machine
    add("daemon_overhead_p50_ms", _num(d.get("overhead_p50_ms")),
        d.get("reason") or d.get("error") or "daemon bench reported no overhead_p50_ms",
        measured_cpu=_num(d.get("overhead_cpu_ms_per_frame")))
    add("daemon_sustained_fraction", _num(d.get("sustained_ratio")),
        d.get("reason") or d.get("error") or "daemon bench reported no sustained_ratio",
        measured_cpu=_num(d.get("sustained_ratio_cpu")),
        # one judge worker per core (backend.workers): what the daemon sustains when the line needs more
        measured_scaled=_num((d.get("daemon_scaled") or {}).get("ratio_vs_raw")))
    k = report.get("kernels") or {"reason": "kernels section not run"}
    add("knn_vs_matmul", _num(k.get("knn_vs_matmul")),
        k.get("reason") or k.get("error") or "kernels bench reported no knn_vs_matmul")
    return rows


# ------------------------------------------------------------------------------------------- main

def run(args: argparse.Namespace) -> int:
    env = child_env(args.threads)
    if args.part == "quality":
        from runtime.tools.bench import quality as bench_quality

        return bench_quality.run(args, child_env(None), _say)
    if args.part == "edge":
        return _edge(args, env)
    if args.part == "soak":
        return _soak(args, env)
    if args.part == "scale":
        return _scale(args, env)
    report: dict = {"machine": {"node": platform.node(), "cpus": os.cpu_count(), "arch": platform.machine(),
                                "python": platform.python_version()}, "part": args.part}
    t0 = time.perf_counter()
    want = set(PARTS[1:]) if args.part == "all" else {args.part}
    runs = min(args.runs, 10) if args.quick else args.runs
    art = ckpt = None
    if want & {"student", "daemon", "server"}:
        try:
            art, ckpt, how = ensure_artifact(args, env)
            report["artifact"] = {"path": str(art), **how}
        except (StepError, OSError) as e:
            report["artifact"] = _error(e)
    sections = {
        "teacher": lambda: bench_teacher(args.full, env),
        "student": lambda: _student_section(art, runs, args, env),
        "kernels": lambda: bench_kernels(args.quick),
        "daemon": lambda: bench_daemon(art, args.threads, args.quick) if art else _skipped("no artifact"),
        "server": lambda: bench_server(ckpt, env, args.quick),
    }
    for name in PARTS[1:]:
        if name not in want:
            continue
        _say(f"{name} …")
        t = time.perf_counter()
        try:
            report[name] = sections[name]()
        except Exception as e:  # one section failing must not hide the others' figures
            report[name] = _error(e)
        report[name]["wall_s"] = round(time.perf_counter() - t, 2)
    report["targets"] = targets(report)
    report["wall_s"] = round(time.perf_counter() - t0, 2)
    if args.json:
        print(json.dumps(report, separators=(",", ":"), default=str))
    else:
        print_table(report)
    failed = [n for n in want if (report.get(n) or {}).get("status") == "error"]
    missed = [t["target"] for t in report["targets"] if t["pass"] is False]
    if args.check and missed:
        _say(f"--check: target(s) failed: {', '.join(missed)}")
        return EXIT_TARGET_FAILED
    return 1 if failed else 0


def _edge(args: argparse.Namespace, env: dict) -> int:
    from runtime.tools.bench import edge as bench_edge

    try:
        art, _, how = ensure_artifact(args, env)
    except (StepError, OSError) as e:
        print(json.dumps({"part": "edge", **_error(e)}) if args.json else f"lineside bench edge: {e}")
        return 1
    _say(f"edge path of {art} …")
    t0 = time.perf_counter()
    report = {"part": "edge", "machine": {"node": platform.node(), "cpus": os.cpu_count(), "arch": platform.machine(),
                                          "python": platform.python_version()},
              "artifact_source": how, **bench_edge.run_edge_bench(art, env=env, quick=args.quick, runs=args.runs)}
    report["wall_s"] = round(time.perf_counter() - t0, 2)
    _emit(report, args.json, bench_edge.print_edge_table)
    return 0


def _emit(report: dict, as_json: bool, print_table) -> None:
    """A separate part's report: one JSON line for machines, or its table for people."""
    if as_json:
        print(json.dumps(report, separators=(",", ":"), default=str))
    else:
        print_table(report)


def _scale(args: argparse.Namespace, env: dict) -> int:
    try:
        report = bench_scale.run_scale(args, env, _say)
    except (StepError, ValueError, OSError) as e:
        print(json.dumps({"part": "scale", **_error(e)}) if args.json else f"lineside bench scale: {e}")
        return 1
    _emit(report, args.json, bench_scale.print_table)
    return 0


def _soak(args: argparse.Namespace, env: dict) -> int:
    try:
        art, _, how = ensure_artifact(args, env)
        report = {"part": "soak", "machine": {"node": platform.node(), "cpus": os.cpu_count()},
                  "artifact_source": how, **bench_soak.run_soak(art, duration_s=args.duration, load=args.load,
                                                                window_s=args.window, threads=args.threads, say=_say)}
    except (StepError, OSError, RuntimeError, ValueError) as e:
        print(json.dumps({"part": "soak", **_error(e)}) if args.json else f"lineside bench soak: {e}")
        return 1
    _emit(report, args.json, bench_soak.print_soak)
    return 0 if report["lost"] == 0 and report["exit_code"] == 0 else 1


def _f(v, fmt: str = ".2f") -> str:
    return "—" if _num(v) is None else format(v, fmt)


def _section_summary(name: str, r: dict) -> str:
    """One line of the figures people look for in a section."""
    if r.get("status") != "ok":
        return str(r.get("reason") or r.get("error") or "")[:120]
    if name == "teacher":
        return " · ".join(f"{p} {x['size']} px: {x['latency_s_per_image'] * 1e3:.1f} ms/image ({r[p].get('device')})"
                          for p in ("tiny", "sd15") if p in r for x in r[p].get("results", []))
    if name == "student":
        at = r.get(f"at_{FULL_TEACHER_SIZE}")
        return f"input {r['input'][-1]} px, {r['threads']} thread(s)" + (
            f"; at {FULL_TEACHER_SIZE} px: " + ", ".join(f"{k} {_f(v.get('median_ms'))} ms" for k, v in
                                                         (at.get("backends") or {}).items() if "median_ms" in v)
            if at else "")
    if name == "kernels":
        return (f"knn/matmul {_f(r.get('knn_vs_matmul'), '.3f')}, matmul {_f((r.get('cpu') or {}).get('matmul', {}).get('gflops'), '.1f')}"
                f" GFLOP/s; impl {r.get('implementations')}")
    if name == "daemon":
        raw, d = r.get("raw") or {}, r.get("daemon") or {}
        return (f"{r.get('backend')}: raw p50 {_f(raw.get('p50_ms'))} ms; daemon e2e p50 {_f(d.get('e2e_p50_ms'))} / "
                f"p99 {_f(d.get('e2e_p99_ms'))} ms, sustained {_f(d.get('sustained_rate_hz'), '.0f')} Hz "
                f"({_f(r.get('sustained_ratio'))} of raw), overhead p50 {_f(r.get('overhead_p50_ms'))} ms"
                + _scaled_summary(r))
    if name == "server":
        return f"{r.get('model')}: " + " · ".join(
            f"{x['clients']} client(s) {x['throughput_rps']:.0f} req/s p50 {x['latency_ms']['p50']:.0f} ms"
            for x in r.get("results", []))
    return ""


def _scaled_summary(r: dict) -> str:
    sc, un = r.get("daemon_scaled"), r.get("raw_unpinned") or {}
    if not sc:
        return ""
    return (f"; {sc['workers']} workers {_f(sc.get('sustained_rate_hz'), '.0f')} Hz ({_f(sc.get('ratio_vs_raw'))} of raw, "
            f"{_f(sc.get('ratio_vs_raw_unpinned'))} of raw with default BLAS/OpenCV threads "
            f"{_f(un.get('rate_hz'), '.0f')} Hz)")


def print_table(report: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    c = Console()
    m = report["machine"]
    c.print(f"[bold]lineside bench[/] on {m['node']} ({m['cpus']} CPUs, {m['arch']}), {report['wall_s']:.0f} s")
    st = report.get("student")
    if st and st.get("status") == "ok":
        t = Table(title=f"student, input {st['input']}")
        for col in ("backend", "model", "p50 ms", "p90 ms", "size MB"):
            t.add_column(col)
        for name, per in st["results"].items():
            if per.get("status") == "skipped":
                t.add_row(name, "—", "skipped", per["reason"][:60], "")
                continue
            for role, r in per.items():
                if r.get("status") == "ok":
                    t.add_row(r["backend"], role, f"{r['p50_ms']:.2f}", f"{r['p90_ms']:.2f}", f"{r['bytes'] / 1e6:.2f}")
                else:
                    t.add_row(name, role, r.get("status", "?"), (r.get("reason") or r.get("error") or "")[:60], "")
        c.print(t)
    t = Table(title="sections")
    t.add_column("section")
    t.add_column("status")
    t.add_column("wall s")
    t.add_column("figures")
    for name in PARTS[1:]:
        r = report.get(name)
        if not r:
            continue
        t.add_row(name, r.get("status", "?"), f"{r.get('wall_s', 0):.1f}", _section_summary(name, r))
    c.print(t)
    t = Table(title="targets")
    for col in ("target", "limit", "measured", "pass"):
        t.add_column(col)
    for r in report["targets"]:
        v = r["measured"]
        t.add_row(r["what"], r["limit"], "—" if v is None else f"{v:.3g}",
                  {True: "[green]pass[/]", False: "[red]FAIL[/]", None: f"[dim]n/a: {r.get('why', '')}[/]"}[r["pass"]])
    c.print(t)
