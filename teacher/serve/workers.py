"""One model worker: its own copy of the model, its own batching queue, behind the server's proxy.

A worker is a DEALER connected to the backend of the server's ROUTER-DEALER proxy (zmq.proxy), so
it receives ``[client identity, (empty delimiter), header, payload]`` and answers with the same
envelope. Behind a broker (``teacher serve --broker``, teacher/serve/broker.py) it speaks
teacher/serve/pirate.py instead: READY with its credit, heartbeats both ways, requests under a broker
token that stands in for the envelope, and a fresh socket when the broker falls silent (zguide's
Paranoid Pirate worker). Those two sockets are teacher/serve/links.py (ProxyLink, BrokerLink). Two threads:

    I/O thread      owns every socket: validates requests, answers errors / busy / expired / cached
                    replies at once, queues the rest, sends the replies the compute thread produced
    compute thread  takes batches from the queue (teacher/serve/batching.py), runs model.predict

so a worker keeps answering "busy" and malformed requests while its model is running. Replies are
cached by (camera_id, frame_id) in an LRU and a retry of a request still being computed joins it
instead of being computed twice.

Workers run as threads of the server (CPU, tests) or as spawned processes, one model per process
with ``CUDA_VISIBLE_DEVICES`` set to its GPU (the GPU design; the process is
teacher/serve/worker_main.py). Envelope and id helpers are in teacher/serve/wire.py; the header and
image checks are runtime/contracts/protocol.py's (check_frame_header, decode_image), the daemon's too.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import queue
import socket
import threading
import time
import uuid
from dataclasses import asdict, dataclass
from typing import Optional

import numpy as np
import zmq

from runtime.contracts.protocol import (ProtocolError, check_frame_header, decode_header, decode_image, encode,
                                        error_frames)
from runtime.contracts.verdict import Verdict, encode_mask_png
from teacher.serve import pirate
from teacher.serve.batching import BatchQueue, ReplyCache, Request
from teacher.serve.links import BrokerLink, ProxyLink
from teacher.serve.models import ServeModel, load_model
from teacher.serve.status import WorkerStats, merge
from teacher.serve.wire import json_safe, request_ids, split_envelope

log = logging.getLogger("teacher.serve")

POLL_MS = 50  # I/O loop wake-up when idle
STATS_INTERVAL_S = 0.25  # snapshot period to the server when idle
STATS_MIN_INTERVAL_S = 0.05  # ... and at most this often after replies went out
STATUS_AGGREGATE_TIMEOUT_S = 1.0  # wait for the server's merged status before answering with our own
COMPUTE_IDLE_TIMEOUT_S = 0.1  # compute thread re-checks for shutdown this often
RECV_BURST = 256  # requests read per wake-up before servicing replies
BATCH_TIME_EMA_WEIGHT = 0.2  # weight of the latest batch in the mean batch time (admission estimate)


@dataclass
class WorkerConfig:
    worker_id: int
    model_spec: str  # checkpoint directory or "fake[:opts]" (teacher/serve/models.py)
    backend: str  # the proxy's DEALER endpoint, or with broker=True a broker's worker endpoint (connect)
    stats: str  # the server's stats ROUTER endpoint (connect)
    device: str = "cpu"
    cuda_visible_devices: Optional[str] = None
    max_batch: int = 8
    max_wait_ms: float = 10.0
    queue_size: int = 64
    max_pixels: int = 4096 * 4096
    cache_size: int = 256
    parent_pid: Optional[int] = None  # process mode: stop when the server process is gone
    broker: bool = False  # backend is a `teacher serve broker`: register, heartbeat, take requests by credit


@dataclass
class _Cached:
    header: dict
    mask: Optional[np.ndarray]
    mask_png: Optional[bytes] = None


class Worker:
    def __init__(self, cfg: WorkerConfig, context: Optional[zmq.Context] = None,
                 model: Optional[ServeModel] = None):
        self.cfg = cfg
        self.ctx = context or zmq.Context.instance()
        self.model = model
        self.queue = BatchQueue(cfg.queue_size)
        self.cache = ReplyCache(cfg.cache_size)
        self.inflight: dict[tuple[str, str], list[tuple[list[bytes], bool, float]]] = {}
        self.results: queue.Queue = queue.Queue()
        self.stats = WorkerStats(cfg.worker_id, device=cfg.device, pid=os.getpid())
        self.stop_requested = threading.Event()
        self._stopping = False
        self._dirty = False  # something was answered since the last snapshot
        self._batch_s_ema: Optional[float] = None  # written by the compute thread
        self._batch_started: Optional[float] = None  # monotonic start of the batch running now
        self._wake_addr = f"inproc://serve-wake-{cfg.worker_id}-{uuid.uuid4().hex[:8]}"

    # -- lifecycle ---------------------------------------------------------------------------------
    def run(self) -> int:
        stats = self.ctx.socket(zmq.DEALER)
        stats.linger = 0
        stats.connect(self.cfg.stats)
        try:
            if self.model is None:
                self.model = load_model(self.cfg.model_spec, self.cfg.device, self.cfg.max_batch)
        except Exception as e:  # report, so the server's start() fails with the reason
            log.exception("worker %d: model %s did not load", self.cfg.worker_id, self.cfg.model_spec)
            stats.send_multipart([b"failed", json.dumps({"id": self.cfg.worker_id, "error": f"{type(e).__name__}: {e}"}).encode()])
            time.sleep(0.2)  # let it leave before linger 0 drops it
            stats.close()
            return 1
        self.stats.model_hash = self.model.model_hash
        # only now: neither the proxy nor a broker may route to a worker still loading its model
        if self.cfg.broker:
            sock = BrokerLink(self.ctx, self.cfg.backend, {
                "worker_id": self.cfg.worker_id, "pid": os.getpid(), "host": socket.gethostname(),
                "device": self.cfg.device, "model_hash": self.model.model_hash,
                "credit": pirate.credit_for(self.cfg.max_batch, self.cfg.queue_size)})
        else:
            sock = ProxyLink(self.ctx, self.cfg.backend)
        wake = self.ctx.socket(zmq.PAIR)
        wake.linger = 0
        wake.bind(self._wake_addr)
        compute = threading.Thread(target=self._compute_loop, name=f"serve-compute-{self.cfg.worker_id}", daemon=True)
        compute.start()
        stats.send_multipart([b"ready", json.dumps({"id": self.cfg.worker_id, "pid": os.getpid(),
                                                      "device": self.cfg.device,
                                                      "model_hash": self.model.model_hash}).encode()])
        try:
            self._io_loop(sock, stats, wake, compute)
        finally:
            self.queue.close()
            compute.join(timeout=30)
            sock.close()
            for s in (wake, stats):
                s.close(linger=0)
        return 0

    def _io_loop(self, sock: "ProxyLink | BrokerLink", stats: zmq.Socket, wake: zmq.Socket,
                 compute: threading.Thread) -> None:
        poller = zmq.Poller()
        for s in (sock.sock, stats, wake):
            poller.register(s, zmq.POLLIN)
        polled = sock.sock
        pending_status: dict[bytes, tuple[list[bytes], float]] = {}
        next_snap = last_snap = 0.0
        while True:
            events = dict(poller.poll(POLL_MS))
            if sock.tick(time.monotonic()):  # the broker fell silent: a fresh socket (Paranoid Pirate)
                poller.unregister(polled)
                polled = sock.sock
                poller.register(polled, zmq.POLLIN)
            if self.cfg.parent_pid is not None and os.getppid() != self.cfg.parent_pid:
                self.stop_requested.set()  # orphaned: the server died without telling us
            if self.stop_requested.is_set() and not self._stopping:
                self._begin_stop(sock)
            if polled in events:
                for _ in range(RECV_BURST):
                    try:
                        frames = sock.recv()
                    except zmq.Again:
                        break
                    if frames is None:  # a broker heartbeat or command, handled by the link
                        continue
                    try:
                        token = self._on_request(sock, stats, frames)
                    except Exception as e:  # a bug must cost one request, not the worker
                        log.exception("worker %d: request handling failed", self.cfg.worker_id)
                        self.stats.count("errors")
                        sock.send_multipart(split_envelope(frames)[0] + error_frames(
                            "server", f"internal error: {type(e).__name__}: {e}"[:500]))
                        token = None
                    if token is not None:
                        pending_status[token[0]] = (token[1], time.monotonic() + STATUS_AGGREGATE_TIMEOUT_S)
            if wake in events:
                while True:
                    try:
                        wake.recv(zmq.NOBLOCK)
                    except zmq.Again:
                        break
            self._flush_results(sock)
            if stats in events:
                while True:
                    try:
                        msg = stats.recv_multipart(zmq.NOBLOCK)
                    except zmq.Again:
                        break
                    if msg[0] == b"stop":
                        self.stop_requested.set()
                        if not self._stopping:
                            self._begin_stop(sock)
                    elif msg[0] == b"agg" and len(msg) == 3 and msg[1] in pending_status:
                        envelope, _ = pending_status.pop(msg[1])
                        sock.send_multipart(envelope + encode({"kind": "status", "status": json.loads(msg[2])}))
            now = time.monotonic()
            for token in [t for t, (_, t_end) in pending_status.items() if t_end < now]:
                envelope, _ = pending_status.pop(token)  # the server did not answer: our own figures
                own = merge([self._snapshot()], {}, [{"id": self.cfg.worker_id, "alive": True}], time.time())
                sock.send_multipart(envelope + encode({"kind": "status", "status": {**own, "partial": True}}))
            if now >= next_snap or (self._dirty and now >= last_snap + STATS_MIN_INTERVAL_S):
                stats.send_multipart([b"snap", json.dumps(self._snapshot()).encode()])
                next_snap, last_snap, self._dirty = now + STATS_INTERVAL_S, now, False
            if not compute.is_alive() and not self._stopping:
                log.error("worker %d: compute thread ended unexpectedly; stopping this worker", self.cfg.worker_id)
                self._begin_stop(sock)
            if self._stopping and not compute.is_alive() and self.results.empty():
                self._flush_results(sock)
                stats.send_multipart([b"stopped", json.dumps(self._snapshot()).encode()])
                return

    def _begin_stop(self, sock: "ProxyLink | BrokerLink") -> None:
        """Drain: finish the batch being computed; what is still queued gets "busy" (retry elsewhere)."""
        self._stopping = True
        sock.leaving()  # a broker routes nothing more here and re-queues the busy replies that follow
        self.queue.close()
        for r in self.queue.take_all():
            for envelope, _, _ in self.inflight.pop(r.key, []):
                self.stats.count("busy")
                sock.send_multipart(envelope + encode({"kind": "busy", "frame_id": r.frame_id,
                                                       "camera_id": r.camera_id, "reason": "server shutting down"}))

    def _estimated_wait_s(self) -> Optional[float]:
        """Time until a request queued now has its reply, from the mean batch time; None before any batch."""
        ema = self._batch_s_ema
        if ema is None:
            return None
        running = self._batch_started
        left = max(0.0, ema - (time.monotonic() - running)) if running is not None else 0.0
        return left + -(-(len(self.queue) + 1) // self.cfg.max_batch) * ema

    def _snapshot(self) -> dict:
        self.stats.queue_depth = len(self.queue)
        return self.stats.snapshot()

    # -- requests (I/O thread) --------------------------------------------------------------------
    def _on_request(self, sock: zmq.Socket, stats: zmq.Socket, frames: list[bytes]):
        """Answer or queue one request. Returns (token, envelope) when a status reply is pending."""
        envelope, body = split_envelope(frames)
        self.stats.count("received")
        self._dirty = True

        def refuse(field: str, message: str, **extra) -> None:
            self.stats.count("errors")
            ids = request_ids(body[0]) if body else {"frame_id": None}
            sock.send_multipart(envelope + error_frames(field, message, **ids, **extra))

        try:
            h = decode_header(body, expect=("infer", "status"))
        except ProtocolError as e:
            refuse(e.field, e.message)
            return None
        if h["kind"] == "status":
            token = uuid.uuid4().hex.encode()
            stats.send_multipart([b"agg?", token, json.dumps(self._snapshot()).encode()])
            return token, envelope
        try:
            fh = check_frame_header(h)  # the broker's and the daemon's check (runtime/contracts/protocol.py)
        except ProtocolError as e:
            refuse(e.field, e.message)
            return None
        frame_id, camera_id, deadline, want_mask = fh.frame_id, fh.camera_id, fh.deadline_ts, fh.want_mask
        # A retry carries the same image; a camera whose counter restarted sends another image under the same
        # id, which must be judged, not answered from the cache: the key includes the payload's digest.
        key = (camera_id, frame_id, hashlib.blake2b(body[1] if len(body) > 1 else b"", digest_size=16).digest())
        t_arrival = time.monotonic()
        cached = self.cache.get(key)
        if cached is not None:
            self.stats.count("cache_hits")
            self._send_verdict(sock, envelope, cached, want_mask, t_arrival, from_cache=True)
            return None
        if key in self.inflight:  # a retry of a request still queued or computing: answer both once
            self.stats.count("deduplicated")
            self.inflight[key].append((envelope, want_mask, t_arrival))
            return None
        if deadline is not None and time.time() >= deadline:
            self.stats.count("expired")
            sock.send_multipart(envelope + error_frames(
                "deadline_ts", f"expired: deadline passed {1e3 * (time.time() - deadline):.1f} ms before arrival",
                frame_id, camera_id=camera_id, reason="expired"))
            return None
        if self._stopping or self.queue.full():
            self.stats.count("busy")
            sock.send_multipart(envelope + encode({
                "kind": "busy", "frame_id": frame_id, "camera_id": camera_id, "queue_depth": len(self.queue),
                "reason": "server shutting down" if self._stopping else "queue full"}))
            return None
        wait_s = self._estimated_wait_s()
        if deadline is not None and wait_s is not None and time.time() + wait_s > deadline:
            # it would expire in the queue: say so now, while the client can still act on it
            self.stats.count("busy")
            sock.send_multipart(envelope + encode({
                "kind": "busy", "frame_id": frame_id, "camera_id": camera_id, "queue_depth": len(self.queue),
                "reason": f"deadline cannot be met (estimated wait {wait_s * 1e3:.0f} ms)"}))
            return None
        try:  # sizes are checked before decoding: a small JPEG / PNG can claim gigapixels
            img = decode_image(h, body, channels=(1, 3), max_pixels=self.cfg.max_pixels)
        except ProtocolError as e:
            refuse(e.field, e.message)
            return None
        if img.ndim == 2:  # greyscale camera: the model takes RGB; replicating the channel is lossless
            img = np.repeat(img[:, :, None], 3, axis=2)
        elif not img.flags.writeable:
            img = img.copy()  # the payload buffer belongs to the message
        req = Request(key=key, image=img, camera_id=camera_id, frame_id=frame_id, ts_frame=fh.ts,
                      deadline_ts=deadline, t_arrival=t_arrival)
        if not self.queue.put(req):  # only this thread puts, so this is the race-free fallback
            self.stats.count("busy")
            sock.send_multipart(envelope + encode({"kind": "busy", "frame_id": frame_id, "camera_id": camera_id,
                                                   "reason": "queue full"}))
            return None
        self.inflight[key] = [(envelope, want_mask, t_arrival)]
        return None

    def _flush_results(self, sock: zmq.Socket) -> None:
        while True:
            try:
                kind, req, payload = self.results.get_nowait()
            except queue.Empty:
                return
            waiters = self.inflight.pop(req.key, [])
            self._dirty = True
            if kind == "verdict":
                v: Verdict = payload
                try:
                    entry = _Cached(header=json_safe({"kind": "verdict", **v.to_header()}), mask=v.mask)
                    encode(entry.header)  # JSON-serialisable, or it is the model's error
                except (TypeError, ValueError) as e:
                    kind, payload = "model_error", f"verdict not serialisable: {type(e).__name__}: {e}"[:500]
            if kind == "verdict":
                self.cache.put(req.key, entry)
                for envelope, want_mask, t_arrival in waiters:
                    self._send_verdict(sock, envelope, entry, want_mask, t_arrival)
            elif kind == "expired":
                for envelope, _, _ in waiters:
                    self.stats.count("expired")
                    sock.send_multipart(envelope + error_frames(
                        "deadline_ts", f"expired: deadline passed {payload:.1f} ms before its batch started",
                        req.frame_id, camera_id=req.camera_id, reason="expired"))
            else:  # model error: not cached, a retry recomputes
                for envelope, _, _ in waiters:
                    self.stats.count("model_errors")
                    sock.send_multipart(envelope + error_frames("model", payload, req.frame_id, camera_id=req.camera_id))

    def _send_verdict(self, sock: zmq.Socket, envelope: list[bytes], entry: _Cached, want_mask: bool,
                      t_arrival: float, from_cache: bool = False) -> None:
        header = dict(entry.header, cached=True) if from_cache else entry.header
        payload = None
        if want_mask and entry.mask is not None:
            if entry.mask_png is None:
                entry.mask_png = encode_mask_png(entry.mask)
            payload = entry.mask_png
        sock.send_multipart(envelope + encode(header, payload))
        self.stats.count("served")
        self.stats.latency((time.monotonic() - t_arrival) * 1e3)

    # -- model (compute thread) -------------------------------------------------------------------
    def _compute_loop(self) -> None:
        wake = self.ctx.socket(zmq.PAIR)
        wake.linger = 0
        wake.connect(self._wake_addr)
        max_wait_s = self.cfg.max_wait_ms / 1e3
        try:
            while True:
                batch = self.queue.get_batch(self.cfg.max_batch, max_wait_s, COMPUTE_IDLE_TIMEOUT_S)
                if not batch:
                    if self.stop_requested.is_set() or self._stopping:
                        return
                    continue
                try:
                    self._run_batch(batch)
                except Exception as e:  # outside predict (which _run_batch handles): answer, keep going
                    log.exception("worker %d: batch post-processing failed", self.cfg.worker_id)
                    for r in batch:
                        self.results.put(("model_error", r, f"{type(e).__name__}: {e}"[:500]))
                wake.send(b"")
        finally:
            wake.close(linger=0)

    def _run_batch(self, batch: list[Request]) -> None:
        now = time.time()
        live = []
        for r in batch:
            if r.deadline_ts is not None and now >= r.deadline_ts:
                self.results.put(("expired", r, 1e3 * (now - r.deadline_ts)))
            else:
                live.append(r)
        if not live:
            return
        t0 = self._batch_started = time.monotonic()
        try:
            verdicts = self.model.predict([r.image for r in live])
            if len(verdicts) != len(live):
                raise RuntimeError(f"model returned {len(verdicts)} verdicts for {len(live)} images")
        except Exception as e:
            log.exception("worker %d: model failed on a batch of %d", self.cfg.worker_id, len(live))
            for r in live:
                self.results.put(("model_error", r, f"{type(e).__name__}: {e}"[:500]))
            return
        finally:
            self._batch_started = None
        batch_s = time.monotonic() - t0
        ema = self._batch_s_ema
        self._batch_s_ema = batch_s if ema is None else (1 - BATCH_TIME_EMA_WEIGHT) * ema + BATCH_TIME_EMA_WEIGHT * batch_s
        batch_ms = batch_s * 1e3
        self.stats.batch(len(live), batch_ms)
        ts_verdict = time.time()
        for r, v in zip(live, verdicts):
            v.frame_id, v.camera_id, v.decided_by = r.frame_id, r.camera_id, "teacher"
            v.ts_frame, v.ts_verdict = r.ts_frame, ts_verdict
            v.model_hash = v.model_hash or self.model.model_hash
            v.latencies_ms = {**(v.latencies_ms or {}), "teacher_queue_ms": round((t0 - r.t_arrival) * 1e3, 3),
                              "teacher_batch_ms": round(batch_ms, 3)}
            self.results.put(("verdict", r, v))


def config_dict(cfg: WorkerConfig) -> dict:
    return asdict(cfg)
