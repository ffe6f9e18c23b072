"""The one client of the wire protocol (runtime/contracts/protocol.py), as zguide keeps mdcliapi.py:
LinesideClient for a daemon, RequestClient for any peer's ROUTER, request() for one round trip.

LinesideClient is what a camera driver, a test, the demo or an integrator uses to talk to a daemon:

    with LinesideClient("tcp://127.0.0.1:5555", verdicts="tcp://127.0.0.1:5556",
                        control="tcp://127.0.0.1:5557") as c:
        c.wait_ready()                       # the verdict subscription is live (heartbeat seen)
        ack = c.send(image, frame_id="f1")   # {"kind": "status", "frame_id": "f1", "status": {...}}
        for v in c.verdicts(timeout_s=2.0):  # Verdict objects (mask decoded when sent)
            ...
        c.status()

Ingress is a DEALER (several frames may be in flight: ``send(..., wait=False)`` then ``acks()``), verdicts
a SUB on topic ``verdict.`` (or one camera's), control a DEALER with a REQ-style empty delimiter so the
same call works against a teacher server's ROUTER. Every receive has a timeout.

RequestClient is one DEALER to a daemon's ingress, a teacher server or a broker: send a message, receive
the reply, every receive with a timeout and no retries (retrying is the caller's policy: the daemon's
Lazy Pirate cascade, runtime/daemon/cascade.py, closes and reopens). LinesideClient sends its frames
through one; teacher/serve/bench.py's ServeClient and the demo's status probes are built on it.
"""
from __future__ import annotations

import itertools
import json
import time
from collections import deque
from pathlib import Path
from typing import Iterator, Optional, Sequence

import numpy as np
import zmq

from runtime.contracts import protocol
from runtime.curve import make_client
from runtime.contracts.verdict import Verdict, decode_mask_png

DEFAULT_TIMEOUT_S = 5.0


class LinesideError(RuntimeError):
    """The daemon answered with an error; ``field`` names what it refused."""

    def __init__(self, header: dict):
        super().__init__(f"{header.get('field')}: {header.get('message')}")
        self.field, self.message, self.header = header.get("field"), header.get("message"), header


