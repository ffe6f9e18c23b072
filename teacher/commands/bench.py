"""`teacher bench`: feature-extraction latency (VAE encode + implicit caption + one U-Net pass at t=50) and peak
memory per image, at the given sizes, on this machine (teacher/bench.py). 1 warm-up + --runs timed runs.

    teacher bench --preset sd15 --json --sizes 256 512        (random init is fine for timing)
    teacher bench --preset tiny --checkpoint CKPT --json
"""
from __future__ import annotations

import argparse
import os
import platform
import sys

from runtime.cli.dispatch import input_dir, print_json


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("--preset", default="tiny", help="teacher preset to time (random init)")
    p.add_argument("--checkpoint", type=input_dir, help="time this checkpoint instead of a random-init preset")
    p.add_argument("--sizes", type=int, nargs="+", help="image sizes (default: the preset's)")
    p.add_argument("--batch", type=int, default=1, help="images per forward pass")
    p.add_argument("--runs", type=int, default=2)
    p.add_argument("--noise-draws", type=int, default=1)
    p.add_argument("--device")
    p.add_argument("--dtype", choices=["fp32", "fp16", "bf16"], help="default fp16 on GPU, fp32 on CPU")
    p.add_argument("--json", action="store_true")


def run(args: argparse.Namespace) -> int:
    import torch

    from teacher.bench import bench_size
    from teacher.checkpoint import build_random_teacher, load_teacher
    from teacher.device import default_device

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
        print_json(info)
    return 0
