"""`lineside demo`: the whole of lineside on the embedded data, on this machine, in minutes.

    lineside demo --out lineside-demo          # ~4 min on two idle CPU cores (≈200 s measured), no GPU
    lineside demo --quick --out /tmp/d         # reduced (CI): fewer images, steps and frames, every step

Steps, each a lineside command run as a subprocess exactly as a user would type it (the JSON they
print on their last stdout line is what the demo reads; logs in DIR/logs/):

    teacher data synth      the line: scikit-image surfaces with planted defects (train/val/test)
    teacher train-vae       the tiny teacher's autoencoder
    teacher train           the tiny diffusion teacher
    teacher finetune/bank   its mask head and good-image memory bank
    distill fit/quantize/export   a student, INT8 with the accuracy guard, the edge artifact
    teacher eval / distill eval   detection metrics, feature fidelity, latency (JSON + their reports)
    teacher serve + lineside run  as real processes on free loopback ports; the test split streamed in
                                  at a fixed trigger rate; every verdict collected from the PUB socket
    DIR/index.html          the report (runtime/report.py)

One foreign frame (colour bars, as from a switched camera feed) is streamed among the test frames:
the student calls it out of distribution and the cascade sends it to the teacher, so the teacher
path runs on every demo, whatever the calibration band holds. It stays out of the metrics.

The teacher is trained here rather than shipped as checkpoints: the full demo takes ~210 s end to end on
two idle cores (220 s measured with this recipe; peak RSS 4.6 GB), train + finetune + fit ~105 s of it,
and the quick one 55-150 s, within the 600 s / 240 s budgets. A foundation checkpoint to start from was
measured (2000 synth-corpus steps, then --init-from) and did not beat training on the line's own images,
so shipped weights (and a test re-deriving them) buy nothing yet.

This module imports no torch: the demo runs the teacher and distill stacks only as commands.
"""
from __future__ import annotations

import argparse
import shutil
import sys
from dataclasses import asdict
from pathlib import Path

from runtime.cli.dispatch import print_json
from runtime.tools.demo.settings import FULL, QUICK, DemoSettings

EXIT_OK, EXIT_FAILED = 0, 1


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default="lineside-demo", help="output folder (report: OUT/index.html)")
    p.add_argument("--quick", action="store_true", help="reduced demo for CI: fewer images, steps and frames")
    p.add_argument("--rate", type=float, default=None, help="camera trigger rate in Hz (default: per mode)")
    p.add_argument("--frames", type=int, default=None, help="test frames to stream (default: per mode)")
    p.add_argument("--student", default=None, help="student registry name for `distill fit` (default: per mode)")
    p.add_argument("--threads", type=int, default=None,
                   help="cap BLAS/OpenMP threads of every child process (default: leave the environment)")
    p.add_argument("--json", action="store_true", help="print the summary as one JSON object on the last line")


def run(args: argparse.Namespace) -> int:
    from runtime.tools.demo.pipeline import DemoError, run_demo

    settings = QUICK if args.quick else FULL
    over = {}
    if args.rate is not None:
        over["rate_hz"] = args.rate
    if args.frames is not None:
        over["max_frames"] = args.frames
    if args.student is not None:
        over["student"] = args.student
    if over:
        settings = DemoSettings(**{**asdict(settings), **over})
    out = Path(args.out)
    if out.exists():  # a previous demo's folder is replaced; anything else is left alone
        if any(out.iterdir()) and not (out / "logs").is_dir():
            print(f"lineside demo: {out} exists and is not a demo folder; choose another --out", file=sys.stderr)
            return EXIT_FAILED
        shutil.rmtree(out)
    try:
        summary = run_demo(out, settings, threads=args.threads)
    except DemoError as e:
        print(f"lineside demo failed: {e}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        print("lineside demo: interrupted; services stopped", file=sys.stderr)
        return 130
    if args.json:
        print_json(summary)
    return EXIT_OK if summary.get("ok") else EXIT_FAILED
