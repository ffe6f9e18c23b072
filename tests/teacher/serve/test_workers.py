"""teacher serve: worker processes behind the proxy, crash restart, CURVE, the CLI (SIGTERM), metrics, bench."""
from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import numpy as np
import pytest
import zmq

from runtime.cli.keys import make_keypair
from runtime.contracts.protocol import image_frames
from teacher.serve import ServeConfig, TeacherServer
from teacher.serve.bench import ServeClient, run_server_bench
from tests.support.teacher_fixtures import status_until

TIMEOUT_MS = 10_000
SILENCE_MS = 1000


@pytest.fixture
def ctx():
    c = zmq.Context()
    yield c
    c.destroy(linger=0)


def image(value, size=16):
    return np.full((size, size, 3), value, np.uint8)


def wait_status(client, pred, tries=60):
    return status_until(client, pred, TIMEOUT_MS, tries)


def free_port() -> int:
    with contextlib.closing(socket.socket()) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_worker_processes_share_the_load(ctx):
    cfg = ServeConfig(model="fake:delay_ms=100", bind="tcp://127.0.0.1:*", workers=2, max_batch=4, max_wait_ms=50)
    assert cfg.mode == "process"
    with TeacherServer(cfg) as srv:
        clients = [ServeClient(srv.endpoint, ctx, timeout_ms=TIMEOUT_MS) for _ in range(8)]
        try:
            for k, c in enumerate(clients):
                c.send(image_frames("infer", image(k), "raw", frame_id=f"p{k}"))
            for k, c in enumerate(clients):
                r = c.recv()
                assert r is not None and r[0]["kind"] == "verdict" and r[0]["frame_id"] == f"p{k}"
            st = wait_status(clients[0], lambda s: s["counts"]["served"] == 8
                             and all(w["served"] > 0 for w in s["workers"]))
        finally:
            for c in clients:
                c.close()
    pids = {w["pid"] for w in st["workers"]}
    assert len(st["workers"]) == 2 and len(pids) == 2 and os.getpid() not in pids
    assert all(w["alive"] and w["mode"] == "process" for w in st["workers"])
    assert sum(int(k) * v for k, v in st["batch_size_histogram"].items()) == 8


def test_crashed_worker_process_is_restarted(ctx):
    cfg = ServeConfig(model="fake:crash_marker=9", bind="tcp://127.0.0.1:*", workers=2, max_wait_ms=0)
    with TeacherServer(cfg) as srv, ServeClient(srv.endpoint, ctx, timeout_ms=TIMEOUT_MS) as c:
        assert c.infer(image(9), "crash", timeout_ms=SILENCE_MS) is None  # the worker died with it
        st = wait_status(c, lambda s: sum(w["restarts"] for w in s["workers"]) == 1
                         and all(w["alive"] for w in s["workers"]), tries=400)  # a process start, under load
        for i in range(4):  # both workers answer again
            r = c.infer(image(i), f"after-{i}")
            assert r is not None and r[0]["kind"] == "verdict"
        st = wait_status(c, lambda s: s["counts"]["served"] >= 4)
    assert len({w["pid"] for w in st["workers"]}) == 2


def test_curve_admits_only_allowed_keys(tmp_path, ctx):
    keys, allowed = tmp_path / "keys", tmp_path / "allowed"
    _, server_secret = make_keypair(keys, "teacher")
    client_public, client_secret = make_keypair(keys, "edge")
    _, intruder_secret = make_keypair(keys, "intruder")
    allowed.mkdir()
    (allowed / "edge.key").write_bytes(client_public.read_bytes())
    server_public = keys / "teacher.key"
    cfg = ServeConfig(model="fake", bind="tcp://127.0.0.1:*", curve_secret=str(server_secret),
                      allowed_keys=str(allowed))
    with TeacherServer(cfg) as srv:
        with ServeClient(srv.endpoint, ctx, curve_secret=str(intruder_secret), server_public=str(server_public),
                         timeout_ms=SILENCE_MS) as intruder:
            assert intruder.infer(image(1), "x") is None, "an unknown CURVE key was answered"
        with ServeClient(srv.endpoint, ctx, timeout_ms=SILENCE_MS) as plain:
            assert plain.infer(image(1), "y") is None, "a client without CURVE was answered"
        with ServeClient(srv.endpoint, ctx, curve_secret=str(client_secret), server_public=str(server_public),
                         timeout_ms=TIMEOUT_MS) as edge:
            r = edge.infer(image(1), "z")
            assert r is not None and r[0]["kind"] == "verdict"
            st = edge.status()
    assert st["config"]["curve"] is True
    assert st["counts"]["received"] == 2  # the authorised infer and status only


