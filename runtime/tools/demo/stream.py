"""The line part of the demo: a teacher server and a daemon as real processes, a camera streaming
the test split into the daemon, and a subscriber collecting every verdict.

Processes are started with ``subprocess.Popen`` in their own session (a Ctrl-C in the terminal
reaches the demo, which then stops them in order), and always stopped in ``finally``: SIGTERM,
wait, SIGKILL on timeout.
"""
from __future__ import annotations

import shlex
import signal
import socket
import subprocess
import threading
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import zmq

from runtime.client import LinesideError, request
from runtime.contracts import protocol
from runtime.tools.demo.steps import StepError, command, tail
from runtime.contracts.verdict import Verdict

STOP_TIMEOUT_S = 10.0  # SIGTERM -> exit; then SIGKILL
READY_TIMEOUT_S = 120.0  # a service answers its first status request within this
STATUS_POLL_MS = 500  # Lazy Pirate: wait this long for a status reply, then reopen the socket
SUBSCRIBE_TIMEOUT_S = 15.0  # PUB/SUB slow joiner: wait for the daemon's first heartbeat before streaming
VERDICT_POLL_MS = 100
TEACHER_GRACE_S = 60.0  # after the last frame, wait this long for teacher verdicts of pending frames


IPC_PATH_MAX = 100  # a Unix socket path holds ~107 bytes (sun_path); longer run dirs use a short temp dir


def control_endpoint(out: Path) -> str:
    """The daemon's control socket for a demo run in ``out``: a private ipc:// file (never an open TCP
    port), in ``out`` when its path fits a Unix socket address, else in a fresh temp dir."""
    path = (Path(out) / "control.sock").resolve()
    if len(str(path)) > IPC_PATH_MAX:
        import tempfile

        path = Path(tempfile.mkdtemp(prefix="lineside-demo-")) / "control.sock"
    return f"ipc://{path}"


def free_ports(n: int, host: str = "127.0.0.1") -> list[int]:
    """n distinct free TCP ports on loopback (held together while choosing, so they differ)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind((host, 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


class Service:
    """One long-running lineside process (daemon or teacher server), logged to a file."""

    def __init__(self, name: str, tool: str, args: list[str], log: Path, env: dict):
        self.name = name
        self.argv = command(tool) + [str(a) for a in args]
        self.log = Path(log)
        self.env = env
        self.proc: subprocess.Popen | None = None
        self.returncode: int | None = None
        self.killed = False

    def start(self) -> "Service":
        self.log.parent.mkdir(parents=True, exist_ok=True)
        logf = open(self.log, "w")
        logf.write("$ " + shlex.join(self.argv) + "\n")
        logf.flush()
        try:
            self.proc = subprocess.Popen(self.argv, stdout=logf, stderr=subprocess.STDOUT, env=self.env,
                                         start_new_session=True)
        finally:
            logf.close()  # the child holds its own descriptor
        return self

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def check_alive(self) -> None:
        if self.proc is not None and self.proc.poll() is not None:
            raise StepError(f"{self.name}: `{shlex.join(self.argv)}` exited with status {self.proc.returncode}\n"
                            f"--- last lines of {self.log} ---\n{tail(self.log)}")

    def stop(self, timeout_s: float = STOP_TIMEOUT_S) -> int | None:
        """SIGTERM, wait, SIGKILL (the whole session) on timeout. Returns the exit status."""
        p = self.proc
        if p is None:
            return None
        if p.poll() is None:
            try:
                p.send_signal(signal.SIGTERM)
                p.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self.killed = True
                try:
                    import os
                    os.killpg(p.pid, signal.SIGKILL)  # its own session: only what it started
                except ProcessLookupError:
                    pass
                p.wait(timeout=timeout_s)
        self.returncode = p.returncode
        return p.returncode


def request_status(ctx: zmq.Context, endpoint: str, header: dict, timeout_ms: int = STATUS_POLL_MS) -> dict | None:
    """One request/reply round trip (runtime.client.request: a daemon's control socket and a teacher
    server alike); the reply header, an error reply's included, or None on silence or a reply that breaks
    the protocol (the socket is dropped with LINGER 0, Lazy Pirate)."""
    try:
        return request(ctx, endpoint, header, timeout_ms / 1e3)
    except LinesideError as e:  # it answered: alive, whatever it said
        return e.header
    except (TimeoutError, protocol.ProtocolError):
        return None


def wait_ready(ctx: zmq.Context, service: Service, endpoint: str, header: dict,
               timeout_s: float = READY_TIMEOUT_S) -> dict:
    """Poll a service's status endpoint (a daemon's or a teacher server's) until it answers; fail early if the
    process dies."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        service.check_alive()
        reply = request_status(ctx, endpoint, header)
        if reply is not None:
            return reply
        time.sleep(0.2)
    service.check_alive()
    raise StepError(f"{service.name}: no status reply on {endpoint} within {timeout_s:.0f} s (log: {service.log})")


