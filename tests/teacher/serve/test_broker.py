"""teacher serve broker: worker processes on loopback behind one endpoint; a worker killed (-9) or frozen
(SIGSTOP) mid-stream loses no request and answers none twice; capacity rises with workers; the broker <->
worker wire (teacher/serve/pirate.py) driven by hand for the late-reply and retry cases."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
import zmq

from runtime.contracts.protocol import decode_header, encode, image_frames
from teacher.serve import ServeConfig, TeacherServer, pirate
from teacher.serve.broker import Broker, BrokerConfig

pytestmark = pytest.mark.timeout(60)

RECV_MS = 10_000
START_S = 30.0  # worker processes start under a loaded CI machine


@pytest.fixture
def ctx():
    c = zmq.Context()
    yield c
    c.destroy(linger=0)


@pytest.fixture
def broker():
    with Broker(BrokerConfig(bind="tcp://127.0.0.1:*", backend="tcp://127.0.0.1:*")) as b:
        yield b


def image(k: int, size: int = 8) -> np.ndarray:
    return np.full((size, size, 3), k % 256, np.uint8)


def workers(broker: Broker, model: str, n: int, **kw) -> TeacherServer:
    cfg = ServeConfig(model=model, broker=broker.backend_endpoint, workers=n, worker_mode="process",
                      max_wait_ms=0, **kw)
    srv = TeacherServer(cfg).start()
    wait_for(lambda: len(broker.status()["workers"]) == n, "workers registered", broker)
    return srv


def wait_for(pred, what: str, broker: Broker, timeout_s: float = START_S) -> None:
    t_end = time.monotonic() + timeout_s
    while time.monotonic() < t_end:
        if pred():
            return
        time.sleep(0.02)
    raise AssertionError(f"{what}: not within {timeout_s} s; broker status {broker.status()}")


def client(ctx: zmq.Context, endpoint: str) -> zmq.Socket:
    s = ctx.socket(zmq.DEALER)
    s.linger = 0
    s.connect(endpoint)
    return s


def recv(sock: zmq.Socket, timeout_ms: int = RECV_MS) -> dict | None:
    if not sock.poll(timeout_ms):
        return None
    return decode_header(sock.recv_multipart())


def stream(sock: zmq.Socket, n: int, prefix: str) -> list[str]:
    ids = [f"{prefix}{k:03d}" for k in range(n)]
    for k, fid in enumerate(ids):
        sock.send_multipart(image_frames("infer", image(k), "raw", frame_id=fid, camera_id="cam1"))
    return ids


def collect(sock: zmq.Socket, ids: list[str], on_reply=None) -> dict[str, list[dict]]:
    """Replies by frame id until every id has one; then a quiet spell in which any duplicate would show."""
    got: dict[str, list[dict]] = {}
    for _ in range(10 * len(ids)):
        if len(got) == len(ids):
            break
        h = recv(sock)
        assert h is not None, f"no reply within {RECV_MS} ms; {len(got)}/{len(ids)} answered"
        got.setdefault(h["frame_id"], []).append(h)
        if on_reply is not None:
            on_reply(len(got))
    while (h := recv(sock, 300)) is not None:  # late duplicates would arrive here
        got.setdefault(h["frame_id"], []).append(h)
    return got


class SignalOnce:
    """collect()'s on_reply: signal worker ``worker``'s process once, when ``after`` requests are answered."""

    def __init__(self, srv: TeacherServer, worker: int, sig: int, after: int):
        self.pid = srv.status()["workers"][worker]["pid"]
        self.sig, self.after, self.sent = sig, after, False

    def __call__(self, n_answered: int) -> None:
        if n_answered == self.after and not self.sent:
            os.kill(self.pid, self.sig)
            self.sent = True


def assert_exactly_once(got: dict[str, list[dict]], ids: list[str]) -> None:
    assert sorted(got) == sorted(ids)
    twice = {fid: len(hs) for fid, hs in got.items() if len(hs) != 1}
    assert not twice, f"answered more than once: {twice}"
    for k, fid in enumerate(ids):
        (h,) = got[fid]
        assert h["kind"] == "verdict" and h["frame_id"] == fid and h["camera_id"] == "cam1", h
        assert h["score"] == pytest.approx((k % 256) / 255.0)  # this frame's answer, not another's


def test_worker_killed_mid_stream_loses_no_request(ctx, broker):
    srv = workers(broker, "fake:per_image_ms=40", 3, max_batch=2)
    sock = client(ctx, broker.endpoint)
    try:
        kill = SignalOnce(srv, 0, signal.SIGKILL, after=12)  # mid-stream: every worker holds its full credit
        ids = stream(sock, 60, "k")
        got = collect(sock, ids, kill)
        st = broker.status()
    finally:
        sock.close()
        srv.stop()
    assert kill.sent, "the stream ended before the kill"
    assert_exactly_once(got, ids)
    assert st["counts"]["workers_lost"] >= 1 and st["counts"]["requeued"] >= 1, st["counts"]
    assert st["counts"]["lost"] == 0 and st["counts"]["answered"] == 60


def _throughput(broker: Broker, ctx: zmq.Context, n_workers: int, window_s: float) -> tuple[int, dict]:
    """Requests answered in ``window_s`` from the first answer on, with more queued than can be answered."""
    srv = workers(broker, "fake:per_image_ms=100", n_workers, max_batch=1)
    sock = client(ctx, broker.endpoint)
    try:
        stream(sock, 60, f"c{n_workers}-")  # 60 x 100 ms: more than 3 workers can answer in the window
        assert recv(sock) is not None
        done, t_end = 0, time.monotonic() + window_s
        while (left := t_end - time.monotonic()) > 0:
            if recv(sock, max(1, int(left * 1000))) is not None:
                done += 1
        served = {w["pid"]: w["served"] for w in broker.status()["workers"]}
    finally:
        sock.close()
        srv.stop()
    return done, served


def test_capacity_rises_with_workers(ctx):
    # each worker answers one request per 100 ms (max_batch 1): ~10 per window alone, ~30 with three
    window_s = 1.0
    with Broker(BrokerConfig(bind="tcp://127.0.0.1:*", backend="tcp://127.0.0.1:*")) as b1:
        one, _ = _throughput(b1, ctx, 1, window_s)
    with Broker(BrokerConfig(bind="tcp://127.0.0.1:*", backend="tcp://127.0.0.1:*")) as b3:
        three, served = _throughput(b3, ctx, 3, window_s)
    assert one >= 4, f"one worker answered only {one} in {window_s} s"
    assert three >= 1.8 * one, f"3 workers: {three} answered, 1 worker: {one}"
    assert len(served) == 3 and all(v > 0 for v in served.values()), served  # every worker took its share


def test_frozen_worker_is_skipped_and_its_requests_requeued(ctx, broker):
    srv = workers(broker, "fake:per_image_ms=50", 3, max_batch=2)
    sock = client(ctx, broker.endpoint)
    freeze = SignalOnce(srv, 1, signal.SIGSTOP, after=6)  # alive to TCP, silent to heartbeats
    pid = freeze.pid
    try:
        ids = stream(sock, 40, "z")
        got = collect(sock, ids, freeze)
        assert freeze.sent
        st = broker.status()
        assert pid not in {w["pid"] for w in st["workers"]}, "the frozen worker is still routed to"
        assert st["counts"]["requeued"] >= 1 and st["counts"]["workers_lost"] >= 1, st["counts"]
    finally:
        if freeze.sent:
            os.kill(pid, signal.SIGCONT)
    try:
        # thawed, it answers what it held (late: dropped by the broker), reconnects and registers again
        wait_for(lambda: pid in {w["pid"] for w in broker.status()["workers"]}, "thawed worker back", broker, 10.0)
        assert recv(sock, 500) is None, "a late reply reached the client"
        more = stream(sock, 12, "after")
        after = collect(sock, more)
    finally:
        sock.close()
        srv.stop()
    assert_exactly_once(got, ids)
    assert_exactly_once(after, more)
    assert broker.status()["counts"]["lost"] == 0


# -- the broker <-> worker wire by hand -----------------------------------------------------------------
def fake_worker(ctx: zmq.Context, broker: Broker, credit: int = 1, worker_id: int = 0) -> zmq.Socket:
    w = ctx.socket(zmq.DEALER)
    w.linger = 0
    w.connect(broker.backend_endpoint)
    w.send_multipart(pirate.ready({"worker_id": worker_id, "pid": 0, "host": "test", "model_hash": "m",
                                   "credit": credit}))
    return w


def next_request(w: zmq.Socket, timeout_ms: int = RECV_MS) -> list[bytes]:
    """The next REQUEST to ``w``, heartbeating meanwhile as a live worker does."""
    t_end = time.monotonic() + timeout_ms / 1e3
    while (left := t_end - time.monotonic()) > 0:
        w.send_multipart(pirate.message(pirate.HEARTBEAT))
        if not w.poll(max(1, int(min(left, pirate.HEARTBEAT_INTERVAL_S) * 1000))):
            continue
        command, rest = pirate.parse(w.recv_multipart())
        if command == pirate.REQUEST:
            return rest
    raise AssertionError("no request reached the worker")


def requests_within(w: zmq.Socket, timeout_ms: int) -> list[list[bytes]]:
    """REQUESTs (not heartbeats) that reach ``w`` within ``timeout_ms``."""
    out, t_end = [], time.monotonic() + timeout_ms / 1e3
    while (left := t_end - time.monotonic()) > 0:
        w.send_multipart(pirate.message(pirate.HEARTBEAT))
        if w.poll(max(1, int(min(left, pirate.HEARTBEAT_INTERVAL_S) * 1000))):
            command, rest = pirate.parse(w.recv_multipart())
            if command == pirate.REQUEST:
                out.append(rest)
    return out


def verdict_reply(token: bytes, frame_id: str, worker: str) -> list[bytes]:
    return pirate.message(pirate.REPLY, token, *encode({"kind": "verdict", "frame_id": frame_id, "camera_id": "cam1",
                                                        "decided_by": worker}))


def test_late_reply_from_presumed_dead_worker_is_dropped(ctx, broker):
    a = fake_worker(ctx, broker, worker_id=1)
    wait_for(lambda: len(broker.status()["workers"]) == 1, "worker a registered", broker, 5.0)
    sock = client(ctx, broker.endpoint)
    try:
        stream(sock, 1, "late")
        token_a, _header = next_request(a)[:2]
        b = fake_worker(ctx, broker, worker_id=2)  # a now falls silent: no heartbeat, no reply
        token_b = next_request(b, timeout_ms=int(1e3 * (pirate.HEARTBEAT_LIVENESS + 2) * pirate.HEARTBEAT_INTERVAL_S))[0]
        assert token_b == token_a  # the same request, re-queued from a to b
        b.send_multipart(verdict_reply(token_b, "late000", "b"))
        h = recv(sock)
        assert h["frame_id"] == "late000" and h["decided_by"] == "b"
        a.send_multipart(verdict_reply(token_a, "late000", "a"))  # a wakes up and answers: too late
        wait_for(lambda: broker.status()["counts"]["late_dropped"] == 1, "late reply dropped", broker, 5.0)
        assert recv(sock, 300) is None
        st = broker.status()
        assert st["counts"]["requeued"] == 1 and st["counts"]["answered"] == 1 and st["open_requests"] == 0
        b.close()
    finally:
        a.close()
        sock.close()


def test_retry_joins_the_open_request_and_no_worker_means_busy(ctx, broker):
    first = client(ctx, broker.endpoint)
    try:
        stream(first, 1, "r")
        h = recv(first)
        assert h["kind"] == "busy" and "no teacher worker" in h["reason"]
        w = fake_worker(ctx, broker)
        wait_for(lambda: len(broker.status()["workers"]) == 1, "worker registered", broker, 5.0)
        stream(first, 1, "r")
        token = next_request(w)[0]
        retry = client(ctx, broker.endpoint)  # Lazy Pirate: the edge reopened its socket and resent
        stream(retry, 1, "r")
        wait_for(lambda: broker.status()["counts"]["deduplicated"] == 1, "retry joined", broker, 5.0)
        assert not requests_within(w, 300), "the retry was sent to a worker again"
        w.send_multipart(verdict_reply(token, "r000", "w"))
        assert recv(first)["frame_id"] == "r000" and recv(retry)["frame_id"] == "r000"
        assert recv(first, 200) is None and recv(retry, 200) is None
        w.close()
        retry.close()
    finally:
        first.close()


def test_a_request_that_kills_every_worker_is_answered_with_an_error(ctx, broker):
    """zguide's poison pill: after MAX_REQUEUES re-queues the request is refused, not sent to the next worker."""
    ws = [fake_worker(ctx, broker, worker_id=i) for i in range(pirate.MAX_REQUEUES + 2)]
    wait_for(lambda: len(broker.status()["workers"]) == len(ws), "workers registered", broker, 5.0)
    sock = client(ctx, broker.endpoint)
    try:
        stream(sock, 1, "poison")
        killed, t_end = [], time.monotonic() + 10.0
        while len(killed) < pirate.MAX_REQUEUES + 1 and time.monotonic() < t_end:
            for i, w in enumerate(ws):
                if i in killed:
                    continue
                w.send_multipart(pirate.message(pirate.HEARTBEAT))
                while w.poll(0):
                    if pirate.parse(w.recv_multipart())[0] == pirate.REQUEST:
                        w.close()  # died computing it: the broker's next send to it fails
                        killed.append(i)
                        break
            time.sleep(0.02)
        h = recv(sock)
        assert h["kind"] == "error" and h["field"] == "server" and h["frame_id"] == "poison000", h
        assert "not re-queued again" in h["message"] and len(killed) == pirate.MAX_REQUEUES + 1
        st = broker.status()
        assert st["counts"]["lost"] == 1 and st["counts"]["workers_lost"] == len(killed) and len(st["workers"]) == 1
    finally:
        sock.close()
        for w in ws:
            w.close()


