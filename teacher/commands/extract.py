"""`teacher extract`: the t=50 features of every image of a dataset, with EMA weights, as float16 safetensors
shards plus an index (teacher/extract.py; format in teacher/features_io.py).

    teacher extract --checkpoint CKPT --data D/manifest.jsonl --out FEATS [--noise-draws 4] [--split train]
    torchrun --nproc-per-node 8 -m teacher extract --checkpoint CKPT --data D/manifest.jsonl --out FEATS
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from runtime.cli.dispatch import dataset_path, input_dir, print_json
from runtime.contracts.dataset import DatasetError, load_dataset
from runtime.contracts.formats import ContractError


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", type=input_dir, required=True)
    p.add_argument("--data", type=dataset_path, required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--noise-draws", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--split", action="append", choices=["train", "val", "test"],
                   help="only these splits (repeatable; default: all records)")
    p.add_argument("--pixel-noise", action="store_true", help="paper's literal Eq. (9): noise in pixel space")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--shard-size", type=int, default=512, help="images per safetensors shard")
    p.add_argument("--device")
    p.add_argument("--dtype", choices=["fp32", "fp16", "bf16"], default="fp32", help="U-Net/VAE precision (GPU)")
    p.add_argument("--live-weights", action="store_true", help="use the live weights instead of the EMA ones")
    p.add_argument("--json", action="store_true")


def run(args: argparse.Namespace) -> int:
    import torch

    from teacher.checkpoint import load_teacher
    from teacher.distributed import dist_setup, dist_teardown
    from teacher.extract import extract_shards, gather_ranks
    from teacher.features_io import write_index
    from teacher.trainset import manifest_path

    rank, world, device = dist_setup(args.device)
    try:
        ds = load_dataset(manifest_path(args.data))
        model = load_teacher(args.checkpoint, device=device, use_ema=not args.live_weights)
    except (DatasetError, ContractError) as e:
        print(f"teacher extract: {e}", file=sys.stderr)
        dist_teardown(world)
        return 2
    if args.dtype != "fp32":
        dt = {"fp16": torch.float16, "bf16": torch.bfloat16}[args.dtype]
        model.unet.to(dt)
        model.vae.to(dt)
    all_records = ds.split(*args.split) if args.split else list(ds.records)
    records = all_records[rank::world]  # this rank's shard of the manifest (all of it in one process)
    spec = model.feature_spec
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    shards, rows = extract_shards(model, ds, records, out, batch_size=args.batch_size, shard_size=args.shard_size,
                                  noise_draws=args.noise_draws, seed=args.seed, pixel_noise=args.pixel_noise,
                                  rank=rank, world=world)
    merged = gather_ranks(shards, rows, rank, world, len(all_records))
    if merged is None:  # a rank other than 0: its shards are written, rank 0 writes the index
        dist_teardown(world)
        return 0
    shards, rows = merged
    index = {"checkpoint": str(Path(args.checkpoint).resolve()), "checkpoint_hash": model.checkpoint_hash,
             "feature_spec": spec.to_dict(), "noise_draws": args.noise_draws, "seed": args.seed,
             "noise_space": "pixel (Eq. 9)" if args.pixel_noise else "latent (Eq. 2)", "ema": not args.live_weights,
             "dataset": {"manifest": str(ds.manifest.resolve()), "hash": ds.content_hash()},
             "shards": shards, "records": rows, "world_size": world}
    write_index(out, index)
    dist_teardown(world)
    summary = {"out": str(out.resolve()), "n": len(rows), "shards": len(shards), "seconds": round(time.time() - t0, 2),
               "checkpoint_hash": model.checkpoint_hash, "feature_spec": spec.to_dict(), "world_size": world}
    if args.json:
        print_json(summary)
    else:
        print(f"teacher extract: {len(rows)} images -> {out}")
    return 0
