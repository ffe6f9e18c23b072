"""Prometheus metrics of one daemon (its own registry, so several daemons can live in one test process),
and structured JSON-lines logging. (runtime/metrics.py is the evaluation metrics module, not this.)"""
from __future__ import annotations

import json
import logging
import sys
import time

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info

LATENCY_BUCKETS_MS = (0.25, 0.5, 1, 2, 3, 5, 7.5, 10, 15, 20, 30, 50, 75, 100, 200, 500, 1000, 2500, 10000)
CIRCUIT_STATES = {"closed": 0, "half_open": 1, "open": 2}


class Telemetry:
    def __init__(self):
        r = self.registry = CollectorRegistry()
        self.frames = Counter("lineside_frames", "frames accepted for judging", ["source"], registry=r)
        self.verdicts = Counter("lineside_verdicts", "verdicts journaled and published",
                                ["decision", "decided_by", "status"], registry=r)
        self.drops = Counter("lineside_drops", "frames not judged", ["reason"], registry=r)
        self.errors = Counter("lineside_input_errors", "refused inputs by the field that was wrong", ["field"], registry=r)
        self.disconnects = Counter("lineside_ingress_disconnects",
                                   "ingress peers disconnected by ZeroMQ (oversize message, protocol error, gone)",
                                   registry=r)
        self.duplicates = Counter("lineside_duplicate_frames", "accepted frames whose (camera_id, frame_id) a recent "
                                  "frame already had (judged again; the ack says duplicate)", registry=r)
        self.fallback = Counter("lineside_fallback", "frames sent to the teacher, by outcome", ["outcome"], registry=r)
        self.stage_ms = Histogram("lineside_stage_latency_ms", "per-stage latency", ["stage"],
                                  buckets=LATENCY_BUCKETS_MS, registry=r)
        self.queue_depth = Gauge("lineside_queue_depth", "frames waiting for the judge", registry=r)
        self.queue_max = Gauge("lineside_queue_max_depth", "largest queue depth seen", registry=r)
        self.circuit = Gauge("lineside_teacher_circuit", "teacher circuit: 0 closed, 1 half-open, 2 open", registry=r)
        self.teacher_pending = Gauge("lineside_teacher_pending", "frames waiting for the teacher", registry=r)
        self.info = Info("lineside_backend", "backend and model in use", registry=r)
        self.started = time.time()
        self._http = None

    def serve_http(self, port: int, host: str = "127.0.0.1") -> int:
        from prometheus_client import start_http_server

        server, _ = start_http_server(port, addr=host, registry=self.registry)
        self._http = server
        return server.server_port

    def close(self) -> None:
        if self._http is not None:
            self._http.shutdown()
            self._http = None

    def snapshot(self) -> dict:
        """Every sample as {"name{label=value,...}": value}; histograms as _count and _sum."""
        out: dict = {}
        for fam in self.registry.collect():
            for s in fam.samples:
                if s.name.endswith("_bucket") or s.name.endswith("_created"):
                    continue
                labels = ",".join(f"{k}={v}" for k, v in sorted(s.labels.items()))
                out[f"{s.name}{{{labels}}}" if labels else s.name] = s.value
        return out

    def value(self, name: str, **labels) -> float:
        v = self.registry.get_sample_value(name, labels or None)
        return 0.0 if v is None else v


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        d = {"ts": round(record.created, 3), "level": record.levelname, "logger": record.name,
             "msg": record.getMessage()}
        extra = getattr(record, "fields", None)
        if extra:
            d.update(extra)
        if record.exc_info:
            d["exc"] = self.formatException(record.exc_info)
        return json.dumps(d, default=str)


def setup_logging(level: str = "INFO") -> None:
    """JSON lines on stderr for the ``lineside`` loggers."""
    h = logging.StreamHandler(sys.stderr)
    h.setFormatter(JsonFormatter())
    root = logging.getLogger("lineside")
    root.handlers[:] = [h]
    root.setLevel(level)
    root.propagate = False