def _start_cli(*args, env_extra=None) -> tuple[subprocess.Popen, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", **(env_extra or {}))
    p = subprocess.Popen([sys.executable, "-m", "teacher", "serve", *args], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, env=env)
    t_end = time.monotonic() + 60
    lines = []
    while time.monotonic() < t_end:
        line = p.stderr.readline()
        if not line:
            break
        lines.append(line)
        m = re.search(r"listening on (\S+)", line)
        if m:
            return p, m.group(1)
    p.kill()
    raise AssertionError("server did not come up: " + "".join(lines))


def test_cli_sigterm_drains_in_flight_batch_and_exits_0(ctx, tmp_path):
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)  # stands in for systemd (Type=notify)
    notify.bind(str(tmp_path / "notify.sock"))
    notify.settimeout(10)
    p, endpoint = _start_cli("--checkpoint", "fake:delay_ms=700", "--bind", "tcp://127.0.0.1:*",
                             "--max-wait-ms", "0", "--json",
                             env_extra={"NOTIFY_SOCKET": str(tmp_path / "notify.sock"), "WATCHDOG_USEC": "200000"})
    try:
        assert notify.recv(4096).startswith(b"READY=1")
        assert notify.recv(4096) == b"WATCHDOG=1"
        with ServeClient(endpoint, ctx, timeout_ms=TIMEOUT_MS) as c:
            c.send(image_frames("infer", image(3), "raw", frame_id="last"))
            time.sleep(0.3)  # in the model now
            p.send_signal(signal.SIGTERM)
            r = c.recv()
        out, err = p.communicate(timeout=30)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait(timeout=10)
    assert r is not None and r[0]["kind"] == "verdict" and r[0]["frame_id"] == "last", err
    assert p.returncode == 0, err
    seen = []
    while not seen or seen[-1] != b"STOPPING=1":
        seen.append(notify.recv(4096))  # WATCHDOG=1 pings, then STOPPING=1 (or a timeout error)
    notify.close()
    last = json.loads(out.strip().splitlines()[-1])
    assert last["ok"] is True and last["status"]["counts"]["served"] == 1


def test_cli_refuses_open_bind_without_keys():
    r = subprocess.run([sys.executable, "-m", "teacher", "serve", "--checkpoint", "fake", "--bind", "tcp://*:0", "--json"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2
    assert "--insecure" in r.stderr
    assert json.loads(r.stdout.strip().splitlines()[-1])["ok"] is False


def test_prometheus_metrics(ctx):
    port = free_port()
    cfg = ServeConfig(model="fake", bind="tcp://127.0.0.1:*", metrics_port=port)
    with TeacherServer(cfg) as srv, ServeClient(srv.endpoint, ctx, timeout_ms=TIMEOUT_MS) as c:
        assert c.infer(image(1), "m")[0]["kind"] == "verdict"
        wait_status(c, lambda s: s["counts"]["served"] == 1)
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
        health = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=10).read())
    assert 'lineside_teacher_requests_total{outcome="served"} 1.0' in text
    assert "lineside_teacher_queue_depth" in text and "lineside_teacher_workers_alive 1.0" in text
    assert health["healthy"] and health["workers_alive"] == 1
    # Prometheus users' expectations: the outcomes sum without counting a request twice (received apart),
    # latency and batch size are histograms, latency in seconds; process metrics and build_info are there
    from prometheus_client.parser import text_string_to_metric_families

    fams = {f.name: f for f in text_string_to_metric_families(text)}
    outcomes = {s.labels["outcome"] for s in fams["lineside_teacher_requests"].samples if s.name.endswith("_total")}
    assert "received" not in outcomes and "served" in outcomes
    assert fams["lineside_teacher_requests_received"].samples[0].value >= 1
    for name in ("lineside_teacher_latency_seconds", "lineside_teacher_batch_size"):
        assert fams[name].type == "histogram", name
        count = [s.value for s in fams[name].samples if s.name == name + "_count"]
        assert count == [1.0], (name, count)
    lat_sum = [s.value for s in fams["lineside_teacher_latency_seconds"].samples if s.name.endswith("_sum")][0]
    assert 0 < lat_sum < 10  # seconds
    assert not any(n.endswith("_ms") for n in fams)
    assert "process_resident_memory_bytes" in fams and fams["lineside_build_info"].samples[0].value == 1


def test_bench_function_and_cli_json():
    res = run_server_bench(clients=(1, 4), requests_per_client=5, image_size=32, fake="fake:delay_ms=5")
    assert [r["clients"] for r in res["results"]] == [1, 4]
    for r in res["results"]:
        assert r["requests"] == 5 * r["clients"] and r["errors"] == 0 and r["lost"] == 0
        assert r["throughput_rps"] > 0 and r["latency_ms"]["p50"] <= r["latency_ms"]["p99"]
    out = subprocess.run([sys.executable, "-m", "teacher", "serve", "--bench", "--json", "--bench-clients", "2",
                          "--bench-requests", "3", "--bench-size", "16"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    last = json.loads(out.stdout.strip().splitlines()[-1])
    assert last["bench"] == "teacher_serve" and last["results"][0]["requests"] == 6


def test_edge_cascade_gets_superseding_verdicts_from_the_server(ctx):
    """The contract with the edge: runtime/daemon/cascade.py (Lazy Pirate DEALER, [b"", header, payload])."""
    import queue

    cascade = pytest.importorskip("runtime.daemon.cascade")
    from runtime.daemon.config import Teacher
    from runtime.telemetry import Telemetry
    from runtime.contracts.verdict import Verdict

    with TeacherServer(ServeConfig(model="fake:delay_ms=20", bind="tcp://127.0.0.1:*")) as srv:
        out: queue.Queue = queue.Queue()
        c = cascade.Cascade(ctx, Teacher(address=srv.endpoint), out, Telemetry())
        c.start()
        try:
            for i in range(3):
                frames = image_frames("infer", image(220), "raw", frame_id=f"e{i}", camera_id="cam1",
                                      deadline_ts=time.time() + 30, want_mask=True)
                assert c.reserve()
                c.submit(f"e{i}", "cam1", frames[0], frames[1], time.time() + 30,
                         Verdict(frame_id=f"e{i}", camera_id="cam1", pending=True))
            got = [out.get(timeout=20).verdict for _ in range(3)]
        finally:
            c.stop_event.set()
            c.join(timeout=10)
    assert sorted(v.frame_id for v in got) == ["e0", "e1", "e2"]
    assert all(v.decided_by == "teacher" and v.status == "ok" and v.decision == "defect" for v in got)
