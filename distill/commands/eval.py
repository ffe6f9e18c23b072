"""`distill eval ARTIFACT`: the student against its teacher — fidelity, detection, the cascade, latency
(distill/evaluate.py)."""
from __future__ import annotations

import sys

from distill.bench import BACKENDS
from distill.evaluate import evaluate_artifact
from runtime.cli.dispatch import dataset_path, input_dir, print_json


def configure(p) -> None:
    p.add_argument("artifact", type=input_dir, help="artifact directory (distill export)")
    p.add_argument("--teacher", type=input_dir, default=None, help="teacher checkpoint directory")
    p.add_argument("--data", type=dataset_path, default=None, help="dataset manifest.jsonl")
    p.add_argument("--split", default="test")
    p.add_argument("--report", default=None, help="write an HTML report into this directory")
    p.add_argument("--runs", type=int, default=30, help="timed runs per backend")
    p.add_argument("--size", type=int, default=None, help="time at this input size (default: the artifact's)")
    p.add_argument("--backends", nargs="*", default=list(BACKENDS), help="backends to time the student on")
    p.add_argument("--teacher-preset", default=None,
                   help="time a random-init teacher of this preset (e.g. sd15) instead of the checkpoint")
    p.add_argument("--teacher-runs", type=int, default=3, help="timed teacher runs")
    p.add_argument("--student-only", action="store_true", help="latency of the student only; no teacher, no data")
    p.add_argument("--noise-draws", type=int, default=4, help="teacher draws averaged for the fidelity targets")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", action="store_true")


def run(args) -> int:
    if not args.student_only and (not args.teacher or not args.data):
        print("distill eval: --teacher and --data are required (or --student-only)", file=sys.stderr)
        return 2
    res = evaluate_artifact(args.artifact, teacher=args.teacher, data=args.data, split=args.split,
                            report=args.report, runs=args.runs, size=args.size, backends=args.backends,
                            teacher_preset=args.teacher_preset, teacher_runs=args.teacher_runs,
                            student_only=args.student_only, noise_draws=args.noise_draws, threads=args.threads)
    if args.json:
        print_json(res)
    return 0
