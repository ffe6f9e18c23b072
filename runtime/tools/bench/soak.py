"""`lineside bench soak`: the daemon held at a steady share of its capacity for a long time; does it drift?

    lineside bench soak --artifact ART --duration 3600 --load 0.8 --json

One `lineside run` subprocess on loopback (as runtime/tools/bench/daemon.py starts it). Its capacity is measured
first on the same process (frames kept in flight, none dropped: the sustained rate); then frames are paced
at ``load`` x that rate for ``duration`` seconds. Every ``window`` seconds the daemon's RSS (from /proc),
the send -> verdict latency percentiles of that window and the daemon's judged/dropped counters are
recorded. The figures a plant asks of a process that runs for months:

    rss_slope_mb_per_h     least-squares slope of RSS over the windows after the first (warm-up) one
    p50_drift_ms_per_h     the same for each window's median latency
    lost                   frames sent that never got a verdict (after a final drain); must be 0

No figure is asserted: ``--check`` style targets belong to the caller.
"""
from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Optional

import numpy as np

from runtime.tools.bench.daemon import _latency, _pct, _sustained, _test_image, start_daemon, stop_daemon

DEFAULT_DURATION_S = 3600.0  # the issue's soak: one hour
DEFAULT_LOAD = 0.8  # share of the measured capacity: busy, with headroom, as a line is run
DEFAULT_WINDOW_S = 60.0
CAPACITY_FRAMES = 200  # frames of the capacity run before the soak
DRAIN_S = 10.0  # after the last send, how long verdicts may still arrive


def rss_mb(pid: int) -> Optional[float]:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def slope_per_h(t_s: list[float], y: list[float]) -> Optional[float]:
    """Least-squares slope of y against time, per hour (None below two finite points)."""
    pts = [(t, v) for t, v in zip(t_s, y) if v is not None and np.isfinite(v)]
    if len(pts) < 2:
        return None
    t, v = np.asarray(pts, np.float64).T
    return float(np.polyfit(t / 3600.0, v, 1)[0])


def run_soak(artifact_dir, *, backend: str = "auto", duration_s: float = DEFAULT_DURATION_S,
             load: float = DEFAULT_LOAD, window_s: float = DEFAULT_WINDOW_S, threads: int = 1, queue_size: int = 8,
             encoding: str = "raw", image: Optional[np.ndarray] = None, capacity_frames: int = CAPACITY_FRAMES,
             say=lambda msg: None) -> dict:
    from runtime.client import LinesideClient
    from runtime.contracts.manifest import load_manifest

    if not 0 < load <= 1:
        raise ValueError(f"load must be in (0, 1], got {load}")
    size = load_manifest(artifact_dir, verify=False).preprocess.size
    image = _test_image(size) if image is None else image
    with tempfile.TemporaryDirectory(prefix="lineside-soak-") as tmp:
        proc, ready = start_daemon(artifact_dir, backend, threads, queue_size, Path(tmp) / "journal.sqlite3")
        try:
            c = LinesideClient(ready["ingress"], ready["verdicts"], control=ready["control"], timeout_s=10.0)
            c.wait_ready()
            _latency(c, image, encoding, 20, 0)  # warm-up: first-call allocations are not a leak
            capacity, _ = _sustained(c, image, encoding, capacity_frames, queue_size)
            rate = load * capacity
            say(f"capacity {capacity:.1f} frames/s; soaking at {rate:.1f} frames/s for {duration_s:.0f} s")
            windows, sent_at, lost = _soak(c, proc.pid, image, encoding, rate, duration_s, window_s, say)
            c.close()
        finally:
            rc = stop_daemon(proc)
    steady = windows[1:] if len(windows) > 2 else windows
    t = [w["t_s"] for w in steady]
    return {"artifact": str(artifact_dir), "backend": backend, "image_hw": list(image.shape[:2]), "threads": threads,
            "capacity_hz": capacity, "load": load, "rate_hz": rate, "duration_s": duration_s, "window_s": window_s,
            "sent": sent_at, "lost": lost, "exit_code": rc, "windows": windows,
            "rss_first_mb": windows[0]["rss_mb"] if windows else None,
            "rss_last_mb": windows[-1]["rss_mb"] if windows else None,
            "rss_slope_mb_per_h": slope_per_h(t, [w["rss_mb"] for w in steady]),
            "p50_first_ms": windows[0]["p50_ms"] if windows else None,
            "p50_last_ms": windows[-1]["p50_ms"] if windows else None,
            "p50_drift_ms_per_h": slope_per_h(t, [w["p50_ms"] for w in steady]),
            "p99_drift_ms_per_h": slope_per_h(t, [w["p99_ms"] for w in steady]),
            "drops": windows[-1]["drops_total"] if windows else 0}


