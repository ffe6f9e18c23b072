"""`teacher extract`: the t=50 features (paper Eq. 9-10) of every image of a dataset, with EMA weights,
as float16 safetensors shards plus an index (format in teacher/features_io.py).

    teacher extract --checkpoint CKPT --data D/manifest.jsonl --out FEATS [--noise-draws 4] [--split train]
    torchrun --nproc-per-node 8 -m teacher extract --checkpoint CKPT --data D/manifest.jsonl --out FEATS

Under torchrun (RANK set; NCCL on GPU, gloo on CPU) rank r extracts records[r::world] and writes its own
shards (``features-r<rank>-<i>.safetensors``) as it goes, never holding more than one shard; rank 0 then
gathers every rank's shard list and rows (metadata only, no features) and writes the one index, in
manifest order, so readers see the same dataset as a one-process extraction, image for image.

The features of an image are the mean over --noise-draws noise draws with a fixed --seed, so the same
image always gives the same features. --pixel-noise is the paper's literal Eq. (9) (noise added to
the image before the VAE) instead of the default latent noise of Eq. (2).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

from runtime.contracts.dataset import DatasetError, load_dataset
from runtime.contracts.formats import ContractError
from teacher.device import default_device
from teacher.features_io import write_index, write_shard
from teacher.trainset import manifest_path


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--data", required=True)
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


def load_batch(ds, records, size: int) -> torch.Tensor:
    """(B, 3, size, size) float RGB in [0, 1], resized exactly as the pipeline, distill and the edge do
    (kernels.dispatch.preprocess: bilinear, half-pixel centres), so shards match on-the-fly targets."""
    from kernels.dispatch import preprocess

    x = [preprocess(ds.read_image(r), size, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0), "RGB") for r in records]
    return torch.from_numpy(np.concatenate(x)).float()


def dist_setup(device_arg: str | None) -> tuple[int, int, torch.device]:
    """(rank, world, device): torchrun's process group when RANK is set (NCCL on GPU, gloo on CPU), as
    `teacher train` does; else one process on ``device_arg`` (default: cuda if available)."""
    if int(os.environ.get("RANK", -1)) == -1:
        return 0, 1, torch.device(default_device(device_arg))
    import torch.distributed as dist

    use_cuda = torch.cuda.is_available() and (device_arg is None or device_arg.startswith("cuda"))
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    local = int(os.environ.get("LOCAL_RANK", 0))
    device = torch.device(f"cuda:{local}") if use_cuda else torch.device("cpu")
    if use_cuda:
        torch.cuda.set_device(device)
    return dist.get_rank(), dist.get_world_size(), device


def dist_teardown(world: int) -> None:
    if int(os.environ.get("RANK", -1)) != -1:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.barrier()
            dist.destroy_process_group()


def merge_ranks(parts: list[tuple[list[dict], list[dict]]], n_records: int) -> tuple[list[dict], list[dict]]:
    """Every rank's (shards, rows) of records[rank::world] -> (shards, rows) of one index, rows in
    record order (record i was rank i % world's row i // world). Row "shard" names the file."""
    world = len(parts)
    shards = [sh for sh_list, _ in parts for sh in sh_list]
    rows = [parts[i % world][1][i // world] for i in range(n_records)]
    return shards, rows


def run(args: argparse.Namespace) -> int:
    from runtime.progress import progress

    from teacher.checkpoint import load_teacher

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
    shards, rows, pending, n_pending = [], [], {}, 0
    t0 = time.time()
    bar = progress(len(records), "teacher extract" + (f" rank {rank}/{world}" if world > 1 else ""), unit="img")

    def flush():
        nonlocal pending, n_pending
        if n_pending:
            names = [r["image"] for r in rows if r["shard"] == len(shards)]
            shards.append(write_shard(out, len(shards), {k: torch.cat(v) for k, v in pending.items()}, names,
                                      model.checkpoint_hash, rank=rank if world > 1 else None))
            pending, n_pending = {}, 0

    for i in range(0, len(records), args.batch_size):
        recs = records[i:i + args.batch_size]
        x = load_batch(ds, recs, spec.image_size)
        feats = model.extract_features(x, noise_draws=args.noise_draws, seed=args.seed, pixel_noise=args.pixel_noise)
        for j, r in enumerate(recs):
            rows.append({"image": r.image, "split": r.split, "label": r.label, "defect_type": r.defect_type,
                         "shard": len(shards), "row": n_pending + j})
        for k, v in feats.items():
            pending.setdefault(k, []).append(v.cpu().to(torch.float16))
        n_pending += len(recs)
        bar.update(len(recs))
        if n_pending >= args.shard_size:
            flush()
    flush()
    bar.close()
    for r in rows:
        r["shard"] = shards[r["shard"]]["file"]
    if world > 1:
        import torch.distributed as dist

        parts = [None] * world if rank == 0 else None
        dist.gather_object((shards, rows), parts, dst=0)  # metadata only: the features stay in the files
        if rank != 0:
            dist_teardown(world)
            return 0
        shards, rows = merge_ranks(parts, len(all_records))
    index = {"checkpoint": str(Path(args.checkpoint).resolve()), "checkpoint_hash": model.checkpoint_hash,
             "feature_spec": spec.to_dict(), "noise_draws": args.noise_draws, "seed": args.seed,
             "noise_space": "pixel (Eq. 9)" if args.pixel_noise else "latent (Eq. 2)", "ema": not args.live_weights,
             "dataset": {"manifest": str(ds.manifest.resolve()), "hash": ds.content_hash()},
             "shards": shards, "records": rows, "world_size": world}
    write_index(out, index)
    dist_teardown(world)
    summary = {"out": str(out.resolve()), "n": len(rows), "shards": len(shards), "seconds": round(time.time() - t0, 2),
               "checkpoint_hash": model.checkpoint_hash, "feature_spec": spec.to_dict(), "world_size": world}
    print(json.dumps(summary) if args.json else f"teacher extract: {len(rows)} images -> {out}")
    return 0
