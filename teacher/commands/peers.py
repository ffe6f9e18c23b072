"""`teacher peers`: per-frame latency of the detectors a line would run instead of a lineside student
(EfficientAD-S in ONNX Runtime, PatchCore over ImageNet EfficientNet-Lite0; teacher/peers.py).

    teacher peers --size 256 --threads 1 --json

`lineside bench edge` runs this as a subprocess and sets the edge path beside it.
"""
from __future__ import annotations

import sys

from runtime.cli.dispatch import print_json
from teacher.peers import PEERS


def configure(p) -> None:
    p.add_argument("--size", type=int, default=256, help="square input side, px")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--runs", type=int, default=10)
    p.add_argument("--only", action="append", choices=PEERS, help="time only these (repeatable)")
    p.add_argument("--json", action="store_true", help="print one JSON object as the last stdout line")


def run(args) -> int:
    import torch

    from teacher.peers import efficientad_s, patchcore_lite0

    results = {}
    for name in args.only or PEERS:
        try:
            results[name] = {"efficientad_s": efficientad_s, "patchcore_lite0": patchcore_lite0}[name](
                args.size, args.threads, args.runs)
        except Exception as e:  # noqa: BLE001 - one peer failing must not hide the other's figure
            results[name] = {"status": "error", "error": f"{type(e).__name__}: {e}"}
        r = results[name]
        print(f"peers: {name}: " + (f"{r['median_ms']:.1f} ms" if r["status"] == "ok" else
                                    f"{r['status']}: {r.get('reason') or r.get('error')}"), file=sys.stderr, flush=True)
    out = {"size": args.size, "threads": args.threads, "runs": args.runs, "torch": torch.__version__, "results": results}
    if args.json:
        print_json(out)
    return 0
