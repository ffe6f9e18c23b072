"""Prometheus metrics of one daemon (its own registry, so several daemons can live in one test process),
and structured JSON-lines logging. (runtime/metrics.py is the evaluation metrics module, not this.)

Names follow Prometheus' conventions: latencies are histograms in seconds (``lineside_stage_latency_seconds``),
the process' own RSS, CPU seconds and open fds come from prometheus_client's process collector
(``process_*``), and ``lineside_build_info{version, commit}`` is 1. The HTTP endpoint serves ``/metrics`` and
``/healthz`` (200 while every daemon thread runs, else 503, with the status as JSON)."""
from __future__ import annotations

import json
import logging
import sys
import threading
import time
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable, Optional

from prometheus_client import (CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, Info,
                               PlatformCollector, ProcessCollector, generate_latest)

LATENCY_BUCKETS_S = (0.00025, 0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.05, 0.075,
                     0.1, 0.2, 0.5, 1.0, 2.5, 10.0)
CIRCUIT_STATES = {"closed": 0, "half_open": 1, "open": 2}


class Telemetry:
    def __init__(self):
        r = self.registry = CollectorRegistry()
        self.frames = Counter("lineside_frames", "frames accepted for judging", ["source"], registry=r)
        self.verdicts = Counter("lineside_verdicts", "verdicts journaled and published",
                                ["decision", "decided_by", "status"], registry=r)
        self.drops = Counter("lineside_drops", "frames not judged", ["reason"], registry=r)
        self.errors = Counter("lineside_input_errors", "refused inputs by the field that was wrong", ["field"], registry=r)
        # ZeroMQ's socket monitor reports a connection's end alike whether the client closed it (a `lineside send`
        # that finished) or ZeroMQ dropped the peer for a message part over limits.max_message_bytes: the one
        # counter counts both; what the monitor does tell apart (a handshake refused) is counted by reason.
        self.disconnects = Counter("lineside_ingress_disconnects",
                                   "ingress connections that ended: a client that closed, or a peer ZeroMQ dropped "
                                   "(a message part over limits.max_message_bytes, a refused handshake); ZeroMQ does "
                                   "not say which", registry=r)
        self.handshake_failures = Counter("lineside_ingress_handshake_failures",
                                          "ingress peers ZeroMQ refused before their first message: protocol (not "
                                          "ZMTP, wrong security mechanism or CURVE key), auth (refused by the "
                                          "authenticator), incomplete (closed or reset mid-handshake: a TCP probe)",
                                          ["reason"], registry=r)
        self.duplicates = Counter("lineside_duplicate_frames", "accepted frames whose (camera_id, frame_id) a recent "
                                  "frame already had (judged again; the ack says duplicate)", registry=r)
        self.fallback = Counter("lineside_fallback", "frames sent to the teacher, by outcome", ["outcome"], registry=r)
        self.stage_seconds = Histogram("lineside_stage_latency_seconds", "per-stage latency", ["stage"],
                                       buckets=LATENCY_BUCKETS_S, registry=r)
        self.queue_depth = Gauge("lineside_queue_depth", "frames waiting for the judge", registry=r)
        self.queue_max = Gauge("lineside_queue_max_depth", "largest queue depth seen", registry=r)
        self.circuit = Gauge("lineside_teacher_circuit", "teacher circuit: 0 closed, 1 half-open, 2 open", registry=r)
        self.teacher_pending = Gauge("lineside_teacher_pending", "frames waiting for the teacher", registry=r)
        self.info = Info("lineside_backend", "backend and model in use", registry=r)
        from runtime.report import build_info

        b = build_info()
        self.build = {"version": b["lineside"], "commit": b.get("commit", "unknown")}  # also in `lineside status`
        Info("lineside_build", "the lineside release and commit this daemon runs", registry=r).info(self.build)
        ProcessCollector(registry=r)  # process_resident_memory_bytes, process_cpu_seconds_total, process_open_fds
        PlatformCollector(registry=r)
        self.started = time.time()
        self._http = None

    def serve_http(self, port: int, host: str = "127.0.0.1",
                   health: Optional[Callable[[], tuple[bool, dict]]] = None) -> int:
        """``/metrics`` and ``/healthz`` on ``host:port`` (0: any free port); returns the bound port.
        ``health()``: (healthy, details) for /healthz."""
        self._http = serve_metrics(self.registry, port, host, health)
        return self._http.server_port

    def close(self) -> None:
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
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


def serve_metrics(registry: CollectorRegistry, port: int, host: str = "127.0.0.1",
                  health: Optional[Callable[[], tuple[bool, dict]]] = None) -> ThreadingHTTPServer:
    """A daemon-thread HTTP server: GET /metrics (Prometheus text format), GET /healthz (200 or 503, JSON);
    anything else 404. Shared by the daemon and the teacher server."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 (http.server's name)
            path = self.path.split("?")[0]
            if path == "/metrics":
                code, ctype, body = 200, CONTENT_TYPE_LATEST, generate_latest(registry)
            elif path == "/healthz":
                ok, details = health() if health else (True, {})
                code, ctype = (200 if ok else 503), "application/json"
                body = json.dumps({"healthy": bool(ok), **details}, default=str).encode()
            else:
                code, ctype, body = 404, "text/plain", b"not found: try /metrics or /healthz\n"
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *a):  # scrapes are not log lines
            pass

    server = ThreadingHTTPServer((host, port), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="metrics-http", daemon=True).start()
    return server


def iso_time(ts: float) -> str:
    """ISO-8601 with milliseconds and the zone: 2026-12-03T14:05:09.123+00:00."""
    return datetime.fromtimestamp(ts, timezone.utc).isoformat(timespec="milliseconds")


class JsonFormatter(logging.Formatter):
    """One JSON object a line: ``ts`` ISO-8601 UTC with its zone, level, logger, msg, and the record's fields."""

    def format(self, record: logging.LogRecord) -> str:
        d = {"ts": iso_time(record.created), "level": record.levelname, "logger": record.name,
             "msg": record.getMessage()}
        extra = getattr(record, "fields", None)
        if extra:
            d.update(extra)
        if record.exc_info:
            d["exc"] = self.formatException(record.exc_info)
        return json.dumps(d, default=str)


def setup_logging(level: str = "INFO", loggers: tuple[str, ...] = ("lineside",)) -> None:
    """JSON lines on stderr for the named loggers: the daemon's ``lineside``, the teacher server's
    ``teacher.serve`` (one format for both)."""
    h = logging.StreamHandler(sys.stderr)
    h.setFormatter(JsonFormatter())
    for name in loggers:
        root = logging.getLogger(name)
        root.handlers[:] = [h]
        root.setLevel(level)
        root.propagate = False
