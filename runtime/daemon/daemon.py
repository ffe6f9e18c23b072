"""The line-side daemon: wires the threads, recovers the journal at start, reloads, drains on shutdown.

    ingress (ROUTER) ─┐                         ┌─> cascade (DEALER, Lazy Pirate) ─┐
    camera (OpenCV) ──┴─> BoundedQueue ─> judge × workers ────────────────────────┴─> publisher: journal, then PUB
    control (ROUTER): status | metrics | reload | shutdown

One thread per role (``backend.workers`` judge threads, their verdicts handed on in frame order), each
owning its sockets (ZeroMQ sockets are not shared between threads); they meet in two queues.
``Daemon(artifact_dir, config).start()`` binds everything (errors surface there), then ``wait()`` until
shutdown is asked for, then ``stop()`` drains: ingress closes first, the judges empty their queue, the
publisher journals and publishes what is left. Pending teacher frames stay in the journal
and are resumed by the next start.
"""
from __future__ import annotations

import logging
import queue
import threading
import time
from pathlib import Path

import zmq

from runtime.daemon.cascade import Cascade, resolve_without_teacher
from runtime.daemon.config import ROLES, Config
from runtime.daemon.control import Control
from runtime.curve import start_authenticator
from runtime.engine import Engine
from runtime.daemon.ingress import HANDSHAKE_FAILURES, Ingress
from runtime.daemon.journal import Journal
from runtime.daemon.judge import EngineHolder, InOrder, Judge
from runtime.daemon.threads import MathThreadLimit
from runtime.contracts.protocol import ProtocolError
from runtime.daemon.publisher import Publisher
from runtime.daemon.queues import BoundedQueue, FrameJob, Outgoing
from runtime.telemetry import Telemetry
from runtime.contracts.verdict import Verdict

log = logging.getLogger("lineside.daemon")

JOIN_TIMEOUT_S = 2.0
CASCADE_GRACE_S = 1.0  # on shutdown, teacher answers already on their way may still arrive and supersede


