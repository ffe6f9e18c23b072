"""`teacher serve`: the GPU fallback server for line-side daemons (see teacher/serve/server.py).

    teacher serve --checkpoint CKPT --bind tcp://127.0.0.1:5560
    teacher serve --checkpoint CKPT --bind tcp://*:5560 --workers 4 \\
        --curve-secret keys/teacher.key_secret --allowed-keys keys/allowed --metrics-port 9560
    teacher serve --bench --json [--checkpoint CKPT]     # throughput / latency at 1, 4, 16 clients

Several GPU hosts behind one endpoint (teacher/serve/broker.py; the edges' [teacher] address names the broker):

    teacher serve broker --bind tcp://*:5560 --backend tcp://10.0.0.5:5561 --insecure \
        --curve-secret keys/teacher.key_secret --allowed-keys keys/allowed     # one host, no model
    teacher serve --checkpoint CKPT --broker tcp://10.0.0.5:5561 --workers 8   # on every GPU host

SIGTERM or Ctrl-C: the running batches finish and are answered, then the server exits 0.
"""
from __future__ import annotations

import argparse
import signal
import sys
import threading

from runtime.cli.dispatch import print_json
from runtime.curve import CurveError

MAIN_LOOP_S = 0.5  # signal / health / watchdog check period


def configure(p: argparse.ArgumentParser) -> None:
    from teacher.serve.broker import BrokerConfig

    p.add_argument("role", nargs="?", choices=("server", "broker"), default="server",
                   help="server (default): model workers; broker: the endpoint in front of workers on many hosts")
    p.add_argument("--checkpoint", help="teacher checkpoint directory, or 'fake[:delay_ms=..,per_image_ms=..]' "
                                        "(a stand-in model for tests and benchmarks)")
    p.add_argument("--bind", default="tcp://127.0.0.1:5560", help="frontend endpoint (tcp://127.0.0.1:* picks a port)")
    p.add_argument("--max-batch", type=int, default=8, help="largest batch a worker runs")
    p.add_argument("--max-wait-ms", type=float, default=10.0, help="longest a request waits for a batch to fill")
    p.add_argument("--queue-size", type=int, default=64, help="waiting requests per worker; beyond: reply busy")
    p.add_argument("--workers", type=int, default=1, help="model workers (one model each; one per GPU)")
    p.add_argument("--worker-mode", choices=("auto", "thread", "process"), default="auto",
                   help="auto: a thread for one worker, processes for several")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--curve-secret", help="this server's CURVE secret key file (lineside keys)")
    p.add_argument("--allowed-keys", help="directory of client public keys admitted")
    p.add_argument("--insecure", action="store_true", help="allow a non-loopback bind without CURVE")
    p.add_argument("--metrics-port", type=int, default=0, help="Prometheus metrics port (0: off)")
    p.add_argument("--metrics-host", default="127.0.0.1", help="address the metrics endpoint listens on")
    p.add_argument("--max-message-mb", type=float, default=16.0,
                   help="ZMQ_MAXMSGSIZE: a peer sending a bigger message part is disconnected")
    p.add_argument("--max-pixels", type=int, default=4096 * 4096, help="largest frame (H*W) answered")
    p.add_argument("--cache-size", type=int, default=256, help="recent replies kept per worker for retries")
    p.add_argument("--broker", metavar="ENDPOINT",
                   help="register the workers with this `teacher serve broker` worker endpoint instead of binding --bind")
    p.add_argument("--backend", default=BrokerConfig.backend,
                   help="broker: the endpoint workers connect to (teacher serve --broker ...)")
    p.add_argument("--broker-queue-size", type=int, default=BrokerConfig.queue_size,
                   help="broker: requests waiting for a worker; beyond: reply busy")
    p.add_argument("--bench", action="store_true", help="benchmark a server in this process and exit")
    p.add_argument("--bench-clients", type=int, nargs="+", default=[1, 4, 16], help="concurrent clients per round")
    p.add_argument("--bench-requests", type=int, default=50, help="requests per client")
    p.add_argument("--bench-size", type=int, default=128, help="image side (px)")
    p.add_argument("--json", action="store_true", help="one JSON object as the last stdout line")


