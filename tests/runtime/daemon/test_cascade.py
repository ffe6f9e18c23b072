"""The cascade: unsure frames go to a (fake) teacher server; its verdict supersedes the edge one; a dead
or slow teacher never holds up edge verdicts; pending frames resolve. Loopback, bounded waits."""
import shutil
import time

import pytest

from tests.support.runtime_fixtures import DaemonRuns, FakeTeacher, TinyArtifact

T = TinyArtifact


@pytest.fixture
def teacher():
    made = []

    def make(**kw):
        t = FakeTeacher(**kw)
        made.append(t)
        return t

    yield make
    for t in made:
        t.close()


@pytest.fixture
def run_daemon(art, tmp_path):
    runs = DaemonRuns(tmp_path)

    def start(teacher_ep, **over):
        over = {"teacher.address": teacher_ep, "teacher.request_timeout_ms": 400, "teacher.deadline_ms": 1500,
                "teacher.breaker_reset_s": 0.3, **over}
        return runs.start(art.dir, over)

    yield start
    runs.close()


def finals(c, ids, timeout_s=6.0):
    """All verdicts per frame until each frame has a non-pending one."""
    return c.collect(ids, timeout_s=timeout_s, final=True)


def test_in_band_and_ood_frames_get_superseding_teacher_verdict(run_daemon, teacher):
    from runtime.daemon.journal import Journal

    t = teacher()
    d, c = run_daemon(t.endpoint)
    sends = {"g": T.good(), "b": T.in_band(), "o": T.ood(), "d": T.defect()}
    for fid, img in sends.items():
        c.send(img, frame_id=fid, want_mask=(fid == "b"))
    got = finals(c, sends)
    assert [v.decided_by for v in got["g"]] == ["edge"] and not got["g"][0].pending
    assert [v.decided_by for v in got["d"]] == ["edge"]
    for fid in ("b", "o"):
        edge, final = got[fid]
        assert edge.decided_by == "edge" and edge.pending and (edge.in_band or edge.ood)
        assert final.decided_by == "teacher" and final.supersedes == "edge" and not final.pending
        assert final.status == "ok" and final.decision == "defect" and final.model_hash == "fake-teacher"
    assert sorted(t.received) == ["b", "o"]
    j = Journal(d.cfg.journal.path)
    assert [v["decided_by"] for v in j.verdicts("b")] == ["edge", "teacher"]
    assert j.pending() == []
    st = c.status()["teacher"]
    assert st["circuit"] == "closed" and st["pending"] == 0


def test_teacher_killed_mid_stream_edge_continues_pending_expire(run_daemon, teacher):
    from runtime.daemon.journal import Journal

    t = teacher()
    d, c = run_daemon(t.endpoint)
    c.send(T.in_band(0), frame_id="before")
    assert [v.decided_by for v in finals(c, ["before"])["before"]] == ["edge", "teacher"]
    t.stop()  # the teacher dies
    ids = []
    for i in range(12):
        fid = f"k{i}"
        c.send(T.in_band(i) if i % 3 == 0 else T.good(i), frame_id=fid)
        ids.append(fid)
    got = finals(c, ids, timeout_s=8.0)
    assert set(got) == set(ids)  # nothing lost
    for i, fid in enumerate(ids):
        vs = got[fid]
        assert vs[0].decided_by == "edge" and vs[0].status == "ok"
        if i % 3 == 0:
            assert vs[0].pending and vs[-1].status == "teacher_unreachable" and vs[-1].supersedes == "edge"
            assert vs[-1].decision == vs[0].decision  # the edge verdict stands
        else:
            assert len(vs) == 1
    st = c.status()["teacher"]
    assert st["circuit"] in ("open", "half_open") and st["pending"] == 0 and st["reopens"] >= 1
    assert Journal(d.cfg.journal.path).pending() == []


def test_slow_teacher_does_not_hold_up_edge_verdicts(run_daemon, teacher):
    t = teacher(slow_s=1.5)
    d, c = run_daemon(t.endpoint, **{"teacher.request_timeout_ms": 5000, "teacher.deadline_ms": 10000})
    c.send(T.in_band(), frame_id="unsure")
    order = []
    for i in range(10):
        c.send(T.good(i), frame_id=f"s{i}")
    for v in c.verdicts(timeout_s=4.0):
        order.append((v.frame_id, v.decided_by))
        if v.frame_id == "unsure" and v.decided_by == "teacher":
            break
    assert ("unsure", "teacher") in order
    teacher_at = order.index(("unsure", "teacher"))
    assert {f"s{i}" for i in range(10)} <= {f for f, _ in order[:teacher_at]}  # all edge verdicts came first
    assert order.index(("unsure", "edge")) < teacher_at


