"""The judge workers: frame job -> decode -> Engine.judge -> edge verdict -> publisher (and the cascade).

``backend.workers`` threads judge frames side by side (ONNX Runtime, OpenVINO, numpy and OpenCV release
the GIL while they compute); an ``InOrder`` ticket taken with each frame makes their verdicts reach the
publisher, and pending frames the cascade, in the order the frames left the queue, so a line sees its
verdicts in frame order whatever the number of workers.

The engine is read once per frame from an ``EngineHolder``; a reload swaps the reference between two
frames, so no frame is judged twice or skipped. Frames the student is unsure of (in the band, or out of
distribution) go out at once as pending edge verdicts and are handed to the cascade thread; the judge
never waits for the teacher.
"""
from __future__ import annotations

import json
import logging
import threading
import time
from typing import Callable

from runtime.contracts import protocol
from runtime.contracts.protocol import ProtocolError
from runtime.daemon.queues import BoundedQueue, FrameJob, Outgoing
from runtime.contracts.verdict import Verdict

log = logging.getLogger("lineside.judge")

GET_TIMEOUT_S = 0.1


class EngineHolder:
    def __init__(self, engine):
        self.engine = engine
        self.lock = threading.Lock()  # serialises reloads, not judging
        self.generation = 0

    def swap(self, engine):
        with self.lock:
            old, self.engine = self.engine, engine
            self.generation += 1
            return old


def infer_request(job: FrameJob, image, deadline_ts: float) -> tuple[bytes, bytes]:
    """The teacher's "infer" message for a frame: header JSON and payload, the frame's own bytes when we
    have them (no re-encoding), else the decoded pixels as raw."""
    h = {"v": protocol.PROTOCOL_VERSION, "kind": "infer", "frame_id": job.frame_id, "camera_id": job.camera_id,
         "ts": job.ts_frame, "deadline_ts": deadline_ts, "want_mask": job.want_mask}
    if job.payload is not None:
        h.update({k: job.header[k] for k in ("encoding", "shape", "dtype") if k in job.header})
        payload = job.payload
    else:
        h.update(encoding="raw", shape=list(image.shape), dtype=str(image.dtype))
        payload = image.tobytes()
    return json.dumps(h, separators=(",", ":")).encode(), payload


class InOrder:
    """Tickets for frames taken from the queue, and their hand-over in ticket order.

    ``take()`` pairs a frame with the next ticket (both under one lock, so tickets follow queue order);
    ``release(ticket, hand_over)`` runs ``hand_over`` once every earlier ticket has run its own. Every
    ticket taken must be released exactly once (the workers release in ``finally``), or later frames wait.
    """

    def __init__(self, queue: BoundedQueue):
        self.queue = queue
        self._take_lock = threading.Lock()
        self._release_lock = threading.Lock()
        self._next_ticket = 0
        self._next_out = 0
        self._ready: dict[int, Callable[[], None]] = {}

    def take(self, timeout: float) -> tuple[int, FrameJob] | None:
        with self._take_lock:
            job = self.queue.get(timeout)
            if job is None:
                return None
            ticket, self._next_ticket = self._next_ticket, self._next_ticket + 1
            return ticket, job

    def release(self, ticket: int, hand_over: Callable[[], None]) -> None:
        with self._release_lock:  # held while handing over: a full publish queue holds every worker back
            self._ready[ticket] = hand_over
            while self._next_out in self._ready:
                fn = self._ready.pop(self._next_out)
                self._next_out += 1
                try:
                    fn()
                except Exception:  # never leave the tickets behind it waiting
                    log.exception("handing over a verdict failed")


