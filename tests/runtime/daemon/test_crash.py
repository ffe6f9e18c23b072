"""`lineside run` as a subprocess: kill -9 mid-stream and restart loses no acknowledged frame; pending
teacher frames survive a crash; SIGTERM drains and exits 0; the CLI clients work against it."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import zmq

from tests.support.runtime_fixtures import FakeTeacher, TinyArtifact

T = TinyArtifact


@pytest.fixture
def procs():
    from runtime.tools.bench.daemon import stop_daemon

    running = []
    yield running
    for p in running:
        if p.poll() is None:
            stop_daemon(p, 5)


def start(art, journal, procs, *extra):
    from runtime.tools.bench.daemon import start_daemon

    p, ready = start_daemon(art.dir, "onnxruntime", 1, 1000, journal, list(extra))
    procs.append(p)
    return p, ready


def client(ready, **kw):
    from runtime.client import LinesideClient

    c = LinesideClient(ready["ingress"], ready["verdicts"], control=ready["control"], context=zmq.Context(), **kw)
    c.wait_ready()
    return c


def close(c):
    c.close()
    c.ctx.destroy(linger=0)


def test_kill9_mid_stream_every_acked_frame_in_journal(art, tmp_path, procs):
    from runtime.daemon.journal import Journal

    journal = tmp_path / "j.sqlite3"
    p, ready = start(art, journal, procs)
    c = client(ready)
    acked = []
    for i in range(400):  # pipelined; kill -9 while frames are still queued
        c.send(T.good(i % 7), frame_id=f"k{i}", wait=False)
        if i % 20 == 19:
            acked += [h["frame_id"] for h in c.acks(0.0) if h["kind"] == "status"]
        if len(acked) >= 150:
            break
    os.kill(p.pid, signal.SIGKILL)
    p.wait(10)
    acked += [h["frame_id"] for h in c.acks(0.2) if h["kind"] == "status"]
    close(c)
    assert len(acked) >= 150
    j = Journal(journal)
    assert set(acked) <= set(j.received_ids())  # acknowledged => journaled, even under kill -9
    unjudged = {f for f, _ in j.unjudged()}
    spooled = {f for f, _, _, _ in j.spooled_unjudged()}
    assert unjudged <= spooled  # every acknowledged, unjudged frame has its bytes in the spool
    # restart on the same journal: frames acked but never judged are judged now, from the spool
    p2, ready2 = start(art, journal, procs)
    c2 = client(ready2)
    close(c2)
    with_verdict = {v["frame_id"] for v in j.verdicts()}
    missing = set(acked) - with_verdict
    for _ in range(50):
        if not missing:
            break
        time.sleep(0.1)
        with_verdict = {v["frame_id"] for v in j.verdicts()}
        missing = set(acked) - with_verdict
    assert not missing
    assert ready2["recovered"]["judged"] == len(spooled) and ready2["recovered"]["unjudged"] == 0
    for f in unjudged:
        (v,) = j.verdicts(f)
        assert v["status"] == "ok" and v["decision"] == "good"  # judged, not dropped
    assert not j.spooled_unjudged() and j.spooled_bytes() == 0  # nothing left in flight
    print(f"acked {len(acked)}, unjudged at the kill {len(unjudged)}, judged at the restart {len(spooled)}")


def test_pending_teacher_frames_survive_a_crash(art, tmp_path, procs):
    from runtime.daemon.journal import Journal

    journal = tmp_path / "j.sqlite3"
    t = FakeTeacher(slow_s=30.0)  # answers too late: the frame is pending when we crash
    try:
        p, ready = start(art, journal, procs, "--teacher", t.endpoint, "--teacher-timeout-ms", "20000",
                         "--teacher-deadline-ms", "60000")
        c = client(ready)
        c.send(T.in_band(5), frame_id="pend")
        (edge,) = c.collect(["pend"], timeout_s=5.0)["pend"]
        assert edge.pending
        os.kill(p.pid, signal.SIGKILL)
        p.wait(10)
        close(c)
        assert [r.frame_id for r in Journal(journal).pending()] == ["pend"]
        t.slow_s = 0.0
        p2, ready2 = start(art, journal, procs, "--teacher", t.endpoint)
        assert ready2["recovered"]["pending_resumed"] == 1
        j = Journal(journal)
        for _ in range(100):
            if not j.pending():
                break
            time.sleep(0.05)
        vs = j.verdicts("pend")
        assert [v["decided_by"] for v in vs] == ["edge", "teacher"] and vs[-1]["supersedes"] == "edge"
    finally:
        t.close()


def test_sigterm_drains_and_exits_zero(art, tmp_path, procs):
    from runtime.daemon.journal import Journal

    journal = tmp_path / "j.sqlite3"
    p, ready = start(art, journal, procs)
    c = client(ready)
    ids = [c.send(T.good(i), frame_id=f"t{i}", wait=False) for i in range(30)]
    acked = []
    for _ in range(50):
        acked += [h["frame_id"] for h in c.acks(0.1)]
        if len(acked) == len(ids):
            break
    p.send_signal(signal.SIGTERM)
    assert p.wait(10) == 0
    close(c)
    assert {v["frame_id"] for v in Journal(journal).verdicts()} >= set(ids)


def test_cli_send_watch_status_control(art, tmp_path, procs):
    import cv2

    journal = tmp_path / "j.sqlite3"
    p, ready = start(art, journal, procs, "--artifacts-dir", str(art.dir.parent))
    folder = tmp_path / "imgs"
    folder.mkdir()
    for name, img in [("good1", T.good(1)), ("bad1", T.defect(1))]:
        cv2.imwrite(str(folder / f"{name}.png"), cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
    lineside = [sys.executable, "-m", "runtime"]
    watch = subprocess.Popen(lineside + ["watch", "--from", ready["verdicts"], "--count", "2", "--timeout", "20",
                                         "--save", str(tmp_path / "ov"), "--images", str(folder)],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(1.5)  # the watcher subscribes (PUB/SUB slow joiner); sending repeatedly below covers the rest
    seen = {}
    for attempt in range(3):
        r = subprocess.run(lineside + ["send", str(folder), "--to", ready["ingress"], "--json"],
                           capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr
        summary = json.loads(r.stdout.strip().splitlines()[-1])
        assert summary["accepted"] == 2
        try:
            out, _ = watch.communicate(timeout=5)
            seen = {json.loads(line)["frame_id"]: json.loads(line) for line in out.splitlines() if line.startswith("{")}
            break
        except subprocess.TimeoutExpired:
            continue
    assert seen["good1"]["decision"] == "good" and seen["bad1"]["decision"] == "defect"
    assert any(f.name.startswith("bad1.") for f in (tmp_path / "ov").iterdir())
    r = subprocess.run(lineside + ["status", "--to", ready["control"]], capture_output=True, text=True, timeout=30)
    st = json.loads(r.stdout.strip().splitlines()[-1])
    assert r.returncode == 0 and st["alive"] and st["judged"] >= 2
    r = subprocess.run(lineside + ["control", "reload", "--to", ready["control"], "--artifact", str(tmp_path)],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 1 and json.loads(r.stdout.strip().splitlines()[-1])["field"] == "path"
    r = subprocess.run(lineside + ["control", "reload", "--to", ready["control"], "--artifact", str(art.dir)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and json.loads(r.stdout.strip().splitlines()[-1])["reloaded"]
    r = subprocess.run(lineside + ["control", "shutdown", "--to", ready["control"]], capture_output=True, text=True,
                       timeout=30)
    assert r.returncode == 0
    assert p.wait(10) == 0