@dataclass
class Collected:
    """Every verdict seen on the daemon's PUB socket, by frame id, in arrival order."""
    verdicts: dict[str, list[Verdict]] = field(default_factory=dict)
    arrival_s: dict[str, list[float]] = field(default_factory=dict)  # monotonic
    bad_messages: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, v: Verdict, t: float) -> None:
        with self.lock:
            self.verdicts.setdefault(v.frame_id, []).append(v)
            self.arrival_s.setdefault(v.frame_id, []).append(t)

    def edge(self, frame_id: str) -> Verdict | None:
        for v in self.verdicts.get(frame_id, []):
            if v.decided_by == "edge" and v.status != "teacher_unreachable":
                return v
        return None

    def resolution(self, frame_id: str) -> Verdict | None:
        """The verdict that settles a pending frame: the teacher's, or the edge saying the teacher was unreachable."""
        for v in self.verdicts.get(frame_id, []):
            if v.decided_by == "teacher" or v.status == "teacher_unreachable":
                return v
        return None

    def final(self, frame_id: str) -> Verdict | None:
        """What the line acts on: the teacher's verdict if one came (status ok), else the edge's."""
        r = self.resolution(frame_id)
        if r is not None and r.decided_by == "teacher" and r.status == "ok":
            return r
        return self.edge(frame_id)

    def settled(self, frame_ids: Iterable[str]) -> bool:
        with self.lock:
            for fid in frame_ids:
                e = self.edge(fid)
                if e is None and self.resolution(fid) is None:
                    return False
                if e is not None and e.pending and self.resolution(fid) is None:
                    return False
            return True


class VerdictCollector(threading.Thread):
    """SUB on the daemon's verdict socket; decodes every message into the Collected store."""

    def __init__(self, ctx: zmq.Context, endpoint: str, store: Collected):
        super().__init__(name="verdict-collector", daemon=True)
        self.sock = ctx.socket(zmq.SUB)
        self.sock.linger = 0
        self.sock.setsockopt(zmq.SUBSCRIBE, b"")
        self.sock.connect(endpoint)
        self.store = store
        self._stop_evt = threading.Event()
        self.heard = threading.Event()  # set by the first message (a heartbeat): the subscription is live

    def run(self) -> None:
        try:
            while not self._stop_evt.is_set():
                if not self.sock.poll(VERDICT_POLL_MS, zmq.POLLIN):
                    continue
                frames = self.sock.recv_multipart()
                self.heard.set()
                if frames and frames[0] == protocol.HEARTBEAT_TOPIC:
                    continue
                frames = _strip_topic(frames)
                try:
                    h = protocol.decode_header(frames, expect=("verdict",))
                    v = Verdict.from_header(h)
                except (protocol.ProtocolError, TypeError, ValueError, KeyError):
                    self.store.bad_messages += 1
                    continue
                self.store.add(v, time.monotonic())
        finally:
            self.sock.close(linger=0)

    def stop(self) -> None:
        self._stop_evt.set()
        self.join(timeout=2.0)


def _strip_topic(frames: list[bytes]) -> list[bytes]:
    # A publisher may prefix a topic frame (e.g. the camera id); the header is the first JSON object.
    for i, f in enumerate(frames[:2]):
        if f[:1] == b"{":
            return frames[i:]
    return frames


@dataclass
class StreamResult:
    sent: list[str]  # frame ids in send order
    send_ts: dict[str, float]  # monotonic send time per frame
    send_errors: dict[str, str]
    wall_s: float
    settle_s: float
    settled: bool
    via: str  # "LinesideClient" or "lineside send"


def stream_frames(ingress: str, frames: list[tuple[str, np.ndarray]], rate_hz: float, store: Collected,
                  services: list[Service], on_frame: Callable[[int], None] | None = None,
                  grace_s: float = TEACHER_GRACE_S) -> StreamResult:
    """Send frames at ``rate_hz`` as a triggered camera would, then wait until every frame has its
    edge verdict and every pending one its teacher (or teacher_unreachable) verdict."""
    from runtime.client import LinesideClient  # the daemon engineer's client (runtime/client.py)

    period = 1.0 / rate_hz if rate_hz > 0 else 0.0
    sent, send_ts, errors = [], {}, {}
    t0 = time.monotonic()
    with ExitStack() as stack:
        client = LinesideClient(ingress)
        if hasattr(client, "close"):
            stack.callback(client.close)
        for i, (fid, img) in enumerate(frames):
            target = t0 + i * period
            delay = target - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            for s in services:
                s.check_alive()
            send_ts[fid] = time.monotonic()
            try:
                client.send(img, frame_id=fid)
            except Exception as e:  # a refused frame is a result to report, not a crash
                errors[fid] = f"{type(e).__name__}: {e}"
            sent.append(fid)
            if on_frame:
                on_frame(i + 1)
    t_sent = time.monotonic()
    deadline = t_sent + grace_s
    settled = False
    while time.monotonic() < deadline:
        if store.settled(sent):
            settled = True
            break
        for s in services:
            s.check_alive()
        time.sleep(0.1)
    t_end = time.monotonic()
    return StreamResult(sent, send_ts, errors, t_sent - t0, t_end - t_sent, settled, "LinesideClient")
