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

    def snapshot(self) -> dict:
        with self._lock:
            return {"worker_id": self.worker_id, "pid": self.pid, "device": self.device,
                    "model_hash": self.model_hash, "queue_depth": self.queue_depth,
                    "counts": dict(self.counts), "batch_hist": {str(k): v for k, v in self.batch_hist.items()},
                    "batch_ms_mean": round(float(np.mean(self.batch_ms)), 3) if self.batch_ms else None,
                    "latency_ms": [round(x, 3) for x in self.latency_ms], "ts": time.time()}


def merge(snapshots: list[dict], config: dict, workers_meta: list[dict], started: float) -> dict:
    """The status object: totals over workers, batch size histogram, latency percentiles."""
    counts = {k: 0 for k in COUNTERS}
    hist: dict[int, int] = {}
    lat: list[float] = []
    depth = 0
    hashes = set()
    for s in snapshots:
        for k in COUNTERS:
            counts[k] += int(s["counts"].get(k, 0))
        for size, n in s["batch_hist"].items():
            hist[int(size)] = hist.get(int(size), 0) + int(n)
        lat.extend(s["latency_ms"])
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
        "workers": workers,
        "config": config,
    }


def start_metrics_server(port: int, get_status, host: str = "127.0.0.1"):
    """Serve Prometheus metrics built from ``get_status()`` on ``host:port``; returns the HTTP server."""
    from prometheus_client import start_http_server
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
    from prometheus_client.registry import CollectorRegistry

    class _Collector:
        def collect(self):
            st = get_status()
            c = CounterMetricFamily("lineside_teacher_requests", "teacher serve requests by outcome",
                                    labels=["outcome"])
            for k, v in st["counts"].items():
                c.add_metric([k], v)
            yield c
            b = CounterMetricFamily("lineside_teacher_batches", "model batches run, by batch size", labels=["size"])
            for k, v in st["batch_size_histogram"].items():
                b.add_metric([k], v)
            yield b
            yield GaugeMetricFamily("lineside_teacher_queue_depth", "requests waiting for a batch",
                                    value=st["queue_depth"])
            q = GaugeMetricFamily("lineside_teacher_latency_ms", "server-side latency percentiles (ms)",
                                  labels=["quantile"])
            for name, val in st["latency_ms"].items():
                if name.startswith("p") and val is not None:
                    q.add_metric([str(int(name[1:]) / 100)], val)
            yield q
            yield GaugeMetricFamily("lineside_teacher_workers_alive", "model workers alive",
                                    value=sum(1 for w in st["workers"] if w.get("alive")))

    registry = CollectorRegistry()
    registry.register(_Collector())
    server, _thread = start_http_server(port, addr=host, registry=registry)
    return server
