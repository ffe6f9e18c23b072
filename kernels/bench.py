"""Kernel benchmarks: every implementation this machine has, beside its reference.

    python -m kernels.bench --json          # also: lineside bench kernels --json
    python -m kernels.bench --json --quick  # small shapes (seconds; what the tests run)

Figures: knn_score in GFLOP/s (2·M·N·D, the GEMM it is made of); preprocess and anomaly_map in GB/s
(bytes read once + bytes written once: frame in, tensor out; grid in, map out). On the CPU the knn
reference is compared with numpy's float32 matmul measured in the same run (square N×N×N, the
machine's BLAS peak as numpy reaches it); the target is at least half of it for D >= 128 and
M·N >= 1e7. On a CUDA GPU (torch.cuda.is_available()) the Triton and CUDA kernels are timed against
torch: cdist + min for knn, interpolate + conv2d (separable Gaussian) + max/topk for anomaly_map,
interpolate + normalise for preprocess. Numbers are best-of-repeats wall times; on a shared machine
they are indicative only. Threads: numpy/OpenCV use what OMP_NUM_THREADS/cv2 allow (reported).

Each op's shapes and rows are its own (``bench_cpu`` / ``bench_gpu`` in kernels/<op>.py); this module
times them, sets them beside numpy's matmul and writes the one JSON object.
"""
from __future__ import annotations

import argparse
import json as _json
import os
import platform
import sys
import time

import numpy as np

from kernels import anomaly_map, dispatch, knn_score, preprocess

OPS = {"knn_score": knn_score, "preprocess": preprocess, "anomaly_map": anomaly_map}  # each op's bench entries
MATMUL_N = 1024
MATMUL_N_QUICK = 256
KNN_TARGET_FRACTION = 0.5


def _best_s(fn, repeats: int, sync=None) -> float:
    fn()  # warm-up (JIT, caches, allocations)
    if sync:
        sync()
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        if sync:
            sync()
        best = min(best, time.perf_counter() - t)
    return best


def _matmul_gflops(n: int, repeats: int) -> float:
    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n), dtype=np.float32)
    b = rng.standard_normal((n, n), dtype=np.float32)
    out = np.empty((n, n), np.float32)
    return 2.0 * n ** 3 / _best_s(lambda: np.matmul(a, b, out=out), repeats) / 1e9


def _machine() -> dict:
    info = {"python": platform.python_version(), "numpy": np.__version__, "cpus": os.cpu_count(),
            "omp_num_threads": os.environ.get("OMP_NUM_THREADS"), "machine": platform.machine()}
    try:
        import cv2

        info["opencv"] = cv2.__version__
        info["opencv_threads"] = cv2.getNumThreads()
    except ImportError:
        info["opencv"] = None
    return info


def _shapes(quick: bool) -> dict:
    return {op: mod.BENCH_SHAPES_QUICK if quick else mod.BENCH_SHAPES for op, mod in OPS.items()}


# ------------------------------------------------------------------------------------------------ CPU
def _cpu(quick: bool, repeats: int) -> dict:
    """Each op's CPU rows (kernels/<op>.py ``bench_cpu``) and numpy's matmul, the knn target's yardstick."""
    rng = np.random.default_rng(0)
    n = MATMUL_N_QUICK if quick else MATMUL_N
    peak = _matmul_gflops(n, repeats)
    shapes = _shapes(quick)

    def timer(fn):
        return _best_s(fn, repeats)

    return {"matmul": {"impl": "numpy-float32", "shape": [n, n, n], "gflops": round(peak, 2)},
            "knn_score": knn_score.bench_cpu(shapes["knn_score"], timer, rng, peak, KNN_TARGET_FRACTION),
            "preprocess": preprocess.bench_cpu(shapes["preprocess"], timer, rng),
            "anomaly_map": anomaly_map.bench_cpu(shapes["anomaly_map"], timer, rng)}


