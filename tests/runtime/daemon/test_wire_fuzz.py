"""Hostile wire input, property-based (hypothesis): every message the strategies build (headers of any JSON
or none, hostile ids, shapes and dtypes, declared vs real encodings, decompression-bomb headers, 1-4 parts)
goes to a real daemon and a real teacher server over loopback. After every one, the peer has answered it
and is alive, and a canary frame gets the same verdict as before.

CI runs a bounded number of examples; ``LINESIDE_FUZZ_EXAMPLES=100000 pytest --timeout 0 tests/runtime/daemon/test_wire_fuzz.py``
is the long run.
"""
from __future__ import annotations

import json
import os

import cv2
import numpy as np
import pytest
import zmq
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from runtime.contracts import protocol
from tests.support.runtime_fixtures import DaemonRuns, TinyArtifact, build_tiny_artifact

EXAMPLES = int(os.environ.get("LINESIDE_FUZZ_EXAMPLES", "120"))
REPLY_TIMEOUT_MS = 5000
FUZZ = settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture,
                                       HealthCheck.data_too_large])


def _png(shape=(8, 8, 3)) -> bytes:
    return cv2.imencode(".png", np.zeros(shape, np.uint8))[1].tobytes()


def _jpeg() -> bytes:
    return cv2.imencode(".jpg", np.full((8, 8, 3), 90, np.uint8))[1].tobytes()


def _bomb_png(side: int) -> bytes:
    data = bytearray(_png())
    data[16:24] = side.to_bytes(4, "big") * 2
    return bytes(data)


json_leaf = st.one_of(st.none(), st.booleans(), st.integers(min_value=-2 ** 70, max_value=2 ** 70),
                      st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=20),
                      st.text(st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF), min_size=1, max_size=3),
                      st.just(2 ** 63), st.just(-(2 ** 63) - 1))
json_value = st.recursive(json_leaf, lambda kids: st.one_of(st.lists(kids, max_size=3),
                                                            st.dictionaries(st.text(max_size=5), kids, max_size=3)),
                          max_leaves=12)
surrogates = st.text(st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF), min_size=1, max_size=3)
ids = st.one_of(st.text(max_size=300), st.integers(min_value=-10 ** 20, max_value=10 ** 20), json_value,
                st.builds(lambda a, b: a + b, st.text(max_size=4), surrogates))
dims = st.one_of(st.integers(min_value=-2, max_value=40), st.booleans(), st.just(2 ** 62), st.integers(9000, 20000))


@st.composite
def messages(draw, kind_choices: tuple[str, ...]) -> list[bytes]:
    header: dict = {}
    if draw(st.booleans()):
        header["v"] = draw(st.one_of(st.just(1), st.just(True), st.just(1.0), json_leaf))
    header["kind"] = draw(st.one_of(st.sampled_from(kind_choices + protocol.KINDS), json_leaf))
    for key, strat in (("frame_id", ids), ("camera_id", ids), ("ts", json_leaf), ("deadline_ts", json_leaf),
                       ("want_mask", json_leaf), ("encoding", st.one_of(st.sampled_from(protocol.ENCODINGS + ("webp",)),
                                                                       json_leaf)),
                       ("dtype", st.one_of(st.sampled_from(protocol.DTYPES + ("int64",)), json_leaf)),
                       ("shape", st.one_of(st.lists(dims, min_size=0, max_size=4), json_value))):
        if draw(st.booleans()):
            header[key] = draw(strat)
    header.update(draw(st.dictionaries(st.text(max_size=6), json_value, max_size=2)))
    form = draw(st.sampled_from(["json", "json", "json", "deep", "bigint", "bytes"]))
    head = json.dumps(header, allow_nan=True).encode("utf-8", "surrogatepass")
    if form == "deep":  # nesting past the parser's recursion limit, well inside the byte limit
        n = draw(st.sampled_from([protocol.MAX_HEADER_DEPTH + 1, 200, 1200, 20000]))
        head = head[:-1] + (b", " if len(header) else b"") + b'"x": ' + b"[" * n + b"]" * n + b"}"
    elif form == "bigint":  # more digits than Python converts (int-string limit 4300)
        key = draw(st.sampled_from(["frame_id", "ts", "v", "z"]))
        head = head[:-1] + (b", " if len(header) else b"") + f'"{key}": '.encode() + b"7" * 5000 + b"}"
    elif form == "bytes":
        head = draw(st.binary(max_size=64))
    shape = header.get("shape")
    raw_ok = isinstance(shape, list) and all(type(s) is int and 0 <= s <= 40 for s in shape) and shape
    payload = draw(st.sampled_from(
        ["none", "junk", "png", "jpeg", "bomb", "truncated"] + (["raw"] if raw_ok else [])))
    body = {"none": None, "junk": draw(st.binary(max_size=256)), "png": _png(), "jpeg": _jpeg(),
            "bomb": _bomb_png(draw(st.sampled_from([9000, 60000]))), "truncated": _png()[:40]}.get(payload)
    if payload == "raw":
        body = b"\0" * int(np.prod(shape)) * draw(st.sampled_from([1, 2, 4]))
    frames = [head] + ([] if body is None else [body])
    frames += [draw(st.binary(max_size=16)) for _ in range(draw(st.integers(0, 2)))]  # extra parts
    return frames


