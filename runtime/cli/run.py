"""`lineside run --artifact DIR [--config lineside.toml] [overrides]`: the line-side daemon.

Flags override the TOML file, which overrides the defaults (runtime/daemon/config.py). Logs are JSON lines on
stderr; once every socket is bound and the model loaded, ONE JSON line on stdout names the endpoints
(``{"ready": true, "ingress": ..., "verdicts": ..., "control": ...}``), and systemd is told READY=1.
SIGTERM or SIGINT (or ``lineside control shutdown``) drains the queues and exits 0.
"""
from __future__ import annotations

import argparse
import json
import logging
import signal
import sys

log = logging.getLogger("lineside.daemon")

WATCHDOG_TICK_S = 1.0
# CPython hands the GIL over every 5 ms by default: a verdict ready in the publisher thread could wait that
# long behind the judge's Python code. 1 ms bounds that wait at a negligible switching cost.
GIL_SWITCH_INTERVAL_S = 0.001

# flag -> dotted config field
OVERRIDES = {
    "ingress": "sockets.ingress", "verdicts": "sockets.verdicts", "control": "sockets.control",
    "backend": "backend.name", "threads": "backend.threads", "workers": "backend.workers", "device": "backend.device",
    "allow_forced": "backend.allow_forced",
    "queue_size": "queue.size", "overload": "queue.overload",
    "teacher": "teacher.address", "teacher_secret": "teacher.secret_file", "teacher_key": "teacher.server_public_file",
    "teacher_timeout_ms": "teacher.request_timeout_ms", "teacher_deadline_ms": "teacher.deadline_ms",
    "journal": "journal.path", "synchronous": "journal.synchronous",
    "camera": "camera.source", "camera_id": "camera.camera_id", "trigger": "camera.trigger", "rate": "camera.rate_hz",
    "metrics_port": "metrics_port", "metrics_host": "metrics_host", "artifacts_dir": "artifacts_dir",
    "allowed_keys": "security.allowed_keys", "ingress_allowed_keys": "security.ingress_allowed_keys",
    "verdicts_allowed_keys": "security.verdicts_allowed_keys", "control_allowed_keys": "security.control_allowed_keys",
    "ingress_secret": "security.ingress_secret", "verdicts_secret": "security.verdicts_secret",
    "control_secret": "security.control_secret", "insecure_control": "security.insecure_control",
    "trusted_signers": "security.trusted_signers", "max_message_bytes": "limits.max_message_bytes",
    "max_frame_bytes": "limits.max_frame_bytes",
    "sender_rate_hz": "limits.sender_rate_hz", "log_level": "log_level",
}


