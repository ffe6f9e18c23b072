"""Counters of one worker, their merge across workers (the "status" reply), and Prometheus metrics.

Each worker counts what it did and sends a JSON snapshot to the server's stats socket; the server
merges the latest snapshot of every worker. Latency is server-side: request arrival at the worker
to the reply leaving it (queue wait + batch + encode), in ms.
"""
from __future__ import annotations

import threading
import time
from collections import deque

import numpy as np

COUNTERS = ("received", "served", "cache_hits", "deduplicated", "busy", "expired", "errors", "model_errors")
LATENCY_WINDOW = 2048  # replies kept per worker for the percentiles
# upper bounds (s) of the Prometheus latency histogram: counts since start, unlike the percentiles' window
LATENCY_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
BATCH_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)


def percentiles(samples, qs=(50, 90, 99)) -> dict:
    a = np.asarray(list(samples), dtype=np.float64)
    out = {f"p{q}": (round(float(np.percentile(a, q)), 3) if a.size else None) for q in qs}
    out["n"] = int(a.size)
    return out


class WorkerStats:
    """Thread-safe counters of one worker (its I/O thread and its compute thread both write)."""

    def __init__(self, worker_id: int, model_hash: str = "", device: str = "cpu", pid: int = 0):
        self.worker_id = worker_id
        self.model_hash = model_hash
        self.device = device
        self.pid = pid
        self.counts = {k: 0 for k in COUNTERS}
        self.batch_hist: dict[int, int] = {}
        self.batch_ms: deque[float] = deque(maxlen=256)
        self.latency_ms: deque[float] = deque(maxlen=LATENCY_WINDOW)
        self.latency_buckets = [0] * (len(LATENCY_BUCKETS_S) + 1)  # per bucket (not cumulative), last: +Inf
        self.latency_sum_s = 0.0
        self.queue_depth = 0
        self._lock = threading.Lock()

    def count(self, name: str, n: int = 1) -> None:
        with self._lock:
            self.counts[name] += n

    def batch(self, size: int, ms: float) -> None:
        with self._lock:
            self.batch_hist[size] = self.batch_hist.get(size, 0) + 1
            self.batch_ms.append(ms)

    def latency(self, ms: float) -> None:
        with self._lock:
            self.latency_ms.append(ms)
            self.latency_buckets[int(np.searchsorted(LATENCY_BUCKETS_S, ms / 1e3, side="left"))] += 1
            self.latency_sum_s += ms / 1e3

    def snapshot(self) -> dict:
        with self._lock:
            return {"worker_id": self.worker_id, "pid": self.pid, "device": self.device,
                    "model_hash": self.model_hash, "queue_depth": self.queue_depth,
                    "counts": dict(self.counts), "batch_hist": {str(k): v for k, v in self.batch_hist.items()},
                    "batch_ms_mean": round(float(np.mean(self.batch_ms)), 3) if self.batch_ms else None,
                    "latency_ms": [round(x, 3) for x in self.latency_ms],
                    "latency_buckets": list(self.latency_buckets), "latency_sum_s": round(self.latency_sum_s, 6),
                    "ts": time.time()}


def merge(snapshots: list[dict], config: dict, workers_meta: list[dict], started: float) -> dict:
    """The status object: totals over workers, batch size histogram, latency percentiles."""
    counts = {k: 0 for k in COUNTERS}
    hist: dict[int, int] = {}
    lat: list[float] = []
    lat_buckets = [0] * (len(LATENCY_BUCKETS_S) + 1)
    lat_sum = 0.0
    depth = 0
    hashes = set()
    for s in snapshots:
        for k in COUNTERS:
            counts[k] += int(s["counts"].get(k, 0))
        for size, n in s["batch_hist"].items():
            hist[int(size)] = hist.get(int(size), 0) + int(n)
        lat.extend(s["latency_ms"])
        for i, n in enumerate(s.get("latency_buckets", [])[:len(lat_buckets)]):
            lat_buckets[i] += int(n)
        lat_sum += float(s.get("latency_sum_s", 0.0))
        depth += int(s["queue_depth"])
        if s.get("model_hash"):
            hashes.add(s["model_hash"])
    by_id = {s["worker_id"]: s for s in snapshots}
    workers = []
    for m in workers_meta:
        s = by_id.get(m["id"], {})
        workers.append({**m, "queue_depth": s.get("queue_depth", 0),
                        "served": s.get("counts", {}).get("served", 0),
                        "batches": sum(s.get("batch_hist", {}).values()),
                        "batch_ms_mean": s.get("batch_ms_mean")})
    n_batches = sum(hist.values())
    return {
        "model_hash": next(iter(hashes)) if len(hashes) == 1 else sorted(hashes),
        "uptime_s": round(time.time() - started, 3),
        "queue_depth": depth,
        "counts": counts,
        "batch_size_histogram": {str(k): hist[k] for k in sorted(hist)},
        "mean_batch_size": round(sum(k * v for k, v in hist.items()) / n_batches, 3) if n_batches else None,
        "latency_ms": percentiles(lat),
        "latency_histogram": {"le_s": list(LATENCY_BUCKETS_S), "counts": lat_buckets, "sum_s": round(lat_sum, 6)},
        "workers": workers,
        "config": config,
    }


