"""`lineside run --artifact DIR [--config lineside.toml] [overrides]`: the line-side daemon.

Flags override the TOML file, which overrides the defaults (runtime/daemon/config.py). Logs are JSON lines on
stderr; once every socket is bound and the model loaded, ONE JSON line on stdout names the endpoints
(``{"ready": true, "ingress": ..., "verdicts": ..., "control": ...}``), and systemd is told READY=1.
SIGTERM or SIGINT (or ``lineside control shutdown``) drains the queues and exits 0.
"""
from __future__ import annotations

import argparse
import logging
import signal
import sys
import types
import typing

from runtime.cli.dispatch import print_json

log = logging.getLogger("lineside.daemon")

WATCHDOG_TICK_S = 1.0
# CPython hands the GIL over every 5 ms by default: a verdict ready in the publisher thread could wait that
# long behind the judge's Python code. 1 ms bounds that wait at a negligible switching cost.
GIL_SWITCH_INTERVAL_S = 0.001


def configure(p: argparse.ArgumentParser) -> None:
    """Every flag but --artifact, --config and --print-config is a config field's (runtime/daemon/config.py
    ``flag``): its name, help and group written there, its type, choices and default read off the field."""
    from runtime.daemon.config import flag_fields

    p.add_argument("--artifact", required=True, help="student artifact directory (manifest.json)")
    p.add_argument("--config", help="lineside.toml; flags below override it")
    groups: dict = {}
    for _, info, fl in flag_fields():
        group = fl["group"]
        if group is not None and group not in groups:
            groups[group] = p.add_argument_group(group)
        (p if group is None else groups[group]).add_argument(fl["name"], **_argparse_kw(info, fl))
    p.add_argument("--print-config", action="store_true", help="print the effective configuration as TOML and exit")


def _argparse_kw(info, fl: dict) -> dict:
    """argparse keywords for one config field. Every default is None, so only flags given on the line override
    the TOML file; the field's own default is shown in the help."""
    ann = info.annotation
    args = [a for a in typing.get_args(ann) if a is not type(None)]
    if typing.get_origin(ann) in (typing.Union, types.UnionType) and len(args) == 1:
        ann = args[0]  # Optional[X] -> X
    kw = {k: v for k, v in fl.items() if k not in ("name", "help", "group")}
    default = info.default
    help_ = fl["help"]
    if ann is bool:
        kw.update(action="store_true", default=None)
    else:
        if typing.get_origin(ann) is typing.Literal:
            kw["choices"] = list(typing.get_args(ann))
        elif ann in (int, float):
            kw["type"] = ann
        if default is not None:
            help_ += f" (default {default})"
    return {"help": help_, **kw}


def build_config(args: argparse.Namespace):
    from runtime.daemon.config import flag_fields, load_config

    over = {dotted: getattr(args, fl["name"].lstrip("-").replace("-", "_"), None) for dotted, _, fl in flag_fields()}
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
    print_json({"ready": True, **daemon.endpoints, "backend": daemon.holder.engine.backend_name,
                "model_hash": daemon.holder.engine.model_hash, "recovered": daemon.recovered})
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