def configure(p: argparse.ArgumentParser) -> None:
    from runtime.daemon.config import Config, Sockets

    p.add_argument("--artifact", required=True, help="student artifact directory (manifest.json)")
    p.add_argument("--config", help="lineside.toml; flags below override it")
    g = p.add_argument_group("sockets")
    default = {k: f.default for k, f in Sockets.model_fields.items()}
    g.add_argument("--ingress", help=f"ROUTER bind endpoint for pushed frames (default {default['ingress']})")
    g.add_argument("--verdicts", help=f"PUB bind endpoint for verdicts (default {default['verdicts']})")
    g.add_argument("--control", help=f"control ROUTER bind endpoint (default {default['control']}, a socket file "
                                     "only this user may open)")
    g.add_argument("--metrics-port", type=int, help="Prometheus /metrics on --metrics-host:PORT (0: any free port)")
    g.add_argument("--metrics-host", help="address the metrics endpoint listens on "
                                          f"(default {Config.model_fields['metrics_host'].default})")
    g = p.add_argument_group("model")
    g.add_argument("--backend", choices=["auto", "onnxruntime", "openvino", "tensorrt"],
                   help="inference backend (auto: the fastest this machine has; default auto)")
    g.add_argument("--threads", type=int, help="threads per judged frame: backend, BLAS scoring, OpenCV (default 1)")
    g.add_argument("--workers", type=int, help="frames judged at once, verdicts still in frame order (default 1)")
    g.add_argument("--device", help="onnxruntime: auto, cpu or cuda; openvino: CPU or GPU")
    g.add_argument("--allow-forced", action="store_true", default=None,
                   help="serve a model its INT8 guard failed (distill quantize --force), with a warning")
    g.add_argument("--artifacts-dir", help="reload accepts only artifacts under this directory")
    g.add_argument("--trusted-signers", metavar="DIR",
                   help="serve only artifacts signed by a key in DIR (*.ed25519.pub), on start and on reload")
    g = p.add_argument_group("queue")
    g.add_argument("--queue-size", type=int, help="frames waiting for the judge (default 8)")
    g.add_argument("--overload", choices=["drop_oldest", "reject_newest"],
                   help="a full queue drops its oldest frame, or answers the newest busy (default drop_oldest)")
    g = p.add_argument_group("teacher fallback")
    g.add_argument("--teacher", help="teacher server endpoint (tcp://HOST:PORT); unset: edge only")
    g.add_argument("--teacher-secret", help="this edge's CURVE secret key file")
    g.add_argument("--teacher-key", help="the teacher server's CURVE public key file")
    g.add_argument("--teacher-timeout-ms", type=int, help="silence after which the request is resent on a new socket "
                   "(Lazy Pirate; default 2500)")
    g.add_argument("--teacher-deadline-ms", type=int, help="after this the frame resolves as teacher_unreachable "
                   "(default 10000)")
    g = p.add_argument_group("journal")
    g.add_argument("--journal", help="SQLite journal path")
    g.add_argument("--synchronous", choices=["NORMAL", "FULL"],
                   help="SQLite synchronous mode of the journal (FULL survives power loss; default NORMAL)")
    g = p.add_argument_group("camera")
    g.add_argument("--camera", help="device index, URL, GStreamer pipeline, video file or image folder")
    g.add_argument("--camera-id")
    g.add_argument("--trigger", help="SUB endpoint for trigger messages (else free-running at --rate)")
    g.add_argument("--rate", type=float, help="free-running grab rate, Hz")
    g = p.add_argument_group("security and limits")
    g.add_argument("--allowed-keys", help="directory of client public keys (CURVE), for every socket without its own")
    g.add_argument("--ingress-allowed-keys", help="cameras' public keys: the only ones ingress admits")
    g.add_argument("--verdicts-allowed-keys", help="subscribers' public keys: the only ones the verdict PUB admits")
    g.add_argument("--control-allowed-keys", help="operators' public keys: the only ones control admits")
    g.add_argument("--ingress-secret", help="ingress CURVE secret key file (lineside keys)")
    g.add_argument("--verdicts-secret", help="verdict PUB CURVE secret key file")
    g.add_argument("--control-secret", help="control CURVE secret key file")
    g.add_argument("--insecure", action="store_true", help="allow non-loopback binds without CURVE")
    g.add_argument("--insecure-control", action="store_true", default=None,
                   help="allow control on TCP loopback without CURVE (any local user could reload or shut down)")
    g.add_argument("--max-frame-bytes", type=int, help="larger frame payloads get an error verdict (default 64 MiB)")
    g.add_argument("--max-message-bytes", type=int,
                   help="ZMQ_MAXMSGSIZE: a larger message part disconnects its sender (default 128 MiB)")
    g.add_argument("--sender-rate-hz", type=float, help="frames per second one sender may push "
                   "(token bucket; default 1000)")
    p.add_argument("--log-level", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    p.add_argument("--print-config", action="store_true", help="print the effective configuration as TOML and exit")


def build_config(args: argparse.Namespace):
    from runtime.daemon.config import load_config

    over = {field: getattr(args, flag, None) for flag, field in OVERRIDES.items()}
    if args.insecure:
        over["security.insecure"] = True
    if args.camera and not args.trigger:
        over["camera.mode"] = "free"
    return load_config(args.config, over)


def run(args: argparse.Namespace) -> int:
    from runtime.daemon.config import ConfigError
    from runtime.telemetry import setup_logging

    try:
        cfg = build_config(args)
    except ConfigError as e:
        print(f"lineside run: invalid configuration: {e}", file=sys.stderr)
        return 2
    if args.print_config:
        from runtime.daemon.config import to_toml

        print(to_toml(cfg), end="")
        return 0
    setup_logging(cfg.log_level)
    sys.setswitchinterval(GIL_SWITCH_INTERVAL_S)
    from runtime.curve import CurveError
    from runtime.daemon.daemon import Daemon
    from runtime.contracts.formats import ContractError

    daemon = Daemon(args.artifact, cfg)
    try:
        daemon.start()
    except (ContractError, CurveError, ValueError, RuntimeError, OSError) as e:
        log.error("cannot start: %s", e)
        print(f"lineside run: cannot start: {e}", file=sys.stderr)
        return 1
    except Exception as e:  # zmq.ZMQError (address in use) and friends
        log.exception("cannot start")
        print(f"lineside run: cannot start: {e.__class__.__name__}: {e}", file=sys.stderr)
        return 1
    signal.signal(signal.SIGTERM, lambda *_: daemon.request_shutdown("SIGTERM"))
    signal.signal(signal.SIGINT, lambda *_: daemon.request_shutdown("SIGINT"))
    notifier = _notifier()
    print(json.dumps({"ready": True, **daemon.endpoints, "backend": daemon.holder.engine.backend_name,
                      "model_hash": daemon.holder.engine.model_hash, "recovered": daemon.recovered}), flush=True)
    notifier.ready(status=f"serving {daemon.holder.engine.model_hash} on {daemon.endpoints['ingress']}")
    while not daemon.wait(WATCHDOG_TICK_S):
        dead = daemon.dead_threads()
        if dead:
            log.error("thread(s) %s died; stopping so the supervisor restarts us", dead)
            daemon.stop(drain=False)
            return 1
        notifier.watchdog()
    log.info("shutting down (%s): draining", daemon.shutdown_reason)
    notifier.stopping()
    daemon.stop(drain=True)
    log.info("stopped")
    return 0


class _NoNotifier:
    def ready(self, **_):
        pass

    def watchdog(self):
        pass

    def stopping(self):
        pass


def _notifier():
    try:
        from runtime.sdnotify import Notifier

        return Notifier.from_env()
    except ImportError:
        return _NoNotifier()
