"""Torch twin of ``kernels.dispatch.preprocess`` (what the edge runs): bilinear resize of the uint8 frame
with half-pixel centres, rounded back to uint8 as OpenCV does, then ``(x/255 − mean)/std``, RGB, NCHW.

Training feeds the student exactly this input; ``tests/test_distill_preprocess.py`` holds the parity.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

# OpenCV's INTER_LINEAR on uint8 uses 11-bit fixed-point weights: a pixel can differ by one grey level
# from exact float rounding, i.e. at most 1/255/std after normalisation.
PARITY_ATOL = 1.0 / 255.0 / 0.224 + 1e-5


def resize_uint8(images: torch.Tensor, size: int) -> torch.Tensor:
    """(B, 3, H, W) uint8 -> (B, 3, size, size) uint8, bilinear, half-pixel centres, no antialias (cv2)."""
    if images.dtype != torch.uint8:
        raise TypeError(f"resize_uint8: dtype {images.dtype}, expected uint8")
    if images.shape[-2:] == (size, size):
        return images
    x = F.interpolate(images.float(), size=(size, size), mode="bilinear", align_corners=False, antialias=False)
    return x.round().clamp(0, 255).to(torch.uint8)


def normalize(images_u8: torch.Tensor, mean, std) -> torch.Tensor:
    """(B, 3, S, S) uint8 RGB -> float32 (x/255 − mean)/std."""
    m = torch.as_tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
    inv = 1.0 / torch.as_tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
    return (images_u8.float() * (1.0 / 255.0) - m) * inv


def preprocess_torch(frames: np.ndarray | torch.Tensor, size: int, mean, std) -> torch.Tensor:
    """(H, W, 3) or (B, H, W, 3) uint8 RGB -> (B, 3, size, size) float32, as kernels.dispatch.preprocess."""
    t = torch.as_tensor(np.asarray(frames)) if not isinstance(frames, torch.Tensor) else frames
    if t.ndim == 3:
        t = t[None]
    if t.ndim != 4 or t.shape[-1] != 3:
        raise ValueError(f"preprocess_torch: frames shape {tuple(t.shape)}, expected (B, H, W, 3)")
    return normalize(resize_uint8(t.permute(0, 3, 1, 2).contiguous(), size), mean, std)