def test_broker_status_and_bad_requests(ctx, broker):
    sock = client(ctx, broker.endpoint)
    try:
        sock.send_multipart(encode({"kind": "status"}))
        st = recv(sock)["status"]
        assert st["role"] == "broker" and st["workers"] == [] and st["heartbeat_liveness"] == pirate.HEARTBEAT_LIVENESS
        sock.send_multipart([b'{"v": 1, "kind": "infer"}'])
        h = recv(sock)
        assert h["kind"] == "error" and h["field"] == "frame_id"
        sock.send_multipart([b'{"v": 9, "kind": "infer", "frame_id": "x"}'])
        h = recv(sock)
        assert h["kind"] == "error" and h["field"] == "v" and h["frame_id"] == "x"
        # the header check the workers and the daemon make (protocol.check_frame_header), made here at once
        for bad, field in (({"frame_id": 7}, "frame_id"), ({"deadline_ts": "soon"}, "deadline_ts"),
                           ({"want_mask": 1}, "want_mask")):
            sock.send_multipart(encode({"kind": "infer", "frame_id": "y", **bad}))
            h = recv(sock)
            assert h["kind"] == "error" and h["field"] == field, h
        assert broker.status()["counts"]["errors"] == 5
    finally:
        sock.close()


def test_pirate_refuses_other_protocols():
    with pytest.raises(pirate.PirateError, match="not supported"):
        pirate.parse([b"MDPW01", pirate.READY, b"{}"])
    with pytest.raises(pirate.PirateError, match="token"):
        pirate.parse([pirate.WORKER_PROTOCOL, pirate.REPLY])
    assert pirate.parse(pirate.message(pirate.HEARTBEAT)) == (pirate.HEARTBEAT, [])
    assert pirate.credit_for(max_batch=8, queue_size=64) == 16 and pirate.credit_for(8, 4) == 4