class RequestClient:
    """``with RequestClient(endpoint) as c: header, frames = c.infer(img, "f1")``. One DEALER, LINGER 0;
    several requests may be in flight (replies come in the order the peer sends them). ``delimiter`` puts
    the REQ-style empty part before each message (a daemon's control socket needs it; a ROUTER that splits
    envelopes, like a teacher server's, echoes it back, and ``recv`` drops it). ``peer`` names the other
    end in errors. Raises TimeoutError on silence, ProtocolError on a reply that breaks the protocol."""

    def __init__(self, endpoint: str, context: Optional[zmq.Context] = None, *,
                 curve_secret: Optional[str | Path] = None, server_public: Optional[str | Path] = None,
                 timeout_s: float = DEFAULT_TIMEOUT_S, delimiter: bool = False, peer: Optional[str] = None):
        self.ctx = context or zmq.Context.instance()
        self.endpoint, self.timeout_s, self.peer = endpoint, timeout_s, peer or endpoint
        self._head = [b""] if delimiter else []
        self.sock = self.ctx.socket(zmq.DEALER)
        self.sock.linger = 0
        self.sock.sndtimeo = int(timeout_s * 1000)
        if curve_secret:
            make_client(self.sock, curve_secret, server_public)
        self.sock.connect(endpoint)

    def send(self, frames: Sequence[bytes]) -> None:
        # a DEALER with no usable connection (peer down, CURVE refused) blocks on send: never forever
        try:
            self.sock.send_multipart(self._head + list(frames), copy=False)
        except zmq.Again:
            raise TimeoutError(f"cannot send to {self.peer} within {self.timeout_s:.1f} s (not connected, or its "
                               "CURVE key refused ours)") from None

    def recv(self, timeout_s: Optional[float] = None) -> tuple[dict, list[bytes]]:
        """The next reply: (its checked header, its parts without the echoed delimiter)."""
        t = self.timeout_s if timeout_s is None else timeout_s
        if not self.sock.poll(int(t * 1000), zmq.POLLIN):
            raise TimeoutError(f"no reply from {self.peer} within {t:.1f} s")
        frames = self.sock.recv_multipart()
        while frames and frames[0] == b"":  # the REQ-style delimiter, echoed by the peer's ROUTER
            frames = frames[1:]
        return protocol.decode_header(frames), frames

    def request(self, frames: Sequence[bytes], timeout_s: Optional[float] = None) -> tuple[dict, list[bytes]]:
        self.send(frames)
        return self.recv(timeout_s)

    def infer(self, image: np.ndarray, frame_id: str, encoding: str = "raw", timeout_s: Optional[float] = None,
              **header) -> tuple[dict, list[bytes]]:
        """One "infer" request (to a teacher server or broker) and its reply."""
        return self.request(protocol.image_frames("infer", image, encoding, frame_id=frame_id, **header), timeout_s)

    def status(self, timeout_s: Optional[float] = None) -> dict:
        """A "status" request's reply object."""
        return self.request(protocol.encode({"kind": "status"}), timeout_s)[0]["status"]

    def close(self) -> None:
        self.sock.close(linger=0)

    def __enter__(self) -> "RequestClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class LinesideClient:
    def __init__(self, ingress: Optional[str] = None, verdicts: Optional[str] = None, *, control: Optional[str] = None,
                 camera_id: Optional[str] = None, curve_secret: Optional[str | Path] = None,
                 server_public: Optional[str | Path] = None, timeout_s: float = DEFAULT_TIMEOUT_S,
                 context: Optional[zmq.Context] = None):
        self.ctx = context or zmq.Context.instance()
        self.timeout_s = timeout_s
        self._curve = (curve_secret, server_public) if curve_secret else None
        self._ids = itertools.count()
        self._acks: dict[str, dict] = {}
        self._buffer: deque[Verdict] = deque()
        self.ingress = RequestClient(ingress, self.ctx, curve_secret=curve_secret, server_public=server_public,
                                     timeout_s=timeout_s, peer="the daemon") if ingress else None
        self.sub = None
        self._topic = protocol.verdict_topic(camera_id) if camera_id else None  # compared exactly: cam1 is not cam10
        if verdicts:
            self.sub = self._socket(zmq.SUB, verdicts)
            self.sub.setsockopt(zmq.SUBSCRIBE, self._topic or protocol.VERDICT_TOPIC_PREFIX)
            self.sub.setsockopt(zmq.SUBSCRIBE, protocol.HEARTBEAT_TOPIC)
        self.control_ep = control

    def _socket(self, kind: int, endpoint: str) -> zmq.Socket:
        s = self.ctx.socket(kind)
        s.linger = 0
        s.sndtimeo = int(self.timeout_s * 1000)
        if self._curve:
            make_client(s, *self._curve)
        s.connect(endpoint)
        return s

    # -- frames -----------------------------------------------------------------------------------
    def send(self, image: np.ndarray | bytes, frame_id: Optional[str] = None, camera_id: str = "cam0",
             encoding: str = "raw", want_mask: bool = False, wait: bool = True,
             timeout_s: Optional[float] = None, **header) -> dict | str:
        """Send one frame. ``image``: uint8 RGB array (encoded as ``encoding``), or already-encoded JPEG/PNG
        bytes. Returns the ack header (raises LinesideError on an error reply, TimeoutError on silence);
        with ``wait=False`` returns the frame id at once (collect replies with ``acks()``)."""
        fid = str(frame_id) if frame_id is not None else f"{camera_id}-{next(self._ids):08d}"
        h = {"frame_id": fid, "camera_id": camera_id, "want_mask": want_mask, **header}
        if isinstance(image, (bytes, bytearray, memoryview)):
            frames = protocol.encode({"kind": "frame", "ts": time.time(), "encoding": encoding, **h}, bytes(image))
        else:
            frames = protocol.image_frames("frame", image, encoding, **h)
        self.ingress.send(frames)
        if not wait:
            return fid
        return self.ack(fid, timeout_s)

    def send_raw(self, frames: list[bytes], timeout_s: Optional[float] = None) -> dict:
        """Send arbitrary message parts (tests of bad input) and return the next reply header."""
        self.ingress.send(frames)
        return self._recv_reply(timeout_s)

    def ack(self, frame_id: str, timeout_s: Optional[float] = None) -> dict:
        deadline = time.monotonic() + (timeout_s or self.timeout_s)
        while frame_id not in self._acks:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no reply for frame {frame_id} from the daemon")
            h = self._recv_reply(left)
            self._acks[str(h.get("frame_id"))] = h
        h = self._acks.pop(frame_id)
        if h.get("kind") == "error":
            raise LinesideError(h)
        return h

    def acks(self, timeout_s: float = 0.0) -> list[dict]:
        """Replies that have arrived (waiting up to ``timeout_s`` for the first)."""
        out = [self._acks.pop(k) for k in list(self._acks)]
        t = timeout_s
        while True:
            try:
                out.append(self._recv_reply(t))
            except TimeoutError:
                return out
            t = 0.0

    def _recv_reply(self, timeout_s: Optional[float]) -> dict:
        return self.ingress.recv(timeout_s)[0]

    # -- verdicts ---------------------------------------------------------------------------------
    def wait_ready(self, timeout_s: Optional[float] = None) -> None:
        """Block until the verdict subscription is live (a heartbeat arrived), so no verdict is missed."""
        deadline = time.monotonic() + (timeout_s or self.timeout_s)
        while time.monotonic() < deadline:
            if self.sub.poll(50, zmq.POLLIN):
                msg = self.sub.recv_multipart()
                if msg[0] == protocol.HEARTBEAT_TOPIC:
                    return
                if self._topic is None or msg[0] == self._topic:
                    self._buffer.append(_verdict(msg))
        raise TimeoutError("no heartbeat from the daemon's verdict socket")

    def verdicts(self, timeout_s: float = DEFAULT_TIMEOUT_S, count: Optional[int] = None) -> Iterator[Verdict]:
        """Verdicts as they come; stops after ``timeout_s`` without one, or after ``count``."""
        n = 0
        while count is None or n < count:
            if self._buffer:
                v = self._buffer.popleft()
            else:
                v = self._next_verdict(timeout_s)
                if v is None:
                    return
            n += 1
            yield v

    def _next_verdict(self, timeout_s: float) -> Optional[Verdict]:
        deadline = time.monotonic() + timeout_s
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or not self.sub.poll(max(1, int(left * 1000)), zmq.POLLIN):
                return None
            msg = self.sub.recv_multipart()
            if msg[0] != protocol.HEARTBEAT_TOPIC and (self._topic is None or msg[0] == self._topic):
                return _verdict(msg)

    def collect(self, frame_ids, timeout_s: float = DEFAULT_TIMEOUT_S, final: bool = False) -> dict[str, list[Verdict]]:
        """Verdicts per frame id until each has one (``final``: one that is not pending); stops on silence."""
        want = set(map(str, frame_ids))
        got: dict[str, list[Verdict]] = {}
        done = set()
        for v in self.verdicts(timeout_s):
            got.setdefault(v.frame_id, []).append(v)
            if v.frame_id in want and (not final or not v.pending):
                done.add(v.frame_id)
            if done >= want:
                break
        return got

    # -- control ----------------------------------------------------------------------------------
    def control(self, cmd: str, timeout_s: Optional[float] = None, **fields) -> dict:
        if not self.control_ep:
            raise ValueError("this client has no control endpoint")
        return request(self.ctx, self.control_ep, {"kind": "control", "cmd": cmd, **fields},
                       timeout_s or self.timeout_s, self._curve)

    def replay(self, since: int, timeout_s: Optional[float] = None) -> Iterator[Verdict]:
        """The journaled verdicts after sequence number ``since``, oldest first, page by page (control
        socket "replay"): what this subscriber missed while away, or before it joined."""
        while True:
            page = self.control("replay", timeout_s, since=since)["status"]
            for h in page["verdicts"]:
                v = Verdict.from_header(h)
                since = max(since, v.seq or since)
                yield v
            if not page["more"]:
                return

    def status(self, timeout_s: Optional[float] = None) -> dict:
        return self.control("status", timeout_s)["status"]

    def reload(self, artifact_dir: str | Path, timeout_s: Optional[float] = None) -> dict:
        return self.control("reload", timeout_s or max(self.timeout_s, 30.0), path=str(artifact_dir))["status"]

    def shutdown(self, timeout_s: Optional[float] = None) -> dict:
        return self.control("shutdown", timeout_s)["status"]

    def close(self) -> None:
        if self.ingress is not None:
            self.ingress.close()
        if self.sub is not None:
            self.sub.close(linger=0)

    def __enter__(self) -> "LinesideClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def request(ctx: zmq.Context, endpoint: str, header: dict, timeout_s: float, curve=None) -> dict:
    """One request, one reply (fresh RequestClient, REQ-style envelope, LINGER 0): the reply header.
    ``curve``: (client secret, server public). Raises TimeoutError / LinesideError / ProtocolError."""
    secret, public = curve or (None, None)
    with RequestClient(endpoint, ctx, curve_secret=secret, server_public=public, timeout_s=timeout_s,
                       delimiter=True) as c:
        h, _ = c.request(protocol.encode(header))
    if h["kind"] == "error":
        raise LinesideError(h)
    return h


def _verdict(msg: list[bytes]) -> Verdict:
    h = json.loads(msg[1])
    v = Verdict.from_header({k: x for k, x in h.items() if k not in ("v", "kind", "has_mask", "field")})
    if len(msg) > 2:
        v.mask = decode_mask_png(msg[2])
    return v
