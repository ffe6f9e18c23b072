"""A tiny torch-free student artifact for the runtime tests, built with onnx.helper.

The model: image (1,3,S,S) -> Conv(k4,s4)+Relu -> Conv(k2,s2)+Relu = "s8" (stride 8) = "embedding"
-> Conv(k2,s2)+Relu = "s16". The bank is the embedding of a few seeded "good" textures; the
calibration puts the threshold on a mildly defective image so that image lands inside the
uncertainty band, while good images fall below it and strongly defective ones above it.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

SIZE = 64
EMB_DIM = 16


def _conv(name, x, w, b, k, stride, out):
    from onnx import helper

    return helper.make_node("Conv", [x, w, b], [out], name=name, kernel_shape=[k, k], strides=[stride, stride])


def build_model(path: Path, size: int = SIZE, seed: int = 0) -> None:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    w1 = (rng.standard_normal((8, 3, 4, 4)) * 0.3).astype(np.float32)
    b1 = (rng.standard_normal(8) * 0.05).astype(np.float32)
    w2 = (rng.standard_normal((EMB_DIM, 8, 2, 2)) * 0.3).astype(np.float32)
    b2 = (rng.standard_normal(EMB_DIM) * 0.05).astype(np.float32)
    w3 = (rng.standard_normal((EMB_DIM, EMB_DIM, 2, 2)) * 0.3).astype(np.float32)
    b3 = np.zeros(EMB_DIM, np.float32)
    inits = [numpy_helper.from_array(a, n) for a, n in
             [(w1, "w1"), (b1, "b1"), (w2, "w2"), (b2, "b2"), (w3, "w3"), (b3, "b3")]]
    nodes = [_conv("c1", "image", "w1", "b1", 4, 4, "h1"), helper.make_node("Relu", ["h1"], ["r1"]),
             _conv("c2", "r1", "w2", "b2", 2, 2, "h2"), helper.make_node("Relu", ["h2"], ["s8"]),
             helper.make_node("Identity", ["s8"], ["embedding"]),
             _conv("c3", "s8", "w3", "b3", 2, 2, "h3"), helper.make_node("Relu", ["h3"], ["s16"])]
    g8, g16 = size // 8, size // 16
    graph = helper.make_graph(
        nodes, "tiny_student",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 3, size, size])],
        [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, [1, EMB_DIM, g8, g8]),
         helper.make_tensor_value_info("s8", TensorProto.FLOAT, [1, EMB_DIM, g8, g8]),
         helper.make_tensor_value_info("s16", TensorProto.FLOAT, [1, EMB_DIM, g16, g16])],
        inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def good_image(seed: int, size: int = SIZE) -> np.ndarray:
    """The product: one fixed smooth texture plus a little seeded sensor noise, uint8 RGB (size, size, 3)."""
    import cv2

    base = np.random.default_rng(7).standard_normal((size, size, 3)).astype(np.float32)
    tex = cv2.GaussianBlur(base, (0, 0), 2.0)
    noise = np.random.default_rng(1000 + seed).standard_normal((size, size, 3)).astype(np.float32)
    img = 128 + 40 * tex / (tex.std() + 1e-6) + 3.0 * noise
    return np.clip(img, 0, 255).astype(np.uint8)


def defect_image(seed: int, strength: float, size: int = SIZE, side: int = 14) -> np.ndarray:
    """A good texture with a square patch pushed towards white by ``strength`` in [0, 1]."""
    img = good_image(seed, size).astype(np.float32)
    y0 = x0 = size // 2 - side // 2
    patch = img[y0:y0 + side, x0:x0 + side]
    img[y0:y0 + side, x0:x0 + side] = patch + strength * (255 - patch)
    return np.clip(img, 0, 255).astype(np.uint8)


def ood_image(size: int = SIZE) -> np.ndarray:
    """Something that is not the product at all: a saturated checkerboard."""
    yy, xx = np.mgrid[0:size, 0:size]
    board = (((yy // 4) + (xx // 4)) % 2 * 255).astype(np.uint8)
    return np.stack([board, 255 - board, board], -1)


@dataclass
class TinyArtifact:
    dir: Path
    threshold: float
    band: tuple[float, float]
    ood_limit: float
    scores: dict = field(default_factory=dict)

    # image makers, each class of score known from calibration
    @staticmethod
    def good(i: int = 0) -> np.ndarray:
        return good_image(100 + i)

    @staticmethod
    def in_band(i: int = 0) -> np.ndarray:
        return defect_image(200 + i, MILD)

    @staticmethod
    def defect(i: int = 0) -> np.ndarray:
        return defect_image(300 + i, STRONG)

    @staticmethod
    def ood() -> np.ndarray:
        return ood_image()


MILD, STRONG = 0.35, 1.0
N_PROBE = 4  # probe images of each class used to place threshold and band


def _score(sess, bank, img, blur, size=SIZE):
    from kernels.dispatch import preprocess
    from runtime.scoring import score_embedding

    x = preprocess(img, size, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    emb = sess.run(["embedding"], {"image": x})[0]
    r = score_embedding(emb, bank, (size, size), k=1, blur_sigma_px=blur, score_topk=1)
    return r.score, r.mean_nn_distance


def build_tiny_artifact(directory: str | Path, n_good: int = 6, seed: int = 0, size: int = SIZE) -> TinyArtifact:
    """Write model.onnx, bank.npy and manifest.json into ``directory``; returns what the tests need.
    ``size`` > 64 makes the network input (and the cost per frame) larger; the test images stay 64 px."""
    import onnxruntime as ort

    from runtime.contracts.featurespec import FeatureSpec, LevelSpec
    from runtime.contracts.manifest import ArtifactManifest, Calibration, Preprocess, Scoring, write_manifest
    from kernels.dispatch import preprocess

    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    build_model(d / "model.onnx", size, seed)
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    sess = ort.InferenceSession(str(d / "model.onnx"), so, providers=["CPUExecutionProvider"])
    embs = []
    for i in range(n_good):
        x = preprocess(good_image(i), size, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
        e = sess.run(["embedding"], {"image": x})[0][0]  # (D, h, w)
        embs.append(e.reshape(EMB_DIM, -1).T)
    bank = np.concatenate(embs).astype(np.float16)
    np.save(d / "bank.npy", bank)
    bank32 = bank.astype(np.float32)
    blur = 2.0
    sc = {name: [_score(sess, bank32, fn(i), blur, size) for i in range(N_PROBE)]
          for name, fn in [("good", TinyArtifact.good), ("in_band", TinyArtifact.in_band),
                           ("defect", TinyArtifact.defect)]}
    sc["ood"] = [_score(sess, bank32, ood_image(), blur, size)]
    g_hi = max(s for s, _ in sc["good"])
    m_lo, m_hi = min(s for s, _ in sc["in_band"]), max(s for s, _ in sc["in_band"])
    d_lo = min(s for s, _ in sc["defect"])
    assert g_hi < m_lo and m_hi < d_lo, f"tiny artifact classes overlap: {sc}"
    lo = (g_hi + m_lo) / 2
    hi = (m_hi + d_lo) / 2
    threshold = (m_lo + m_hi) / 2
    nn_max = max(m for k in ("good", "in_band", "defect") for _, m in sc[k])
    ood_nn = sc["ood"][0][1]
    assert ood_nn > nn_max * 1.2, f"ood image not separable: {ood_nn} vs {nn_max}"
    ood_limit = (nn_max + ood_nn) / 2
    spec = FeatureSpec(image_size=size, levels=(LevelSpec("s8", 8, EMB_DIM), LevelSpec("s16", 16, EMB_DIM)),
                       source="tiny test model")
    m = ArtifactManifest(
        format_version=1, name="tiny", student="tiny", feature_spec=spec.to_dict(),
        preprocess=Preprocess(size=size), outputs=["embedding", "s8", "s16"],
        scoring=Scoring(k=1, blur_sigma_px=blur, score_topk=1, min_region_px=4),
        calibration=Calibration(threshold=threshold, band=(lo, hi), ood_limit=ood_limit),
        models={"fp32": "model.onnx"}, tolerance={"onnxruntime": 1e-3, "openvino": 1e-3})
    write_manifest(d, m)
    return TinyArtifact(dir=d, threshold=threshold, band=(lo, hi), ood_limit=ood_limit, scores=sc)


# -- a fake teacher server (zguide ppworker-style flags: slow, crash, busy) ---------------------------
import heapq  # noqa: E402
import itertools  # noqa: E402
import json as _json  # noqa: E402
import threading  # noqa: E402
import time as _time  # noqa: E402


class FakeTeacher:
    """A ROUTER speaking runtime/contracts/protocol.py's teacher side: "infer" -> "verdict" (decided_by teacher).

    ``slow_s`` delays every reply; ``ignore_first`` requests get no answer at all (lost); ``busy_first``
    answers "busy" to that many requests first; ``stop()``
    closes the socket (the server died), ``start()`` binds the same endpoint again. ``decision`` is what
    the teacher says. ``curve_secret``/``allowed_keys`` make it a CURVE server.
    """

    def __init__(self, endpoint: str = "tcp://127.0.0.1:*", slow_s: float = 0.0, decision: str = "defect",
                 busy_first: int = 0, curve_secret=None, allowed_keys=None, ignore_first: int = 0):
        import zmq

        self.ctx = zmq.Context()
        self.slow_s, self.decision, self.busy_left, self.ignore_left = slow_s, decision, busy_first, ignore_first
        self.curve_secret, self.allowed_keys = curve_secret, allowed_keys
        self.auth = None
        if allowed_keys:
            from runtime.curve import start_authenticator

            self.auth = start_authenticator(self.ctx, allowed_keys)
        self.received: list[str] = []
        self.answered: list[str] = []
        self.endpoint = endpoint
        self._thread = None
        self.start()

    def start(self) -> "FakeTeacher":
        import zmq

        self._stop = threading.Event()
        s = self.sock = self.ctx.socket(zmq.ROUTER)
        s.linger = 0
        if self.curve_secret:
            from runtime.curve import make_server

            make_server(s, self.curve_secret)
        s.bind(self.endpoint)
        self.endpoint = s.last_endpoint.decode()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)

    def close(self) -> None:
        if not self._stop.is_set():
            self.stop()
        if self.auth:
            from runtime.daemon.daemon import stop_authenticator

            stop_authenticator(self.auth)
        self.ctx.destroy(linger=0)

    def _loop(self) -> None:
        import zmq

        from runtime.contracts import protocol
        from runtime.contracts.verdict import Verdict

        due: list = []
        try:
            while not self._stop.is_set():
                if self.sock.poll(10, zmq.POLLIN):
                    msg = self.sock.recv_multipart()
                    ident, rest = msg[0], msg[1:]
                    env = [ident, b""] if rest and rest[0] == b"" else [ident]
                    rest = rest[1:] if rest and rest[0] == b"" else rest
                    h = _json.loads(rest[0])
                    if h.get("kind") == "status":
                        self.sock.send_multipart(env + protocol.encode({"kind": "status", "status": {"alive": True}}))
                        continue
                    self.received.append(h["frame_id"])
                    if self.ignore_left > 0:
                        self.ignore_left -= 1
                        continue
                    if self.busy_left > 0:
                        self.busy_left -= 1
                        reply = protocol.encode({"kind": "busy", "frame_id": h["frame_id"]})
                    else:
                        v = Verdict(frame_id=h["frame_id"], camera_id=h.get("camera_id", "cam0"), decision=self.decision,
                                    score=9.0, confidence=1.0, decided_by="teacher", model_hash="fake-teacher")
                        reply = protocol.encode({"kind": "verdict", **v.to_header()})
                    heapq.heappush(due, (_time.monotonic() + self.slow_s, len(self.received), env + reply, h["frame_id"]))
                while due and due[0][0] <= _time.monotonic():
                    _, _, parts, fid = heapq.heappop(due)
                    self.sock.send_multipart(parts)
                    self.answered.append(fid)
        finally:
            self.sock.close(linger=0)


_control_ids = itertools.count()


def daemon_config(tmp_path, **overrides):
    """A loopback config on free ports with the journal in ``tmp_path``, control on its own ipc:// socket
    file there (the shipped default's transport; one per daemon, as a test may run two); overrides by dotted
    field."""
    from runtime.daemon.config import load_config

    base = {"sockets.ingress": "tcp://127.0.0.1:*", "sockets.verdicts": "tcp://127.0.0.1:*",
            "sockets.control": f"ipc://{tmp_path}/control-{next(_control_ids)}.sock",
            "journal.path": str(tmp_path / "journal.sqlite3"),
            "heartbeat_interval_s": 0.05, "drain_timeout_s": 2.0}
    base.update(overrides)
    return load_config(overrides=base)


class DaemonRuns:
    """In-process daemons for a fixture, each with a ready LinesideClient on its own zmq context:
    ``start`` one per call; ``close`` (the fixture's teardown) closes the clients and stops the daemons."""

    def __init__(self, tmp_path):
        self.tmp_path = tmp_path
        self.started = []

    def start(self, artifact_dir, overrides=None, **client_kw):
        import zmq

        from runtime.client import LinesideClient
        from runtime.daemon.daemon import Daemon

        d = Daemon(artifact_dir, daemon_config(self.tmp_path, **(overrides or {}))).start()
        c = LinesideClient(d.endpoints["ingress"], d.endpoints["verdicts"], control=d.endpoints["control"],
                           context=zmq.Context(), **client_kw)
        c.wait_ready()
        self.started.append((d, c))
        return d, c

    def close(self) -> None:
        for d, c in self.started:
            c.close()
            c.ctx.destroy(linger=0)
            d.stop()
