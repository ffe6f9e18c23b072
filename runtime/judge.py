"""The judge thread: frame job -> decode -> Engine.judge -> edge verdict -> publisher (and the cascade).

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

from runtime import protocol
from runtime.protocol import ProtocolError
from runtime.queues import BoundedQueue, FrameJob, Outgoing
from runtime.verdict import Verdict

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


class Judge(threading.Thread):
    def __init__(self, holder: EngineHolder, queue: BoundedQueue, publish_q, telemetry, cascade=None,
                 deadline_ms: int = 10_000):
        super().__init__(name="lineside-judge", daemon=True)
        self.holder, self.queue, self.publish_q, self.tm = holder, queue, publish_q, telemetry
        self.cascade, self.deadline_s = cascade, deadline_ms / 1e3
        self.stop_event = threading.Event()
        self.judged = 0

    def run(self) -> None:
        while True:
            job = self.queue.get(GET_TIMEOUT_S)
            if job is None:
                if self.stop_event.is_set():
                    return
                continue
            try:
                self._judge(job)
            except Exception as e:  # one bad frame must not stop the line
                log.exception("judging frame %s failed", job.frame_id)
                v = Verdict.failure(job.frame_id, "error", f"internal: {e.__class__.__name__}: {e}",
                                    camera_id=job.camera_id, ts_frame=job.ts_frame, ts_verdict=time.time())
                self.publish_q.put(Outgoing(v, t_recv=job.t_recv))
            finally:
                self.judged += 1
                self.queue.done()
                self.tm.queue_depth.set(len(self.queue))

    def _judge(self, job: FrameJob) -> None:
        t0 = time.perf_counter()
        image = job.image
        if image is None:
            try:
                image = protocol.decode_image(job.header, [b"", job.payload])
            except ProtocolError as e:
                self.tm.errors.labels(e.field).inc()
                v = Verdict.failure(job.frame_id, "error", f"{e.field}: {e.message}", camera_id=job.camera_id,
                                    ts_frame=job.ts_frame, ts_verdict=time.time())
                self.publish_q.put(Outgoing(v, t_recv=job.t_recv, extra={"field": e.field}))
                return
        t1 = time.perf_counter()
        engine = self.holder.engine
        v = engine.judge(image, job.frame_id, job.camera_id, job.ts_frame, want_mask=job.want_mask)
        v.anomaly_map = None
        t2 = time.perf_counter()
        v.latencies_ms.update(queue=(t0 - job.t_recv) * 1e3, decode=(t1 - t0) * 1e3, total=(t2 - job.t_recv) * 1e3)
        out = Outgoing(v, want_mask=job.want_mask, t_recv=job.t_recv)
        pending = None
        if (v.in_band or v.ood) and self.cascade is not None:
            if self.cascade.reserve():
                v.pending = True
                deadline = time.time() + self.deadline_s
                req, payload = infer_request(job, image, deadline)
                out.pending_request, out.pending_payload, out.pending_deadline = req, payload, deadline
                pending = (req, payload, deadline)
            else:
                self.tm.fallback.labels("backlog_full").inc()
        self.publish_q.put(out)  # before the cascade sees it: the edge verdict is journaled first
        if pending is not None:
            self.cascade.submit(job.frame_id, job.camera_id, *pending, edge=v)
