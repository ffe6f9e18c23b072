"""The cascade thread: frames the edge is unsure of go to the teacher server; its answer supersedes.

Lazy Pirate (zguide ch. 4) over one DEALER with several requests in flight, matched by frame id:
  * every request has a try deadline (``request_timeout_ms``); silence past it means the server or the
    link is gone: set LINGER 0, close the socket, open a new one, resend what was in flight;
  * a frame is sent at most ``retries + 1`` times; then it is parked until the teacher answers again
    (a bounded backlog, replayed on recovery) or until its own deadline;
  * a circuit breaker opens after ``breaker_failures`` consecutive failures (no sends while open, and a
    WARNING: edge-only), half-opens after ``breaker_reset_s`` with one probe, closes on an answer;
  * every pending frame resolves: the teacher's verdict (``supersedes="edge"``), its error, or
    ``teacher_unreachable`` once ``deadline_ms`` has passed.
Results go through the publisher (journal, then PUB). The judge never waits on this thread.

Several teacher addresses ([teacher] address as a list): the DEALER connects to every one with
ZMQ_IMMEDIATE, so requests are spread round-robin over the servers whose connection is up and a server
that is down gets none; what a server held when it died is resent after the try deadline, like any
silence. One `teacher serve broker` endpoint does better (heartbeats, re-queueing on its side); the
edge talks to it exactly as to a server.
"""
from __future__ import annotations

import json
import logging
import queue
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Optional

import zmq

from runtime.contracts import protocol
from runtime.curve import make_client
from runtime.contracts.protocol import ProtocolError
from runtime.daemon.queues import Outgoing
from runtime.telemetry import CIRCUIT_STATES
from runtime.contracts.verdict import Verdict

log = logging.getLogger("lineside.cascade")

POLL_MS = 10
BUSY_BACKOFF_S = 0.05


@dataclass
class Pending:
    frame_id: str
    camera_id: str
    request: bytes  # infer header JSON
    payload: Optional[bytes]
    deadline_ts: float  # epoch s
    edge: dict  # the edge verdict's header
    attempts: int = 0
    sent_at: float = 0.0  # monotonic
    not_before: float = 0.0  # monotonic (busy backoff)
    t_submit: float = field(default_factory=time.monotonic)

    @property
    def key(self) -> tuple[str, str]:
        return self.camera_id, self.frame_id


