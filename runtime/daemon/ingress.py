"""Pushed frames in: a ROUTER socket that answers every request (ack, busy or error) or counts the drop.

A camera driver or PLC gateway connects a DEALER (or REQ: an empty delimiter is echoed back) and sends
the protocol's "frame" message. Per batch drained from the socket: check every header (and raw
payload), journal the accepted frames in one transaction, then queue them and send the acks, so an
acknowledged frame is always in the journal. Bad input gets an error reply naming the field and an
error verdict on the PUB socket; the loop keeps serving. A payload over ``limits.max_frame_bytes`` is
such bad input (refused, its size named). Beyond ``limits.max_message_bytes`` (ZMQ_MAXMSGSIZE, set
higher) ZeroMQ drops the peer before we ever see the message: that bounds the memory one message takes.
A socket monitor counts every connection that ends (``lineside_ingress_disconnects``: ZeroMQ reports a client
that closed and a peer it dropped for an oversize message alike, so the count is of both) and, by reason, every
peer ZeroMQ refused at the handshake (``lineside_ingress_handshake_failures``: those it does tell apart).
"""
from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict

import zmq
from zmq.utils.monitor import recv_monitor_message

from runtime.contracts import protocol
from runtime.curve import check_bind_policy, make_server
from runtime.daemon.journal import Journal
from runtime.contracts.protocol import ProtocolError
from runtime.daemon.queues import BoundedQueue, FrameJob, Outgoing
from runtime.contracts.verdict import Verdict

log = logging.getLogger("lineside.ingress")

POLL_MS = 100
BATCH_MAX = 64  # messages drained per journal transaction
SENDER_TABLE_MAX = 4096  # token buckets kept; the oldest are forgotten
RECENT_IDS_MAX = 65536  # (camera_id, frame_id) pairs remembered to notice a reused id; the oldest are forgotten
RATE_VERDICT_INTERVAL_S = 1.0  # at most one "rate" error verdict per sender per interval; the rest are counted
# the monitor events of a handshake ZeroMQ refused, by the reason lineside_ingress_handshake_failures names
HANDSHAKE_FAILURES = {zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL: "protocol", zmq.EVENT_HANDSHAKE_FAILED_AUTH: "auth",
                      zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL: "incomplete"}


class TokenBucket:
    def __init__(self, rate_hz: float, burst: int):
        self.rate, self.burst = rate_hz, float(burst)
        self.tokens, self.t = float(burst), time.monotonic()
        self.last_verdict = -1e9  # monotonic time of the last "rate" error verdict for this sender

    def take(self) -> bool:
        now = time.monotonic()
        self.tokens = min(self.burst, self.tokens + (now - self.t) * self.rate)
        self.t = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False


