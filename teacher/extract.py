"""The t=50 features (paper Eq. 9-10) of every image of a dataset, with EMA weights,
as float16 safetensors shards plus an index (format in teacher/features_io.py); `teacher extract`
(teacher/commands/extract.py) runs it.

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

from pathlib import Path

import numpy as np
import torch

from teacher.features_io import write_shard


def load_batch(ds, records, size: int) -> torch.Tensor:
    """(B, 3, size, size) float RGB in [0, 1], resized exactly as the pipeline, distill and the edge do
    (kernels.dispatch.preprocess: bilinear, half-pixel centres), so shards match on-the-fly targets."""
    from kernels.dispatch import preprocess

    x = [preprocess(ds.read_image(r), size, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0), "RGB") for r in records]
    return torch.from_numpy(np.concatenate(x)).float()


def merge_ranks(parts: list[tuple[list[dict], list[dict]]], n_records: int) -> tuple[list[dict], list[dict]]:
    """Every rank's (shards, rows) of records[rank::world] -> (shards, rows) of one index, rows in
    record order (record i was rank i % world's row i // world). Row "shard" names the file."""
    world = len(parts)
    shards = [sh for sh_list, _ in parts for sh in sh_list]
    rows = [parts[i % world][1][i // world] for i in range(n_records)]
    return shards, rows


def extract_shards(model, ds, records, out: Path, *, batch_size: int = 8, shard_size: int = 512, noise_draws: int = 1,
                   seed: int = 0, pixel_noise: bool = False, rank: int = 0, world: int = 1
                   ) -> tuple[list[dict], list[dict]]:
    """Features of ``records`` written to ``out`` as shards of ``shard_size`` images, one shard held at a time
    -> (shards, rows): the shard entries and one row per record, its "shard" naming the file."""
    from runtime.progress import progress

    shards, rows, pending, n_pending = [], [], {}, 0
    bar = progress(len(records), "teacher extract" + (f" rank {rank}/{world}" if world > 1 else ""), unit="img")

    def flush():
        nonlocal pending, n_pending
        if n_pending:
            names = [r["image"] for r in rows if r["shard"] == len(shards)]
            shards.append(write_shard(out, len(shards), {k: torch.cat(v) for k, v in pending.items()}, names,
                                      model.checkpoint_hash, rank=rank if world > 1 else None))
            pending, n_pending = {}, 0

    for i in range(0, len(records), batch_size):
        recs = records[i:i + batch_size]
        x = load_batch(ds, recs, model.feature_spec.image_size)
        feats = model.extract_features(x, noise_draws=noise_draws, seed=seed, pixel_noise=pixel_noise)
        for j, r in enumerate(recs):
            rows.append({"image": r.image, "split": r.split, "label": r.label, "defect_type": r.defect_type,
                         "shard": len(shards), "row": n_pending + j})
        for k, v in feats.items():
            pending.setdefault(k, []).append(v.cpu().to(torch.float16))
        n_pending += len(recs)
        bar.update(len(recs))
        if n_pending >= shard_size:
            flush()
    flush()
    bar.close()
    for r in rows:
        r["shard"] = shards[r["shard"]]["file"]
    return shards, rows


def gather_ranks(shards: list[dict], rows: list[dict], rank: int, world: int, n_records: int
                 ) -> tuple[list[dict], list[dict]] | None:
    """Under torchrun, every rank's (shards, rows) merged on rank 0 (metadata only: the features stay in the
    files) -> the one index's (shards, rows) on rank 0, None on the others; one process: unchanged."""
    if world == 1:
        return shards, rows
    import torch.distributed as dist

    parts = [None] * world if rank == 0 else None
    dist.gather_object((shards, rows), parts, dst=0)
    if rank != 0:
        return None
    return merge_ranks(parts, n_records)