def test_teacher_down_then_up_backlog_replayed(run_daemon, teacher, tmp_path):
    t = teacher()
    ep = t.endpoint
    t.stop()
    d, c = run_daemon(ep, **{"teacher.deadline_ms": 8000, "teacher.request_timeout_ms": 200, "teacher.retries": 0})
    c.send(T.in_band(1), frame_id="waiting")
    (edge,) = c.collect(["waiting"], timeout_s=3.0)["waiting"]
    assert edge.pending
    for _ in range(60):  # let the circuit open
        if c.status()["teacher"]["reopens"] >= 1:
            break
        time.sleep(0.05)
    assert c.status()["teacher"]["reopens"] >= 1  # silence seen: Lazy Pirate reopened the socket
    t.start()  # the teacher comes back on the same endpoint
    vs = finals(c, ["waiting"], timeout_s=8.0)["waiting"]
    assert vs[-1].decided_by == "teacher" and vs[-1].supersedes == "edge"
    assert c.status()["teacher"]["circuit"] == "closed"


def test_busy_teacher_is_retried(run_daemon, teacher):
    t = teacher(busy_first=2)
    d, c = run_daemon(t.endpoint, **{"teacher.retries": 3})
    c.send(T.in_band(2), frame_id="b")
    vs = finals(c, ["b"])["b"]
    assert vs[-1].decided_by == "teacher" and t.received.count("b") == 3


def test_lost_request_parked_then_replayed_when_teacher_answers(run_daemon, teacher):
    t = teacher(ignore_first=1)  # the first request vanishes (the server lost it)
    d, c = run_daemon(t.endpoint, **{"teacher.retries": 0, "teacher.request_timeout_ms": 300,
                                     "teacher.deadline_ms": 8000, "teacher.breaker_failures": 5,
                                     "teacher.breaker_reset_s": 30.0})  # no probe: the answer to "next" replays it
    c.send(T.in_band(1), frame_id="lost")
    for _ in range(200):  # its only try timed out: parked, circuit still closed
        st = c.status()["teacher"]
        if st["parked"] == 1:
            break
        time.sleep(0.01)
    assert st["parked"] == 1 and st["circuit"] == "closed" and st["reopens"] == 1
    c.send(T.in_band(2), frame_id="next")  # answered: the teacher is fine, the parked frame is replayed
    got = finals(c, ["lost", "next"], timeout_s=6.0)
    assert got["lost"][-1].decided_by == "teacher" and got["next"][-1].decided_by == "teacher"
    assert t.received.count("lost") == 2


def test_backlog_bound_makes_extra_frames_final(run_daemon, teacher):
    t = teacher(slow_s=2.0)
    d, c = run_daemon(t.endpoint, **{"teacher.backlog": 2, "teacher.request_timeout_ms": 5000,
                                     "teacher.deadline_ms": 10000})
    ids = [f"u{i}" for i in range(5)]
    for i, fid in enumerate(ids):
        c.send(T.in_band(i), frame_id=fid)
    edge = {f: vs[0] for f, vs in c.collect(ids, timeout_s=3.0).items()}
    assert sum(v.pending for v in edge.values()) == 2
    assert c.status()["teacher"]["pending"] <= 2


def test_teacher_address_accepts_a_list_of_servers():
    import tomllib

    from runtime.daemon.config import ConfigError, load_config, to_toml

    cfg = load_config(overrides={"teacher.address": "tcp://gpu-a:5560, tcp://gpu-b:5560"})  # --teacher a,b
    assert cfg.teacher.address == ["tcp://gpu-a:5560", "tcp://gpu-b:5560"] == cfg.teacher.addresses
    assert tomllib.loads(to_toml(cfg))["teacher"]["address"] == cfg.teacher.address  # round-trips
    assert load_config(overrides={"teacher.address": ["tcp://gpu-a:5560"]}).teacher.address == "tcp://gpu-a:5560"
    assert load_config().teacher.addresses == []
    for bad, says in ((["tcp://gpu-a:5560", "gpu-b"], "not a ZeroMQ endpoint"), ([], "empty list"),
                      (["tcp://a:1", "tcp://a:1"], "twice")):
        with pytest.raises(ConfigError, match=f"teacher.address: .*{says}"):
            load_config(overrides={"teacher.address": bad})


