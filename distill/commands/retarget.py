"""`distill retarget ARTIFACT --size S --out DIR`: a timing-only copy of an artifact at another input size
(distill/retarget.py)."""
from __future__ import annotations

import sys

from distill.retarget import retarget
from runtime.cli.dispatch import input_dir, print_json


def configure(p) -> None:
    p.add_argument("artifact", type=input_dir, help="artifact directory (distill export) with its torch weights")
    p.add_argument("--size", type=int, required=True, help="network input side, px")
    p.add_argument("--out", required=True, help="directory to write (replaced)")
    p.add_argument("--json", action="store_true")


def run(args) -> int:
    try:
        res = retarget(args.artifact, args.size, args.out)
    except (ValueError, FileNotFoundError) as e:
        print(f"distill retarget: {e}", file=sys.stderr)
        return 2
    if args.json:
        print_json(res)
    return 0
