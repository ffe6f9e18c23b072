"""Representation alignment: the teacher's bank levels learn the features of a frozen ImageNet encoder.

Why: a diffusion U-Net trained from scratch on a line's few hundred good images, in a CPU budget, learns
features in which a defect is not far from good texture. REPA (Yu et al., "Representation Alignment for
Generation", ICLR 2025) trains a diffusion network with an extra term that pulls its hidden states toward a
pretrained encoder's, and gets better features sooner. lineside adds that term to the stage-1 loss
(Eq. 15 + λ·L_align), aimed at what the features are used for:

* it aligns exactly the maps the bank and the mask head read: the decoder levels of
  ``teacher.bank.BANK_LEVELS`` at the feature timestep t=50 under the implicit caption (the pass
  ``TeacherModel.extract_features`` runs), after the bank's own 3×3 aggregation;
* the target of each level is the encoder's map at the same stride, aggregated the same way, centred and
  projected on its leading principal directions, as many as the U-Net level has channels (fitted once, at
  the start of the run, on a spread sample of its own training images: :meth:`FeatureAlignment.fit`). L_align is the mean over
  positions of 1 − cos(U-Net patch, target patch): the U-Net's own channels become those directions, with
  no projector between, so the bank's nearest-neighbour search and the head see the aligned geometry.

Measured on the public evaluation set (128 px, 2,000 steps, head from 600 pseudo-defect steps): the head
went from I-AUROC 0.506 / AU-PRO 0.337 without the term to 0.632 / 0.446 with it. Matching cosine-similarity
matrices instead of coordinates (relational distillation) did not help (0.536 / 0.330 at 200 steps).

The encoder is EfficientNet-Lite0 with its ImageNet weights (teacher/imagenet.py). It is frozen, used only
while training, and never ships: the checkpoint, the bank and the student know nothing of it.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from teacher.bank import BANK_LEVELS, local_patch

ALIGN_ENCODER = "efficientnet-lite0-imagenet"
# The principal directions are fitted on every (N // FIT_IMAGES)-th of the run's N training images: between 64
# and 127 of them (all, below 64), spread over the split in manifest order.
FIT_IMAGES = 64


def _patches(f: torch.Tensor) -> torch.Tensor:
    """(B, C, h, w) map -> (B·h·w, C) aggregated patch vectors."""
    return local_patch(f).permute(0, 2, 3, 1).reshape(-1, f.shape[1])


class FeatureAlignment(nn.Module):
    """L_align between the U-Net's bank levels and the frozen encoder's levels at the same strides."""

    def __init__(self, encoder: nn.Module | None = None, levels: tuple[str, ...] = BANK_LEVELS):
        super().__init__()
        if encoder is None:
            from teacher.imagenet import EfficientNetLite0Levels

            encoder = EfficientNetLite0Levels(pretrained=True)
        self.encoder, self.levels = encoder, tuple(levels)
        self.fitted = False

    @torch.no_grad()
    def fit(self, images01: torch.Tensor, channels: dict[str, int]) -> "FeatureAlignment":
        """Fit each level's target space on (N, 3, S, S) images: the encoder's patch mean and its leading
        ``channels[level]`` principal directions. A U-Net level wider than the encoder's gets every direction,
        spread over its channels by a fixed (seeded) orthonormal map."""
        feats = self.encoder(images01.float())
        for name in self.levels:
            e = _patches(feats[name])
            mu = e.mean(0)
            _, _, vt = torch.linalg.svd(e - mu, full_matrices=False)  # rows: principal directions
            if channels[name] <= vt.shape[0]:
                basis = vt[:channels[name]]
            else:
                g = torch.Generator().manual_seed(0)
                q, _ = torch.linalg.qr(torch.randn(channels[name], vt.shape[0], generator=g))
                basis = q @ vt
            self.register_buffer(f"mean_{name}", mu.to(images01.device))
            self.register_buffer(f"basis_{name}", basis.to(images01.device))
        self.fitted = True
        return self

    def targets(self, images01: torch.Tensor) -> dict[str, torch.Tensor]:
        """Level -> (B·h·w, C_unet) target patch vectors of the images."""
        if not self.fitted:
            raise RuntimeError("FeatureAlignment.fit must run before the alignment loss")
        with torch.no_grad():
            feats = self.encoder(images01.float())
        return {n: (_patches(feats[n]) - getattr(self, f"mean_{n}")) @ getattr(self, f"basis_{n}").T
                for n in self.levels}

    def forward(self, unet_maps: dict[str, torch.Tensor], images01: torch.Tensor) -> torch.Tensor:
        targets = self.targets(images01)
        losses = []
        for name in self.levels:
            h = unet_maps[name]
            e = targets[name]
            if e.shape[0] != h.shape[0] * h.shape[-2] * h.shape[-1]:
                raise ValueError(f"level {name}: U-Net map {tuple(h.shape[-2:])} and encoder map differ in size")
            losses.append((1 - F.cosine_similarity(_patches(h.float()), e, dim=1)).mean())
        return torch.stack(losses).mean()
