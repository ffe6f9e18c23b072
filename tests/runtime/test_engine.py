"""Engine, backends, config, journal and queue of the line-side runtime (no sockets here)."""
import json
import shutil

import numpy as np
import pytest

from tests.support.runtime_fixtures import TinyArtifact


@pytest.fixture(scope="module")
def engine(art):
    from runtime.engine import Engine

    return Engine(art.dir, backend="onnxruntime")


def test_engine_classes(engine, art):
    good = engine.judge(TinyArtifact.good(1), "g")
    assert (good.decision, good.in_band, good.ood, good.status) == ("good", False, False, "ok")
    band = engine.judge(TinyArtifact.in_band(1), "b")
    assert band.in_band and not band.ood
    bad = engine.judge(TinyArtifact.defect(1), "d", want_mask=True)
    assert bad.decision == "defect" and not bad.in_band and bad.regions
    assert bad.mask is not None and bad.mask.shape == (64, 64) and bad.mask.any()
    x0, y0, x1, y1 = bad.regions[0].bbox
    assert x0 <= 32 <= x1 and y0 <= 32 <= y1  # the planted patch is centred
    ood = engine.judge(TinyArtifact.ood(), "o")
    assert ood.ood and ood.decision == "unknown"
    assert set(good.latencies_ms) >= {"preprocess", "backend", "scoring"}
    assert good.model_hash and good.decided_by == "edge"


def test_engine_scales_regions_to_the_frame(engine):
    import cv2

    big = cv2.resize(TinyArtifact.defect(2), (128, 96), interpolation=cv2.INTER_LINEAR)
    v = engine.judge(big, "big", want_mask=True)
    assert v.decision == "defect" and v.mask.shape == (96, 128)
    x0, y0, x1, y1 = v.regions[0].bbox
    assert x1 <= 128 and y1 <= 96 and x1 - x0 > 14  # scaled by 2 horizontally


def test_engine_grey_frame(engine):
    grey = TinyArtifact.good(3)[..., 0]
    assert engine.judge(grey, "grey").status == "ok"


@pytest.mark.parametrize("backend", ["openvino"])
def test_backends_agree_within_manifest_tolerance(art, engine, backend):
    from runtime.engine import Engine

    other = Engine(art.dir, backend=backend)
    assert other.backend_name.startswith(backend)
    tol = other.manifest.tolerance[backend]
    for img in [TinyArtifact.good(4), TinyArtifact.in_band(4), TinyArtifact.defect(4), TinyArtifact.ood()]:
        a, b = engine.judge(img), other.judge(img)
        assert abs(a.score - b.score) <= tol, (a.score, b.score)
        assert (a.decision, a.in_band, a.ood) == (b.decision, b.in_band, b.ood)


def test_open_backend_errors_name_the_backend(art):
    from runtime.backends import BackendError, available_backends, open_backend
    from runtime.contracts.manifest import load_manifest

    m = load_manifest(art.dir)
    with pytest.raises(BackendError, match="tensorrt_plan"):
        open_backend(art.dir, m, "tensorrt")
    with pytest.raises(BackendError, match="unknown backend"):
        open_backend(art.dir, m, "tflite")
    m2 = m.model_copy(update={"models": {**m.models, "tensorrt_plan": "model.onnx"}})
    if available_backends()["tensorrt"] != "ok":
        with pytest.raises(BackendError, match="tensorrt"):
            open_backend(art.dir, m2, "tensorrt")
        b = open_backend(art.dir, m2, "auto")  # auto says why it skipped TensorRT and takes the next one
        assert b.name.startswith("onnxruntime")
    out = open_backend(art.dir, m, "onnxruntime").run(np.zeros((1, 3, 64, 64), np.float32))
    assert out["embedding"].shape == (1, 16, 8, 8) and out["s16"].shape == (1, 16, 4, 4)


def test_engine_refuses_tampered_artifact(art, tmp_path):
    from runtime.engine import Engine
    from runtime.contracts.formats import ContractError

    d = tmp_path / "bad"
    shutil.copytree(art.dir, d)
    np.save(d / "bank.npy", np.zeros((4, 16), np.float16))
    with pytest.raises(ContractError, match="bank.npy fails its checksum"):
        Engine(d)


