"""The teacher fallback server: ZeroMQ's ROUTER-DEALER proxy in front of N model workers.

    edge clients (DEALER / REQ, CURVE)                            worker 0 (model, batch queue)
        ──► ROUTER frontend ══ zmq.proxy_steerable ══ DEALER backend ──► worker 1 (model, batch queue)
            MAXMSGSIZE, CURVE + ZAP                    (inproc / ipc)     ...
                                        PAIR control ── TERMINATE on shutdown
    workers ──► ROUTER stats (snapshots; merged status; "stop")

The proxy is libzmq's own (C, no GIL): the frontend ROUTER prepends the client's identity, the
backend DEALER hands requests to the workers round-robin, and replies find their way back by that
identity. Each worker batches what it receives (teacher/serve/workers.py): validation, decoding,
the reply LRU and the bounded queue scale with the workers instead of sitting on one Python thread.
Under light load batches are small and a request waits at most --max-wait-ms; under load each
worker's queue fills while its model runs and the next batch is taken full.

Workers are threads (default with one worker, and on CPU) or processes, one model each; with
GPUs each worker process gets one GPU through CUDA_VISIBLE_DEVICES (worker i -> GPU i mod n).
A worker process that dies is restarted (its queued requests are lost and Lazy Pirate clients retry;
behind a broker, the broker re-queues them to another worker).

Idempotency: a reply is a pure function of (camera_id, frame_id) and the frame, so a retry gets the
same verdict. Each worker keeps an LRU of its recent replies and joins a retry to a request it is
still computing; with several workers the proxy may hand a retry to another worker, which then
recomputes it (same answer, more work): the LRU saves compute, it is not needed for correctness.

With ``broker`` set (``teacher serve --broker tcp://broker:5561``) there is no frontend and no proxy:
each worker connects to a `teacher serve broker` (teacher/serve/broker.py) on another host, registers
and heartbeats, and the broker spreads the edges' requests over the workers of every host and re-queues
those of a worker that dies. This server still starts, restarts and drains its own workers.

Deadlines (deadline_ts, s since the epoch, edge and server clocks NTP-synchronised): a request
already past it gets error "deadline_ts"/expired; one whose estimated wait (queue depth and the
mean batch time) would take it past it gets "busy" at once; one that expires while queued is
dropped from its batch, never computed, and answered expired.
"""
from __future__ import annotations

import json
import logging
import os
import queue
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional

import zmq

from runtime.curve import check_bind_policy
from teacher.serve.models import is_fake, parse_fake_spec
from teacher.serve.status import merge, start_metrics_server
from teacher.serve.wire import FRONTEND_CLOSE_LINGER_MS, bind_frontend
from teacher.serve.workers import Worker, WorkerConfig, config_dict

log = logging.getLogger("teacher.serve")

STATS_POLL_MS = 50
MONITOR_INTERVAL_S = 0.5
MAX_RESTARTS_PER_WORKER = 5
FLUSH_BEFORE_TERMINATE_S = 0.1  # let the last replies cross the proxy before it stops
WORKER_JOIN_TIMEOUT_S = 10.0


class ServeError(RuntimeError):
    pass


