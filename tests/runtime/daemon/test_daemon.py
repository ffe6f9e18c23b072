"""The daemon over loopback (in-process threads): frames in, verdicts out, journaled; bad input; overload;
reload under load; CURVE; control. Every receive has a timeout; loops are bounded."""
import json
import shutil
import threading
import time

import numpy as np
import pytest
import zmq

from tests.support.runtime_fixtures import DaemonRuns, TinyArtifact, build_tiny_artifact, daemon_config

T = TinyArtifact


@pytest.fixture(scope="module")
def arts(tmp_path_factory):
    root = tmp_path_factory.mktemp("artifacts")
    a = build_tiny_artifact(root / "a", seed=0)
    build_tiny_artifact(root / "b", seed=1)
    return a, root


@pytest.fixture
def run_daemon(arts, tmp_path):
    runs = DaemonRuns(tmp_path)

    def start(artifact=None, **over):
        return runs.start(artifact or arts[0].dir, over, timeout_s=5.0)

    yield start
    runs.close()


def slow_judge(d, delay_s: float = 0.03) -> None:
    """Make the daemon's engine take ``delay_s`` longer per frame, so its queue fills."""
    eng = d.holder.engine
    real = eng.judge

    def slow(*a, **kw):
        time.sleep(delay_s)
        return real(*a, **kw)

    eng.judge = slow


def alive(c, fid="alive"):
    """The daemon still serves: a good frame gets an ok verdict."""
    c.send(T.good(9), frame_id=fid)
    got = c.collect([fid], timeout_s=5.0)
    assert got[fid][-1].status == "ok"


def test_frames_in_verdicts_out_journaled(run_daemon):
    from runtime.daemon.journal import Journal

    d, c = run_daemon()
    images = {"g": T.good(), "b": T.in_band(), "d": T.defect(), "o": T.ood()}
    for fid, img in images.items():
        ack = c.send(img, frame_id=fid, want_mask=(fid == "d"))
        assert ack["kind"] == "status" and ack["frame_id"] == fid
    c.send(T.defect(1), frame_id="dj", encoding="jpeg")
    c.send(T.good(1), frame_id="gp", encoding="png")
    j = Journal(d.cfg.journal.path)
    got = {}
    for v in c.verdicts(timeout_s=5.0, count=6):
        assert j.verdicts(v.frame_id), f"{v.frame_id} published before it was journaled"
        got[v.frame_id] = v
    assert set(got) == {"g", "b", "d", "o", "dj", "gp"}
    assert got["g"].decision == "good" and got["d"].decision == "defect" and got["dj"].decision == "defect"
    assert got["o"].ood and got["b"].in_band and not got["b"].pending  # no teacher configured: final
    assert got["d"].mask is not None and got["d"].mask.any() and got["g"].mask is None
    assert {"queue", "preprocess", "backend", "scoring", "total"} <= set(got["g"].latencies_ms)
    assert set(j.received_ids()) == set(got)
    st = c.status()
    assert st["judged"] == 6 and st["backend"].startswith("onnxruntime")
    metrics = c.control("metrics")["status"]
    assert metrics["lineside_verdicts_total{decided_by=edge,decision=defect,status=ok}"] == 2


def test_duplicate_frame_id_is_judged_and_noticed(run_daemon):
    """A reused (camera_id, frame_id) is judged again (a restarted counter must not lose a part), and the ack
    and a counter say so; the same id from another camera is not a duplicate."""
    d, c = run_daemon()
    first = c.send(T.good(), frame_id="7")
    again = c.send(T.defect(), frame_id="7")
    other = c.send(T.good(), frame_id="7", camera_id="cam1")
    assert "duplicate" not in first["status"] and again["status"]["duplicate"] is True
    assert "duplicate" not in other["status"]
    got = [v for v in c.verdicts(timeout_s=5.0, count=3)]
    assert sorted((v.camera_id, v.decision) for v in got) == [("cam0", "defect"), ("cam0", "good"), ("cam1", "good")]
    assert c.control("metrics")["status"]["lineside_duplicate_frames_total"] == 1


