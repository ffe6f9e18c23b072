"""Dataset images at the network input size, as the edge sees them.

Images are resized exactly as ``kernels.dispatch.preprocess`` does (cv2 bilinear on the uint8 frame) and
kept as uint8; the student input is ``distill.preprocess.normalize`` of them (bit-identical to the edge),
the teacher input ``x/255`` (teacher.model.to_teacher_batch). Masks are resized nearest-neighbour.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from distill.preprocess import normalize
from runtime.contracts.dataset import Dataset, Record


@dataclass
class ImageSet:
    records: list[Record]
    images: np.ndarray  # (N, S, S, 3) uint8 RGB, resized
    labels: np.ndarray  # (N,) int64, 1 = defect
    masks: np.ndarray  # (N, S, S) bool

    def __len__(self) -> int:
        return len(self.records)

    def subset(self, idx) -> "ImageSet":
        idx = np.asarray(idx, dtype=np.int64)
        return ImageSet([self.records[i] for i in idx], self.images[idx], self.labels[idx], self.masks[idx])

    @property
    def good(self) -> np.ndarray:
        return np.flatnonzero(self.labels == 0)

    def student_inputs(self, mean, std) -> torch.Tensor:
        """(N, 3, S, S) float32, identical to kernels.dispatch.preprocess of the original frames."""
        return normalize(torch.from_numpy(self.images).permute(0, 3, 1, 2), mean, std)

    def teacher_inputs(self) -> torch.Tensor:
        """(N, 3, S, S) float32 in [0, 1]."""
        return torch.from_numpy(self.images).permute(0, 3, 1, 2).float() * np.float32(1.0 / 255.0)


def load_images(ds: Dataset, splits: tuple[str, ...], size: int) -> ImageSet:
    recs = ds.split(*splits)
    if not recs:
        raise ValueError(f"{ds.manifest}: no records in split(s) {splits}")
    return load_records(ds, recs, size)


def load_records(ds: Dataset, recs: list[Record], size: int) -> ImageSet:
    """These records only, decoded and resized as ``load_images`` does (a bounded subset of a split)."""
    import cv2

    imgs = np.empty((len(recs), size, size, 3), np.uint8)
    masks = np.zeros((len(recs), size, size), bool)
    for i, r in enumerate(recs):
        im = ds.read_image(r)
        imgs[i] = cv2.resize(im, (size, size), interpolation=cv2.INTER_LINEAR)
        if r.mask is not None:
            m = ds.read_mask(r).astype(np.uint8)
            masks[i] = cv2.resize(m, (size, size), interpolation=cv2.INTER_NEAREST) > 0
    labels = np.asarray([1 if r.is_defect else 0 for r in recs], np.int64)
    return ImageSet(recs, imgs, labels, masks)


def pseudo_defect_set(images: ImageSet, per_image: int, seed: int) -> ImageSet:
    """``per_image`` pseudo-defects (teacher/data/pseudo_defects.py, as `teacher finetune --pseudo-defects`
    plants them) on every good image of ``images``, as defect images with their masks. Each keeps the
    record of the good image it was planted on (targets come from the teacher, not from a manifest)."""
    from teacher.data.pseudo_defects import pseudo_defect_images

    good = images.good
    planted = pseudo_defect_images(list(images.images[good]), per_image, seed)
    if not planted:
        raise ValueError("no good images to plant pseudo-defects on")
    recs = [images.records[i] for i in good for _ in range(per_image)]
    return ImageSet(recs, np.stack([im for im, _, _ in planted]), np.ones(len(planted), np.int64),
                    np.stack([m for _, m, _ in planted]))


def concat(a: ImageSet, b: ImageSet) -> ImageSet:
    return ImageSet(a.records + b.records, np.concatenate([a.images, b.images]), np.r_[a.labels, b.labels],
                    np.concatenate([a.masks, b.masks]))
