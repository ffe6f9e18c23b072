"""Images and captions of a line dataset for stage 1 (and the VAE), and a resumable sharded batch order.

A record without a caption gets one from its labels ("brick with scratch", "good brick surface"),
so every image conditions the text branch of Eq. (7). Batches come from torch's DistributedSampler
(each rank its shard, reshuffled per epoch with the run's seed); the position (epoch, batch) is part
of the training state, so a resumed run sees exactly the batches the uninterrupted one would have.
"""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset as TorchDataset
from torch.utils.data import DistributedSampler

from runtime.contracts.dataset import Dataset, DatasetError, Record


def caption_for(rec: Record) -> str:
    if rec.caption:
        return rec.caption
    product = rec.product.replace("_", " ")
    if rec.is_defect:
        return f"{product} with {rec.defect_type.replace('_', ' ')}"
    return f"good {product} surface"


class ImageCaptionSet(TorchDataset):
    """(uint8 (3, S, S) RGB tensor, caption); images resized to S once and kept in memory when small."""

    CACHE_LIMIT_BYTES = 1 << 30

    def __init__(self, ds: Dataset, records: list[Record], image_size: int):
        if not records:
            raise DatasetError(f"{ds.manifest}: no records in the training split to train on")
        self.ds, self.records, self.size = ds, records, int(image_size)
        self.captions = [caption_for(r) for r in records]
        small = len(records) * 3 * self.size ** 2 <= self.CACHE_LIMIT_BYTES
        self._cache: dict[int, torch.Tensor] | None = {} if small else None

    def __len__(self) -> int:
        return len(self.records)

    def load(self, i: int) -> torch.Tensor:
        if self._cache is not None and i in self._cache:
            return self._cache[i]
        img = self.ds.read_image(self.records[i])
        if img.shape[:2] != (self.size, self.size):  # bilinear, as extraction and the edge resize
            img = cv2.resize(img, (self.size, self.size), interpolation=cv2.INTER_LINEAR)
        t = torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1).contiguous()
        if self._cache is not None:
            self._cache[i] = t
        return t

    def __getitem__(self, i: int):
        return self.load(i), self.captions[i]


def collate(items):
    imgs, caps = zip(*items)
    return torch.stack(imgs), list(caps)


class BatchOrder:
    """Per-rank batches of one epoch from a DistributedSampler, indexable from any position."""

    def __init__(self, n: int, batch_size: int, world: int, rank: int, seed: int):
        self.n, self.batch_size, self.world, self.rank, self.seed = n, batch_size, world, rank, seed
        self.sampler = DistributedSampler(range(n), num_replicas=world, rank=rank, shuffle=True, seed=seed,
                                          drop_last=False)

    def epoch_batches(self, epoch: int) -> list[list[int]]:
        self.sampler.set_epoch(epoch)
        idx = list(self.sampler)
        if len(idx) < self.batch_size:  # a dataset smaller than one batch: repeat it to fill the batch
            idx = (idx * (self.batch_size // max(1, len(idx)) + 1))[: self.batch_size]
        nb = len(idx) // self.batch_size  # drop the ragged tail so every step has the same batch size
        return [idx[i * self.batch_size:(i + 1) * self.batch_size] for i in range(nb)]

    def batches_from(self, epoch: int, batch: int):
        """Yield (epoch, batch_index, indices) forever, starting at the given position."""
        while True:
            bs = self.epoch_batches(epoch)
            for b in range(batch, len(bs)):
                yield epoch, b, bs[b]
            epoch, batch = epoch + 1, 0


def manifest_path(p: str | Path) -> Path:
    p = Path(p)
    return p / "manifest.jsonl" if p.is_dir() else p
