"""teacher serve with thread workers and the fake model: protocol, batching, busy, expiry, retries.

Loopback on random ports, linger 0, every receive with a timeout, bounded loops (STYLE.md tests/).
"""
from __future__ import annotations

import contextlib
import json
import threading
import time

import cv2
import numpy as np
import pytest
import zmq

from runtime.contracts.protocol import encode, image_frames
from runtime.contracts.verdict import Verdict, decode_mask_png
from teacher.serve import ServeConfig, TeacherServer
from teacher.serve.bench import ServeClient
from tests.support.teacher_fixtures import status_until

TIMEOUT_MS = 5000
SILENCE_MS = 600


@contextlib.contextmanager
def serving(model="fake", **kw):
    cfg = ServeConfig(model=model, bind="tcp://127.0.0.1:*", **kw)
    with TeacherServer(cfg) as srv:
        yield srv


@pytest.fixture
def ctx():
    c = zmq.Context()
    yield c
    c.destroy(linger=0)


def image(value=100, size=32, seed=None):
    if seed is None:
        return np.full((size, size, 3), value, np.uint8)
    return np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)


def wait_status(client, pred, tries=50):
    return status_until(client, pred, TIMEOUT_MS, tries)


def test_concurrent_clients_are_batched(ctx):
    with serving("fake:delay_ms=150", max_batch=4, max_wait_ms=100) as srv:
        clients = [ServeClient(srv.endpoint, ctx, timeout_ms=TIMEOUT_MS) for _ in range(6)]
        try:
            for k, c in enumerate(clients):
                c.send(image_frames("infer", image(seed=k), "raw", frame_id=f"f{k}", camera_id=f"cam{k}"))
            for k, c in enumerate(clients):
                r = c.recv()
                assert r is not None, f"client {k}: no reply"
                h, _ = r
                assert h["kind"] == "verdict" and h["frame_id"] == f"f{k}" and h["camera_id"] == f"cam{k}"
                assert h["decided_by"] == "teacher" and h["status"] == "ok"
            st = wait_status(clients[0], lambda s: s["counts"]["served"] == 6)
        finally:
            for c in clients:
                c.close()
    hist = {int(k): v for k, v in st["batch_size_histogram"].items()}
    assert sum(k * v for k, v in hist.items()) == 6
    assert max(hist) > 1, f"no request was batched with another: {hist}"
    assert st["mean_batch_size"] > 1


def test_verdict_header_and_mask(ctx):
    img = np.zeros((40, 50, 3), np.uint8)
    img[10:20, 5:15] = 255  # mean well below mid-grey: good, with one bright region
    with serving() as srv, ServeClient(srv.endpoint, ctx, timeout_ms=TIMEOUT_MS) as c:
        h, frames = c.infer(img, "m1", want_mask=True, ts=123.5)
        assert h["kind"] == "verdict"
        v = Verdict.from_header(h)
        assert v.frame_id == "m1" and v.decision == "good" and v.ts_frame == 123.5
        assert v.score == pytest.approx(float(img.mean()) / 255, rel=1e-5)
        assert v.regions and v.regions[0].bbox == (5, 10, 15, 20)
        assert "teacher_batch_ms" in v.latencies_ms and "teacher_queue_ms" in v.latencies_ms
        assert len(frames) == 2
        mask = decode_mask_png(frames[1])
        assert mask.shape == (40, 50) and mask.sum() == 100
        h2, frames2 = c.infer(img, "m2")  # no mask asked: no payload
        assert h2["kind"] == "verdict" and len(frames2) == 1
        assert v.model_hash == c.status()["model_hash"] != ""


def test_jpeg_png_and_grey_frames(ctx):
    with serving() as srv, ServeClient(srv.endpoint, ctx, timeout_ms=TIMEOUT_MS) as c:
        for enc in ("jpeg", "png"):
            h, _ = c.infer(image(200, 48), f"e-{enc}", encoding=enc)
            assert h["kind"] == "verdict" and h["decision"] == "defect", h
        h, _ = c.infer(np.full((16, 16), 10, np.uint8), "grey")
        assert h["kind"] == "verdict" and h["decision"] == "good"