@dataclass
class ServeConfig:
    model: str  # teacher checkpoint directory, or "fake[:opts]" (teacher/serve/models.py)
    bind: str = "tcp://127.0.0.1:5560"
    max_batch: int = 8
    max_wait_ms: float = 10.0
    queue_size: int = 64  # per worker
    workers: int = 1
    worker_mode: str = "auto"  # auto | thread | process (auto: thread for one worker, else process)
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    curve_secret: Optional[str] = None
    allowed_keys: Optional[str] = None
    insecure: bool = False
    metrics_port: int = 0  # 0: off
    metrics_host: str = "127.0.0.1"
    max_message_mb: float = 16.0  # ZMQ_MAXMSGSIZE on the frontend: a bigger message drops that peer
    max_pixels: int = 4096 * 4096
    cache_size: int = 256  # recent replies kept per worker (idempotent retries)
    start_timeout_s: float = 300.0
    broker: Optional[str] = None  # a broker's worker endpoint: workers register there; `bind` is not used

    def check(self) -> None:
        for name in ("max_batch", "queue_size", "workers"):
            if getattr(self, name) < 1:
                raise ServeError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if self.max_wait_ms < 0:
            raise ServeError(f"--max-wait-ms must be >= 0, got {self.max_wait_ms}")
        if self.max_message_mb <= 0:
            raise ServeError(f"--max-message-mb must be > 0, got {self.max_message_mb}")
        if self.worker_mode not in ("auto", "thread", "process"):
            raise ServeError(f"--worker-mode {self.worker_mode!r}: auto, thread or process")
        if (self.curve_secret is None) != (self.allowed_keys is None):
            raise ServeError("CURVE needs both --curve-secret and --allowed-keys")
        if self.broker is not None:
            if not self.broker.startswith(("tcp://", "ipc://")):
                raise ServeError(f"--broker {self.broker!r}: a broker's worker endpoint, tcp://HOST:PORT or ipc://PATH")
            if self.curve_secret is not None:
                raise ServeError("--broker with --curve-secret: the broker <-> worker link has no CURVE; the edges' "
                                 "CURVE keys go to `teacher serve broker`")
        else:
            check_bind_policy(self.bind, self.curve_secret is not None, self.insecure, "teacher serve")
        if is_fake(self.model):
            parse_fake_spec(self.model)
        elif not Path(self.model).is_dir():
            raise ServeError(f"--checkpoint {self.model}: not a directory")

    @property
    def mode(self) -> str:
        if self.worker_mode != "auto":
            return self.worker_mode
        return "thread" if self.workers == 1 else "process"


def plan_devices(cfg: ServeConfig) -> list[tuple[str, Optional[str]]]:
    """(device, CUDA_VISIBLE_DEVICES) per worker: one GPU per worker process, round-robin over GPUs."""
    n_gpus, visible = 0, None
    if cfg.device != "cpu" and not is_fake(cfg.model):
        try:
            import torch

            n_gpus = torch.cuda.device_count()
        except ImportError:
            n_gpus = 0
        env = os.environ.get("CUDA_VISIBLE_DEVICES")
        visible = [v for v in env.split(",") if v.strip()] if env else [str(i) for i in range(n_gpus)]
    if cfg.device.startswith("cuda") and n_gpus == 0 and not is_fake(cfg.model):
        raise ServeError(f"--device {cfg.device}: no CUDA GPU visible")
    if n_gpus == 0 or cfg.device == "cpu":
        if cfg.device == "auto" and not is_fake(cfg.model):
            log.info("no CUDA GPU visible: %d worker(s) on the CPU", cfg.workers)
        return [("cpu", None)] * cfg.workers
    plan = []
    for i in range(cfg.workers):
        gpu = int(cfg.device.split(":")[1]) if cfg.device.startswith("cuda:") else i % n_gpus
        if cfg.mode == "process":
            plan.append(("cuda:0", visible[gpu % len(visible)]))
        else:
            plan.append((f"cuda:{gpu}", None))
    return plan


