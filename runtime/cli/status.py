"""`lineside status --to ENDPOINT`: a daemon's control socket or a teacher server; prints its status JSON."""
from __future__ import annotations

import argparse
import sys

from runtime.cli.dispatch import endpoint, print_json


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("--to", required=True, type=endpoint, help="control endpoint of a daemon, or a teacher server's endpoint")
    p.add_argument("--timeout", type=float, default=5.0, help="seconds to wait for the reply")
    p.add_argument("--curve-secret", help="this client's CURVE secret key file")
    p.add_argument("--server-key", help="the server's CURVE public key file")
    p.add_argument("--json", action="store_true", help="(always JSON; kept for symmetry with other commands)")


def run(args: argparse.Namespace) -> int:
    import zmq

    from runtime.client import LinesideError, request

    curve = (args.curve_secret, args.server_key) if args.curve_secret else None
    try:
        h = request(zmq.Context.instance(), args.to, {"kind": "status"}, args.timeout, curve)
    except (TimeoutError, LinesideError) as e:
        print(f"lineside status: {args.to}: {e}", file=sys.stderr)
        print_json({"alive": False, "endpoint": args.to, "error": str(e)})
        return 1
    print_json(h.get("status", h))
    return 0