def test_config_defaults_file_overrides_and_errors(tmp_path):
    from runtime.daemon.config import ConfigError, load_config

    c = load_config()
    assert c.sockets.ingress.startswith("tcp://127.0.0.1") and c.queue.overload == "drop_oldest"
    f = tmp_path / "lineside.toml"
    f.write_text('[queue]\nsize = 3\noverload = "reject_newest"\n[teacher]\naddress = "tcp://10.0.0.5:5560"\n')
    c = load_config(f, {"queue.size": 5, "backend.threads": None})
    assert (c.queue.size, c.queue.overload, c.teacher.address) == (5, "reject_newest", "tcp://10.0.0.5:5560")
    for over, field in [({"queue.overload": "drop_all"}, "queue.overload"), ({"backend.threads": 0}, "backend.threads"),
                        ({"sockets.verdicts": "localhost:5"}, "sockets.verdicts"), ({"journal.bogus": 1}, "journal.bogus"),
                        ({"teacher.deadline_ms": -1}, "teacher.deadline_ms"),
                        ({"security.ingress_secret": "k"}, "allowed_keys"),
                        ({"teacher.secret_file": "k"}, "server_public_file")]:
        with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
            load_config(overrides=over)
    f.write_text("[queue\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(f)


def test_daemon_cli_refuses_invalid_config_naming_the_field(art, capsys):
    from runtime.cli import main

    assert main(["run", "--artifact", str(art.dir), "--queue-size", "0"]) == 2
    assert "queue.size" in capsys.readouterr().err


def test_journal_roundtrip_recovery_and_retention(tmp_path):
    from runtime.daemon.journal import Entry, Journal

    j = Journal(tmp_path / "j.sqlite3")
    j.record_received([("a", "c", 1.0, "x"), ("b", "c", 2.0, "x"), ("p", "c", 2.0, "x")])
    h = lambda fid, **kw: json.dumps({"frame_id": fid, **kw}).encode()  # noqa: E731
    j.write([Entry("a", "c", "edge", "ok", "good", False, 3.0, h("a")),
             Entry("p", "c", "edge", "ok", "good", True, 3.0, h("p"), b'{"kind":"infer"}', b"px", 99.0)])
    assert j.unjudged() == [("b", "c")]
    (row,) = j.pending()
    assert (row.frame_id, row.payload, row.deadline_ts, row.edge["frame_id"]) == ("p", b"px", 99.0, "p")
    j.write([Entry("p", "c", "teacher", "ok", "defect", False, 4.0, h("p", decided_by="teacher"), resolves_pending=True)])
    assert j.pending() == [] and [v["frame_id"] for v in j.verdicts()] == ["a", "p", "p"]
    j2 = Journal(tmp_path / "j.sqlite3")  # a second connection (another thread) sees committed rows
    assert j2.counts() == {"frames": 3, "verdicts": 3, "pending": 0}
    assert j2._db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    j.write([Entry(f"n{i}", "c", "edge", "ok", "good", False, 1e10, h(f"n{i}")) for i in range(200)])
    j.prune(max_rows=100, max_age_s=1e9, now=1e10)
    assert j.counts()["verdicts"] == 100


def test_journal_spools_frames_until_they_are_judged(tmp_path):
    """Spooled bytes stay only while a frame has no verdict; a restart finds exactly those, and the verdict
    sequence continues where the journal left it."""
    from runtime.daemon.journal import Entry, Journal

    j = Journal(tmp_path / "j.sqlite3")
    j.record_received([("a", "c", 1.0, "x"), ("b", "c", 1.0, "x")],
                      [("a", "c", b'{"kind":"frame","frame_id":"a"}', b"A" * 10),
                       ("b", "c", b'{"kind":"frame","frame_id":"b","ts":5.0}', b"B" * 7)])
    assert j.spooled_bytes() == 17 and j.last_seq() == 0
    j.write([Entry("a", "c", "edge", "ok", "good", False, 3.0, b'{"frame_id":"a","seq":41}', seq=41)])
    assert j.spooled_unjudged() == [("b", "c", {"kind": "frame", "frame_id": "b", "ts": 5.0}, b"B" * 7)]
    assert j.spooled_bytes() == 7 and j.last_seq() == 41 and [h["seq"] for h in j.since(40, 10)] == [41]
    j.record_received([("c", "c", 2.0, "x")])  # the next batch's transaction drops the judged frame's bytes
    assert j._db.execute("SELECT frame_id FROM spool").fetchall() == [("b",)]


@pytest.mark.parametrize("policy", ["drop_oldest", "reject_newest"])
def test_bounded_queue_policies(policy):
    from runtime.daemon.queues import BoundedQueue

    q = BoundedQueue(2, policy)
    assert q.put(1) == (True, None) and q.put(2) == (True, None)
    ok, ev = q.put(3)
    if policy == "drop_oldest":
        assert (ok, ev) == (True, 1) and [q.get(0), q.get(0)] == [2, 3]
    else:
        assert (ok, ev) == (False, None) and [q.get(0), q.get(0)] == [1, 2]
    assert q.max_seen == 2 and q.get(0.01) is None


def test_publisher_fast_header_equals_to_header(engine):
    from runtime.daemon.publisher import to_header_fast
    from runtime.contracts.verdict import Verdict

    for v in [engine.judge(TinyArtifact.defect(5), "d", want_mask=True), engine.judge(TinyArtifact.good(5), "g"),
              Verdict.failure("x", "error", "payload: corrupt")]:
        assert to_header_fast(v) == v.to_header()
        assert json.dumps(to_header_fast(v)) == json.dumps(v.to_header())


def test_print_config_round_trips(tmp_path):
    from runtime.daemon.config import load_config, to_toml

    c = load_config(overrides={"queue.size": 3, "teacher.address": "tcp://10.1.2.3:5560", "journal.path": 'a "b".db'})
    f = tmp_path / "c.toml"
    f.write_text(to_toml(c))
    assert load_config(f) == c


def test_daemon_cli_refuses_a_directory_that_is_not_an_artifact(tmp_path, capsys):
    import logging
    import sys

    from runtime.cli import main

    switch, lg = sys.getswitchinterval(), logging.getLogger("lineside")
    handlers, propagate, level = lg.handlers[:], lg.propagate, lg.level
    try:
        rc = main(["run", "--artifact", str(tmp_path), "--ingress", "tcp://127.0.0.1:*", "--verdicts", "tcp://127.0.0.1:*",
                   "--control", "tcp://127.0.0.1:*", "--journal", str(tmp_path / "j.sqlite3")])
    finally:  # run() configures process-wide logging and the GIL switch interval, as a daemon should
        sys.setswitchinterval(switch)
        lg.handlers[:], lg.propagate = handlers, propagate
        lg.setLevel(level)
    assert rc == 1 and "not an artifact" in capsys.readouterr().err


def test_publisher_header_never_carries_nan():
    from runtime.daemon.publisher import encode_header

    h = {"score": float("nan"), "latencies_ms": {"teacher": float("inf")}, "regions": [{"score": 1.0}], "n": np.int64(3)}
    assert json.loads(encode_header(h)) == {"score": None, "latencies_ms": {"teacher": None}, "regions": [{"score": 1.0}],
                                            "n": "3"}


def test_edge_process_loads_no_training_stack(art):
    """The daemon's modules and a judged frame never import torch & co (a Jetson image has none of them)."""
    import subprocess
    import sys

    code = ("import sys, numpy as np\n"
            "import runtime.daemon.daemon, runtime.client, runtime.cli.run, runtime.cli.send, runtime.cli.watch, runtime.daemon.camera\n"
            "import runtime.cli.status, runtime.cli.control, runtime.tools.bench.daemon\n"
            "from runtime.engine import Engine\n"
            f"Engine({str(art.dir)!r}).judge(np.zeros((64, 64, 3), np.uint8))\n"
            "bad = sorted(m for m in sys.modules if m.split('.')[0] in "
            "('torch', 'diffusers', 'transformers', 'teacher', 'distill', 'nncf', 'triton'))\n"
            "print(bad)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_config_refuses_zero_workers_naming_the_field():
    from runtime.daemon.config import ConfigError, load_config

    assert load_config(overrides={"backend.workers": 3}).backend.workers == 3
    with pytest.raises(ConfigError, match="backend.workers"):
        load_config(overrides={"backend.workers": 0})


def test_config_refuses_a_message_limit_below_the_frame_limit():
    from runtime.daemon.config import ConfigError, load_config

    with pytest.raises(ConfigError, match="limits.*max_message_bytes.*below max_frame_bytes"):
        load_config(overrides={"limits.max_frame_bytes": 2 << 20, "limits.max_message_bytes": 1 << 20})


def test_an_edited_manifest_is_another_model(tmp_path):
    """The manifest's threshold decides verdicts as much as the weights: editing it (every part "good" at
    threshold 1e9) must show in every verdict's model_hash, so the journal can tell the two apart."""
    from runtime.engine import Engine
    from tests.support.runtime_fixtures import build_tiny_artifact

    art = build_tiny_artifact(tmp_path / "a")
    edited = tmp_path / "edited"
    shutil.copytree(art.dir, edited)
    m = json.loads((edited / "manifest.json").read_text())
    m["calibration"]["threshold"] = 1e9
    (edited / "manifest.json").write_text(json.dumps(m))
    a, b = Engine(art.dir), Engine(edited)
    assert b.judge(TinyArtifact.defect(1)).decision == "good"  # the edit took effect ...
    assert a.model_hash != b.model_hash  # ... and it is named


def test_forced_model_is_refused_unless_allowed(tmp_path, capsys):
    """A manifest that marks the served model as forced past its INT8 guard: the engine and `lineside run`
    refuse it in one line; --allow-forced serves it."""
    from runtime.cli import main
    from runtime.engine import Engine
    from runtime.contracts.formats import ContractError
    from tests.support.runtime_fixtures import build_tiny_artifact

    art = build_tiny_artifact(tmp_path / "a")
    m = json.loads((art.dir / "manifest.json").read_text())
    m["forced"] = ["fp32"]
    (art.dir / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(ContractError, match="INT8 accuracy guard"):
        Engine(art.dir)
    assert main(["run", "--artifact", str(art.dir), "--ingress", "tcp://127.0.0.1:*"]) == 1  # cannot start
    err = capsys.readouterr().err
    assert "lineside run: cannot start:" in err and "--allow-forced" in err and "Traceback" not in err
    e = Engine(art.dir, allow_forced=True)
    assert e.forced and e.judge(TinyArtifact.defect(1)).decision == "defect"
