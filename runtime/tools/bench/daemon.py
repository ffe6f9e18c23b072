"""Daemon benchmark: what the daemon adds on top of the raw backend.

    raw       Engine.judge in-process (preprocess + backend + scoring), one frame at a time, BLAS and
              OpenCV held to ``threads`` as the daemon holds them: p50/p99, rate
    latency   send -> verdict over tcp loopback against a `lineside run` subprocess, one frame in flight
    sustained frames kept in flight (up to the queue size, so none is dropped): verdicts per second
    scaled    the sustained run again with one judge worker per core (``--workers``), against the raw
              rate and against the raw engine with the libraries' default threads (``raw_unpinned``)

Targets (issue 6): p50 overhead over raw <= 1.5 ms; sustained rate (one worker) >= 90 % of the raw
rate. The client runs on the same machine and takes its share of the CPU, so on a 2-core box the
wall-clock figures include that contention; the CPU time per frame (raw in-process vs the daemon
process during the sustained run, from /proc on Linux) is the load-independent figure of what the
daemon adds: ``overhead_cpu_ms_per_frame``.

    from runtime.tools.bench.daemon import run_daemon_bench
    run_daemon_bench("ARTIFACT", backend="onnxruntime", n_frames=200) -> dict
"""
from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Optional

import numpy as np

OVERHEAD_P50_TARGET_MS = 1.5
SUSTAINED_RATIO_TARGET = 0.90
READY_TIMEOUT_S = 60.0


def _pct(xs: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(xs), q)) if xs else float("nan")


def _test_image(size: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (size, size, 3), dtype=np.uint8)


def raw_bench(artifact_dir, backend: str, n_frames: int, warmup: int, threads: int, image: np.ndarray,
              pin_threads: bool = True) -> dict:
    """Engine.judge in this process, one frame at a time, under the thread limits the daemon sets for
    the same ``threads`` (backend intra-op, BLAS, OpenCV): the same configuration without the daemon.
    ``pin_threads=False`` leaves BLAS and OpenCV at their defaults (the backend keeps ``threads``)."""
    from runtime.engine import Engine
    from runtime.daemon.threads import MathThreadLimit
    from runtime.timing import time_calls

    with MathThreadLimit(threads) if pin_threads else contextlib.nullcontext():
        eng = Engine(artifact_dir, backend, threads)
        for _ in range(warmup):
            eng.judge(image)
        t0, c0 = time.perf_counter(), time.process_time()
        lat = list(time_calls(lambda: eng.judge(image), n_frames))
        total, cpu = time.perf_counter() - t0, time.process_time() - c0
        name = eng.backend_name
        eng.close()
    return {"backend": name, "p50_ms": _pct(lat, 50), "p99_ms": _pct(lat, 99), "mean_ms": float(np.mean(lat)),
            "rate_hz": n_frames / total, "cpu_ms_per_frame": cpu / n_frames * 1e3}