def test_retry_gets_cached_answer_without_recompute(ctx):
    with serving("fake:delay_ms=200", max_batch=4, max_wait_ms=0) as srv, \
            ServeClient(srv.endpoint, ctx, timeout_ms=TIMEOUT_MS) as c:
        frames = image_frames("infer", image(seed=1), "raw", frame_id="r1")
        c.send(frames)
        c.send(frames)  # a retry while the first is still computing joins it
        a, b = c.recv(), c.recv()
        assert a and b and a[0]["frame_id"] == b[0]["frame_id"] == "r1"
        h3, _ = c.request(frames)  # a retry after the reply: from the LRU
        assert h3.pop("cached") is True
        assert {k: v for k, v in h3.items()} == a[0]
        st = wait_status(c, lambda s: s["counts"]["served"] == 3)
    assert st["counts"]["deduplicated"] == 1 and st["counts"]["cache_hits"] == 1
    assert st["batch_size_histogram"] == {"1": 1}, "the frame was computed more than once"


def _garbage_cases():
    good = image(50, 8)
    jpeg = cv2.imencode(".jpg", good)[1].tobytes()
    raw_hdr = {"kind": "infer", "frame_id": "g", "encoding": "raw", "shape": [8, 8, 3], "dtype": "uint8"}
    return [
        ("not json", [b"\xff{nope", b"x"], "header"),
        ("json list", [b"[1,2]"], "header"),
        ("no version", [json.dumps({"kind": "infer"}).encode()], "v"),
        ("wrong version", [json.dumps({"v": 99, "kind": "infer", "frame_id": "g"}).encode(), good.tobytes()], "v"),
        ("unknown kind", encode({"kind": "teleport", "frame_id": "g"}), "kind"),
        ("kind not served", encode({"kind": "trigger"}), "kind"),
        ("no frame_id", encode({k: v for k, v in raw_hdr.items() if k != "frame_id"}, good.tobytes()), "frame_id"),
        ("frame_id not str", encode({**raw_hdr, "frame_id": 7}, good.tobytes()), "frame_id"),
        ("deadline not number", encode({**raw_hdr, "deadline_ts": "soon"}, good.tobytes()), "deadline_ts"),
        ("want_mask not bool", encode({**raw_hdr, "want_mask": "yes"}, good.tobytes()), "want_mask"),
        ("no payload", encode(raw_hdr), "payload"),
        ("bad payload size", encode(raw_hdr, good.tobytes()[:-1]), "payload"),
        ("extra part", encode(raw_hdr, good.tobytes()) + [b"more"], "payload"),
        ("bad shape", encode({**raw_hdr, "shape": [8, "8", 3]}, good.tobytes()), "shape"),
        ("bad dtype", encode({**raw_hdr, "dtype": "int64"}, good.tobytes()), "dtype"),
        ("float pixels", encode({**raw_hdr, "dtype": "float32"}, np.zeros((8, 8, 3), np.float32).tobytes()), "dtype"),
        ("unknown encoding", encode({**raw_hdr, "encoding": "webp"}, jpeg), "encoding"),
        ("corrupt jpeg", encode({**raw_hdr, "encoding": "jpeg"}, jpeg[:20] + b"\x00" * 50), "payload"),
        ("four channels", encode({**raw_hdr, "shape": [8, 8, 4]}, np.zeros((8, 8, 4), np.uint8).tobytes()), "shape"),
        ("too many pixels", encode({**raw_hdr, "shape": [100, 100, 3]}, np.zeros((100, 100, 3), np.uint8).tobytes()),
         "shape"),
        ("too many pixels (png)", encode({**raw_hdr, "encoding": "png"},
                                         cv2.imencode(".png", np.zeros((100, 100), np.uint8))[1].tobytes()), "shape"),
        ("too many pixels (jpeg)", encode({**raw_hdr, "encoding": "jpeg"},
                                          cv2.imencode(".jpg", np.zeros((100, 70, 3), np.uint8))[1].tobytes()), "shape"),
    ]