def test_teacher_address_list_spreads_over_live_servers_and_skips_a_dead_one(run_daemon, teacher):
    dead = teacher()
    dead.stop()  # nothing listens there: ZMQ_IMMEDIATE keeps requests off it
    a, b = teacher(), teacher()
    d, c = run_daemon([dead.endpoint, a.endpoint, b.endpoint])
    ids = [f"m{i}" for i in range(8)]
    for i, fid in enumerate(ids):
        c.send(T.in_band(i), frame_id=fid)
    got = finals(c, ids)
    assert all(got[f][-1].decided_by == "teacher" and got[f][-1].status == "ok" for f in ids)
    assert sorted(a.received + b.received) == sorted(ids) and a.received and b.received  # spread, none lost
    st = c.status()["teacher"]
    assert st["address"] == [dead.endpoint, a.endpoint, b.endpoint] and st["reopens"] == 0


def test_edge_talks_to_a_broker_as_to_a_server(run_daemon):
    """`teacher serve broker` in front of `teacher serve --broker` workers, as the edge's [teacher] address."""
    from teacher.serve import ServeConfig, TeacherServer
    from teacher.serve.broker import Broker, BrokerConfig

    with Broker(BrokerConfig(bind="tcp://127.0.0.1:*", backend="tcp://127.0.0.1:*")) as broker:
        with TeacherServer(ServeConfig(model="fake", broker=broker.backend_endpoint, workers=2,
                                       worker_mode="thread", max_wait_ms=0)):
            for _ in range(200):
                if len(broker.status()["workers"]) == 2:
                    break
                time.sleep(0.02)
            d, c = run_daemon(broker.endpoint, **{"teacher.request_timeout_ms": 3000, "teacher.deadline_ms": 8000})
            c.send(T.in_band(3), frame_id="via-broker", want_mask=True)
            edge, final = finals(c, ["via-broker"])["via-broker"]
            assert edge.pending and final.decided_by == "teacher" and final.supersedes == "edge"
            assert final.status == "ok" and final.frame_id == "via-broker" and final.mask is not None
            assert broker.status()["counts"]["answered"] == 1


def test_curve_teacher_link(run_daemon, teacher, tmp_path):
    import zmq.auth

    keys, allowed = tmp_path / "keys", tmp_path / "allowed"
    keys.mkdir(), allowed.mkdir()
    for name in ("teacher", "edge", "rogue"):
        zmq.auth.create_certificates(keys, name)
    shutil.copy(keys / "edge.key", allowed / "edge.key")
    t = teacher(curve_secret=keys / "teacher.key_secret", allowed_keys=allowed)
    d, c = run_daemon(t.endpoint, **{"teacher.secret_file": str(keys / "edge.key_secret"),
                                     "teacher.server_public_file": str(keys / "teacher.key")})
    c.send(T.in_band(3), frame_id="sec")
    assert finals(c, ["sec"])["sec"][-1].decided_by == "teacher"
    d2, c2 = run_daemon(t.endpoint, **{"teacher.secret_file": str(keys / "rogue.key_secret"),
                                       "teacher.server_public_file": str(keys / "teacher.key"),
                                       "journal.path": str(tmp_path / "j2.sqlite3")})
    c2.send(T.in_band(3), frame_id="rogue")
    vs = finals(c2, ["rogue"])["rogue"]
    assert vs[-1].status == "teacher_unreachable" and "rogue" not in t.received


def _teacher_serve_ready() -> bool:
    from pathlib import Path

    ready = Path("/work/plan/ready.md")
    return ready.is_file() and "teacher serve --checkpoint CKPT|fake" in ready.read_text()


@pytest.mark.skipif(not _teacher_serve_ready(), reason="`teacher serve` (fake model) not announced in /work/plan/ready.md")
def test_against_real_teacher_serve(run_daemon):
    """The real `teacher serve` (its fake model, no checkpoint) as the fallback server of a daemon."""
    import os
    import subprocess
    import sys
    import threading

    proc = subprocess.Popen([sys.executable, "-m", "teacher", "serve", "--checkpoint", "fake", "--bind",
                             "tcp://127.0.0.1:*"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    found = {}

    def read():
        for line in proc.stderr:
            if "listening on" in line:
                found["ep"] = line.strip().rsplit(" ", 1)[-1]
                return

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    reader.join(60)
    try:
        if "ep" not in found:
            pytest.fail("teacher serve did not report its endpoint within 60 s")
        d, c = run_daemon(found["ep"], **{"teacher.request_timeout_ms": 5000, "teacher.deadline_ms": 20000})
        c.send(T.in_band(7), frame_id="real", want_mask=True)
        c.send(T.good(7), frame_id="plain")
        got = finals(c, ["real", "plain"], timeout_s=20.0)
        edge, final = got["real"]
        assert edge.pending and final.decided_by == "teacher" and final.supersedes == "edge"
        assert final.status == "ok" and final.frame_id == "real" and final.decision in ("good", "defect")
        assert [v.decided_by for v in got["plain"]] == ["edge"]
        assert c.status()["teacher"]["circuit"] == "closed"
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
