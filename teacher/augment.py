"""Stage-1 augmentations of the paper's Table 8 with torch ops only (no torchvision), batched, each
sample's parameters drawn from an explicit generator so a resumed run repeats them exactly.

Flips p=0.5 (horizontal, vertical); rotation ±15°; random resized crop, scale 0.8–1.0, ratio 3/4–4/3
(rotation and crop are one affine resampling, reflection padding so corners stay texture); colour
jitter brightness 0.2, contrast 0.2, saturation 0.1, hue 0.05.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

ROTATION_DEG = 15.0
CROP_SCALE = (0.8, 1.0)
CROP_RATIO = (3 / 4, 4 / 3)
JITTER = dict(brightness=0.2, contrast=0.2, saturation=0.1, hue=0.05)
_LUMA = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
_RGB2YIQ = torch.tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])


def _uniform(n: int, lo: float, hi: float, g: torch.Generator) -> torch.Tensor:
    return lo + (hi - lo) * torch.rand(n, generator=g)


def augment(images01: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """images01 (B, 3, S, S) float in [0, 1] (CPU or GPU); parameters drawn on the CPU from ``g``."""
    b, dev = images01.shape[0], images01.device
    flip_h = torch.rand(b, generator=g) < 0.5
    flip_v = torch.rand(b, generator=g) < 0.5
    angle = _uniform(b, -ROTATION_DEG, ROTATION_DEG, g) * math.pi / 180
    scale = _uniform(b, *CROP_SCALE, g)
    ratio = torch.exp(_uniform(b, math.log(CROP_RATIO[0]), math.log(CROP_RATIO[1]), g))
    w = torch.sqrt(scale * ratio).clamp(max=1.0)  # crop width / height as fractions of the image
    h = torch.sqrt(scale / ratio).clamp(max=1.0)
    cx = (1 - w) * _uniform(b, -1, 1, g)  # crop centre in [-1, 1] coordinates, crop stays inside
    cy = (1 - h) * _uniform(b, -1, 1, g)
    sx = torch.where(flip_h, -w, w)
    sy = torch.where(flip_v, -h, h)
    cos, sin = torch.cos(angle), torch.sin(angle)
    # output (u, v) -> input: rotate, then scale into the crop window, then shift to its centre
    theta = torch.stack([torch.stack([sx * cos, -sx * sin, cx], 1),
                         torch.stack([sy * sin, sy * cos, cy], 1)], 1).to(dev, images01.dtype)  # (B, 2, 3)
    grid = F.affine_grid(theta, list(images01.shape), align_corners=False)
    x = F.grid_sample(images01, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
    return color_jitter(x, g)


def color_jitter(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    b, dev = x.shape[0], x.device

    def factor(amount: float) -> torch.Tensor:
        return _uniform(b, 1 - amount, 1 + amount, g).view(b, 1, 1, 1).to(dev, x.dtype)

    bright, contrast, sat = factor(JITTER["brightness"]), factor(JITTER["contrast"]), factor(JITTER["saturation"])
    hue = _uniform(b, -JITTER["hue"], JITTER["hue"], g).to(dev, x.dtype) * 2 * math.pi
    luma = _LUMA.to(dev, x.dtype)
    x = (x * bright).clamp(0, 1)
    mean = (x * luma).sum(1, keepdim=True).mean(dim=(2, 3), keepdim=True)
    x = ((x - mean) * contrast + mean).clamp(0, 1)
    gray = (x * luma).sum(1, keepdim=True)
    x = ((x - gray) * sat + gray).clamp(0, 1)
    # hue: rotate the chroma plane (I, Q) of YIQ by the hue angle
    m = _RGB2YIQ.to(dev, x.dtype)
    yiq = torch.einsum("ij,bjhw->bihw", m, x)
    c, s = torch.cos(hue).view(b, 1, 1), torch.sin(hue).view(b, 1, 1)
    i, q = yiq[:, 1], yiq[:, 2]
    yiq = torch.stack([yiq[:, 0], c * i - s * q, s * i + c * q], 1)
    return torch.einsum("ij,bjhw->bihw", torch.linalg.inv(m), yiq).clamp(0, 1)