class Cascade(threading.Thread):
    def __init__(self, ctx: zmq.Context, tcfg, publish_q: queue.Queue, telemetry):
        super().__init__(name="lineside-cascade", daemon=True)
        self.ctx, self.cfg, self.publish_q, self.tm = ctx, tcfg, publish_q, telemetry
        self.stop_event = threading.Event()
        self.inbox: queue.Queue = queue.Queue()
        self._lock = threading.Lock()
        self._count = 0  # frames reserved and not yet resolved (<= backlog)
        self.waiting: deque[Pending] = deque()
        self.parked: deque[Pending] = deque()
        self.inflight: dict[tuple[str, str], Pending] = {}
        self.state, self.failures, self.opened_at, self.last_failure = "closed", 0, 0.0, 0.0
        self.probe: Optional[tuple[str, str]] = None
        self.sock: Optional[zmq.Socket] = None
        self.blocked_since = 0.0
        self.reopens = 0
        self.tm.circuit.set(0)
        self._open()  # here, not in run(): bad keys or a bad address fail the daemon's start

    @property
    def pending_count(self) -> int:
        return self._count

    # -- called from other threads ----------------------------------------------------------------
    def reserve(self, force: bool = False) -> bool:
        with self._lock:
            if self._count >= self.cfg.backlog and not force:
                return False
            self._count += 1
            self.tm.teacher_pending.set(self._count)
            return True

    def submit(self, frame_id: str, camera_id: str, request: bytes, payload: Optional[bytes], deadline_ts: float,
               edge: Verdict | dict) -> None:
        edge_h = edge.to_header() if isinstance(edge, Verdict) else edge
        self.inbox.put(Pending(frame_id, camera_id, request, payload, deadline_ts, edge_h))

    def status(self) -> dict:
        return {"circuit": self.state, "pending": self._count, "inflight": len(self.inflight),
                "waiting": len(self.waiting), "parked": len(self.parked), "reopens": self.reopens,
                "address": self.cfg.address}

    @property
    def where(self) -> str:
        return ",".join(self.cfg.addresses)

    # -- the loop ---------------------------------------------------------------------------------
    def run(self) -> None:
        try:
            while not self.stop_event.is_set():
                now = time.monotonic()
                self._take_inbox()
                self._expire(time.time())
                self._check_silence(now)
                self._advance_breaker(now)
                self._send(now)
                if self.sock.poll(POLL_MS, zmq.POLLIN):
                    self._receive()
        except Exception:
            log.exception("cascade loop failed")
            raise
        finally:
            # frames still pending stay in the journal's pending table: the next start resumes or expires them
            self.sock.close(linger=0)

    def _open(self) -> None:
        if self.sock is not None:
            self.sock.close(linger=0)  # Lazy Pirate: drop what the dead connection queued
            self.reopens += 1
        s = self.ctx.socket(zmq.DEALER)
        s.linger = 0
        s.sndhwm = s.rcvhwm = 10_000
        addresses = self.cfg.addresses
        if len(addresses) > 1:
            s.immediate = True  # queue only on connections that are up: a dead server gets no requests
        if self.cfg.secret_file:
            make_client(s, self.cfg.secret_file, self.cfg.server_public_file)
        for a in addresses:
            s.connect(a)
        self.sock = s

    def _take_inbox(self) -> None:
        while True:
            try:
                self.waiting.append(self.inbox.get_nowait())
            except queue.Empty:
                return

    def _expire(self, now_epoch: float) -> None:
        for coll in (self.waiting, self.parked):
            keep = [p for p in coll if p.deadline_ts > now_epoch]
            for p in coll:
                if p.deadline_ts <= now_epoch:
                    self._unreachable(p, "no answer")
            coll.clear()
            coll.extend(keep)
        for key, p in list(self.inflight.items()):
            if p.deadline_ts <= now_epoch:
                del self.inflight[key]
                if key == self.probe:
                    self.probe = None
                self._unreachable(p, "no answer")

    def _check_silence(self, now: float) -> None:
        timeout = self.cfg.request_timeout_ms / 1e3
        if not any(now - p.sent_at > timeout for p in self.inflight.values()):
            return
        log.warning("teacher silent for %.0f ms: reopening the connection (Lazy Pirate)", timeout * 1e3,
                    extra={"fields": {"inflight": len(self.inflight), "address": self.where}})
        self._failure(now)
        self._open()
        resend = sorted(self.inflight.values(), key=lambda p: p.t_submit)
        self.inflight.clear()
        self.probe = None
        for p in reversed(resend):
            if p.attempts > self.cfg.retries:
                self.parked.append(p)
                self.tm.fallback.labels("parked").inc()
            else:
                self.waiting.appendleft(p)

    def _failure(self, now: float) -> None:
        self.failures += 1
        self.last_failure = now
        if self.state == "half_open" or (self.state == "closed" and self.failures >= self.cfg.breaker_failures):
            if self.state == "closed":
                log.warning("teacher circuit OPEN after %d failures: edge-only; pending frames resolve as "
                            "teacher_unreachable at their deadline", self.failures)
            self._set_state("open")
            self.opened_at = now

    def _success(self) -> None:
        if self.state != "closed":
            log.warning("teacher answered again: circuit closed, replaying up to %d parked frames",
                        self.cfg.replay_on_recovery)
        for _ in range(min(self.cfg.replay_on_recovery, len(self.parked))):  # the teacher answers: resend them
            p = self.parked.popleft()
            p.attempts = 0
            self.waiting.append(p)
        self.failures = 0
        self._set_state("closed")

    def _set_state(self, state: str) -> None:
        self.state = state
        self.tm.circuit.set(CIRCUIT_STATES[state])

    def _advance_breaker(self, now: float) -> None:
        if self.state == "open" and now - self.opened_at >= self.cfg.breaker_reset_s:
            self._set_state("half_open")
            self.probe = None
        elif (self.state == "closed" and self.parked and not self.inflight and not self.waiting
              and now - self.last_failure >= self.cfg.breaker_reset_s):
            self._set_state("half_open")  # parked frames but nothing left to send: probe with one of them
            self.probe = None

    def _send(self, now: float) -> None:
        if self.state == "open":
            return
        if self.state == "half_open":
            if self.probe is not None:
                return
            if not self.waiting and self.parked:
                self.waiting.append(self.parked.popleft())
            limit = 1
        else:
            limit = self.cfg.max_inflight
        sent = 0
        skipped: list[Pending] = []
        while self.waiting and len(self.inflight) < limit and sent < limit:
            p = self.waiting.popleft()
            if p.not_before > now:
                skipped.append(p)
                continue
            parts = [b"", p.request] + ([p.payload] if p.payload is not None else [])
            try:
                self.sock.send_multipart(parts, zmq.NOBLOCK, copy=False)
            except zmq.Again:  # no usable connection (server down before we ever connected, CURVE refused)
                skipped.append(p)
                self.blocked_since = self.blocked_since or now
                if now - self.blocked_since > self.cfg.request_timeout_ms / 1e3:
                    log.warning("teacher not connected for %.0f ms: reopening", self.cfg.request_timeout_ms)
                    self._failure(now)
                    self._open()
                    self.blocked_since = 0.0
                break
            self.blocked_since = 0.0
            p.attempts += 1
            p.sent_at = now
            self.inflight[p.key] = p
            if self.state == "half_open":
                self.probe = p.key
            self.tm.fallback.labels("sent" if p.attempts == 1 else "resent").inc()
            sent += 1
        self.waiting.extendleft(reversed(skipped))

    def _receive(self) -> None:
        while True:
            try:
                msg = self.sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            while msg and msg[0] == b"":
                msg = msg[1:]
            try:
                h = protocol.decode_header(msg, expect=("verdict", "busy", "error"))
            except ProtocolError as e:
                log.warning("teacher reply refused: %s", e)
                self.tm.fallback.labels("bad_reply").inc()
                continue
            p = self._match(h)
            if p is None:
                self.tm.fallback.labels("late").inc()
                continue
            if self.probe == p.key:
                self.probe = None
            self._success()
            kind = h["kind"]
            if kind == "busy":
                p.not_before = time.monotonic() + BUSY_BACKOFF_S * p.attempts
                (self.parked if p.attempts > self.cfg.retries else self.waiting).append(p)
                self.tm.fallback.labels("busy").inc()
            elif kind == "error":
                self._resolve(p, self._final(p, status="error", decided_by="teacher",
                                             error=f"teacher: {h.get('field')}: {h.get('message')}"), "teacher_error")
            else:
                self._answer(p, h, msg[1] if len(msg) > 1 else None)

    def _match(self, h: dict) -> Optional[Pending]:
        fid, cam = str(h.get("frame_id", "")), h.get("camera_id")
        if cam is not None:
            return self.inflight.pop((cam, fid), None)
        for key in self.inflight:
            if key[1] == fid:
                return self.inflight.pop(key)
        return None

    def _answer(self, p: Pending, h: dict, mask_png: Optional[bytes]) -> None:
        try:
            t = Verdict.from_header({k: v for k, v in h.items() if k not in ("v", "kind")})
        except (TypeError, ValueError, KeyError) as e:
            self._resolve(p, self._final(p, status="error", decided_by="teacher",
                                         error=f"teacher verdict malformed: {e}"), "bad_reply")
            return
        t.frame_id, t.camera_id = p.frame_id, p.camera_id
        t.decided_by, t.pending, t.supersedes = "teacher", False, "edge"
        t.ts_frame, t.ts_verdict = p.edge.get("ts_frame", 0.0), time.time()
        t.latencies_ms = {**{k: float(v) for k, v in t.latencies_ms.items()},
                          "teacher_rtt": (time.monotonic() - p.sent_at) * 1e3,
                          "teacher_total": (time.monotonic() - p.t_submit) * 1e3}
        want = bool(json.loads(p.request).get("want_mask", False))
        self._resolve(p, t, "answered", mask_png=mask_png if want else None)

    def _final(self, p: Pending, **kw) -> Verdict:
        v = Verdict.from_header({k: x for k, x in p.edge.items() if k not in ("v", "kind", "has_mask")})
        v.pending, v.supersedes, v.ts_verdict = False, "edge", time.time()
        for k, x in kw.items():
            setattr(v, k, x)
        return v

    def _unreachable(self, p: Pending, why: str) -> None:
        v = self._final(p, status="teacher_unreachable",
                        error=f"teacher {self.where}: {why} within {self.cfg.deadline_ms} ms "
                              f"(circuit {self.state}); the edge verdict stands")
        self._resolve(p, v, "unreachable")

    def _resolve(self, p: Pending, v: Verdict, outcome: str, mask_png: Optional[bytes] = None) -> None:
        self.publish_q.put(Outgoing(v, mask_png=mask_png, resolves_pending=True))
        self.tm.fallback.labels(outcome).inc()
        with self._lock:
            self._count = max(0, self._count - 1)
            self.tm.teacher_pending.set(self._count)


def resolve_without_teacher(row, publish_q: queue.Queue, why: str) -> None:
    """A pending frame found in the journal at start when no cascade will take it: resolve it now."""
    v = Verdict.from_header({k: x for k, x in row.edge.items() if k not in ("v", "kind", "has_mask")})
    v.pending, v.supersedes, v.status, v.ts_verdict, v.error = False, "edge", "teacher_unreachable", time.time(), why
    publish_q.put(Outgoing(v, resolves_pending=True))