def test_verdicts_carry_a_sequence_and_the_journal_replays_it(run_daemon):
    """Published verdicts are numbered 1, 2, ...; `replay` gives the journaled ones after a seq; `lineside
    watch --since` prints the missed ones, then the live stream, each once."""
    import subprocess
    import sys

    d, c = run_daemon()
    for i in range(5):
        c.send(T.good(i), frame_id=f"q{i}")
    got = list(c.verdicts(timeout_s=5.0, count=5))
    assert [v.seq for v in got] == [1, 2, 3, 4, 5] and [v.frame_id for v in got] == [f"q{i}" for i in range(5)]
    page = c.control("replay", since=2, limit=2)["status"]
    assert [h["seq"] for h in page["verdicts"]] == [3, 4] and page["more"] and page["seq"] == 5
    assert [v.frame_id for v in c.replay(3)] == ["q3", "q4"]
    from runtime.client import LinesideError

    for bad, field in (({"since": True}, "since"), ({"since": -1}, "since"), ({"since": 0, "limit": 0}, "limit")):
        with pytest.raises(LinesideError, match=field):
            c.control("replay", **bad)
    w = subprocess.Popen([sys.executable, "-m", "runtime", "watch", "--from", d.endpoints["verdicts"], "--control",
                          d.endpoints["control"], "--since", "3", "--count", "3", "--timeout", "20"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines = []
    for attempt in range(20):  # the live frame goes out once the watcher has replayed and is listening
        c.send(T.defect(attempt), frame_id=f"live{attempt}")
        try:
            out, _ = w.communicate(timeout=1.0)
            lines = [json.loads(x) for x in out.splitlines() if x.startswith("{")]
            break
        except subprocess.TimeoutExpired:
            continue
    assert w.returncode == 0
    assert [h["seq"] for h in lines] == [4, 5, 6] and lines[-1]["frame_id"] == "live0"
    alive(c)


def test_workers_publish_in_frame_order_and_journal_everything(run_daemon):
    """Three judge workers on a mixed stream: large frames (slow), truncated PNGs (fast error verdicts),
    defects with masks. Verdicts still leave in the order the frames came in, each journaled first."""
    from runtime.daemon.journal import Journal

    d, c = run_daemon(**{"backend.workers": 3, "queue.size": 100})
    big = np.ascontiguousarray(np.tile(T.good(2), (6, 6, 1)))
    ids = []
    for i in range(30):
        fid = f"w{i:02d}"
        ids.append(fid)
        if i % 3 == 0:
            c.send(big, frame_id=fid, wait=False)
        elif i % 3 == 1:  # a valid PNG header (passes ingress), a body cut short: the judge's error verdict
            c.send(_truncated_png(i), frame_id=fid, encoding="png", wait=False)
        else:
            c.send(T.defect(i), frame_id=fid, want_mask=True, wait=False)
    seen = [v.frame_id for v in c.verdicts(timeout_s=10.0, count=len(ids))]
    assert seen == ids
    j = Journal(d.cfg.journal.path)
    assert all(j.verdicts(f) for f in ids)
    st = c.status()
    assert st["workers"] == 3 and st["judged"] == len(ids) and st["alive"]


def _raw(h, payload=None):
    return [json.dumps(h).encode()] + ([payload] if payload is not None else [])


def _png(img):
    import cv2

    return cv2.imencode(".png", img)[1].tobytes()


BAD = {
    "non_json": ([b"\xff{not json"], "header"),
    "not_an_object": ([b"[1, 2]"], "header"),
    "no_version": (_raw({"kind": "frame", "frame_id": "x"}), "v"),
    "unknown_version": (_raw({"v": 9, "kind": "frame", "frame_id": "x"}), "v"),
    "unknown_kind": (_raw({"v": 1, "kind": "selfie", "frame_id": "x"}), "kind"),
    "wrong_kind_here": (_raw({"v": 1, "kind": "verdict", "frame_id": "x"}), "kind"),
    "no_frame_id": (_raw({"v": 1, "kind": "frame", "encoding": "raw", "shape": [2, 2], "dtype": "uint8"}, b"1234"), "frame_id"),
    "integer_frame_id": (_raw({"v": 1, "kind": "frame", "frame_id": 7, "encoding": "raw", "shape": [2, 2],
                               "dtype": "uint8"}, b"1234"), "frame_id"),  # refused as the teacher refuses it
    "no_shape": (_raw({"v": 1, "kind": "frame", "frame_id": "x", "encoding": "raw", "dtype": "uint8"}, b"1234"), "shape"),
    "size_mismatch": (_raw({"v": 1, "kind": "frame", "frame_id": "x", "encoding": "raw", "shape": [8, 8, 3],
                            "dtype": "uint8"}, bytes(100)), "payload"),
    "empty_frame": (_raw({"v": 1, "kind": "frame", "frame_id": "x", "encoding": "raw", "shape": [0, 8, 3],
                          "dtype": "uint8"}, b""), "payload"),
    "zero_height": (_raw({"v": 1, "kind": "frame", "frame_id": "x", "encoding": "raw", "shape": [0, 8, 3],
                          "dtype": "uint8"}, b"x"), "shape"),
    "empty_payload": (_raw({"v": 1, "kind": "frame", "frame_id": "x", "encoding": "png"}, b""), "payload"),
    "no_payload": (_raw({"v": 1, "kind": "frame", "frame_id": "x", "encoding": "png"}), "payload"),
    "four_channels_raw": (_raw({"v": 1, "kind": "frame", "frame_id": "x", "encoding": "raw", "shape": [4, 4, 4],
                                "dtype": "uint8"}, bytes(64)), "shape"),
    "float_pixels": (_raw({"v": 1, "kind": "frame", "frame_id": "x", "encoding": "raw", "shape": [2, 2],
                           "dtype": "float32"}, bytes(16)), "dtype"),
    "unknown_encoding": (_raw({"v": 1, "kind": "frame", "frame_id": "x", "encoding": "webp"}, b"abc"), "encoding"),
    "bad_want_mask": (_raw({"v": 1, "kind": "frame", "frame_id": "x", "want_mask": "yes", "encoding": "png"}, b"a"),
                      "want_mask"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_input_gets_error_reply_and_verdict(run_daemon, case):
    d, c = run_daemon()
    frames, field = BAD[case]
    reply = c.send_raw(frames)
    assert reply["kind"] == "error" and reply["field"] == field, reply
    errs = [v for v in c.verdicts(timeout_s=2.0, count=1)]
    assert errs and errs[0].status == "error" and errs[0].error.startswith(field + ":"), errs
    alive(c)


def _truncated_png(seed: int) -> bytes:
    img = np.random.default_rng(seed).integers(0, 255, (32, 32, 3), dtype=np.uint8)
    data = _png(img)
    return data[:len(data) // 2]


@pytest.mark.parametrize("payload", ["truncated", "alpha"])
def test_corrupt_or_alpha_compressed_frames_get_error_verdict(run_daemon, payload):
    """A valid PNG header passes the ingress's pre-decode checks (the frame is acknowledged); the judge
    then finds the body cut short, or four channels, and publishes an error verdict naming it."""
    d, c = run_daemon()
    payload = _truncated_png(0) if payload == "truncated" else _png(np.zeros((8, 8, 4), np.uint8))
    field = "payload"
    ack = c.send(payload, frame_id="bad", encoding="png")  # decoded by the judge: accepted first
    assert ack["kind"] == "status"
    (v,) = c.collect(["bad"], timeout_s=5.0)["bad"]
    assert v.status == "error" and v.error.startswith(field) and ("corrupt" in v.error or "channels" in v.error)
    alive(c)


def test_oversize_frame_gets_error_verdict_naming_its_size(run_daemon):
    d, c = run_daemon(**{"limits.max_frame_bytes": 16 * 1024, "limits.max_message_bytes": 64 * 1024})
    from runtime.client import LinesideError

    with pytest.raises(LinesideError, match="max_frame_bytes"):
        c.send(np.zeros((100, 100, 3), np.uint8), frame_id="big")  # 30,000 B: over the frame limit, under ZeroMQ's
    (v,) = c.collect(["big"], timeout_s=5.0)["big"]
    assert v.status == "error" and v.error.startswith("payload:") and "30000 bytes" in v.error
    assert d.status()["ingress_disconnects"] == 0  # refused by the daemon, not by ZeroMQ
    alive(c)


@pytest.mark.parametrize("encoding", ["raw", "png"])
def test_frames_over_the_configured_pixel_limit_are_refused_raw_or_encoded(run_daemon, encoding):
    """limits.max_pixels bounds a raw frame's shape as it bounds the size in a PNG/JPEG header."""
    d, c = run_daemon(**{"limits.max_pixels": 64 * 64})  # the tiny model's own frames still fit
    from runtime.client import LinesideError

    with pytest.raises(LinesideError, match="exceeds the limit of 4096") as e:
        c.send(np.zeros((65, 64, 3), np.uint8), frame_id="wide", encoding=encoding)
    assert e.value.field == "shape"
    alive(c)


def test_oversize_message_disconnects_peer_daemon_keeps_serving(run_daemon):
    d, c = run_daemon(**{"limits.max_frame_bytes": 16 * 1024, "limits.max_message_bytes": 64 * 1024})
    from runtime.client import LinesideClient

    big = LinesideClient(d.endpoints["ingress"], context=c.ctx, timeout_s=1.0)
    with pytest.raises(TimeoutError):
        big.send(np.zeros((200, 200, 3), np.uint8), frame_id="huge")  # 120 kB > 64 kB: ZeroMQ drops the peer
    big.close()
    for _ in range(50):
        if d.status()["ingress_disconnects"] >= 1:
            break
        time.sleep(0.05)
    assert d.status()["ingress_disconnects"] >= 1
    alive(c)


def _eventually(cond, timeout_s: float = 3.0) -> bool:
    end = time.monotonic() + timeout_s
    while not cond():
        if time.monotonic() > end:
            return False
        time.sleep(0.05)
    return True


def test_a_clean_client_exit_is_no_refusal_a_peer_that_is_not_zeromq_is(run_daemon):
    """A client that sends a good frame and closes ends a connection (ingress_disconnects: ZeroMQ's monitor
    reports it as it reports an oversize drop, test above) and is no handshake failure; a plain TCP peer
    writing HTTP at the ingress is refused at the handshake and counted so."""
    import socket

    from runtime.client import LinesideClient

    d, c = run_daemon()
    none = {"protocol": 0, "auth": 0, "incomplete": 0}
    before = d.status()["ingress_disconnects"]
    for i in range(3):
        one = LinesideClient(d.endpoints["ingress"], context=c.ctx, timeout_s=5.0)
        assert one.send(T.good(), frame_id=f"clean{i}")["kind"] == "status"
        one.close()
    assert _eventually(lambda: d.status()["ingress_disconnects"] >= before + 3)
    assert d.status()["ingress_handshake_failures"] == none
    host, port = d.endpoints["ingress"].removeprefix("tcp://").rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=2.0) as s:
        s.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
    assert _eventually(lambda: sum(d.status()["ingress_handshake_failures"].values()) == 1)
    assert d.tm.value("lineside_ingress_handshake_failures_total", reason="auth") == 0
    alive(c)


def test_flood_from_one_sender_is_limited_others_served(run_daemon):
    from runtime.client import LinesideClient, LinesideError

    d, c = run_daemon(**{"limits.sender_rate_hz": 0.1, "limits.sender_burst": 3})
    flood = LinesideClient(d.endpoints["ingress"], context=c.ctx)
    refused = 0
    for i in range(10):
        try:
            flood.send(T.good(), frame_id=f"f{i}")
        except LinesideError as e:
            assert e.field == "rate"
            refused += 1
    assert flood.send_raw([b"\xff not even json"])["field"] == "rate"  # limited before parsing
    flood.close()
    assert refused >= 5
    vs = list(c.verdicts(timeout_s=1.0))
    errs = [v for v in vs if v.status == "error"]
    assert 1 <= len(errs) <= 2 and all(v.error.startswith("rate:") for v in errs)  # one per second per sender
    assert sum(v.status == "ok" for v in vs) == 10 - refused
    assert d.tm.value("lineside_drops_total", reason="rate") == refused + 1
    alive(c)  # another sender (another identity) has its own credit


@pytest.mark.parametrize("policy", ["drop_oldest", "reject_newest"])
def test_overload_drops_counted_queue_bounded(run_daemon, policy):
    d, c = run_daemon(**{"queue.size": 2, "queue.overload": policy})
    slow_judge(d)
    n = 30
    ids = [c.send(T.good(), frame_id=f"o{i}", wait=False) for i in range(n)]
    replies = {}
    for _ in range(200):
        for h in c.acks(0.1):
            replies[h["frame_id"]] = h["kind"]
        if len(replies) == n:
            break
    assert len(replies) == n  # every request got a reply
    got = c.collect(ids, timeout_s=5.0)
    assert set(got) == set(ids) and all(len(v) == 1 for v in got.values())  # exactly one verdict each
    dropped = [f for f, vs in got.items() if vs[0].status == "dropped"]
    st = c.status()
    assert dropped and st["drops"] == len(dropped)
    assert st["queue"]["max_seen"] <= 2
    if policy == "reject_newest":
        assert sorted(f for f, k in replies.items() if k == "busy") == sorted(dropped)
    else:
        assert all(k == "status" for k in replies.values()) and "o29" not in dropped


@pytest.mark.parametrize("workers", [1, 3])
def test_reload_under_load_loses_no_frame(run_daemon, arts, workers):
    a, root = arts
    d, c = run_daemon(**{"queue.size": 1000, "artifacts_dir": str(root), "backend.workers": workers})
    before = c.status()["model_hash"]
    n = 80
    ids = [f"r{i}" for i in range(n)]
    sender = threading.Thread(target=lambda: [(c.send(T.good(i % 5), frame_id=f, wait=False), time.sleep(0.002))
                                              for i, f in enumerate(ids)])
    from runtime.client import LinesideClient

    ctl = LinesideClient(control=d.endpoints["control"], context=c.ctx, timeout_s=30.0)
    sender.start()
    r1 = ctl.reload(root / "b")
    r2 = ctl.reload(root / "a")
    sender.join(10)
    assert r1["reloaded"] and r1["model_hash"] != before and r2["model_hash"] == before
    got = c.collect(ids, timeout_s=5.0)
    assert set(got) == set(ids) and all(len(v) == 1 and v[0].status == "ok" for v in got.values())
    assert c.status()["generation"] == 2


def test_reload_refuses_bad_or_outside_artifacts(run_daemon, arts, tmp_path):
    from runtime.client import LinesideError

    a, root = arts
    d, c = run_daemon(**{"artifacts_dir": str(root)})
    bad = root / "tampered"
    if not bad.exists():
        shutil.copytree(a.dir, bad)
        (bad / "model.onnx").write_bytes((bad / "model.onnx").read_bytes() + b"x")
    with pytest.raises(LinesideError, match="checksum") as e:
        c.reload(bad)
    assert e.value.field == "path"
    outside = tmp_path / "elsewhere"
    shutil.copytree(a.dir, outside)
    with pytest.raises(LinesideError, match="outside the artifacts directory"):
        c.reload(outside)
    assert c.status()["generation"] == 0
    alive(c)


def test_control_requires_curve_on_network_address(arts, tmp_path):
    from runtime.curve import CurveError
    from runtime.daemon.daemon import Daemon

    with pytest.raises(CurveError, match="control"):
        Daemon(arts[0].dir, daemon_config(tmp_path, **{"sockets.control": "tcp://0.0.0.0:*"})).start()
    with pytest.raises(CurveError, match="ingress"):
        Daemon(arts[0].dir, daemon_config(tmp_path, **{"sockets.ingress": "tcp://0.0.0.0:*"})).start()


def test_curve_ingress_refuses_unauthorised_key(run_daemon, tmp_path):
    import zmq.auth

    from runtime.client import LinesideClient

    keys, allowed = tmp_path / "keys", tmp_path / "allowed"
    keys.mkdir(), allowed.mkdir()
    zmq.auth.create_certificates(keys, "daemon")
    zmq.auth.create_certificates(keys, "line1")
    zmq.auth.create_certificates(keys, "intruder")
    shutil.copy(keys / "line1.key", allowed / "line1.key")
    d, c = run_daemon(**{"security.ingress_secret": str(keys / "daemon.key_secret"),
                         "security.allowed_keys": str(allowed)})
    good = LinesideClient(d.endpoints["ingress"], context=c.ctx, curve_secret=keys / "line1.key_secret",
                          server_public=keys / "daemon.key", timeout_s=5.0)
    assert good.send(T.good(), frame_id="ok1")["kind"] == "status"
    bad = LinesideClient(d.endpoints["ingress"], context=c.ctx, curve_secret=keys / "intruder.key_secret",
                         server_public=keys / "daemon.key", timeout_s=1.0)
    with pytest.raises(TimeoutError):
        bad.send(T.good(), frame_id="intruder")
    plain = LinesideClient(d.endpoints["ingress"], context=c.ctx, timeout_s=1.0)
    with pytest.raises(TimeoutError):
        plain.send(T.good(), frame_id="plain")
    for cl in (good, bad, plain):
        cl.close()
    got = c.collect(["ok1"], timeout_s=2.0)
    assert "ok1" in got and "intruder" not in got and "plain" not in got
    refused = d.status()["ingress_handshake_failures"]  # the intruder by the authenticator, plain by its mechanism
    assert refused["auth"] >= 1 and refused["protocol"] >= 1, refused


def test_curve_on_verdicts_and_per_camera_topics(arts, tmp_path):
    import zmq.auth

    from runtime.client import LinesideClient
    from runtime.daemon.daemon import Daemon

    keys, allowed = tmp_path / "keys", tmp_path / "allowed"
    keys.mkdir(), allowed.mkdir()
    for name in ("daemon", "hmi"):
        zmq.auth.create_certificates(keys, name)
    shutil.copy(keys / "hmi.key", allowed / "hmi.key")
    secret = str(keys / "daemon.key_secret")
    d = Daemon(arts[0].dir, daemon_config(tmp_path, **{"security.ingress_secret": secret, "security.verdicts_secret": secret,
                                                       "security.allowed_keys": str(allowed)})).start()
    ctx = zmq.Context()
    curve = {"curve_secret": keys / "hmi.key_secret", "server_public": keys / "daemon.key"}
    try:
        cam1 = LinesideClient(d.endpoints["ingress"], d.endpoints["verdicts"], camera_id="cam1", context=ctx, **curve)
        cam1.wait_ready()
        plain = LinesideClient(verdicts=d.endpoints["verdicts"], context=ctx, timeout_s=1.0)
        with pytest.raises(TimeoutError):
            plain.wait_ready()  # no CURVE key: the PUB socket does not talk to it
        cam1.send(T.good(), frame_id="x0", camera_id="cam0")
        cam1.send(T.good(), frame_id="x1", camera_id="cam1")
        got = [v.frame_id for v in cam1.verdicts(timeout_s=1.0)]
        assert got == ["x1"]  # subscribed to verdict.cam1 only
        cam1.close(), plain.close()
    finally:
        ctx.destroy(linger=0)
        d.stop()


def test_each_socket_admits_only_its_own_role_keys(arts, tmp_path):
    """Cameras on ingress, operators on control, and the shared allowed_keys for the verdict PUB (no directory
    of its own): a camera's key, valid on ingress, is refused on control; an operator's is refused on ingress."""
    import zmq.auth

    from runtime.client import LinesideClient

    keys = tmp_path / "keys"
    dirs = {name: tmp_path / name for name in ("cameras", "operators", "shared")}
    keys.mkdir()
    for name in ("daemon", "cam1", "op1", "hmi"):
        zmq.auth.create_certificates(keys, name)
    for (where, who) in (("cameras", "cam1"), ("operators", "op1"), ("shared", "hmi")):
        dirs[where].mkdir()
        shutil.copy(keys / f"{who}.key", dirs[where] / f"{who}.key")
    secret = str(keys / "daemon.key_secret")
    runs = DaemonRuns(tmp_path)  # its client subscribes as hmi
    d, c = runs.start(arts[0].dir, {**{f"security.{r}_secret": secret for r in ("ingress", "verdicts", "control")},
                                    "security.ingress_allowed_keys": str(dirs["cameras"]),
                                    "security.control_allowed_keys": str(dirs["operators"]),
                                    "security.allowed_keys": str(dirs["shared"])},
                      curve_secret=keys / "hmi.key_secret", server_public=keys / "daemon.key", timeout_s=5.0)

    def as_(who, timeout_s=1.0, **eps):
        return LinesideClient(**eps, context=c.ctx, curve_secret=keys / f"{who}.key_secret",
                              server_public=keys / "daemon.key", timeout_s=timeout_s)

    cam_in, cam_ctl = as_("cam1", 5.0, ingress=d.endpoints["ingress"]), as_("cam1", control=d.endpoints["control"])
    op_ctl, op_in = as_("op1", 5.0, control=d.endpoints["control"]), as_("op1", ingress=d.endpoints["ingress"])
    try:
        assert cam_in.send(T.good(), frame_id="cam-ok")["kind"] == "status"  # ingress: cameras' keys
        with pytest.raises(TimeoutError):
            cam_ctl.shutdown()  # never reaches control: the CURVE handshake is refused
        assert op_ctl.status()["alive"]  # control: operators' keys
        with pytest.raises(TimeoutError):
            op_in.send(T.good(), frame_id="op-frame")
        got = c.collect(["cam-ok"], timeout_s=5.0)  # the subscriber (hmi, the shared directory) sees verdicts
        assert "cam-ok" in got and not d.shutdown_requested.is_set() and "op-frame" not in got
    finally:
        for cl in (cam_in, cam_ctl, op_ctl, op_in):
            cl.close()
        runs.close()


def test_role_keys_need_their_socket_secret():
    from runtime.daemon.config import ConfigError, load_config

    with pytest.raises(ConfigError, match="control_allowed_keys.*control_secret is not"):
        load_config(overrides={"security.control_allowed_keys": "/etc/lineside/operators"})
    with pytest.raises(ConfigError, match="ingress_allowed_keys.*no allowed-keys"):
        load_config(overrides={"security.ingress_secret": "/k/edge.key_secret"})
    cfg = load_config(overrides={"security.ingress_secret": "/k/s", "security.control_secret": "/k/s",
                                 "security.allowed_keys": "/k/all", "security.control_allowed_keys": "/k/ops"})
    assert [cfg.security.allowed_keys_for(r) for r in ("ingress", "control")] == ["/k/all", "/k/ops"]


def test_control_is_an_ipc_file_only_this_user_opens(run_daemon, tmp_path):
    """The default transport: the socket file is 0600 whatever the umask was at start."""
    import os
    import stat

    old = os.umask(0)  # a permissive umask must not leave the control socket open
    try:
        d, c = run_daemon(**{"sockets.control": f"ipc://{tmp_path}/ctl.sock"})
    finally:
        os.umask(old)
    path = tmp_path / "ctl.sock"
    assert d.endpoints["control"] == f"ipc://{path}" and stat.S_ISSOCK(path.stat().st_mode)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert c.status()["alive"]
    from runtime.daemon.config import Sockets

    assert Sockets().control.startswith("ipc://")  # the shipped default


def test_control_on_tcp_without_curve_needs_the_insecure_flag(arts, tmp_path, run_daemon):
    from runtime.curve import CurveError
    from runtime.daemon.daemon import Daemon

    for ep, match in (("tcp://127.0.0.1:*", "any local user could reload"), ("ipc://@lineside-test", "abstract")):
        with pytest.raises(CurveError, match=match):
            Daemon(arts[0].dir, daemon_config(tmp_path, **{"sockets.control": ep})).start()
    d, c = run_daemon(**{"sockets.control": "tcp://127.0.0.1:*", "security.insecure_control": True})
    assert d.endpoints["control"].startswith("tcp://127.0.0.1:") and c.status()["alive"]


def test_camera_folder_free_running(run_daemon, tmp_path):
    import cv2

    folder = tmp_path / "cam"
    folder.mkdir()
    for i in range(3):
        cv2.imwrite(str(folder / f"{i}.png"), cv2.cvtColor(T.good(i), cv2.COLOR_RGB2BGR))
    d, c = run_daemon(**{"camera.source": str(folder), "camera.mode": "free", "camera.rate_hz": 50.0,
                         "camera.camera_id": "line7", "camera.loop": True})  # loop: frames before we subscribed
    vs = list(c.verdicts(timeout_s=2.0, count=5))
    assert [v.camera_id for v in vs] == ["line7"] * 5 and all(v.status == "ok" for v in vs)
    assert all(v.frame_id.startswith("line7-") for v in vs) and len({v.frame_id for v in vs}) == 5


def test_camera_on_trigger(run_daemon, tmp_path):
    import cv2

    from runtime.contracts import protocol

    folder = tmp_path / "cam"
    folder.mkdir()
    cv2.imwrite(str(folder / "a.png"), cv2.cvtColor(T.defect(), cv2.COLOR_RGB2BGR))
    ctx = zmq.Context()
    plc = ctx.socket(zmq.PUB)
    plc.linger = 0
    port = plc.bind_to_random_port("tcp://127.0.0.1")
    try:
        d, c = run_daemon(**{"camera.source": str(folder), "camera.trigger": f"tcp://127.0.0.1:{port}"})
        got = {}
        for i in range(50):  # PUB/SUB joins late: trigger until one verdict comes back
            plc.send_multipart(protocol.encode({"kind": "trigger", "frame_id": f"t{i}", "camera_id": "cam9"}))
            got.update(c.collect([f"t{i}"], timeout_s=0.1))
            if got:
                break
        v = next(iter(got.values()))[0]
        assert v.camera_id == "cam9" and v.decision == "defect"
    finally:
        plc.close()
        ctx.destroy(linger=0)


def test_prometheus_endpoint(run_daemon):
    import urllib.request

    d, c = run_daemon(metrics_port=0)
    c.send(T.defect(), frame_id="m1")
    c.collect(["m1"], timeout_s=5.0)
    time.sleep(0.1)
    body = urllib.request.urlopen(d.endpoints["metrics"], timeout=5).read().decode()
    assert 'lineside_verdicts_total{decided_by="edge",decision="defect",status="ok"} 1.0' in body
    assert "lineside_backend_info" in body
    # plain HTTP names the model by its name and hash, never by where it lives on disk
    assert f'model_hash="{d.holder.engine.model_hash}"' in body and 'model="tiny"' in body
    assert str(d.artifact_dir) not in body and str(d.artifact_dir.parent) not in body
    # as Prometheus users expect: the text format parses, latencies are histograms in seconds, the process'
    # own metrics and build_info are there
    from prometheus_client.parser import text_string_to_metric_families

    from runtime.report import version

    fams = {f.name: f for f in text_string_to_metric_families(body)}
    lat = fams["lineside_stage_latency_seconds"]
    assert lat.type == "histogram" and not any(n.endswith("_ms") for n in fams)
    backend_sum = [s.value for s in lat.samples if s.name.endswith("_sum") and s.labels["stage"] == "backend"]
    assert backend_sum and 0 < backend_sum[0] < 5  # seconds, not milliseconds
    for name in ("process_resident_memory_bytes", "process_cpu_seconds", "process_open_fds"):
        assert name in fams and fams[name].samples[0].value > 0, name
    (build,) = fams["lineside_build_info"].samples
    assert build.value == 1 and build.labels["version"] == version() and "commit" in build.labels
    health = urllib.request.urlopen(d.endpoints["metrics"].replace("/metrics", "/healthz"), timeout=5)
    h = json.loads(health.read())
    assert health.status == 200 and h["healthy"] and h["model_hash"] == d.holder.engine.model_hash
    assert c.status()["lineside"] == {"version": version(), "commit": build.labels["commit"]}  # lineside status


def test_control_on_ipc(run_daemon, tmp_path):
    d, c = run_daemon(**{"sockets.control": f"ipc://{tmp_path}/control.sock"})
    assert d.endpoints["control"].startswith("ipc://") and c.status()["alive"]


def test_shutdown_over_control(run_daemon):
    d, c = run_daemon()
    assert c.shutdown()["shutting_down"]
    assert d.wait(2.0) and d.shutdown_reason == "control socket"


@pytest.mark.slow
def test_memory_flat_under_sustained_overload(run_daemon):
    """Soak: thousands of frames into a 4-deep queue; resident memory stops growing once warm."""
    def rss_mb():  # Linux
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * 4096 / 2**20

    d, c = run_daemon(**{"queue.size": 4, "queue.overload": "drop_oldest", "limits.sender_rate_hz": 1e6,
                         "limits.sender_burst": 100000})
    img = T.good()

    def burst(n, tag):
        for i in range(n):
            c.send(img, frame_id=f"{tag}{i}", wait=False)
            if i % 50 == 49:
                c.acks(0.0)
                list(c.verdicts(timeout_s=0.0))
        c.acks(0.5)
        list(c.verdicts(timeout_s=0.5))

    burst(2000, "warm")
    before = rss_mb()
    for k in range(3):
        burst(2000, f"soak{k}-")
    after = rss_mb()
    st = c.status()
    assert st["queue"]["max_seen"] <= 4 and st["drops"] > 0
    print(f"rss {before:.1f} -> {after:.1f} MB, judged {st['judged']}, dropped {st['drops']:.0f}")
    assert after - before < 20, (before, after)


def test_send_counts_the_drops_from_the_verdicts_it_saw(run_daemon, tmp_path, capsys):
    """`lineside send --rate 0 --json`: an ack only means queued; with --verdicts the summary says how many of
    the accepted frames the daemon dropped, as its own drop counter does."""
    import argparse

    import cv2

    from runtime.cli import send

    d, c = run_daemon(**{"queue.size": 2, "queue.overload": "drop_oldest"})
    slow_judge(d)
    folder = tmp_path / "frames"
    folder.mkdir()
    for i in range(20):
        cv2.imwrite(str(folder / f"s{i:02d}.png"), T.good(i)[..., ::-1])
    p = argparse.ArgumentParser()
    send.configure(p)
    args = p.parse_args([str(folder), "--to", d.endpoints["ingress"], "--verdicts", d.endpoints["verdicts"],
                         "--rate", "0", "--timeout", "5", "--json"])
    assert send.run(args) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    v = out["verdicts"]
    assert out["accepted"] == 20 and v["unseen"] == 0
    assert v["dropped"] > 0 and v["dropped"] == c.status()["drops"]
    assert v["judged"] + v["dropped"] == 20


@pytest.mark.parametrize("tool", ["send x", "watch", "status", "control status"])
def test_an_endpoint_without_its_transport_is_refused_in_one_line(tool, capsys):
    from runtime.cli import main

    argv = tool.split() + ["--from" if tool == "watch" else "--to", "127.0.0.1:6999"]
    with pytest.raises(SystemExit) as e:
        main(argv)
    err = capsys.readouterr().err
    assert e.value.code == 2 and "Traceback" not in err and "did you mean tcp://127.0.0.1:6999?" in err


def test_log_lines_carry_iso8601_timestamps_with_a_zone():
    import logging
    from datetime import datetime

    from runtime.telemetry import JsonFormatter

    rec = logging.LogRecord("lineside.daemon", logging.INFO, __file__, 1, "started", None, None)
    rec.created = 1_764_000_000.25
    d = json.loads(JsonFormatter().format(rec))
    assert d["ts"] == "2025-11-24T16:00:00.250+00:00" and datetime.fromisoformat(d["ts"]).timestamp() == rec.created