# -- the daemon ----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def daemon(tmp_path_factory):
    root = tmp_path_factory.mktemp("fuzz-daemon")
    art = build_tiny_artifact(root / "a", seed=0)
    runs = DaemonRuns(root)
    # a generous sender budget: the fuzzer is one fast sender, and rate refusals would hide the parsers
    d, c = runs.start(art.dir, {"limits.sender_rate_hz": 1e6, "limits.sender_burst": 100000}, timeout_s=5.0)
    raw = c.ctx.socket(zmq.DEALER)
    raw.linger = 0
    raw.connect(d.endpoints["ingress"])
    c.send(TinyArtifact.defect(3), frame_id="canary-ref")
    ref = c.collect(["canary-ref"], timeout_s=5.0)["canary-ref"][-1]
    yield d, c, raw, ref
    raw.close(linger=0)
    runs.close()


_count = {"daemon": 0, "server": 0}


@FUZZ
@given(frames=messages(("frame", "status")))
def test_no_message_stops_the_daemon_or_changes_a_verdict(daemon, frames):
    d, c, raw, ref = daemon
    raw.send_multipart(frames)
    assert raw.poll(REPLY_TIMEOUT_MS, zmq.POLLIN), f"no reply to {frames[:1]!r}"
    msg = raw.recv_multipart()
    while msg and msg[0] == b"":  # a leading empty part reads as a REQ delimiter, and is echoed back
        msg = msg[1:]
    reply = protocol.decode_header(msg)  # every reply is itself a valid message
    assert reply["kind"] in ("status", "busy", "error")
    _count["daemon"] += 1
    fid = f"canary-{_count['daemon']}"
    c.send(TinyArtifact.defect(3), frame_id=fid)
    v = c.collect([fid], timeout_s=5.0)[fid][-1]
    assert v.status == "ok" and v.decision == ref.decision and v.score == pytest.approx(ref.score, rel=1e-6)
    assert not d.dead_threads(), f"daemon threads died: {d.dead_threads()}"


# -- the teacher server --------------------------------------------------------------------------

@pytest.fixture(scope="module")
def server():
    from teacher.serve import ServeConfig, TeacherServer
    from teacher.serve.bench import ServeClient

    ctx = zmq.Context()
    with TeacherServer(ServeConfig(model="fake", bind="tcp://127.0.0.1:*", max_pixels=512 * 512)) as srv:
        client = ServeClient(srv.endpoint, ctx, timeout_ms=REPLY_TIMEOUT_MS)
        canary = np.full((16, 16, 3), 77, np.uint8)
        ref, _ = client.infer(canary, "canary-ref")
        yield srv, client, canary, ref
        client.close()
    ctx.destroy(linger=0)


@FUZZ
@given(frames=messages(("infer", "status")))
def test_no_message_stops_the_server_or_changes_a_verdict(server, frames):
    srv, client, canary, ref = server
    r = client.request(frames)
    assert r is not None, f"no reply to {frames[:1]!r}"
    assert r[0]["kind"] in ("verdict", "busy", "error", "status")
    _count["server"] += 1
    h, _ = client.infer(canary, f"canary-{_count['server']}")
    assert h["kind"] == "verdict" and h["score"] == pytest.approx(ref["score"]) and h["decision"] == ref["decision"]
