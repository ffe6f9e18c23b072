"""The client the tests and the benchmark use against `teacher serve`, and the server benchmark.

``ServeClient`` is runtime/client.py's RequestClient (the one client: one DEALER, every receive with a
timeout, no retries) in this module's units: timeouts in ms, and None for silence instead of
TimeoutError, so a test asserts on a missing reply. The edge's own client (Lazy Pirate: poll, close and
reopen, bounded retries, then edge-only) is runtime/daemon/cascade.py.

``run_server_bench`` starts a server in this process (fake model unless a checkpoint is given) and
measures throughput and latency at 1, 4 and 16 concurrent clients, each sending its requests one
after another:

    teacher serve --bench --json                                   # fake model
    teacher serve --bench --json --checkpoint CKPT --workers 2     # the real pipeline
"""
from __future__ import annotations

import threading
import time
from typing import Optional

import numpy as np
import zmq

from runtime.cli.dispatch import print_json
from runtime.client import RequestClient
from runtime.contracts.protocol import image_frames

RECV_TIMEOUT_MS = 10_000
BUSY_BACKOFF_S = 0.005
MAX_BUSY_RETRIES = 200


class ServeClient:
    """``with ServeClient(endpoint) as c: header, frames = c.infer(img, "f1")``; None on timeout."""

    def __init__(self, endpoint: str, context: Optional[zmq.Context] = None, curve_secret: Optional[str] = None,
                 server_public: Optional[str] = None, timeout_ms: int = RECV_TIMEOUT_MS):
        self.client = RequestClient(endpoint, context, curve_secret=curve_secret, server_public=server_public,
                                    timeout_s=timeout_ms / 1e3)

    def __enter__(self) -> "ServeClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self.client.close()

    def send(self, frames: list[bytes]) -> None:
        self.client.send(frames)

    def recv(self, timeout_ms: Optional[int] = None) -> Optional[tuple[dict, list[bytes]]]:
        try:
            return self.client.recv(_seconds(timeout_ms))
        except TimeoutError:
            return None

    def request(self, frames: list[bytes], timeout_ms: Optional[int] = None) -> Optional[tuple[dict, list[bytes]]]:
        try:
            return self.client.request(frames, _seconds(timeout_ms))
        except TimeoutError:
            return None

    def infer(self, image: np.ndarray, frame_id: str, encoding: str = "raw", timeout_ms: Optional[int] = None,
              **header) -> Optional[tuple[dict, list[bytes]]]:
        try:
            return self.client.infer(image, frame_id, encoding, _seconds(timeout_ms), **header)
        except TimeoutError:
            return None

    def status(self, timeout_ms: Optional[int] = None) -> Optional[dict]:
        try:
            return self.client.status(_seconds(timeout_ms))
        except TimeoutError:
            return None


def _seconds(timeout_ms: Optional[int]) -> Optional[float]:
    return None if timeout_ms is None else timeout_ms / 1e3


def _client_loop(endpoint: str, ctx: zmq.Context, images: list[np.ndarray], prefix: str, n: int,
                 start: threading.Barrier, out: dict, curve: dict) -> None:
    lat, busy, errors, lost = [], 0, 0, 0
    with ServeClient(endpoint, ctx, **curve) as c:
        start.wait()
        for i in range(n):
            frames = image_frames("infer", images[i % len(images)], "raw", frame_id=f"{prefix}-{i}",
                                  camera_id=prefix)
            t0 = time.perf_counter()
            for _ in range(MAX_BUSY_RETRIES):
                r = c.request(frames)
                if r is None or r[0]["kind"] != "busy":
                    break
                busy += 1
                time.sleep(BUSY_BACKOFF_S)
            if r is None:
                lost += 1
                break  # a DEALER that missed a reply would mismatch the next one; stop this client
            if r[0]["kind"] == "verdict":
                lat.append((time.perf_counter() - t0) * 1e3)
            else:
                errors += 1
    out.update(latency_ms=lat, busy=busy, errors=errors, lost=lost)


def run_server_bench(checkpoint: Optional[str] = None, clients=(1, 4, 16), requests_per_client: int = 50,
                     image_size: int = 128, max_batch: int = 8, max_wait_ms: float = 5.0, workers: int = 1,
                     worker_mode: str = "auto", device: str = "auto", queue_size: int = 64,
                     fake: str = "fake:delay_ms=8,per_image_ms=1", seed: int = 0) -> dict:
    """Throughput (req/s) and client-side latency p50/p90/p99 (ms) per number of concurrent clients."""
    from teacher.serve.server import ServeConfig, TeacherServer

    model = checkpoint or fake
    rng = np.random.default_rng(seed)
    images = [rng.integers(0, 256, (image_size, image_size, 3), dtype=np.uint8) for _ in range(8)]
    cfg = ServeConfig(model=model, bind="tcp://127.0.0.1:*", max_batch=max_batch, max_wait_ms=max_wait_ms,
                      workers=workers, worker_mode=worker_mode, device=device, queue_size=queue_size)
    ctx = zmq.Context()
    results = []
    try:
        with TeacherServer(cfg) as srv:
            with ServeClient(srv.endpoint, ctx) as warm:  # first batches pay for lazy init: not measured
                for i in range(3):
                    warm.infer(images[i], f"warmup-{i}", camera_id="warmup")
            for n_clients in clients:
                hist0 = srv.status()["batch_size_histogram"]
                outs = [dict() for _ in range(n_clients)]
                barrier = threading.Barrier(n_clients + 1)
                threads = [threading.Thread(target=_client_loop, daemon=True,
                                            args=(srv.endpoint, ctx, images, f"c{n_clients}-{k}",
                                                  requests_per_client, barrier, outs[k], {}))
                           for k in range(n_clients)]
                for t in threads:
                    t.start()
                barrier.wait()
                t0 = time.perf_counter()
                for t in threads:
                    t.join(timeout=600)
                wall = time.perf_counter() - t0
                lat = np.array([x for o in outs for x in o.get("latency_ms", [])])
                hist1 = srv.status()["batch_size_histogram"]
                dh = {int(k): v - hist0.get(k, 0) for k, v in hist1.items() if v - hist0.get(k, 0) > 0}
                nb = sum(dh.values())
                results.append({
                    "clients": n_clients, "requests": int(lat.size), "wall_s": round(wall, 3),
                    "throughput_rps": round(lat.size / wall, 2) if wall > 0 else None,
                    "latency_ms": {f"p{q}": (round(float(np.percentile(lat, q)), 3) if lat.size else None)
                                   for q in (50, 90, 99)},
                    "mean_batch_size": round(sum(k * v for k, v in dh.items()) / nb, 3) if nb else None,
                    "busy_replies": sum(o.get("busy", 0) for o in outs),
                    "errors": sum(o.get("errors", 0) for o in outs), "lost": sum(o.get("lost", 0) for o in outs),
                })
            status = srv.status()
    finally:
        ctx.destroy(linger=0)
    return {"bench": "teacher_serve", "model": model, "model_hash": status["model_hash"],
            "image_size": image_size, "max_batch": max_batch, "max_wait_ms": max_wait_ms, "workers": workers,
            "worker_mode": cfg.mode, "requests_per_client": requests_per_client,
            "note": "in-process clients and server on one machine: indicative, not a capacity figure",
            "results": results}


if __name__ == "__main__":  # quick look: python -m teacher.serve.bench
    print_json(run_server_bench(clients=(1, 4), requests_per_client=10))
