"""`teacher serve broker`: one endpoint in front of teacher workers on many GPU hosts.

    edges (DEALER / REQ, CURVE)                                  host A: teacher serve --broker tcp://broker:5561
        ──► ROUTER frontend ── Broker (zmq.Poller loop) ── ROUTER backend ◄── host B: ... --workers 4
            runtime/contracts/protocol.py v1, unchanged               teacher/serve/pirate.py (READY, HEARTBEAT, credit)

The zguide's Paranoid Pirate queue, with Majordomo's registration and credit-based flow control:

* a worker registers with READY once its model has loaded, announcing its credit (how many requests it
  may hold: two batches); the broker sends a worker a request only while it holds fewer than that, to the
  least loaded live worker (least recently used among equals), so capacity grows with every worker added;
* both sides heartbeat every HEARTBEAT_INTERVAL_S; a worker silent for HEARTBEAT_LIVENESS intervals
  (a frozen or unplugged host), or one the backend can no longer reach (ROUTER_MANDATORY: a killed
  process's connection is gone at the next send), is dropped and every request it held goes back to the
  front of the queue for another worker: a worker dying mid-stream costs time, never a request;
* the broker keeps each client's envelope and gives the worker a token instead, so it answers each
  request exactly once: a late reply from a worker presumed dead, for a request already answered by the
  worker it was re-queued to, is dropped (counted ``late_dropped``); a client retry of a request still
  queued or computing joins it (``deduplicated``, keyed like the workers' reply cache: camera_id,
  frame_id and the payload's digest);
* a worker that drains (SIGTERM) says DISCONNECT, gets no more requests, and the ones it answers "busy"
  are re-queued, not passed on;
* a request nobody can take is answered at once: "busy" when no worker is alive or the queue is full
  (the edge backs off and retries), error "deadline_ts"/expired when its deadline passes while queued.

"status" requests are answered by the broker itself: its workers, their load, and its counters.
The broker checks the header as the workers and the daemon do (protocol.check_frame_header: ids, ts,
deadline_ts, want_mask, encoding) and refuses a malformed one at once; the workers check the payload.
"""
from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
from collections import deque
from dataclasses import asdict, dataclass, field
from typing import Optional

import zmq

from runtime.curve import check_bind_policy
from runtime.contracts.protocol import ProtocolError, check_frame_header, decode_header, encode, error_frames
from teacher.serve import pirate
from teacher.serve.wire import FRONTEND_CLOSE_LINGER_MS, bind_frontend, request_ids, split_envelope

log = logging.getLogger("teacher.serve.broker")

RECV_BURST = 256  # messages read from one socket per wake-up before the other gets its turn
JOIN_TIMEOUT_S = 5.0


class BrokerError(RuntimeError):
    pass


@dataclass
class BrokerConfig:
    bind: str = "tcp://127.0.0.1:5560"  # edge-facing ROUTER: the endpoint the edges' [teacher] address names
    backend: str = "tcp://127.0.0.1:5561"  # worker-facing ROUTER: `teacher serve --broker` connects here
    queue_size: int = 256  # requests waiting for a worker; beyond: reply busy
    curve_secret: Optional[str] = None  # frontend only (workers sit on the cluster's own network)
    allowed_keys: Optional[str] = None
    insecure: bool = False  # allow a non-loopback bind without CURVE (frontend) / at all (backend)
    max_message_mb: float = 16.0

    def check(self) -> None:
        if self.queue_size < 1:
            raise BrokerError(f"--queue-size must be >= 1, got {self.queue_size}")
        if self.max_message_mb <= 0:
            raise BrokerError(f"--max-message-mb must be > 0, got {self.max_message_mb}")
        if (self.curve_secret is None) != (self.allowed_keys is None):
            raise BrokerError("CURVE needs both --curve-secret and --allowed-keys")
        check_bind_policy(self.bind, self.curve_secret is not None, self.insecure, "teacher serve broker")
        # the worker link has no CURVE (yet): a network backend is for a trusted cluster network only
        check_bind_policy(self.backend, False, self.insecure, "teacher serve broker --backend")