class Judge(threading.Thread):
    """One judge worker; ``workers`` of them share one ``InOrder``."""

    def __init__(self, holder: EngineHolder, order: InOrder, publish_q, telemetry, cascade=None,
                 deadline_ms: int = 10_000, index: int = 0, max_pixels: int = protocol.DEFAULT_MAX_PIXELS):
        super().__init__(name=f"lineside-judge-{index}", daemon=True)
        self.max_pixels = max_pixels  # limits.max_pixels: what the ingress admitted decodes here too
        self.holder, self.order, self.queue = holder, order, order.queue
        self.publish_q, self.tm = publish_q, telemetry
        self.cascade, self.deadline_s = cascade, deadline_ms / 1e3
        self.stop_event = threading.Event()
        self.judged = 0

    def run(self) -> None:
        while True:
            taken = self.order.take(GET_TIMEOUT_S)
            if taken is None:
                if self.stop_event.is_set():
                    return
                continue
            ticket, job = taken
            hand_over = None
            try:
                hand_over = self._judge(job)
            except Exception as e:  # one bad frame must not stop the line
                hand_over = self._publish(self._failed(job, e))
            finally:
                self.order.release(ticket, hand_over or (lambda: None))
                self.judged += 1
                self.queue.done()
                self.tm.queue_depth.set(len(self.queue))

    def judge_now(self, job: FrameJob) -> None:
        """Judge one frame in the caller's thread and hand its verdict over (the restart's recovery of
        spooled frames, before the workers start); a failure becomes an error verdict, as in ``run``."""
        try:
            hand_over = self._judge(job)
        except Exception as e:
            hand_over = self._publish(self._failed(job, e))
        hand_over()
        self.judged += 1

    def _failed(self, job: FrameJob, e: Exception) -> Outgoing:
        """The error verdict of a frame whose judging raised (logged with its traceback)."""
        log.exception("judging frame %s failed", job.frame_id)
        v = Verdict.failure(job.frame_id, "error", f"internal: {e.__class__.__name__}: {e}",
                            camera_id=job.camera_id, ts_frame=job.ts_frame, ts_verdict=time.time())
        return Outgoing(v, t_recv=job.t_recv)

    def _publish(self, out: Outgoing) -> Callable[[], None]:
        return lambda: self.publish_q.put(out)

    def _judge(self, job: FrameJob) -> Callable[[], None]:
        """Judge one frame; returns what hands its verdict over (run in frame order by ``InOrder``)."""
        t0 = time.perf_counter()
        image = job.image
        if image is None:
            try:
                image = protocol.decode_image(job.header, [b"", job.payload], max_pixels=self.max_pixels)
            except ProtocolError as e:
                self.tm.errors.labels(e.field).inc()
                v = Verdict.failure(job.frame_id, "error", f"{e.field}: {e.message}", camera_id=job.camera_id,
                                    ts_frame=job.ts_frame, ts_verdict=time.time())
                return self._publish(Outgoing(v, t_recv=job.t_recv, extra={"field": e.field}))
        t1 = time.perf_counter()
        engine = self.holder.engine
        v = engine.judge(image, job.frame_id, job.camera_id, job.ts_frame, want_mask=job.want_mask)
        v.anomaly_map = None
        t2 = time.perf_counter()
        v.latencies_ms.update(queue=(t0 - job.t_recv) * 1e3, decode=(t1 - t0) * 1e3, total=(t2 - job.t_recv) * 1e3)
        out = Outgoing(v, want_mask=job.want_mask, t_recv=job.t_recv)
        if not ((v.in_band or v.ood) and self.cascade is not None):
            return self._publish(out)
        deadline = time.time() + self.deadline_s
        req, payload = infer_request(job, image, deadline)  # here, where a failure still gets an error verdict
        if not self.cascade.reserve():
            self.tm.fallback.labels("backlog_full").inc()
            return self._publish(out)
        v.pending = True
        out.pending_request, out.pending_payload, out.pending_deadline = req, payload, deadline

        def hand_over() -> None:
            self.publish_q.put(out)  # before the cascade sees it: the edge verdict is journaled first
            self.cascade.submit(job.frame_id, job.camera_id, req, payload, deadline, edge=v)

        return hand_over
