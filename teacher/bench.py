"""`teacher bench`: feature-extraction latency (VAE encode + implicit caption + one U-Net pass at t=50)
and peak memory per image, at the given sizes, on this machine. 1 warm-up + --runs timed runs.

    teacher bench --preset sd15 --json --sizes 256 512        (random init is fine for timing)
    teacher bench --preset tiny --checkpoint CKPT --json

Peak memory: torch.cuda.max_memory_allocated on a GPU; on the CPU the process's peak resident set
(VmHWM in /proc/self/status, reset through /proc/self/clear_refs where the kernel allows) above the
resident set before the runs. The paper's figures (Table 10: 0.35 s, 18.7 GB per image on an A100)
are for its full pipeline at its resolution; compare like with like.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

import torch

from teacher.device import default_device


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("--preset", default="tiny", help="teacher preset to time (random init)")
    p.add_argument("--checkpoint", help="time this checkpoint instead of a random-init preset")
    p.add_argument("--sizes", type=int, nargs="+", help="image sizes (default: the preset's)")
    p.add_argument("--batch", type=int, default=1, help="images per forward pass")
    p.add_argument("--runs", type=int, default=2)
    p.add_argument("--noise-draws", type=int, default=1)
    p.add_argument("--device")
    p.add_argument("--dtype", choices=["fp32", "fp16", "bf16"], help="default fp16 on GPU, fp32 on CPU")
    p.add_argument("--json", action="store_true")


def _status_kb(field: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def _reset_cpu_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM to the current RSS (Linux >= 4.0)
        return True
    except OSError:
        return False


def bench_size(model, size: int, batch: int, runs: int, noise_draws: int) -> dict:
    from teacher.model import TeacherModel

    model.feature_spec = model.preset_config.feature_spec(size)  # a random-init teacher runs at any size
    dev = model.device
    x = torch.rand(batch, 3, size, size, generator=torch.Generator().manual_seed(0))
    cuda = dev.type == "cuda"
    TeacherModel.extract_features(model, x, noise_draws=noise_draws)  # warm-up
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        reset = _reset_cpu_peak()
        base = (_status_kb("VmRSS") or 0) * 1024
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        model.extract_features(x, noise_draws=noise_draws)
        if cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    if cuda:
        peak, how = torch.cuda.max_memory_allocated(), "torch.cuda.max_memory_allocated"
        peak_delta = peak - base
    else:
        peak = (_status_kb("VmHWM") or 0) * 1024
        peak_delta = max(0, peak - base)
        how = ("VmHWM - VmRSS before (reset via clear_refs)" if reset
               else "VmHWM (not resettable: includes earlier peaks)")
    return {"size": size, "batch": batch, "runs": runs, "latency_s_per_image": min(times) / batch,
            "latency_s_mean_per_image": sum(times) / len(times) / batch, "peak_bytes": int(peak),
            "peak_bytes_per_image": int((peak if cuda else peak_delta) / batch), "memory_measure": how}


def run(args: argparse.Namespace) -> int:
    from teacher.checkpoint import build_random_teacher, load_teacher

    device = torch.device(default_device(args.device))
    dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[
        args.dtype or ("fp16" if device.type == "cuda" else "fp32")]
    try:
        model = load_teacher(args.checkpoint, device=device) if args.checkpoint else \
            build_random_teacher(args.preset).to(device)
    except KeyError as e:
        print(f"teacher bench: {e.args[0]}", file=sys.stderr)
        return 2
    if dtype != torch.float32:
        model.unet.to(dtype)
        model.vae.to(dtype)
    model.eval()
    sizes = args.sizes or [model.feature_spec.image_size]
    results = []
    for s in sizes:
        if s % 64:
            print(f"teacher bench: size {s} is not a multiple of 64 (the coarsest feature stride)", file=sys.stderr)
            return 2
        r = bench_size(model, s, args.batch, args.runs, args.noise_draws)
        results.append(r)
        print(f"teacher bench: {model.preset} {s}px {r['latency_s_per_image'] * 1e3:.1f} ms/img, "
              f"peak {r['peak_bytes_per_image'] / 2**20:.1f} MiB/img", file=sys.stderr)
    info = {"preset": model.preset, "checkpoint_hash": model.checkpoint_hash, "device": str(device),
            "device_name": (torch.cuda.get_device_name(device) if device.type == "cuda"
                            else platform.processor() or platform.machine()),
            "dtype": str(dtype).replace("torch.", ""), "torch_threads": torch.get_num_threads(),
            "omp_num_threads": os.environ.get("OMP_NUM_THREADS"), "noise_draws": args.noise_draws,
            "unet_params": sum(p.numel() for p in model.unet.parameters()), "results": results}
    if args.json:
        print(json.dumps(info))
    return 0