def test_cli_broker_and_brokered_workers(ctx, tmp_path):
    """`teacher serve broker` and `teacher serve --broker` as an operator runs them; SIGTERM stops both cleanly."""
    def port() -> int:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            return s.getsockname()[1]

    front, back = f"tcp://127.0.0.1:{port()}", f"tcp://127.0.0.1:{port()}"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen([sys.executable, "-m", "teacher", "serve", "broker", "--bind", front, "--backend", back,
                               "--json"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env),
             subprocess.Popen([sys.executable, "-m", "teacher", "serve", "--checkpoint", "fake", "--broker", back],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)]
    sock = client(ctx, front)
    try:
        for _ in range(300):  # until the worker registered: busy ("no teacher worker alive") before
            sock.send_multipart(image_frames("infer", image(5), "raw", frame_id="cli", camera_id="cam1"))
            h = recv(sock)
            assert h is not None, "no reply from the broker"
            if h["kind"] == "verdict":
                break
            assert h["kind"] == "busy", h
            time.sleep(0.05)
        assert h["kind"] == "verdict" and h["frame_id"] == "cli" and h["decided_by"] == "teacher"
    finally:
        sock.close()
        for p in reversed(procs):
            p.send_signal(signal.SIGTERM)
        outs = [p.communicate(timeout=20)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0]
    st = json.loads(outs[0].strip().splitlines()[-1])["status"]
    assert st["counts"]["answered"] >= 1 and st["counts"]["workers_registered"] == 1
