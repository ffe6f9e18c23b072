"""Pulled frames: a camera opened with OpenCV, grabbed on each trigger (SUB) or free-running at a rate.

Sources: a device index ("0"), an RTSP/HTTP URL, a GStreamer pipeline (GigE cameras through aravissrc,
contains "!"), a video file, or a folder of images (replayed in name order). Frames join the same bounded
queue as pushed ones; a trigger message is the protocol's "trigger" kind (camera_id?, frame_id?), alone
or after a topic frame.
"""
from __future__ import annotations

import json
import logging
import threading
import time
from pathlib import Path

import numpy as np
import zmq

from runtime.contracts.dataset import IMAGE_SUFFIXES
from runtime.daemon.queues import BoundedQueue, FrameJob, Outgoing
from runtime.contracts.verdict import Verdict

log = logging.getLogger("lineside.camera")



class CameraSource:
    def __init__(self, source: str, loop: bool = True):
        import cv2

        self.source, self.loop = source, loop
        self.files: list[Path] = []
        self.cap = None
        p = Path(source)
        if p.is_dir():
            self.files = sorted(f for f in p.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)
            if not self.files:
                raise ValueError(f"camera.source {source}: folder holds no images ({', '.join(IMAGE_SUFFIXES)})")
            self.i = 0
        else:
            if source.isdigit():
                self.cap = cv2.VideoCapture(int(source))
            elif "!" in source:
                self.cap = cv2.VideoCapture(source, cv2.CAP_GSTREAMER)
            else:
                self.cap = cv2.VideoCapture(source)
            if not self.cap.isOpened():
                raise ValueError(f"camera.source {source!r}: OpenCV cannot open it")

    def read(self) -> np.ndarray | None:
        """Next frame as uint8 RGB, or None when the source has ended (and does not loop)."""
        import cv2

        if self.files:
            if self.i >= len(self.files):
                if not self.loop:
                    return None
                self.i = 0
            f = self.files[self.i]
            self.i += 1
            bgr = cv2.imread(str(f), cv2.IMREAD_COLOR)
            if bgr is None:
                raise ValueError(f"{f}: not a readable image")
            return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
        ok, bgr = self.cap.read()
        if not ok and self.loop and Path(self.source).is_file():
            self.cap.set(cv2.CAP_PROP_POS_FRAMES, 0)
            ok, bgr = self.cap.read()
        if not ok:
            return None
        return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB) if bgr.ndim == 3 else bgr

    def close(self) -> None:
        if self.cap is not None:
            self.cap.release()


class CameraThread(threading.Thread):
    def __init__(self, ctx: zmq.Context, ccfg, queue: BoundedQueue, publish_q, telemetry):
        super().__init__(name="lineside-camera", daemon=True)
        self.cfg, self.queue, self.publish_q, self.tm = ccfg, queue, publish_q, telemetry
        self.stop_event = threading.Event()
        self.source = CameraSource(ccfg.source, ccfg.loop)
        self.sub = None
        if ccfg.mode == "trigger":
            if not ccfg.trigger:
                raise ValueError("camera.mode is trigger but camera.trigger (a SUB endpoint) is not set")
            self.sub = ctx.socket(zmq.SUB)
            self.sub.linger = 0
            self.sub.maxmsgsize = 64 * 1024
            self.sub.setsockopt(zmq.SUBSCRIBE, b"")
            self.sub.connect(ccfg.trigger)
        self.n = 0

    def run(self) -> None:
        period = 1.0 / self.cfg.rate_hz
        next_t = time.monotonic()
        try:
            while not self.stop_event.is_set():
                if self.sub is not None:
                    if not self.sub.poll(100, zmq.POLLIN):
                        continue
                    trig = _trigger(self.sub.recv_multipart())
                    if trig is None:
                        continue
                    self._grab(trig.get("frame_id"), trig.get("camera_id"))
                else:
                    delay = next_t - time.monotonic()
                    if delay > 0:
                        self.stop_event.wait(delay)
                        continue
                    next_t += period
                    if not self._grab(None, None):
                        return
        finally:
            self.source.close()
            if self.sub is not None:
                self.sub.close(linger=0)

    def _grab(self, frame_id, camera_id) -> bool:
        img = self.source.read()
        cam = str(camera_id or self.cfg.camera_id)
        fid = str(frame_id or f"{cam}-{self.n:08d}")
        self.n += 1
        if img is None:
            log.warning("camera source %s ended", self.cfg.source)
            return False
        job = FrameJob(fid, cam, time.time(), time.perf_counter(), {"encoding": "raw"}, None, image=img,
                       want_mask=self.cfg.want_mask, source="camera")
        ok, evicted = self.queue.put(job)
        for lost, why in ((evicted, "dropped oldest"), (None if ok else job, "rejected newest")):
            if lost is not None:
                self.tm.drops.labels("queue_full").inc()
                v = Verdict.failure(lost.frame_id, "dropped", f"queue full: {why}", camera_id=lost.camera_id,
                                    ts_frame=lost.ts_frame, ts_verdict=time.time())
                self.publish_q.put(Outgoing(v))
        if ok:
            self.tm.frames.labels("camera").inc()
        return True


def _trigger(msg: list[bytes]) -> dict | None:
    for part in msg:
        try:
            h = json.loads(part)
        except (ValueError, UnicodeDecodeError):
            continue
        if isinstance(h, dict) and h.get("kind") == "trigger":
            return h
    log.warning("ignored a message on the trigger socket that is not a protocol trigger")
    return None