def test_garbage_gets_error_naming_the_field_and_server_keeps_serving(ctx):
    with serving(max_pixels=64 * 64) as srv, ServeClient(srv.endpoint, ctx, timeout_ms=TIMEOUT_MS) as c:
        for name, frames, field in _garbage_cases():
            r = c.request(frames)
            assert r is not None, f"{name}: no reply"
            h, _ = r
            assert h["kind"] == "error", f"{name}: {h}"
            assert h["field"] == field, f"{name}: expected field {field!r}, got {h}"
            assert h["message"]
            h, _ = c.infer(image(30, 8), f"after-{name}")
            assert h["kind"] == "verdict", f"server stopped serving after {name}: {h}"
        st = c.status()
    assert st["counts"]["errors"] == len(_garbage_cases())
    assert st["counts"]["served"] == len(_garbage_cases())


@pytest.mark.parametrize("enc,shape", [("jpeg", (37, 53, 3)), ("png", (41, 29)), ("jpeg", (20, 30))])
def test_encoded_dims_read_without_decoding(enc, shape):
    from runtime.contracts.protocol import encoded_dims

    img = np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)
    params = [cv2.IMWRITE_JPEG_PROGRESSIVE, 1] if shape == (20, 30) else []
    data = cv2.imencode(".jpg" if enc == "jpeg" else ".png", img, params)[1].tobytes()
    assert encoded_dims(data, enc) == shape[:2]
    assert encoded_dims(data[:10], enc) is None and encoded_dims(b"garbage" * 4, enc) is None


def test_error_reply_names_the_frame_when_it_can(ctx):
    with serving() as srv, ServeClient(srv.endpoint, ctx, timeout_ms=TIMEOUT_MS) as c:
        h, _ = c.request(encode({"kind": "infer", "frame_id": "f-77", "camera_id": "line2", "encoding": "raw",
                                 "shape": [4, 4, 3], "dtype": "uint8"}, b"\x00" * 5))
        assert h["kind"] == "error" and h["field"] == "payload" and h["frame_id"] == "f-77"
        assert h["camera_id"] == "line2"  # the edge matches replies by (camera_id, frame_id)


def test_req_socket_client_is_answered(ctx):
    with serving() as srv:
        s = ctx.socket(zmq.REQ)
        s.linger = 0
        s.connect(srv.endpoint)
        s.send_multipart(image_frames("infer", image(10, 8), "raw", frame_id="req1"))
        assert s.poll(TIMEOUT_MS), "REQ client got no reply"
        h = json.loads(s.recv_multipart()[0])
        assert h["kind"] == "verdict" and h["frame_id"] == "req1"
        s.close()


def test_dealer_with_empty_delimiter_gets_it_back(ctx):
    """The edge cascade (runtime, issue 6) sends [b"", header, payload] from a DEALER."""
    with serving() as srv:
        s = ctx.socket(zmq.DEALER)
        s.linger = 0
        s.connect(srv.endpoint)
        s.send_multipart([b""] + image_frames("infer", image(10, 8), "raw", frame_id="d1", want_mask=True))
        assert s.poll(TIMEOUT_MS), "no reply"
        frames = s.recv_multipart()
        assert frames[0] == b"" and json.loads(frames[1])["frame_id"] == "d1" and len(frames) == 3
        s.send_multipart([b"", b"not json"])
        assert s.poll(TIMEOUT_MS), "no reply"
        frames = s.recv_multipart()
        assert frames[0] == b"" and json.loads(frames[1])["field"] == "header"
        assert srv.health_problem() is None
        s.close()