class TeacherServer:
    """``with TeacherServer(cfg) as srv: ... srv.endpoint ... srv.status()``"""

    def __init__(self, cfg: ServeConfig):
        cfg.check()
        self.cfg = cfg
        self.endpoint: Optional[str] = None
        self.started = time.time()
        self._ctx: Optional[zmq.Context] = None
        self._auth = None
        self._metrics = None
        self._tmpdir: Optional[str] = None
        self._lock = threading.Lock()
        self._snapshots: dict[int, dict] = {}
        self._meta: dict[int, dict] = {}
        self._ready: set[int] = set()
        self._stopped: set[int] = set()
        self._failed: dict[int, str] = {}
        self._identities: dict[int, bytes] = {}
        self._handles: dict[int, object] = {}  # worker id -> Thread | Popen
        self._worker_cfgs: dict[int, WorkerConfig] = {}
        self._commands: queue.Queue = queue.Queue()
        self._stopping = threading.Event()
        self._agg_exit = threading.Event()
        self._threads: list[threading.Thread] = []
        self._control: Optional[zmq.Socket] = None  # the proxy's; none behind a broker

    # -- lifecycle ---------------------------------------------------------------------------------
    def __enter__(self) -> "TeacherServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self) -> "TeacherServer":
        cfg = self.cfg
        devices = plan_devices(cfg)
        self._ctx = zmq.Context()
        backend_ep, stats_ep, (frontend, backend, control_in, stats) = self._bind()
        # sockets move to their threads here; a thread start is the full barrier ZeroMQ asks for
        if cfg.broker is None:
            self._spawn_thread(self._proxy_main, "serve-proxy", frontend, backend, control_in)
        self._spawn_thread(self._stats_main, "serve-stats", stats)
        self._start_workers(devices, backend_ep, stats_ep)
        self._wait_ready()
        if cfg.metrics_port:
            self._metrics = start_metrics_server(cfg.metrics_port, self.status, host=cfg.metrics_host)
        if cfg.broker is not None:
            log.info("teacher serve: %d %s worker(s) registered with broker %s, model %s", cfg.workers, cfg.mode,
                     cfg.broker, self.status()["model_hash"])
        else:
            log.info("teacher serve: %s on %s, %d %s worker(s), model %s", "CURVE" if cfg.curve_secret else "plain",
                     self.endpoint, cfg.workers, cfg.mode, self.status()["model_hash"])
        return self

    def _bind(self) -> tuple[str, str, tuple]:
        """The workers' backend and stats endpoints, and the sockets bound here: (frontend, backend, control_in)
        of the proxy (None behind a broker: the workers connect to it) and the stats ROUTER. Nothing is left
        open if one cannot bind (ServeError)."""
        cfg, ctx = self.cfg, self._ctx
        tag = uuid.uuid4().hex[:10]
        if cfg.mode == "thread":
            backend_ep, stats_ep = f"inproc://serve-backend-{tag}", f"inproc://serve-stats-{tag}"
        else:
            self._tmpdir = tempfile.mkdtemp(prefix="lineside-serve-")
            backend_ep, stats_ep = f"ipc://{self._tmpdir}/backend", f"ipc://{self._tmpdir}/stats"
        if cfg.broker is not None:
            backend_ep = cfg.broker
        frontend = backend = control_in = None
        try:
            if cfg.broker is None:
                frontend, self._auth = bind_frontend(ctx, cfg.bind, max_message_mb=cfg.max_message_mb,
                                                     curve_secret=cfg.curve_secret, allowed_keys=cfg.allowed_keys)
                self.endpoint = frontend.getsockopt_string(zmq.LAST_ENDPOINT)
                backend = ctx.socket(zmq.DEALER)
                backend.linger = 0
                backend.bind(backend_ep)
                self._control = ctx.socket(zmq.PAIR)
                self._control.linger = 0
                self._control.bind(f"inproc://serve-control-{tag}")
                control_in = ctx.socket(zmq.PAIR)
                control_in.linger = 0
                control_in.connect(f"inproc://serve-control-{tag}")
            stats = ctx.socket(zmq.ROUTER)
            stats.linger = 0
            stats.bind(stats_ep)
        except (zmq.ZMQError, OSError, ValueError) as e:
            if self._auth is not None:
                self._auth.stop()
                self._auth = None
            ctx.destroy(linger=0)  # no thread uses these sockets yet
            self._ctx = None
            if self._tmpdir:
                shutil.rmtree(self._tmpdir, ignore_errors=True)
                self._tmpdir = None
            raise ServeError(f"cannot serve on {cfg.bind}: {e}") from e
        return backend_ep, stats_ep, (frontend, backend, control_in, stats)

    def _start_workers(self, devices: list, backend_ep: str, stats_ep: str) -> None:
        """One worker per planned device, each with its own config (kept for restarts) and status entry."""
        cfg, mode = self.cfg, self.cfg.mode
        for i, (device, cvd) in enumerate(devices):
            self._worker_cfgs[i] = WorkerConfig(
                worker_id=i, model_spec=cfg.model, backend=backend_ep, stats=stats_ep, device=device,
                cuda_visible_devices=cvd, max_batch=cfg.max_batch, max_wait_ms=cfg.max_wait_ms,
                queue_size=cfg.queue_size, max_pixels=cfg.max_pixels, cache_size=cfg.cache_size,
                parent_pid=os.getpid() if mode == "process" else None, broker=cfg.broker is not None)
            self._meta[i] = {"id": i, "mode": mode, "device": device, "cuda_visible_devices": cvd,
                             "alive": False, "pid": None, "restarts": 0}
            self._start_worker(i)

    def _wait_ready(self) -> None:
        """Until every worker has loaded its model; a failed one, or the start timeout, stops the server
        (ServeError)."""
        cfg = self.cfg
        t_end = time.monotonic() + cfg.start_timeout_s
        while True:
            with self._lock:
                failed, ready = dict(self._failed), len(self._ready)
            if failed:
                self.stop()
                raise ServeError("worker(s) failed to start: "
                                 + "; ".join(f"worker {k}: {v}" for k, v in sorted(failed.items())))
            if ready == cfg.workers:
                return
            if time.monotonic() > t_end:
                self.stop()
                raise ServeError(f"{cfg.workers - ready} worker(s) not ready after {cfg.start_timeout_s} s")
            time.sleep(0.02)

    def stop(self, drain_timeout_s: float = 10.0) -> None:
        """Graceful: workers finish their running batch and answer it, queued requests get "busy";
        then the proxy stops, sockets close (linger 0) and the context ends."""
        if self._ctx is None:
            return
        self._stopping.set()
        self._commands.put("stop")
        t_end = time.monotonic() + drain_timeout_s
        while time.monotonic() < t_end:
            with self._lock:
                pending = [i for i in self._ready if i not in self._stopped and self._alive(i)]
            if not pending:
                break
            time.sleep(0.02)
        for i, h in list(self._handles.items()):
            self._join_worker(h, max(0.5, t_end - time.monotonic()))
        if self._control is not None:
            time.sleep(FLUSH_BEFORE_TERMINATE_S)
            try:
                self._control.send(b"TERMINATE")
            except zmq.ZMQError:
                pass
        self._agg_exit.set()
        for t in self._threads:
            t.join(timeout=5)
        if self._control is not None:
            self._control.close(linger=0)
        if self._metrics is not None:
            self._metrics.shutdown()
            self._metrics = None
        if self._auth is not None:
            self._auth.stop()
            self._auth = None
        self._teardown_ctx()

    def _teardown_ctx(self) -> None:
        alive = [t.name for t in self._threads if t.is_alive()]
        alive += [f"worker{i}" for i, h in self._handles.items() if isinstance(h, threading.Thread) and h.is_alive()]
        if alive:
            log.warning("teacher serve: threads %s did not stop; leaving the ZeroMQ context open", alive)
        elif self._ctx is not None:
            self._ctx.term()
        self._ctx = None
        if self._tmpdir:
            shutil.rmtree(self._tmpdir, ignore_errors=True)
            self._tmpdir = None

    # -- workers -----------------------------------------------------------------------------------
    def _start_worker(self, i: int) -> None:
        wcfg = self._worker_cfgs[i]
        if self.cfg.mode == "thread":
            w = Worker(wcfg, self._ctx)
            h = threading.Thread(target=w.run, name=f"serve-worker-{i}", daemon=True)
            h.start()
            pid = os.getpid()
        else:
            env = dict(os.environ)
            if wcfg.cuda_visible_devices is not None:
                env["CUDA_VISIBLE_DEVICES"] = wcfg.cuda_visible_devices
            h = subprocess.Popen([sys.executable, "-m", "teacher.serve.worker_main", json.dumps(config_dict(wcfg))],
                                 env=env, stdin=subprocess.DEVNULL, stdout=_stdout_target())
            pid = h.pid
        with self._lock:
            self._handles[i] = h
            self._meta[i].update(pid=pid)

    def _alive(self, i: int) -> bool:
        h = self._handles.get(i)
        if isinstance(h, threading.Thread):
            return h.is_alive()
        return h is not None and h.poll() is None

    @staticmethod
    def _join_worker(h, timeout_s: float) -> None:
        if isinstance(h, threading.Thread):
            h.join(timeout=timeout_s)
            return
        try:
            h.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            log.warning("teacher serve: worker pid %d did not drain in time; terminating it", h.pid)
            h.terminate()
            try:
                h.wait(timeout=5)
            except subprocess.TimeoutExpired:
                h.kill()
                h.wait(timeout=5)

    def _monitor(self) -> None:
        for i in list(self._handles):
            alive = self._alive(i)
            with self._lock:
                was = self._meta[i]["alive"]
                self._meta[i]["alive"] = alive and i in self._ready
            if was and not alive and not self._stopping.is_set():
                h = self._handles[i]
                code = h.returncode if not isinstance(h, threading.Thread) else None
                restarts = self._meta[i]["restarts"]
                if self.cfg.mode == "process" and restarts < MAX_RESTARTS_PER_WORKER:
                    log.warning("teacher serve: worker %d died (exit %s); restarting it (%d/%d); its queued "
                                "requests are lost and clients will retry", i, code, restarts + 1, MAX_RESTARTS_PER_WORKER)
                    with self._lock:
                        self._ready.discard(i)
                        self._meta[i]["restarts"] = restarts + 1
                    self._start_worker(i)
                else:
                    log.warning("teacher serve: worker %d died (exit %s); not restarting it", i, code)

    # -- threads -----------------------------------------------------------------------------------
    def _spawn_thread(self, target, name: str, *args) -> None:
        t = threading.Thread(target=target, args=args, name=name, daemon=True)
        t.start()
        self._threads.append(t)

    def _proxy_main(self, frontend: zmq.Socket, backend: zmq.Socket, control: zmq.Socket) -> None:
        try:
            zmq.proxy_steerable(frontend, backend, None, control)
        except zmq.ZMQError as e:
            if e.errno != zmq.ETERM:
                log.error("teacher serve: proxy stopped: %s", e)
        finally:
            backend.close(linger=0)
            control.close(linger=0)
            frontend.close(linger=FRONTEND_CLOSE_LINGER_MS)

    def _stats_main(self, stats: zmq.Socket) -> None:
        next_monitor = 0.0
        try:
            while not self._agg_exit.is_set():
                if stats.poll(STATS_POLL_MS):
                    while True:
                        try:
                            msg = stats.recv_multipart(zmq.NOBLOCK)
                        except zmq.Again:
                            break
                        self._on_stats(stats, msg)
                try:
                    cmd = self._commands.get_nowait()
                except queue.Empty:
                    cmd = None
                if cmd == "stop":
                    with self._lock:
                        idents = list(self._identities.values())
                    for ident in idents:
                        stats.send_multipart([ident, b"stop"])
                if time.monotonic() >= next_monitor:
                    self._monitor()
                    next_monitor = time.monotonic() + MONITOR_INTERVAL_S
        finally:
            stats.close(linger=0)

    def _on_stats(self, stats: zmq.Socket, msg: list[bytes]) -> None:
        ident, kind, rest = msg[0], msg[1], msg[2:]
        if kind == b"agg?" and len(rest) == 2:
            snap = json.loads(rest[1])
            with self._lock:
                self._snapshots[snap["worker_id"]] = snap
            stats.send_multipart([ident, b"agg", rest[0], json.dumps(self.status()).encode()])
            return
        if not rest:
            return
        info = json.loads(rest[0])
        wid = info.get("worker_id", info.get("id"))
        with self._lock:
            if kind == b"ready":
                self._identities[wid] = ident
                self._ready.add(wid)
                self._meta[wid].update(alive=True, pid=info["pid"], model_hash=info["model_hash"])
                if self._stopping.is_set():  # came up during shutdown: stop it too
                    stats.send_multipart([ident, b"stop"])
            elif kind == b"failed":
                self._failed[wid] = info["error"]
            elif kind == b"snap":
                self._snapshots[wid] = info
            elif kind == b"stopped":
                self._snapshots[wid] = info
                self._stopped.add(wid)

    def health_problem(self) -> Optional[str]:
        """None when serving; otherwise what is wrong (the CLI then stops pinging systemd's watchdog)."""
        dead = [t.name for t in self._threads if not t.is_alive()]
        if dead:
            return f"thread(s) {', '.join(dead)} stopped"
        with self._lock:
            alive = [i for i in self._meta if self._meta[i]["alive"]]
        if not alive:
            return "no model worker alive"
        return None

    # -- status ------------------------------------------------------------------------------------
    def status(self) -> dict:
        cfg = self.cfg
        with self._lock:
            snaps = list(self._snapshots.values())
            meta = [dict(self._meta[i]) for i in sorted(self._meta)]
        config = {"max_batch": cfg.max_batch, "max_wait_ms": cfg.max_wait_ms, "queue_size_per_worker": cfg.queue_size,
                  "workers": cfg.workers, "worker_mode": cfg.mode, "curve": cfg.curve_secret is not None,
                  "max_message_mb": cfg.max_message_mb, "max_pixels": cfg.max_pixels, "endpoint": self.endpoint,
                  "broker": cfg.broker}
        st = merge(snaps, config, meta, self.started)
        if not st["model_hash"]:
            st["model_hash"] = next((m.get("model_hash") for m in meta if m.get("model_hash")), "")
        return st


def _stdout_target():
    """Worker processes print nothing on stdout (the server's `--json` owns it): send theirs to stderr."""
    try:
        return sys.__stderr__.fileno()
    except (AttributeError, OSError, ValueError):
        return subprocess.DEVNULL


def config_summary(cfg: ServeConfig) -> dict:
    return {k: v for k, v in asdict(cfg).items() if k not in ("curve_secret",)}