class Daemon:
    def __init__(self, artifact_dir: str | Path, config: Config | None = None):
        self.cfg = config or Config()
        self.artifact_dir = Path(artifact_dir).resolve()
        self.artifacts_root = Path(self.cfg.artifacts_dir or self.artifact_dir.parent).resolve()
        self.tm = Telemetry()
        self.ctx: zmq.Context | None = None
        self.threads: list[threading.Thread] = []
        self.shutdown_requested = threading.Event()
        self.shutdown_reason = ""
        self.endpoints: dict[str, str] = {}
        self.recovered = {"judged": 0, "unjudged": 0, "pending_resumed": 0, "pending_expired": 0}
        self.cascade = None
        self.camera = None
        self.started_at = 0.0

    # -- lifecycle ------------------------------------------------------------------------------
    def start(self) -> "Daemon":
        c = self.cfg
        engine = self._open(self.artifact_dir)
        self.holder = EngineHolder(engine)
        self._publish_info(engine)
        self.queue = BoundedQueue(c.queue.size, c.queue.overload)
        # bounded too: a stuck publisher (journal disk full) back-pressures the judge and ingress, then ZeroMQ's
        # high-water marks push back on the senders, instead of memory growing
        self.publish_q: queue.Queue = queue.Queue(maxsize=c.queue.publish_size)
        self.ctx = zmq.Context()
        # one ZAP domain per CURVE socket, each with its own allowed keys: cameras, subscribers, operators
        domains = {r: c.security.allowed_keys_for(r) for r in ROLES if getattr(c.security, f"{r}_secret")}
        self.auth = start_authenticator(self.ctx, domains=domains) if domains else None
        try:
            self.publisher = Publisher(self.ctx, c, self.publish_q, self.tm, c.journal.path)
            if c.teacher.address:
                self.cascade = Cascade(self.ctx, c.teacher, self.publish_q, self.tm)
            order = InOrder(self.queue)
            self.judges = [Judge(self.holder, order, self.publish_q, self.tm, self.cascade, c.teacher.deadline_ms, i,
                                 max_pixels=c.limits.max_pixels)
                           for i in range(c.backend.workers)]
            self.ingress = Ingress(self.ctx, c, self.queue, self.publish_q, self.tm, c.journal.path)
            self.control = Control(self.ctx, c, self)
            if c.camera.source:
                from runtime.daemon.camera import CameraThread

                self.camera = CameraThread(self.ctx, c.camera, self.queue, self.publish_q, self.tm)
        except Exception:
            self._close_context()
            raise
        self.endpoints = {"ingress": self.ingress.endpoint, "verdicts": self.publisher.endpoint,
                          "control": self.control.endpoint}
        if c.metrics_port is not None:
            port = self.tm.serve_http(c.metrics_port, c.metrics_host, health=self._health)
            self.endpoints["metrics"] = f"http://{c.metrics_host}:{port}/metrics"
        # BLAS/OpenCV follow the backend's threads from here on (process-wide; stop() restores them): set after
        # the sockets and the metrics port are bound, so a start refused there leaves the process as it was
        self.math_threads = MathThreadLimit(c.backend.threads)
        self.threads = [t for t in (self.publisher, self.cascade, *self.judges, self.ingress, self.control,
                                    self.camera) if t is not None]
        journal = Journal(self.cfg.journal.path, self.cfg.journal.synchronous)  # schema and WAL mode, once, here
        try:
            self.publisher.start()  # before recovery, which may hand it more verdicts than its queue holds
            self._recover(journal)
        finally:
            journal.close()
        for t in self.threads[1:]:
            t.start()
        self.started_at = time.time()
        log.info("lineside daemon serving", extra={"fields": {**self.endpoints, "backend": engine.backend_name,
                                                              "model_hash": engine.model_hash, **self.recovered}})
        return self

    def _recover(self, j: Journal) -> None:
        """Frames acknowledged but never judged, and frames still waiting for the teacher, from the journal."""
        since = time.time() - self.cfg.journal.retention_age_s
        judged = set()
        for fid, cam, header, payload in j.spooled_unjudged():  # acknowledged, so judged now
            self.judges[0].judge_now(FrameJob(frame_id=fid, camera_id=cam, ts_frame=float(header.get("ts", 0.0)),
                                              t_recv=time.perf_counter(), header=header, payload=payload,
                                              want_mask=bool(header.get("want_mask"))))
            judged.add((fid, cam))
            self.recovered["judged"] += 1
        for fid, cam in j.unjudged(since):  # acknowledged before the spool existed, or its bytes were lost
            if (fid, cam) in judged:
                continue
            v = Verdict.failure(fid, "dropped", "daemon stopped before judging this frame (recovered at restart)",
                                camera_id=cam, ts_verdict=time.time())
            self.publish_q.put(Outgoing(v))
            self.recovered["unjudged"] += 1
        now = time.time()
        for row in j.pending():
            if self.cascade is not None and row.deadline_ts > now:
                self.cascade.reserve(force=True)
                self.cascade.submit(row.frame_id, row.camera_id, _json(row.request), row.payload, row.deadline_ts,
                                    row.edge)
                self.recovered["pending_resumed"] += 1
            else:
                why = ("deadline passed while the daemon was down" if row.deadline_ts <= now
                       else "no teacher configured at restart")
                resolve_without_teacher(row, self.publish_q, why)
                self.recovered["pending_expired"] += 1

    def wait(self, timeout: float | None = None) -> bool:
        return self.shutdown_requested.wait(timeout)

    def request_shutdown(self, reason: str) -> None:
        self.shutdown_reason = reason
        self.shutdown_requested.set()

    def stop(self, drain: bool = True) -> None:
        """Ingress and camera first, then the judge drains its queue, then the cascade, the publisher last."""
        if self.ctx is None:
            return
        for t in (self.ingress, self.camera):
            if t is not None:
                t.stop_event.set()
                t.join(JOIN_TIMEOUT_S)
        if drain:
            if not self.queue.wait_idle(self.cfg.drain_timeout_s):
                log.warning("drain timeout: %d frames still queued", len(self.queue))
        for j in self.judges:
            j.stop_event.set()
        for j in self.judges:
            j.join(JOIN_TIMEOUT_S + self.cfg.drain_timeout_s)
        while len(self.queue):  # not drained in time: still give every frame a verdict
            job = self.queue.get(0)
            if job is None:
                break
            self.queue.done()
            self.publish_q.put(Outgoing(Verdict.failure(job.frame_id, "dropped", "daemon shut down before judging",
                                                        camera_id=job.camera_id, ts_verdict=time.time())))
        if self.cascade is not None and drain:  # answers already on their way still supersede in this run
            deadline = time.monotonic() + min(self.cfg.drain_timeout_s, CASCADE_GRACE_S)
            while self.cascade.pending_count and time.monotonic() < deadline and self.cascade.is_alive():
                time.sleep(0.02)
            if self.cascade.pending_count:
                log.warning("%d frames still wait for the teacher: kept in the journal, resumed at the next start",
                            self.cascade.pending_count)
        for t in (self.cascade, self.control, self.publisher):
            if t is not None:
                t.stop_event.set()
                t.join(JOIN_TIMEOUT_S + 1)
        self.tm.close()
        self.holder.engine.close()
        self.math_threads.restore()
        self._close_context()

    def _close_context(self) -> None:
        if getattr(self, "auth", None) is not None:
            stop_authenticator(self.auth)
            self.auth = None
        if self.ctx is not None:
            self.ctx.destroy(linger=0)
            self.ctx = None

    # -- control ----------------------------------------------------------------------------------
    def dead_threads(self) -> list[str]:
        """Threads that should be running and are not (the camera may end with its source)."""
        return [t.name for t in self.threads if t is not self.camera and not t.is_alive()]

    def _health(self) -> tuple[bool, dict]:
        dead = self.dead_threads()
        return not dead, {"dead_threads": dead, "model_hash": self.holder.engine.model_hash,
                          "uptime_s": round(time.time() - self.started_at, 3)}

    def status(self) -> dict:
        e = self.holder.engine
        dead = self.dead_threads()
        return {"alive": not dead, "dead_threads": dead, "uptime_s": round(time.time() - self.started_at, 3),
                "lineside": self.tm.build,
                "artifact": str(e.artifact_dir),
                "model_hash": e.model_hash, "signer": e.signer, "backend": e.backend_name,
                "generation": self.holder.generation,
                "queue": {"depth": len(self.queue), "max_seen": self.queue.max_seen, "size": self.queue.maxsize,
                          "policy": self.queue.policy},
                "judged": sum(j.judged for j in self.judges), "workers": len(self.judges),
                "published": self.publisher.published, "seq": self.publisher.seq,
                "drops": self.tm.value("lineside_drops_total", reason="queue_full"),
                "rate_limited": self.tm.value("lineside_drops_total", reason="rate"),
                "ingress_disconnects": self.tm.value("lineside_ingress_disconnects_total"),
                "ingress_handshake_failures": {r: self.tm.value("lineside_ingress_handshake_failures_total", reason=r)
                                               for r in HANDSHAKE_FAILURES.values()},
                "teacher": self.cascade.status() if self.cascade else None, "endpoints": self.endpoints,
                "recovered": self.recovered, "journal": self.cfg.journal.path}

    def metrics(self) -> dict:
        return self.tm.snapshot()

    def replay(self, since: int, limit: int) -> dict:
        """Journaled verdicts after sequence number ``since`` (oldest first, at most ``limit``): what a
        subscriber that saw a gap, or joined late, missed. ``more`` says whether to ask again."""
        journal = Journal(self.cfg.journal.path, self.cfg.journal.synchronous)  # its own reader connection
        try:
            rows = journal.since(since, limit + 1)
        finally:
            journal.close()
        return {"verdicts": rows[:limit], "more": len(rows) > limit, "seq": self.publisher.seq}

    def _open(self, path: Path) -> Engine:
        """The one opening policy of start and reload: backend, forced models, trusted signers."""
        b, sec = self.cfg.backend, self.cfg.security
        return Engine(path, b.name, b.threads, device=b.device, allow_forced=b.allow_forced,
                      trusted_signers=sec.trusted_signers)

    def _publish_info(self, engine: Engine) -> None:
        # /metrics is plain HTTP: the model's name and hash identify it; the artifact's path is the control
        # socket's (status) to tell
        self.tm.info.info({"backend": engine.backend_name, "model_hash": engine.model_hash,
                           "model": engine.manifest.name, "signer": engine.signer or ""})

    def reload(self, path: str) -> dict:
        p = Path(path).resolve()
        if not p.is_relative_to(self.artifacts_root):
            raise ProtocolError("path", f"{p} is outside the artifacts directory {self.artifacts_root}; refused")
        with self.holder.lock:
            try:
                engine = self._open(p)
            except Exception as e:  # ContractError (manifest/checksums/signature), BackendError, bad bank ...
                raise ProtocolError("path", f"artifact refused, still serving {self.holder.engine.model_hash}: {e}") from None
        old = self.holder.swap(engine)
        self._publish_info(engine)
        log.info("artifact reloaded", extra={"fields": {"artifact": str(p), "model_hash": engine.model_hash,
                                                        "signer": engine.signer, "previous": old.model_hash}})
        return {"reloaded": True, "artifact": str(p), "model_hash": engine.model_hash, "previous": old.model_hash,
                "generation": self.holder.generation}


def _json(s: dict) -> bytes:
    import json

    return json.dumps(s, separators=(",", ":")).encode()


def stop_authenticator(auth, timeout_s: float = 2.0) -> None:
    """ThreadAuthenticator.stop() joins its thread with no timeout; never let shutdown hang on it (the
    context's destroy closes its sockets afterwards either way)."""
    t = threading.Thread(target=auth.stop, name="lineside-auth-stop", daemon=True)
    t.start()
    t.join(timeout_s)
    if t.is_alive():
        log.warning("CURVE authenticator did not stop within %.1f s; closing its sockets", timeout_s)
