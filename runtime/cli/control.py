"""`lineside control reload|shutdown|status|metrics --to ENDPOINT [--artifact DIR]`."""
from __future__ import annotations

import argparse
import sys

from runtime.cli.dispatch import endpoint, print_json


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("cmd", choices=["reload", "shutdown", "status", "metrics"], help="what to ask the daemon")
    p.add_argument("--to", required=True, type=endpoint, help="the daemon's control endpoint")
    p.add_argument("--artifact", help="artifact directory for reload (must be under the daemon's artifacts dir)")
    p.add_argument("--timeout", type=float, default=30.0, help="seconds to wait for the reply")
    p.add_argument("--curve-secret", help="this client's CURVE secret key file")
    p.add_argument("--server-key", help="the daemon's CURVE public key file")
    p.add_argument("--json", action="store_true", help="(always JSON)")


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    import zmq

    from runtime.client import LinesideError, request

    fields = {}
    if args.cmd == "reload":
        if not args.artifact:
            print("lineside control reload: --artifact DIR is required", file=sys.stderr)
            return 2
        fields["path"] = str(Path(args.artifact).resolve())
    curve = (args.curve_secret, args.server_key) if args.curve_secret else None
    try:
        h = request(zmq.Context.instance(), args.to, {"kind": "control", "cmd": args.cmd, **fields}, args.timeout, curve)
    except LinesideError as e:
        print(f"lineside control {args.cmd}: refused: {e}", file=sys.stderr)
        print_json({"ok": False, "field": e.field, "message": e.message})
        return 1
    except TimeoutError as e:
        print(f"lineside control {args.cmd}: {e}", file=sys.stderr)
        print_json({"ok": False, "error": str(e)})
        return 1
    print_json({"ok": True, **h.get("status", {})})
    return 0
