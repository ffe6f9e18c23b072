"""The publisher thread: journal, then publish. It owns the PUB socket and the journal's verdict writes.

Each turn drains what the other threads queued (up to ``BATCH_MAX``), writes all of it in one SQLite
transaction (grouped commit), and only then publishes each verdict: "journaled before published" holds
for every verdict while the commit cost is paid once per batch. The JSON header is encoded once and the
same bytes go to the journal and the wire. Multipart on the wire (topics: runtime/contracts/protocol.py):

    [b"verdict.<camera_id>", header JSON (v, kind "verdict", Verdict.to_header() fields), mask PNG?]
    [b"hb", status header]  every heartbeat_interval_s, so a subscriber can tell it is connected
"""
from __future__ import annotations

import json
import logging
import math
import queue
import threading
import time
from dataclasses import asdict

import zmq

from runtime.contracts import protocol
from runtime.curve import check_bind_policy, make_server
from runtime.daemon.journal import Entry, Journal
from runtime.daemon.queues import Outgoing
from runtime.contracts.verdict import Verdict, encode_mask_png

log = logging.getLogger("lineside.publisher")

BATCH_MAX = 256


_HEADER_FIELDS = tuple(f for f in Verdict.__dataclass_fields__ if f not in ("anomaly_map", "mask"))


def to_header_fast(v: Verdict) -> dict:
    """``Verdict.to_header()`` without dataclasses.asdict's deep copy (a third of the publisher's time per
    verdict); tests check that both give the same dict."""
    h = {f: getattr(v, f) for f in _HEADER_FIELDS}  # same key order as to_header: the JSON bytes agree
    h["regions"] = [asdict(r) for r in v.regions]
    h["latencies_ms"] = dict(v.latencies_ms)
    h["score"] = float(v.score) if math.isfinite(v.score) else None
    return h


def verdict_header(out: Outgoing) -> tuple[dict, bytes | None]:
    v = out.verdict
    mask_png = out.mask_png
    if mask_png is None and out.want_mask and v.mask is not None:
        mask_png = encode_mask_png(v.mask)
    h = {"v": protocol.PROTOCOL_VERSION, "kind": "verdict", **to_header_fast(v), "has_mask": mask_png is not None,
         **out.extra}
    return h, mask_png


def _finite(x):
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, dict):
        return {k: _finite(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_finite(v) for v in x]
    return x


def encode_header(h: dict) -> bytes:
    """Strict JSON (no NaN/Infinity on the wire); a non-finite number (a teacher's NaN confidence) becomes
    null rather than taking the publisher down."""
    try:
        return json.dumps(h, separators=(",", ":"), allow_nan=False).encode()
    except ValueError:
        return json.dumps(_finite(h), separators=(",", ":"), allow_nan=False, default=str).encode()
    except TypeError:  # a value JSON does not know (numpy scalar from a plugin): say what it was
        return json.dumps(_finite(h), separators=(",", ":"), allow_nan=False, default=str).encode()


class Publisher(threading.Thread):
    def __init__(self, ctx: zmq.Context, cfg, publish_q: queue.Queue, telemetry, journal_path: str):
        super().__init__(name="lineside-publisher", daemon=True)
        self.cfg, self.q, self.tm = cfg, publish_q, telemetry
        self.journal_path = journal_path
        self.stop_event = threading.Event()
        sec = cfg.security
        s = self.sock = ctx.socket(zmq.PUB)
        s.linger = 0
        s.sndhwm = 100_000
        if sec.verdicts_secret:
            make_server(s, sec.verdicts_secret, domain="verdicts")
        check_bind_policy(cfg.sockets.verdicts, bool(sec.verdicts_secret), sec.insecure, "verdicts")
        s.bind(cfg.sockets.verdicts)
        self.endpoint = s.last_endpoint.decode()
        self.published = 0
        self.seq = 0  # the last verdict's sequence number (set from the journal when the loop starts)
        self.last_error: str | None = None
        self._stage: dict = {}  # stage -> Histogram child (labels() lookups cost per call)

    def run(self) -> None:
        journal = Journal(self.journal_path, self.cfg.journal.synchronous)
        # Every published verdict carries the next sequence number, continued across restarts from the
        # journal, so a subscriber sees a gap and asks the control socket to replay it (zguide's Clone).
        self.seq = journal.last_seq()
        hb_s = self.cfg.heartbeat_interval_s
        next_hb = next_prune = time.monotonic()
        try:
            while True:
                batch = self._take(hb_s)
                if batch:
                    self._emit(journal, batch)
                now = time.monotonic()
                if now >= next_hb:
                    self._heartbeat()
                    next_hb = now + hb_s
                if now >= next_prune:
                    j = self.cfg.journal
                    journal.prune(j.retention_rows, j.retention_age_s)
                    next_prune = now + j.prune_interval_s
                if self.stop_event.is_set() and self.q.empty():
                    return
        except Exception as e:
            self.last_error = repr(e)
            log.exception("publisher loop failed")
            raise
        finally:
            journal.close()
            self.sock.close(linger=0)

    def _take(self, timeout: float) -> list[Outgoing]:
        try:
            batch = [self.q.get(timeout=timeout)]
        except queue.Empty:
            return []
        while len(batch) < BATCH_MAX:
            try:
                batch.append(self.q.get_nowait())
            except queue.Empty:
                break
        return batch

    def _emit(self, journal: Journal, batch: list[Outgoing]) -> None:
        t0 = time.perf_counter()
        wire, entries = [], []
        for out in batch:
            h, mask_png = verdict_header(out)
            self.seq += 1
            h["seq"] = v_seq = self.seq
            body = encode_header(h)
            v = out.verdict
            entries.append(Entry(v.frame_id, v.camera_id, v.decided_by, v.status, v.decision, v.pending,
                                 v.ts_verdict or time.time(), body, out.pending_request, out.pending_payload,
                                 out.pending_deadline, out.resolves_pending, seq=v_seq))
            parts = [protocol.verdict_topic(v.camera_id), body]
            if mask_png is not None:
                parts.append(mask_png)
            wire.append(parts)
        journal.write(entries)  # committed: now it may be published
        t1 = time.perf_counter()
        for parts in wire:
            self.sock.send_multipart(parts, copy=False)
        now = time.perf_counter()
        self._observe("journal", (t1 - t0) * 1e3)
        for out in batch:
            v = out.verdict
            self.tm.verdicts.labels(v.decision, v.decided_by, v.status).inc()
            for stage, ms in v.latencies_ms.items():
                self._observe(stage, ms)
            if out.t_recv is not None and v.decided_by == "edge" and not out.resolves_pending:
                self._observe("end_to_end", (now - out.t_recv) * 1e3)
        self.published += len(batch)

    def _observe(self, stage: str, ms: float) -> None:
        h = self._stage.get(stage)
        if h is None:
            h = self._stage[stage] = self.tm.stage_seconds.labels(stage)
        h.observe(ms / 1e3)

    def _heartbeat(self) -> None:
        h = protocol.encode({"kind": "status", "status": {"alive": True, "published": self.published}})[0]
        self.sock.send_multipart([protocol.HEARTBEAT_TOPIC, h])