class Ingress(threading.Thread):
    def __init__(self, ctx: zmq.Context, cfg, queue: BoundedQueue, publish_q, telemetry, journal_path: str):
        super().__init__(name="lineside-ingress", daemon=True)
        self.cfg, self.queue, self.publish_q, self.tm = cfg, queue, publish_q, telemetry
        self.journal_path, self.sync = journal_path, cfg.journal.synchronous
        self.stop_event = threading.Event()
        sec = cfg.security
        s = self.sock = ctx.socket(zmq.ROUTER)
        s.linger = 0
        s.maxmsgsize = cfg.limits.max_message_bytes
        s.rcvhwm = s.sndhwm = 10_000
        if sec.ingress_secret:
            make_server(s, sec.ingress_secret, domain="ingress")
        check_bind_policy(cfg.sockets.ingress, bool(sec.ingress_secret), sec.insecure, "ingress")
        s.bind(cfg.sockets.ingress)
        self.endpoint = s.last_endpoint.decode()
        events = zmq.EVENT_DISCONNECTED
        for ev in HANDSHAKE_FAILURES:
            events |= ev
        self.monitor = s.get_monitor_socket(events)
        self.buckets: dict[bytes, TokenBucket] = {}
        self.recent: OrderedDict[tuple[str, str], None] = OrderedDict()

    # -- the loop -------------------------------------------------------------------------------
    def run(self) -> None:
        journal = Journal(self.journal_path, self.sync)
        poller = zmq.Poller()
        poller.register(self.sock, zmq.POLLIN)
        poller.register(self.monitor, zmq.POLLIN)
        try:
            while not self.stop_event.is_set():
                events = dict(poller.poll(POLL_MS))
                if self.monitor in events:
                    self._drain_monitor()
                if self.sock in events:
                    self._batch(journal)
        except Exception:
            log.exception("ingress loop failed")
            raise
        finally:
            journal.close()
            self.sock.disable_monitor()
            self.monitor.close(linger=0)
            self.sock.close(linger=0)

    def _drain_monitor(self) -> None:
        while True:
            try:
                ev = recv_monitor_message(self.monitor, zmq.NOBLOCK)
            except zmq.Again:
                return
            fields = {"endpoint": ev["endpoint"].decode(errors="replace")}
            if ev["event"] == zmq.EVENT_DISCONNECTED:  # a client that closed, or one ZeroMQ dropped: it says not which
                self.tm.disconnects.inc()
                log.info("ingress connection ended", extra={"fields": fields})
            elif ev["event"] in HANDSHAKE_FAILURES:
                reason = HANDSHAKE_FAILURES[ev["event"]]
                self.tm.handshake_failures.labels(reason=reason).inc()
                log.warning("ingress handshake refused", extra={"fields": {**fields, "reason": reason,
                                                                            "code": ev["value"]}})

    def _batch(self, journal: Journal) -> None:
        accepted: list[tuple[list[bytes], FrameJob, list[bytes]]] = []
        for _ in range(BATCH_MAX):
            try:
                msg = self.sock.recv_multipart(zmq.NOBLOCK, copy=True)
            except zmq.Again:
                break
            env, frames = (msg[:2], msg[2:]) if len(msg) > 1 and msg[1] == b"" else (msg[:1], msg[1:])
            try:
                job = self._check(env, frames)
            except Exception as e:  # a bug met by one message costs that message, never the ingress thread
                log.exception("ingress: checking a message failed")
                self._refuse(env, frames, "internal", f"could not be checked ({e.__class__.__name__}); refused")
                job = None
            if job is not None:
                accepted.append((env, job, frames))
        if not accepted:
            return
        accepted = self._spool_room(journal, accepted)
        # journal and spool before ack: an acknowledged frame is in the journal, its bytes in the spool, even if
        # the process dies now; the restart judges it (runtime.daemon.daemon recovery)
        now = time.time()
        journal.record_received([(j.frame_id, j.camera_id, now, env[0].hex()) for env, j, _ in accepted],
                                [(j.frame_id, j.camera_id, bytes(f[0]), bytes(f[1])) for _, j, f in accepted])
        for env, job, _ in accepted:
            ok, evicted = self.queue.put(job)
            if evicted is not None:
                self._dropped(evicted, f"queue full ({self.queue.maxsize}): dropped oldest for a newer frame")
            if ok:
                self.tm.frames.labels("ingress").inc()
                status = {"accepted": True, "queue_depth": len(self.queue)}
                if self._seen(job.camera_id, job.frame_id):
                    status["duplicate"] = True  # judged all the same: a restarted counter must not lose a part
                self._reply(env, {"kind": "status", "frame_id": job.frame_id, "status": status})
            else:
                self._dropped(job, f"queue full ({self.queue.maxsize}): rejected newest")
                self._reply(env, {"kind": "busy", "frame_id": job.frame_id, "message": "queue full, frame dropped"})
        self.tm.queue_depth.set(len(self.queue))
        self.tm.queue_max.set(self.queue.max_seen)

    def _spool_room(self, journal: Journal, accepted: list) -> list:
        """The frames the spool has room for; the rest are answered busy (refused before the ack, so no
        acknowledged frame is ever without its bytes). Judged frames' bytes do not count."""
        room = self.cfg.journal.spool_max_bytes - journal.spooled_bytes()
        keep = []
        for env, job, frames in accepted:
            if len(frames[1]) <= room:
                room -= len(frames[1])
                keep.append((env, job, frames))
                continue
            self._dropped(job, "spool full (journal.spool_max_bytes): refused before the ack", reason="spool_full")
            self._reply(env, {"kind": "busy", "frame_id": job.frame_id, "message": "spool full, frame not accepted"})
        return keep

    def _seen(self, camera_id: str, frame_id: str) -> bool:
        """Whether a recent accepted frame had these ids (then counted and logged); remembers them."""
        key = (camera_id, frame_id)
        dup = key in self.recent
        self.recent[key] = None
        self.recent.move_to_end(key)
        if len(self.recent) > RECENT_IDS_MAX:
            self.recent.popitem(last=False)
        if dup:
            self.tm.duplicates.inc()
            log.warning("duplicate frame id: judged again", extra={"fields": {"camera_id": camera_id,
                                                                             "frame_id": frame_id}})
        return dup

    def _check(self, env: list[bytes], frames: list[bytes]) -> FrameJob | None:
        bucket = self._bucket(env[0])
        if not bucket.take():  # before any parsing: a flood of bad messages is limited like a flood of good ones
            return self._flooded(env, frames, bucket)
        try:
            h = protocol.decode_header(frames, expect=("frame", "status"))
            if h["kind"] == "status":
                self._reply(env, {"kind": "status", "status": {"alive": True, "queue_depth": len(self.queue)}})
                return None
            fh = protocol.check_frame_header(h)  # the same check as the teacher's (runtime/contracts/protocol.py)
            size, limit = len(frames[1]) if len(frames) > 1 else 0, self.cfg.limits.max_frame_bytes
            if size > limit:
                raise ProtocolError("payload", f"{size} bytes, over limits.max_frame_bytes ({limit}); frame refused")
            enc, max_pixels = fh.encoding, self.cfg.limits.max_pixels
            image = None
            if enc == "raw":  # size vs shape x dtype, channels, dtype: cheap checks
                image = protocol.decode_image(h, frames, max_pixels=max_pixels)
            elif len(frames) != 2 or len(frames[1]) == 0:
                raise ProtocolError("payload", "empty frame" if len(frames) == 2
                                    else f"expected 2 message parts, got {len(frames)}")
            else:  # decoded later by the judge; its magic bytes and claimed size are checked before the ack
                protocol.check_encoded(frames[1], enc, max_pixels)
            return FrameJob(frame_id=fh.frame_id, camera_id=fh.camera_id, ts_frame=fh.ts, t_recv=time.perf_counter(),
                            header=h, payload=None if image is not None else frames[1], image=image,
                            want_mask=fh.want_mask)
        except ProtocolError as e:
            self._refuse(env, frames, e.field, e.message)
            return None

    def _refuse(self, env: list[bytes], frames: list[bytes], field: str, message: str) -> None:
        """An error reply naming the field, and a counted error verdict under the message's ids if valid."""
        self.tm.errors.labels(field).inc()
        fid, cam = "", "cam0"
        try:
            h = protocol.parse_json_object(bytes(frames[0]), "header") if frames else {}
            fid, cam = protocol.safe_id(h, "frame_id"), protocol.safe_id(h, "camera_id", "cam0")
        except ProtocolError:
            pass
        self._reply(env, protocol.error_frames(field, message, fid or None)[0], raw=True)
        v = Verdict.failure(fid, "error", f"{field}: {message}", camera_id=cam, ts_verdict=time.time())
        self.publish_q.put(Outgoing(v, extra={"field": field}))

    def _flooded(self, env: list[bytes], frames: list[bytes], bucket: TokenBucket) -> None:
        """Over the sender's credit: an error reply always, an error verdict at most once a second (a flood
        must not turn into a flood of journal writes), the rest counted as drops."""
        lim = self.cfg.limits
        msg = f"sender over its limit of {lim.sender_rate_hz:g} frames/s (burst {lim.sender_burst}); frame refused"
        self.tm.errors.labels("rate").inc()
        self.tm.drops.labels("rate").inc()
        fid, cam = "", "cam0"
        try:
            h = protocol.parse_json_object(bytes(frames[0]), "header") if frames else {}
            fid, cam = protocol.safe_id(h, "frame_id"), protocol.safe_id(h, "camera_id", "cam0")
        except ProtocolError:  # not a JSON object: refused for the rate all the same
            pass
        self._reply(env, protocol.error_frames("rate", msg, fid or None)[0], raw=True)
        now = time.monotonic()
        if now - bucket.last_verdict >= RATE_VERDICT_INTERVAL_S:
            bucket.last_verdict = now
            v = Verdict.failure(fid, "error", f"rate: {msg}", camera_id=cam, ts_verdict=time.time())
            self.publish_q.put(Outgoing(v, extra={"field": "rate"}))
        return None

    def _bucket(self, ident: bytes) -> TokenBucket:
        b = self.buckets.get(ident)
        if b is None:
            if len(self.buckets) >= SENDER_TABLE_MAX:
                self.buckets.pop(next(iter(self.buckets)))
            b = self.buckets[ident] = TokenBucket(self.cfg.limits.sender_rate_hz, self.cfg.limits.sender_burst)
        return b

    def _dropped(self, job: FrameJob, why: str, reason: str = "queue_full") -> None:
        self.tm.drops.labels(reason).inc()
        v = Verdict.failure(job.frame_id, "dropped", why, camera_id=job.camera_id, ts_frame=job.ts_frame,
                            ts_verdict=time.time())
        self.publish_q.put(Outgoing(v, t_recv=job.t_recv))

    def _reply(self, env: list[bytes], header, raw: bool = False) -> None:
        body = header if raw else protocol.encode(header)[0]
        try:
            self.sock.send_multipart(env + [body], zmq.NOBLOCK)
        except zmq.ZMQError as e:  # peer gone or its pipe full: the verdict still goes out on PUB
            log.warning("ingress reply not sent: %s", e)