@dataclass
class _Request:
    token: bytes
    key: tuple  # (camera_id, frame_id, payload digest): a client retry joins the request it repeats
    frame_id: str
    camera_id: str
    body: list[bytes]  # header, payload?
    waiters: list[list[bytes]]  # client envelopes to answer
    deadline_ts: Optional[float]
    worker: Optional[bytes] = None  # identity of the worker holding it; None: queued
    requeues: int = 0
    done: bool = False  # answered (a copy may still sit in the queue: skipped)


@dataclass
class _Worker:
    identity: bytes
    info: dict
    credit: int
    expiry: float  # monotonic: presumed dead after this
    inflight: dict = field(default_factory=dict)  # token -> None, in dispatch order
    draining: bool = False
    last_sent: float = 0.0
    served: int = 0


class Broker:
    """``with Broker(cfg) as b: ... b.endpoint (edges), b.backend_endpoint (workers), b.status()``"""

    def __init__(self, cfg: BrokerConfig):
        cfg.check()
        self.cfg = cfg
        self.endpoint: Optional[str] = None
        self.backend_endpoint: Optional[str] = None
        self.started = time.time()
        self._ctx: Optional[zmq.Context] = None
        self._auth = None
        self._thread: Optional[threading.Thread] = None
        self._stop = threading.Event()
        self._lock = threading.Lock()  # guards the state status() reads from another thread
        self.workers: dict[bytes, _Worker] = {}
        self.requests: dict[bytes, _Request] = {}
        self.by_key: dict[tuple, bytes] = {}
        self.queue: deque[_Request] = deque()
        self._tokens = 0
        self.counts = {k: 0 for k in ("received", "answered", "requeued", "late_dropped", "deduplicated", "busy",
                                      "expired", "lost", "errors", "workers_registered", "workers_lost")}

    # -- lifecycle ---------------------------------------------------------------------------------
    def __enter__(self) -> "Broker":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self) -> "Broker":
        cfg = self.cfg
        self._ctx = ctx = zmq.Context()
        try:
            frontend, self._auth = bind_frontend(ctx, cfg.bind, max_message_mb=cfg.max_message_mb,
                                                 curve_secret=cfg.curve_secret, allowed_keys=cfg.allowed_keys)
            backend = ctx.socket(zmq.ROUTER)
            backend.linger = 0
            backend.router_mandatory = True  # a send to a worker whose connection is gone raises: drop it now
            backend.bind(cfg.backend)
        except (zmq.ZMQError, OSError, ValueError) as e:
            if self._auth is not None:
                self._auth.stop()
                self._auth = None
            ctx.destroy(linger=0)
            self._ctx = None
            raise BrokerError(f"cannot bind {cfg.bind} / {cfg.backend}: {e}") from e
        self.endpoint = frontend.getsockopt_string(zmq.LAST_ENDPOINT)
        self.backend_endpoint = backend.getsockopt_string(zmq.LAST_ENDPOINT)
        # the sockets move to the loop's thread here; a thread start is the full barrier ZeroMQ asks for
        self._thread = threading.Thread(target=self._main, args=(frontend, backend), name="serve-broker", daemon=True)
        self._thread.start()
        log.info("teacher serve broker: edges on %s (%s), workers on %s", self.endpoint,
                 "CURVE" if cfg.curve_secret else "plain", self.backend_endpoint)
        return self

    def stop(self) -> None:
        if self._ctx is None:
            return
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=JOIN_TIMEOUT_S)
        if self._auth is not None:
            self._auth.stop()
            self._auth = None
        if self._thread is not None and self._thread.is_alive():
            log.warning("teacher serve broker: loop did not stop; leaving the ZeroMQ context open")
        else:
            self._ctx.term()
        self._ctx = None

    def health_problem(self) -> Optional[str]:
        if self._thread is None or not self._thread.is_alive():
            return "broker loop stopped"
        with self._lock:
            alive = [w for w in self.workers.values() if not w.draining]
        return None if alive else "no worker registered"

    # -- the loop ----------------------------------------------------------------------------------
    def _main(self, frontend: zmq.Socket, backend: zmq.Socket) -> None:
        self._frontend, self._backend = frontend, backend
        poller = zmq.Poller()
        poller.register(frontend, zmq.POLLIN)
        poller.register(backend, zmq.POLLIN)
        next_heartbeat = time.monotonic() + pirate.HEARTBEAT_INTERVAL_S
        try:
            while not self._stop.is_set():
                wait_ms = max(0, min(100, int((next_heartbeat - time.monotonic()) * 1e3)))
                events = dict(poller.poll(wait_ms))
                with self._lock:
                    if backend in events:
                        self._drain(backend, self._on_worker)
                    if frontend in events:
                        self._drain(frontend, self._on_client)
                    now = time.monotonic()
                    if now >= next_heartbeat:
                        for ident in list(self.workers):
                            self._to_worker(ident, pirate.message(pirate.HEARTBEAT))
                        next_heartbeat = now + pirate.HEARTBEAT_INTERVAL_S
                        self._expire_queued(time.time())
                    for ident in [i for i, w in self.workers.items() if w.expiry < now]:
                        self._drop_worker(ident, f"silent for {pirate.HEARTBEAT_LIVENESS} heartbeats")
                    self._dispatch()
        except zmq.ZMQError as e:
            if e.errno != zmq.ETERM:
                log.exception("teacher serve broker: loop stopped")
        finally:
            backend.close(linger=0)
            frontend.close(linger=FRONTEND_CLOSE_LINGER_MS)

    @staticmethod
    def _drain(sock: zmq.Socket, handle) -> None:
        for _ in range(RECV_BURST):
            try:
                msg = sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            handle(msg)

    # -- clients -----------------------------------------------------------------------------------
    def _on_client(self, msg: list[bytes]) -> None:
        envelope, body = split_envelope(msg)
        try:
            h = decode_header(body, expect=("infer", "status"))
            if h["kind"] == "status":
                self._frontend.send_multipart(envelope + encode({"kind": "status", "status": self._status()}))
                return
            self.counts["received"] += 1
            fh = check_frame_header(h)  # the workers' and the daemon's check (runtime/contracts/protocol.py)
        except ProtocolError as e:
            self.counts["errors"] += 1
            ids = request_ids(body[0]) if body else {"frame_id": None}
            self._frontend.send_multipart(envelope + error_frames(e.field, e.message, **ids))
            return
        frame_id, camera_id = fh.frame_id, fh.camera_id
        key = (camera_id, frame_id, hashlib.blake2b(body[1] if len(body) > 1 else b"", digest_size=16).digest())
        token = self.by_key.get(key)
        if token is not None:  # a retry (Lazy Pirate: maybe from a reopened socket) of a request still open
            self.counts["deduplicated"] += 1
            waiters = self.requests[token].waiters
            if envelope not in waiters:  # the same socket asking twice still gets one answer
                waiters.append(envelope)
            return
        reason = None
        if not any(not w.draining for w in self.workers.values()):
            reason = "no teacher worker alive"
        elif len(self.queue) >= self.cfg.queue_size:
            reason = "queue full"
        if reason is not None:
            self.counts["busy"] += 1
            self._frontend.send_multipart(envelope + encode({"kind": "busy", "frame_id": frame_id,
                                                             "camera_id": camera_id, "queue_depth": len(self.queue),
                                                             "reason": reason}))
            return
        self._tokens += 1
        token = self._tokens.to_bytes(8, "big")
        req = _Request(token, key, frame_id, camera_id, body, [envelope], fh.deadline_ts)
        self.requests[token] = req
        self.by_key[key] = token
        self.queue.append(req)

    def _answer(self, req: _Request, frames: list[bytes]) -> None:
        for envelope in req.waiters:
            self._frontend.send_multipart(envelope + frames)
        req.done = True
        self.requests.pop(req.token, None)
        self.by_key.pop(req.key, None)

    def _expire_queued(self, now_epoch: float) -> None:
        keep = deque()
        for req in self.queue:
            if req.done:
                continue
            if req.deadline_ts is not None and now_epoch >= req.deadline_ts:
                self.counts["expired"] += 1
                self._answer(req, error_frames(
                    "deadline_ts", f"expired: deadline passed {1e3 * (now_epoch - req.deadline_ts):.1f} ms ago while "
                    "queued at the broker", req.frame_id, camera_id=req.camera_id, reason="expired"))
            else:
                keep.append(req)
        self.queue = keep

    # -- workers -----------------------------------------------------------------------------------
    def _to_worker(self, ident: bytes, frames: list[bytes]) -> bool:
        try:
            self._backend.send_multipart([ident] + frames, zmq.NOBLOCK)
            return True
        except zmq.ZMQError as e:  # EHOSTUNREACH (connection gone) or EAGAIN (not reading): presume it dead
            if ident in self.workers:
                self._drop_worker(ident, f"unreachable ({e.strerror})")
            return False

    def _dispatch(self) -> None:
        while self.queue:
            req = self.queue[0]
            if req.done:
                self.queue.popleft()
                continue
            free = [w for w in self.workers.values() if not w.draining and len(w.inflight) < w.credit]
            if not free:
                return
            w = min(free, key=lambda w: (len(w.inflight) / w.credit, w.last_sent))
            self.queue.popleft()
            if not self._to_worker(w.identity, pirate.message(pirate.REQUEST, req.token, *req.body)):
                self.queue.appendleft(req)  # the worker is gone (dropped above): try the next
                continue
            req.worker = w.identity
            w.inflight[req.token] = None
            w.last_sent = time.monotonic()

    def _on_worker(self, msg: list[bytes]) -> None:
        ident, frames = msg[0], msg[1:]
        try:
            command, rest = pirate.parse(frames)
        except pirate.PirateError as e:
            log.warning("teacher serve broker: refused a message from worker %s: %s", ident.hex(), e)
            return
        w = self.workers.get(ident)
        if w is not None:
            w.expiry = time.monotonic() + pirate.HEARTBEAT_LIVENESS * pirate.HEARTBEAT_INTERVAL_S
        if command == pirate.READY:
            self._register(ident, rest[0])
        elif command == pirate.REPLY:
            self._on_reply(ident, bytes(rest[0]), rest[1:])
        elif command == pirate.HEARTBEAT:
            if w is None:  # a worker we dropped, or from before a broker restart: have it register again
                self._to_worker(ident, pirate.message(pirate.DISCONNECT))
        elif command == pirate.DISCONNECT and w is not None:
            log.info("teacher serve broker: worker %s (%s) draining", ident.hex(), _where(w.info))
            w.draining = True
            if not w.inflight:
                self._remove(ident)

    def _register(self, ident: bytes, raw: bytes) -> None:
        try:
            info = json.loads(raw)
            credit = int(info["credit"])
            if credit < 1:
                raise ValueError(f"credit {credit} < 1")
        except (ValueError, KeyError, TypeError) as e:
            log.warning("teacher serve broker: worker %s sent a bad READY (%s); ignored", ident.hex(), e)
            return
        if ident in self.workers:  # the same identity again: whatever it held is not coming back
            self._drop_worker(ident, "registered again")
        hashes = {x.info.get("model_hash") for x in self.workers.values()}
        if hashes and info.get("model_hash") not in hashes:
            log.warning("teacher serve broker: worker %s serves model %s, the others %s: edges will get verdicts "
                        "of different models", _where(info), info.get("model_hash"), sorted(map(str, hashes)))
        self.workers[ident] = _Worker(ident, info, credit,
                                      time.monotonic() + pirate.HEARTBEAT_LIVENESS * pirate.HEARTBEAT_INTERVAL_S)
        self.counts["workers_registered"] += 1
        log.info("teacher serve broker: worker %s (%s) ready, credit %d; %d worker(s)", ident.hex(), _where(info),
                 credit, len(self.workers))

    def _on_reply(self, ident: bytes, token: bytes, frames: list[bytes]) -> None:
        w = self.workers.get(ident)
        if w is not None:
            w.inflight.pop(token, None)
        req = self.requests.get(token)
        if req is None:  # answered already (by the worker it was re-queued to), or expired
            self.counts["late_dropped"] += 1
            return
        try:
            kind = decode_header(frames)["kind"]
        except ProtocolError:
            kind = None
        if kind == "busy" and (w is None or w.draining):  # a draining worker hands back what it queued
            if req.worker == ident:  # (else it is queued again already, or another worker holds it)
                self._requeue(req)
        else:
            if req.worker is not None and req.worker != ident and req.worker in self.workers:
                self.workers[req.worker].inflight.pop(token, None)  # the re-queued copy's answer will be late
            if w is not None and kind == "verdict":
                w.served += 1
            self.counts["answered"] += 1
            self._answer(req, frames)
        if w is not None and w.draining and not w.inflight:
            self._remove(ident)

    def _requeue(self, req: _Request) -> None:
        req.worker = None
        self.counts["requeued"] += 1
        self.queue.appendleft(req)

    def _drop_worker(self, ident: bytes, why: str) -> None:
        w = self.workers.pop(ident)
        self.counts["workers_lost"] += 1
        lost = [self.requests[t] for t in w.inflight if t in self.requests]
        log.warning("teacher serve broker: worker %s (%s) %s; re-queueing the %d request(s) it held; %d worker(s) left",
                    ident.hex(), _where(w.info), why, len(lost), len(self.workers))
        for req in reversed(lost):  # to the front, in their original order
            req.requeues += 1
            if req.requeues > pirate.MAX_REQUEUES:
                self.counts["lost"] += 1
                self._answer(req, error_frames("server", f"{req.requeues} workers were lost while computing this "
                                               "request; not re-queued again", req.frame_id, camera_id=req.camera_id))
            else:
                self._requeue(req)

    def _remove(self, ident: bytes) -> None:
        w = self.workers.pop(ident)
        log.info("teacher serve broker: worker %s (%s) left; %d worker(s)", ident.hex(), _where(w.info),
                 len(self.workers))

    # -- status ------------------------------------------------------------------------------------
    def status(self) -> dict:
        with self._lock:
            return self._status()

    def _status(self) -> dict:
        workers = [{"id": w.identity.hex(), **{k: w.info.get(k) for k in ("worker_id", "pid", "host", "device",
                                                                        "model_hash")},
                    "credit": w.credit, "inflight": len(w.inflight), "draining": w.draining, "served": w.served,
                    "alive": True}
                   for w in self.workers.values()]
        hashes = sorted({str(w["model_hash"]) for w in workers})
        return {"role": "broker", "endpoint": self.endpoint, "backend": self.backend_endpoint,
                "uptime_s": round(time.time() - self.started, 3), "model_hash": hashes[0] if len(hashes) == 1 else "",
                "model_hashes": hashes, "queue_depth": sum(1 for r in self.queue if not r.done),
                "open_requests": len(self.requests), "counts": dict(self.counts), "workers": workers,
                "config": {k: v for k, v in asdict(self.cfg).items() if k != "curve_secret"},
                "heartbeat_interval_s": pirate.HEARTBEAT_INTERVAL_S, "heartbeat_liveness": pirate.HEARTBEAT_LIVENESS}


def _where(info: dict) -> str:
    return f"worker {info.get('worker_id')} pid {info.get('pid')} on {info.get('host')}"