def _proc_cpu_s(pid: int) -> Optional[float]:
    """user + system CPU seconds of a process (Linux /proc), None elsewhere."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


def start_daemon(artifact_dir, backend: str, threads: int, queue_size: int, journal: Path,
                 extra: Optional[list[str]] = None, workers: int = 1) -> tuple[subprocess.Popen, dict]:
    """`lineside run` on free loopback ports, control on an ipc:// socket file beside the journal; returns the
    process and its ready line."""
    control = f"ipc://{Path(journal).with_suffix('.control.sock')}"
    cmd = [sys.executable, "-m", "runtime", "run", "--artifact", str(artifact_dir), "--backend", backend,
           "--threads", str(threads), "--workers", str(workers), "--ingress", "tcp://127.0.0.1:*", "--verdicts", "tcp://127.0.0.1:*",
           "--control", control, "--journal", str(journal), "--queue-size", str(queue_size),
           "--overload", "reject_newest", "--log-level", "WARNING", *(extra or [])]
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    ready: dict = {}

    def read():
        line = proc.stdout.readline()
        if line:
            ready.update(json.loads(line))

    t = threading.Thread(target=read, daemon=True)
    t.start()
    t.join(READY_TIMEOUT_S)
    if not ready.get("ready"):
        proc.kill()
        err = proc.stderr.read()[-2000:] if proc.stderr else ""
        raise RuntimeError(f"daemon did not start: {err}")
    return proc, ready


def stop_daemon(proc: subprocess.Popen, timeout_s: float = 10.0) -> int:
    proc.terminate()
    try:
        return proc.wait(timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait()


def run_daemon_bench(artifact_dir, backend: str = "auto", n_frames: int = 200, *, warmup: int = 20, threads: int = 1,
                     queue_size: int = 8, encoding: str = "raw", image: Optional[np.ndarray] = None,
                     scale_workers: Optional[int] = None) -> dict:
    """Raw backend vs daemon end to end (tcp loopback, subprocess daemon). Returns figures and targets.

    The targets compare like with like: the daemon with one judge worker against the raw engine one
    frame at a time, both under the same thread limits (``threads``). ``scale_workers`` (default: this
    machine's cores; 1 skips it) adds a sustained run with that many judge workers, what a deployment
    with ``backend.workers`` gets, set against the same raw rate and against the raw engine left to the
    libraries' default threads (``raw_unpinned``: OpenBLAS and OpenCV take every core).
    """
    from runtime.contracts.manifest import load_manifest

    size = load_manifest(artifact_dir, verify=False).preprocess.size
    image = _test_image(size) if image is None else image
    scale_workers = (os.cpu_count() or 1) if scale_workers is None else scale_workers
    raw = raw_bench(artifact_dir, backend, n_frames, warmup, threads, image)
    run = dict(artifact_dir=artifact_dir, backend=backend, threads=threads, queue_size=queue_size, image=image,
               encoding=encoding, warmup=warmup, n_frames=n_frames)
    daemon = _daemon_run(**run, workers=1, latency=True)
    scaled = _daemon_run(**run, workers=scale_workers, latency=False) if scale_workers > 1 else None
    # raw again after the daemon: on a shared machine load drifts; the better of the two runs is the baseline
    # (conservative: it makes the daemon's overhead look larger, never smaller)
    raw2 = raw_bench(artifact_dir, backend, n_frames, warmup, threads, image)
    runs = [raw, raw2]
    raw = {**min(runs, key=lambda r: r["p50_ms"]), "rate_hz": max(r["rate_hz"] for r in runs),
           "cpu_ms_per_frame": min(r["cpu_ms_per_frame"] for r in runs), "runs_p50_ms": [r["p50_ms"] for r in runs]}
    overhead = daemon["e2e_p50_ms"] - raw["p50_ms"]
    ratio = daemon["sustained_rate_hz"] / raw["rate_hz"] if raw["rate_hz"] else float("nan")
    daemon_cpu = daemon["cpu_ms_per_frame"]
    report = {"artifact": str(artifact_dir), "backend": raw["backend"], "n_frames": n_frames, "encoding": encoding,
              "image_hw": list(image.shape[:2]), "threads": threads, "workers": 1,
              "raw": raw, "daemon": daemon,
              "overhead_p50_ms": overhead, "sustained_ratio": ratio,
              "overhead_cpu_ms_per_frame": None if daemon_cpu is None else daemon_cpu - raw["cpu_ms_per_frame"],
              # the throughput fraction a CPU-bound daemon keeps: raw CPU per frame / daemon CPU per frame
              "sustained_ratio_cpu": None if not daemon_cpu else min(1.0, raw["cpu_ms_per_frame"] / daemon_cpu),
              "targets": {"overhead_p50_ms_max": OVERHEAD_P50_TARGET_MS, "sustained_ratio_min": SUSTAINED_RATIO_TARGET,
                          "overhead_met": bool(overhead <= OVERHEAD_P50_TARGET_MS),
                          "sustained_met": bool(ratio >= SUSTAINED_RATIO_TARGET)}}
    if scaled is not None:
        unpinned = raw_bench(artifact_dir, backend, n_frames, warmup, threads, image, pin_threads=False)
        report["raw_unpinned"] = unpinned
        report["daemon_scaled"] = {**scaled, "ratio_vs_raw": scaled["sustained_rate_hz"] / raw["rate_hz"],
                                   "ratio_vs_raw_unpinned": scaled["sustained_rate_hz"] / unpinned["rate_hz"]}
    return report


def _daemon_run(artifact_dir, backend: str, threads: int, queue_size: int, image: np.ndarray, encoding: str,
                warmup: int, n_frames: int, workers: int, latency: bool) -> dict:
    """One `lineside run` subprocess: one-in-flight latency (when asked), then the sustained rate."""
    from runtime.client import LinesideClient

    lat: list[float] = []
    with tempfile.TemporaryDirectory(prefix="lineside-bench-") as tmp:
        proc, ready = start_daemon(artifact_dir, backend, threads, queue_size, Path(tmp) / "journal.sqlite3",
                                   workers=workers)
        try:
            c = LinesideClient(ready["ingress"], ready["verdicts"], control=ready["control"], timeout_s=10.0)
            c.wait_ready()
            if latency:
                lat = _latency(c, image, encoding, warmup, n_frames)
            else:
                _latency(c, image, encoding, warmup, 0)
            cpu0 = _proc_cpu_s(proc.pid)
            rate, lost = _sustained(c, image, encoding, n_frames, queue_size)
            cpu1 = _proc_cpu_s(proc.pid)
            drops = c.status()["drops"]
            c.close()
        finally:
            rc = stop_daemon(proc)
    out = {"workers": workers, "sustained_rate_hz": rate, "lost": lost, "drops": drops, "exit_code": rc,
           "cpu_ms_per_frame": (cpu1 - cpu0) / n_frames * 1e3 if cpu0 is not None and cpu1 is not None else None}
    if latency:
        out.update(e2e_p50_ms=_pct(lat, 50), e2e_p99_ms=_pct(lat, 99))
    return out


def _latency(c, image, encoding: str, warmup: int, n: int) -> list[float]:
    lat = []
    for i in range(warmup + n):
        fid = f"lat-{i}"
        t0 = time.perf_counter()
        c.send(image, frame_id=fid, encoding=encoding, wait=False)
        for v in c.verdicts(10.0):
            if v.frame_id == fid:
                break
        else:
            raise TimeoutError(f"no verdict for {fid}")
        if i >= warmup:
            lat.append((time.perf_counter() - t0) * 1e3)
        c.acks(0.0)
    return lat


def _sustained(c, image, encoding: str, n: int, window: int) -> tuple[float, int]:
    sent = got = 0
    t0 = time.perf_counter()
    while got < n:
        while sent < n and sent - got < window:
            c.send(image, frame_id=f"rate-{sent}", encoding=encoding, wait=False)
            sent += 1
        v = next(c.verdicts(10.0), None)
        if v is None:
            break
        if v.frame_id.startswith("rate-"):
            got += 1
        c.acks(0.0)
    return got / (time.perf_counter() - t0), n - got