def _cumulative(counts) -> list[int]:
    return [int(x) for x in np.cumsum(counts)] if len(counts) else []


def start_metrics_server(port: int, get_status, host: str = "127.0.0.1"):
    """Serve Prometheus metrics built from ``get_status()`` on ``host:port`` (/metrics, and /healthz: 200 while
    a model worker is alive); returns the HTTP server. Requests by outcome (``received`` apart: it is the sum
    of the others, and summing the outcomes must not count a request twice), latency and batch size as
    histograms, the process' own metrics and ``lineside_build_info``."""
    from prometheus_client import Info, PlatformCollector, ProcessCollector
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
    from prometheus_client.registry import CollectorRegistry

    from runtime.report import build_info
    from runtime.telemetry import serve_metrics

    class _Collector:
        def collect(self):
            st = get_status()
            c = CounterMetricFamily("lineside_teacher_requests", "teacher serve requests by outcome",
                                    labels=["outcome"])
            for k, v in st["counts"].items():
                if k != "received":
                    c.add_metric([k], v)
            yield c
            yield CounterMetricFamily("lineside_teacher_requests_received", "requests that reached a worker",
                                      value=st["counts"].get("received", 0))
            sizes = {int(k): int(v) for k, v in st["batch_size_histogram"].items()}
            cum = [sum(n for k, n in sizes.items() if k <= b) for b in BATCH_SIZE_BUCKETS] + [sum(sizes.values())]
            yield HistogramMetricFamily(
                "lineside_teacher_batch_size", "images per model batch",
                buckets=[(str(float(b)), cum[i]) for i, b in enumerate(BATCH_SIZE_BUCKETS)] + [("+Inf", cum[-1])],
                sum_value=float(sum(k * n for k, n in sizes.items())))
            lh = st.get("latency_histogram") or {"le_s": list(LATENCY_BUCKETS_S),
                                                 "counts": [0] * (len(LATENCY_BUCKETS_S) + 1), "sum_s": 0.0}
            cum = _cumulative(lh["counts"])
            yield HistogramMetricFamily(
                "lineside_teacher_latency_seconds", "server-side latency: request arrival to reply",
                buckets=[(str(float(b)), cum[i]) for i, b in enumerate(lh["le_s"])] + [("+Inf", cum[-1])],
                sum_value=float(lh["sum_s"]))
            yield GaugeMetricFamily("lineside_teacher_queue_depth", "requests waiting for a batch",
                                    value=st["queue_depth"])
            yield GaugeMetricFamily("lineside_teacher_workers_alive", "model workers alive",
                                    value=sum(1 for w in st["workers"] if w.get("alive")))

    def health():
        st = get_status()
        alive = sum(1 for w in st["workers"] if w.get("alive"))
        return alive > 0, {"workers_alive": alive, "model_hash": st.get("model_hash"), "uptime_s": st.get("uptime_s")}

    registry = CollectorRegistry()
    registry.register(_Collector())
    b = build_info()
    Info("lineside_build", "the lineside release and commit this server runs", registry=registry).info(
        {"version": b["lineside"], "commit": b.get("commit", "unknown")})
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    return serve_metrics(registry, port, host, health)
