"""`distill quantize RUN --data D/manifest.jsonl`: INT8 post-training quantization, accuracy-guarded
(distill/int8/quantize.py)."""
from __future__ import annotations

import sys

from distill.int8.guard import DEFAULT_MAX_DROP, DEFAULT_MIN_AGREEMENT, DEFAULT_MIN_COSINE
# torch-free at import (distill/int8 imports torch, ONNX and NNCF in the functions that use them): --help and a bad
# path (checked by the dispatcher before run) cost numpy only
from distill.int8.quantize import DEFAULT_CALIB_SIZE, DEFAULT_VAL_SIZE, MAX_CALIB_SIZE, METHODS, quantize_run
from runtime.cli.dispatch import dataset_path, input_dir, print_json


def configure(p) -> None:
    p.add_argument("run", type=input_dir, help="run directory written by distill fit")
    p.add_argument("--data", type=dataset_path, required=True,
                   help="dataset manifest.jsonl (train: calibration, val: guard)")
    p.add_argument("--method", choices=(*METHODS, "both"), default="both",
                   help="INT8 toolchain: NNCF (OpenVINO), ONNX Runtime static, or both")
    p.add_argument("--max-drop", type=float, default=DEFAULT_MAX_DROP, help="points of image AUROC / AU-PRO")
    p.add_argument("--min-agreement", type=float, default=DEFAULT_MIN_AGREEMENT,
                   help="share of val images where INT8 and FP32 must decide alike")
    p.add_argument("--min-cosine", type=float, default=DEFAULT_MIN_COSINE,
                   help="per-location cosine INT8 vs FP32 required of every output")
    p.add_argument("--calib-size", type=int, default=DEFAULT_CALIB_SIZE,
                   help=f"calibration images sampled from the train split (at most {MAX_CALIB_SIZE})")
    p.add_argument("--val-size", type=int, default=DEFAULT_VAL_SIZE,
                   help="val images the guard scores, sampled by label share (a smaller split is used whole)")
    p.add_argument("--force", action="store_true", help="write the best INT8 model even if it fails the guard")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", action="store_true")


def run(args) -> int:
    methods = METHODS if args.method == "both" else (args.method,)
    report = quantize_run(args.run, args.data, methods=methods, max_drop=args.max_drop,
                          min_agreement=args.min_agreement, min_cosine=args.min_cosine, force=args.force,
                          calib_size=args.calib_size, val_size=args.val_size, threads=args.threads)
    refused = [e["refused"] for e in report["methods"].values() if e.get("refused")]
    if args.json:
        print_json(report)
    if report["chosen"] is None:
        print("distill quantize: " + " | ".join(refused), file=sys.stderr)
        return 2
    return 0
