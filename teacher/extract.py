"""`teacher extract`: the t=50 features (paper Eq. 9-10) of every image of a dataset, with EMA weights,
as float16 safetensors shards plus an index (format in teacher/features_io.py).

    teacher extract --checkpoint CKPT --data D/manifest.jsonl --out FEATS [--noise-draws 4] [--split train]

The features of an image are the mean over --noise-draws noise draws with a fixed --seed, so the same
image always gives the same features. --pixel-noise is the paper's literal Eq. (9) (noise added to
the image before the VAE) instead of the default latent noise of Eq. (2).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from runtime.dataset import DatasetError, load_dataset
from runtime.featurespec import ContractError
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


def run(args: argparse.Namespace) -> int:
    from runtime.progress import progress

    from teacher.checkpoint import load_teacher

    device = default_device(args.device)
    try:
        ds = load_dataset(manifest_path(args.data))
        model = load_teacher(args.checkpoint, device=device, use_ema=not args.live_weights)
    except (DatasetError, ContractError) as e:
        print(f"teacher extract: {e}", file=sys.stderr)
        return 2
    if args.dtype != "fp32":
        dt = {"fp16": torch.float16, "bf16": torch.bfloat16}[args.dtype]
        model.unet.to(dt)
        model.vae.to(dt)
    records = ds.split(*args.split) if args.split else list(ds.records)
    spec = model.feature_spec
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    shards, rows, pending, n_pending = [], [], {}, 0
    t0 = time.time()
    bar = progress(len(records), "teacher extract", unit="img")

    def flush():
        nonlocal pending, n_pending
        if n_pending:
            names = [r["image"] for r in rows if r["shard"] == len(shards)]
            shards.append(write_shard(out, len(shards), {k: torch.cat(v) for k, v in pending.items()}, names,
                                      model.checkpoint_hash))
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
    index = {"checkpoint": str(Path(args.checkpoint).resolve()), "checkpoint_hash": model.checkpoint_hash,
             "feature_spec": spec.to_dict(), "noise_draws": args.noise_draws, "seed": args.seed,
             "noise_space": "pixel (Eq. 9)" if args.pixel_noise else "latent (Eq. 2)", "ema": not args.live_weights,
             "dataset": {"manifest": str(ds.manifest.resolve()), "hash": ds.content_hash()},
             "shards": shards, "records": rows}
    write_index(out, index)
    summary = {"out": str(out.resolve()), "n": len(rows), "shards": len(shards), "seconds": round(time.time() - t0, 2),
               "checkpoint_hash": model.checkpoint_hash, "feature_spec": spec.to_dict()}
    print(json.dumps(summary) if args.json else f"teacher extract: {len(rows)} images -> {out}")
    return 0