def run(args: argparse.Namespace) -> int:
    from runtime.telemetry import setup_logging

    setup_logging("INFO", loggers=("teacher", "lineside"))  # the daemon's JSON lines, ISO-8601 timestamps
    from teacher.serve.models import ModelSpecError
    from teacher.serve.server import ServeConfig, ServeError, TeacherServer

    if args.role == "broker":
        return _run_broker(args)
    if args.bench:
        from teacher.serve.bench import run_server_bench

        result = run_server_bench(args.checkpoint, clients=tuple(args.bench_clients),
                                  requests_per_client=args.bench_requests, image_size=args.bench_size,
                                  max_batch=args.max_batch, max_wait_ms=args.max_wait_ms, workers=args.workers,
                                  worker_mode=args.worker_mode, device=args.device, queue_size=args.queue_size)
        if not args.json:
            for r in result["results"]:
                print(f"{r['clients']:>3} clients: {r['throughput_rps']} req/s, latency ms p50 {r['latency_ms']['p50']}"
                      f" p90 {r['latency_ms']['p90']} p99 {r['latency_ms']['p99']}, mean batch {r['mean_batch_size']}",
                      file=sys.stderr)
        print_json(result)
        return 0
    if not args.checkpoint:
        print("teacher serve: --checkpoint is required (or --bench)", file=sys.stderr)
        return 2
    cfg = ServeConfig(model=args.checkpoint, bind=args.bind, max_batch=args.max_batch, max_wait_ms=args.max_wait_ms,
                      queue_size=args.queue_size, workers=args.workers, worker_mode=args.worker_mode,
                      device=args.device, curve_secret=args.curve_secret, allowed_keys=args.allowed_keys,
                      insecure=args.insecure, metrics_port=args.metrics_port, metrics_host=args.metrics_host,
                      max_message_mb=args.max_message_mb, max_pixels=args.max_pixels, cache_size=args.cache_size,
                      broker=args.broker)
    stop = _stop_on_signals()
    server = _start("teacher serve", lambda: TeacherServer(cfg).start(), (ServeError, CurveError, ModelSpecError),
                    args.json)
    if server is None:
        return 2
    from runtime.sdnotify import Notifier  # systemd Type=notify + WatchdogSec; no-op elsewhere

    notifier = Notifier.from_env()
    where = f"registered with broker {args.broker}" if args.broker else f"listening on {server.endpoint}"
    print(f"teacher serve: {where}", file=sys.stderr, flush=True)
    notifier.ready(status=f"{where}, model {server.status()['model_hash']}")
    warned = False
    while not stop.wait(MAIN_LOOP_S):
        problem = server.health_problem()
        if problem is None:
            notifier.watchdog()  # no pings while unhealthy: systemd restarts the service
            warned = False
        elif not warned:
            print(f"teacher serve: unhealthy: {problem}", file=sys.stderr, flush=True)
            warned = True
    notifier.stopping()
    print("teacher serve: stopping (draining running batches)", file=sys.stderr, flush=True)
    server.stop()
    if args.json:  # the counters as the workers reported them when they stopped
        print_json({"ok": True, "endpoint": server.endpoint, "status": server.status()})
    return 0


def _run_broker(args: argparse.Namespace) -> int:
    from runtime.sdnotify import Notifier
    from teacher.serve.broker import Broker, BrokerConfig, BrokerError

    cfg = BrokerConfig(bind=args.bind, backend=args.backend, queue_size=args.broker_queue_size,
                       curve_secret=args.curve_secret, allowed_keys=args.allowed_keys, insecure=args.insecure,
                       max_message_mb=args.max_message_mb)
    stop = _stop_on_signals()
    broker = _start("teacher serve broker", lambda: Broker(cfg).start(), (BrokerError, CurveError), args.json)
    if broker is None:
        return 2
    notifier = Notifier.from_env()
    print(f"teacher serve broker: edges on {broker.endpoint}, workers on {broker.backend_endpoint}",
          file=sys.stderr, flush=True)
    notifier.ready(status=f"broker {broker.endpoint}")
    warned = False
    while not stop.wait(MAIN_LOOP_S):
        problem = broker.health_problem()
        if problem != "broker loop stopped":  # no worker yet is a state to report, not to restart for
            notifier.watchdog()
        if problem is not None and not warned:
            print(f"teacher serve broker: {problem}", file=sys.stderr, flush=True)
        warned = problem is not None
    notifier.stopping()
    status = broker.status()
    broker.stop()
    if args.json:
        print_json({"ok": True, "endpoint": broker.endpoint, "status": status})
    return 0


def _stop_on_signals() -> threading.Event:
    """An event SIGTERM and SIGINT set: the main loop's cue to drain and exit 0."""
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    return stop


def _start(prog: str, start, errors: tuple, as_json: bool):
    """``start()``'s server or broker; None when it raised one of ``errors``, said on stderr (and as the JSON
    line with --json)."""
    try:
        return start()
    except errors as e:
        print(f"{prog}: {e}", file=sys.stderr)
        if as_json:
            print_json({"ok": False, "error": str(e)})
        return None