# ------------------------------------------------------------------------------------------------ GPU
def _gpu(quick: bool, repeats: int, device: str = "cuda", shapes: dict | None = None) -> dict:
    """Each op's Triton and CUDA kernels beside torch on ``device`` (kernels/<op>.py ``bench_gpu``).
    device="cpu" (with TRITON_INTERPRET=1) runs the same code through the Triton interpreter: that is
    how the tests exercise this path."""
    import torch

    from kernels import cuda_runtime

    dev = torch.device(device)
    on_gpu = dev.type == "cuda"
    sync = torch.cuda.synchronize if on_gpu else None
    cuda_ok = on_gpu and cuda_runtime.probe() is None
    shapes = shapes or _shapes(quick)
    res: dict = {"device": torch.cuda.get_device_name(0) if on_gpu else str(dev),
                 "cuda_kernels": cuda_runtime.loaded_from() if cuda_ok else None}
    g = torch.Generator(device="cpu").manual_seed(0)

    def measure(base: dict, impl: str, fn, work: float, unit: str, ref=None, pick=lambda o: o) -> dict:
        t = _best_s(fn, repeats, sync)
        r = {**base, "impl": impl, "ms": round(t * 1e3, 4), unit: round(work / t / 1e9, 2)}
        if ref is not None:  # the kernels checked against torch on this very device
            r["max_abs_diff_vs_torch"] = float((pick(fn()).float() - ref.float()).abs().max())
        return r

    for op, mod in OPS.items():
        res[op] = mod.bench_gpu(shapes[op], measure, dev, g, cuda_ok)
    return res


def run(json: bool = True, quick: bool = False, repeats: int | None = None) -> dict:
    """Benchmark every implementation available here; returns one JSON-able dict (``json`` is kept for
    the CLI's call signature: the result is always JSON-able)."""
    repeats = repeats or (2 if quick else 5)
    out = {"kind": "kernels", "quick": quick, "repeats": repeats, "machine": _machine(),
           "implementations": dispatch.implementations(), "notes": dispatch.implementation_notes(),
           "units": {"knn_score": "GFLOP/s (2*M*N*D)", "preprocess": "GB/s (frame in + float32 tensor out)",
                     "anomaly_map": "GB/s (grid in + float32 map out)", "matmul": "GFLOP/s (2*n^3)"}}
    out["cpu"] = _cpu(quick, repeats)
    gated = [r for r in out["cpu"]["knn_score"] if "target_met" in r]
    # worst knn/matmul throughput ratio over the gated shapes (D >= 128, M·N >= 1e7, k = 1); in --quick
    # no shape is gated, so the worst over all k = 1 shapes is reported instead (indicative only)
    pool = gated or [r for r in out["cpu"]["knn_score"] if r["k"] == 1]
    out["knn_vs_matmul"] = min(r["fraction_of_matmul"] for r in pool) if pool else None
    out["knn_cpu_target"] = {"fraction": KNN_TARGET_FRACTION, "rows": len(gated),
                             "met": all(r["target_met"] for r in gated) if gated else None}
    out["gpu"] = None
    try:
        import torch

        if torch.cuda.is_available():
            out["gpu"] = _gpu(quick, repeats)
    except ImportError:
        pass
    if out["gpu"] is None:
        out["gpu_skipped"] = "no CUDA GPU visible to torch (or torch not installed)"
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m kernels.bench", description=__doc__.split("\n")[0])
    ap.add_argument("--json", action="store_true", help="print one JSON object as the last line of stdout")
    ap.add_argument("--quick", action="store_true", help="small shapes")
    ap.add_argument("--repeats", type=int, default=None)
    args = ap.parse_args(argv)
    res = run(json=args.json, quick=args.quick, repeats=args.repeats)
    if args.json:
        print(_json.dumps(res))
    else:
        print(f"matmul {res['cpu']['matmul']['gflops']} GFLOP/s", file=sys.stderr)
        for op in ("knn_score", "preprocess", "anomaly_map"):
            for r in res["cpu"][op] + ((res["gpu"] or {}).get(op) or []):
                print(op, r)
    return 0


if __name__ == "__main__":
    sys.exit(main())
