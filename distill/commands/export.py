"""`distill export RUN --out ARTIFACT`: the student artifact directory the edge runs (distill/export.py)."""
from __future__ import annotations

import sys

from distill.export import DEFAULT_FORMATS, DEFAULT_PRECISIONS, FORMATS, PRECISIONS, ExportError, export_run
from runtime.bank_index import DEFAULT_INDEX, INDEX_KINDS
from runtime.cli.dispatch import input_dir, input_file, print_json


def configure(p) -> None:
    p.add_argument("run", type=input_dir, help="run directory (distill fit, then distill quantize)")
    p.add_argument("--out", required=True, help="artifact directory to write (replaced)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--index", choices=INDEX_KINDS, default=DEFAULT_INDEX,
                   help="the bank's nearest-neighbour search: exact BLAS, a faiss IVF / HNSW index "
                        "(needs lineside[ann]), or an int8 distance GEMM with an exact re-rank (ONNX Runtime), "
                        "each tuned until scores match exact search")
    p.add_argument("--sign", type=input_file, metavar="KEY", help="sign the artifact with this Ed25519 private key "
                   "(lineside keys DIR --name NAME --signing); edges with --trusted-signers serve only signed ones")
    p.add_argument("--format", dest="formats", default=",".join(DEFAULT_FORMATS),
                   help=f"what to write, comma-separated of {', '.join(FORMATS)} (the FP32 ONNX graphs always: the "
                        "source of the others); tensorrt builds an FP32 plan here and needs TensorRT")
    p.add_argument("--precision", dest="precisions", default=",".join(DEFAULT_PRECISIONS),
                   help=f"comma-separated of {', '.join(PRECISIONS)}: int8 ships the quantized models "
                        "(needs distill quantize first)")
    p.add_argument("--json", action="store_true")


def run(args) -> int:
    try:
        res = export_run(args.run, args.out, threads=args.threads, sign=args.sign, index=args.index,
                         formats=args.formats, precisions=args.precisions)
    except ExportError as e:
        print(f"distill export: {e}", file=sys.stderr)
        return 2
    if args.json:
        print_json(res)
    return 0
