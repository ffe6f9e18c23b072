"""The sections of `lineside bench` (all but the separately asked-for parts): the teacher's feature
extraction, the student per backend, the kernels, the daemon and the fallback server. Each returns a dict
with a ``status``; a section that cannot run here says why."""
from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np

from runtime.timing import time_calls
from runtime.tools.bench.common import error, run_json_command, skipped
from runtime.tools.demo.steps import StepError

PARTS = ("all", "teacher", "student", "kernels", "daemon", "server")
STUDENT_WARMUP = 5
STUDENT_RUNS = 50
FULL_TEACHER_SIZE = 256  # px: the sd15 comparison of the distill issue


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
            out["results"][name] = skipped(str(state))
            continue
        per = {}
        for role in roles:
            # open_backend runs models["int8"] when present: hide the other role to pick one
            keep = {k: v for k, v in m.models.items() if k == role or k not in ("fp32", "int8", "openvino_xml")}
            mm = m.model_copy(update={"models": keep})
            try:
                b = open_backend(art, mm, name=name, threads=threads)
            except BackendError as e:
                per[role] = skipped(str(e))
                continue
            try:
                per[role] = {"status": "ok", "backend": b.name, "model": keep[role],
                             "bytes": (art / keep[role]).stat().st_size, **_time_backend(b, x, runs)}
            except Exception as e:  # a backend that opens but cannot run this model: report, go on
                per[role] = error(e)
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


def bench_student_section(art: Path | None, runs: int, args, env: dict) -> dict:
    if not art:
        return skipped("no artifact")
    out = bench_student(art, runs, args.threads)
    if args.full and out["input"][-1] != FULL_TEACHER_SIZE:
        try:
            out[f"at_{FULL_TEACHER_SIZE}"] = bench_student_at(art, FULL_TEACHER_SIZE, runs, env)
        except (StepError, subprocess.TimeoutExpired) as e:
            out[f"at_{FULL_TEACHER_SIZE}"] = error(e)
    return out


def bench_kernels(quick: bool) -> dict:
    try:
        from kernels import bench as kb
    except ImportError as e:
        return skipped(f"kernels.bench not available ({e})")
    r = kb.run(json=True, quick=quick)
    return {"status": "ok", **r} if isinstance(r, dict) else {"status": "ok", "result": r}


def bench_daemon(art: Path, threads: int, quick: bool) -> dict:
    try:
        from runtime.tools.bench.daemon import run_daemon_bench
    except ImportError as e:
        return skipped(f"runtime.tools.bench.daemon not available ({e})")
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