def _soak(c, pid: int, image, encoding: str, rate: float, duration_s: float, window_s: float, say
          ) -> tuple[list[dict], int, int]:
    """Paced sends and verdict collection in one thread (zmq sockets are not shared between threads)."""
    period = 1.0 / rate
    pending: dict[str, float] = {}  # frame id -> send time
    windows: list[dict] = []
    lat: list[float] = []
    sent = got = 0
    t0 = time.perf_counter()
    next_send, next_window = t0, t0 + window_s
    end = t0 + duration_s

    def take(v) -> None:
        nonlocal got
        t = pending.pop(v.frame_id, None)
        if t is not None:
            lat.append((time.perf_counter() - t) * 1e3)
            got += 1

    while True:
        now = time.perf_counter()
        if now >= end:
            break
        if now >= next_send:
            fid = f"soak-{sent}"
            c.send(image, frame_id=fid, encoding=encoding, wait=False)
            pending[fid] = now
            sent += 1
            next_send += period
            if next_send < now - 1.0:  # a stall of the sender itself: do not burst to catch up
                next_send = now
        for v in c.verdicts(max(0.0, min(next_send, next_window) - time.perf_counter()), count=1):
            take(v)
        c.acks(0.0)
        if time.perf_counter() >= next_window:
            st = c.status()
            windows.append({"t_s": round(time.perf_counter() - t0, 2), "rss_mb": rss_mb(pid), "sent": sent,
                            "verdicts": got, "p50_ms": _pct(lat, 50), "p99_ms": _pct(lat, 99),
                            "judged_total": st.get("judged"), "drops_total": st.get("drops")})
            say(f"{windows[-1]['t_s']:.0f} s: RSS {windows[-1]['rss_mb']} MB, p50 {windows[-1]['p50_ms']:.2f} ms, "
                f"{sent} sent, {got} verdicts")
            lat = []
            next_window += window_s
    drain_end = time.perf_counter() + DRAIN_S
    while pending and time.perf_counter() < drain_end:
        for v in c.verdicts(0.2, count=1):
            take(v)
        c.acks(0.0)
    return windows, sent, len(pending)


def print_soak(r: dict) -> None:
    def f(v, fmt=".2f"):
        return "—" if v is None else format(v, fmt)

    print(f"soak of {r['artifact']} ({r['backend']}, {r['threads']} thread): {r['duration_s']:.0f} s at "
          f"{r['load']:.0%} of {r['capacity_hz']:.1f} frames/s")
    print(f"  sent {r['sent']}, lost {r['lost']}, dropped {r['drops']}, daemon exit {r['exit_code']}")
    print(f"  RSS {f(r['rss_first_mb'], '.1f')} -> {f(r['rss_last_mb'], '.1f')} MB, slope "
          f"{f(r['rss_slope_mb_per_h'])} MB/h")
    print(f"  latency p50 {f(r['p50_first_ms'])} -> {f(r['p50_last_ms'])} ms, drift {f(r['p50_drift_ms_per_h'])} "
          f"ms/h (p99 {f(r['p99_drift_ms_per_h'])} ms/h)")