def test_busy_when_queue_full(ctx):
    with serving("fake:delay_ms=300", max_batch=1, max_wait_ms=0, queue_size=2) as srv, \
            ServeClient(srv.endpoint, ctx, timeout_ms=TIMEOUT_MS) as c:
        for i in range(8):
            c.send(image_frames("infer", image(i, 8), "raw", frame_id=f"b{i}", camera_id="camB"))
        replies = {}
        for _ in range(8):
            r = c.recv()
            assert r is not None, f"only {len(replies)} of 8 requests answered"
            assert r[0]["camera_id"] == "camB"
            replies[r[0]["frame_id"]] = r[0]["kind"]
        st = wait_status(c, lambda s: s["counts"]["served"] + s["counts"]["busy"] == 8)
    assert sorted(replies) == [f"b{i}" for i in range(8)]
    kinds = list(replies.values())
    assert kinds.count("busy") >= 1 and kinds.count("verdict") >= 1, replies
    assert set(kinds) == {"busy", "verdict"}
    assert st["counts"]["busy"] == kinds.count("busy")


def test_expired_requests_are_not_computed(ctx):
    with serving("fake:delay_ms=400", max_batch=1, max_wait_ms=0) as srv, \
            ServeClient(srv.endpoint, ctx, timeout_ms=TIMEOUT_MS) as c:
        h, _ = c.infer(image(1, 8), "late", deadline_ts=time.time() - 1.0)
        assert h["kind"] == "error" and h["field"] == "deadline_ts" and h["reason"] == "expired"
        c.send(image_frames("infer", image(2, 8), "raw", frame_id="first"))  # occupies the model 400 ms
        c.send(image_frames("infer", image(3, 8), "raw", frame_id="queued", deadline_ts=time.time() + 0.1))
        got = {}
        for _ in range(2):
            r = c.recv()
            assert r is not None
            got[r[0]["frame_id"]] = r[0]
        assert got["first"]["kind"] == "verdict"
        assert got["queued"]["kind"] == "error" and got["queued"]["reason"] == "expired"
        st = wait_status(c, lambda s: s["counts"]["expired"] == 2)
    assert st["counts"]["served"] == 1
    assert st["batch_size_histogram"] == {"1": 1}, "an expired request reached the model"


def test_request_that_cannot_meet_its_deadline_gets_busy_at_once(ctx):
    with serving("fake:delay_ms=400", max_batch=1, max_wait_ms=0) as srv, \
            ServeClient(srv.endpoint, ctx, timeout_ms=TIMEOUT_MS) as c:
        assert c.infer(image(1, 8), "warm")[0]["kind"] == "verdict"  # the worker now knows a batch takes ~400 ms
        c.send(image_frames("infer", image(2, 8), "raw", frame_id="running"))
        time.sleep(0.05)
        # refused at admission ("busy"), not queued and expired later (that would be an "expired" error)
        h, _ = c.infer(image(3, 8), "hopeless", deadline_ts=time.time() + 0.3)
        assert h["kind"] == "busy" and h["frame_id"] == "hopeless" and "deadline" in h["reason"], h
        h, _ = c.recv()
        assert h["kind"] == "verdict" and h["frame_id"] == "running"


def test_model_failure_is_an_error_reply_and_server_keeps_serving(ctx):
    with serving("fake:fail_marker=7") as srv, ServeClient(srv.endpoint, ctx, timeout_ms=TIMEOUT_MS) as c:
        h, _ = c.infer(image(7, 8), "boom")
        assert h["kind"] == "error" and h["field"] == "model" and "fail_marker" in h["message"]
        h, _ = c.infer(image(8, 8), "fine")
        assert h["kind"] == "verdict"
        h, _ = c.infer(image(7, 8), "boom")  # model errors are not cached: recomputed (and fail again)
        assert h["kind"] == "error"
        st = wait_status(c, lambda s: s["counts"]["model_errors"] == 2)
    assert st["counts"]["served"] == 1


def test_oversize_message_drops_that_peer_only(ctx):
    with serving(max_message_mb=0.25) as srv, ServeClient(srv.endpoint, ctx, timeout_ms=TIMEOUT_MS) as good, \
            ServeClient(srv.endpoint, ctx, timeout_ms=SILENCE_MS) as big:
        assert big.infer(image(5, 400), "huge") is None  # 480 kB > MAXMSGSIZE: ZeroMQ disconnects it
        h, _ = good.infer(image(5, 32), "small")
        assert h["kind"] == "verdict"
        st = good.status()
    # the small request and this status request; the oversize one never reached a worker
    assert st["counts"]["received"] == 2 and st["counts"]["errors"] == 0


def test_status_reports_what_the_lead_asked_for(ctx):
    with serving(max_batch=3) as srv, ServeClient(srv.endpoint, ctx, timeout_ms=TIMEOUT_MS) as c:
        for i in range(4):
            assert c.infer(image(i, 8), f"s{i}")[0]["kind"] == "verdict"
        st = wait_status(c, lambda s: s["counts"]["served"] == 4)
        assert st == srv.status() or st["counts"] == srv.status()["counts"]
    for key in ("queue_depth", "batch_size_histogram", "latency_ms", "model_hash", "counts", "workers", "config"):
        assert key in st
    assert set(st["latency_ms"]) == {"p50", "p90", "p99", "n"} and st["latency_ms"]["n"] == 4
    assert st["latency_ms"]["p50"] <= st["latency_ms"]["p99"]
    assert {"served", "busy", "expired", "errors"} <= set(st["counts"])
    assert len(st["workers"]) == 1 and st["workers"][0]["alive"]
    assert st["config"]["max_batch"] == 3


def test_stop_drains_the_running_batch(ctx):
    srv = TeacherServer(ServeConfig(model="fake:delay_ms=500", bind="tcp://127.0.0.1:*", max_wait_ms=0)).start()
    try:
        with ServeClient(srv.endpoint, ctx, timeout_ms=TIMEOUT_MS) as c:
            c.send(image_frames("infer", image(1, 8), "raw", frame_id="inflight"))
            time.sleep(0.15)  # the request is in the model now
            stopper = threading.Thread(target=srv.stop)
            stopper.start()
            r = c.recv()
            stopper.join(timeout=30)
        assert r is not None and r[0]["kind"] == "verdict" and r[0]["frame_id"] == "inflight"
        assert not stopper.is_alive()
    finally:
        srv.stop()


def test_two_thread_workers(ctx):
    with serving("fake:delay_ms=50", workers=2, worker_mode="thread") as srv:
        clients = [ServeClient(srv.endpoint, ctx, timeout_ms=TIMEOUT_MS) for _ in range(4)]
        try:
            for k, c in enumerate(clients):
                c.send(image_frames("infer", image(k, 8), "raw", frame_id=f"t{k}"))
            assert all(c.recv() is not None for c in clients)
            st = wait_status(clients[0], lambda s: s["counts"]["served"] == 4)
        finally:
            for c in clients:
                c.close()
    assert len(st["workers"]) == 2 and all(w["alive"] for w in st["workers"])


def test_port_in_use_is_a_clear_error_not_a_hang(ctx):
    from teacher.serve import ServeError

    with serving() as srv:
        with pytest.raises(ServeError, match="cannot serve on"):
            TeacherServer(ServeConfig(model="fake", bind=srv.endpoint)).start()
        with ServeClient(srv.endpoint, ctx, timeout_ms=TIMEOUT_MS) as c:  # the first one is unharmed
            assert c.infer(image(1, 8), "still")[0]["kind"] == "verdict"


def test_config_is_checked():
    from runtime.curve import CurveError
    from teacher.serve import ServeError

    with pytest.raises(CurveError, match="--insecure"):
        ServeConfig(model="fake", bind="tcp://0.0.0.0:5999").check()
    ServeConfig(model="fake", bind="tcp://0.0.0.0:5999", insecure=True).check()
    with pytest.raises(ServeError, match="both"):
        ServeConfig(model="fake", curve_secret="x").check()
    with pytest.raises(ServeError, match="max-batch"):
        ServeConfig(model="fake", max_batch=0).check()
    with pytest.raises(ServeError, match="not a directory"):
        ServeConfig(model="/nonexistent/ckpt").check()
    with pytest.raises(ValueError, match="unknown option"):
        ServeConfig(model="fake:speed=9").check()
