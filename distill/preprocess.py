"""Torch twin of ``kernels.dispatch.preprocess`` (what the edge runs): bilinear resize of the uint8 frame
with half-pixel centres, rounded back to uint8 as OpenCV does, then ``(x/255 − mean)/std``, RGB, NCHW.

Training feeds the student exactly this input; ``tests/distill/test_preprocess.py`` holds the parity.
"""
from __future__ import annotations

import numpy as np
import torch

# OpenCV's INTER_LINEAR on uint8 is fixed point: 11-bit weights (INTER_RESIZE_COEF_BITS), integer
# horizontal sums, and its SIMD vertical pass ((S>>4)*w >> 16, summed, +2 >> 2). resize_uint8 replays
# that arithmetic, which makes downscaling bit-exact; upscaling can still differ by one grey level on a
# few pixels (cv2's border handling), i.e. at most 1/255/std after normalisation.
PARITY_ATOL = 1.0 / 255.0 / 0.224 + 1e-5
_COEF_SCALE = 2048


def _axis(src: int, dst: int):
    """cv2's source indices and 11-bit weights along one axis (half-pixel centres, clamped borders)."""
    scale = float(src) / dst
    f = ((torch.arange(dst, dtype=torch.float64) + 0.5) * scale - 0.5).to(torch.float32)
    i0 = torch.floor(f).to(torch.int64)
    f = f - i0.to(torch.float32)
    low = i0 < 0
    f[low], i0[low] = 0.0, 0
    high = i0 >= src - 1
    f[high], i0[high] = 0.0, src - 1
    w1 = torch.round(f * _COEF_SCALE).to(torch.int64)
    w0 = torch.round((1 - f) * _COEF_SCALE).to(torch.int64)
    return i0, (i0 + 1).clamp_max(src - 1), w0, w1


def resize_uint8(images: torch.Tensor, size: int) -> torch.Tensor:
    """(B, 3, H, W) uint8 -> (B, 3, size, size) uint8, cv2.resize INTER_LINEAR's integer arithmetic."""
    if images.dtype != torch.uint8:
        raise TypeError(f"resize_uint8: dtype {images.dtype}, expected uint8")
    if images.shape[-2:] == (size, size):
        return images
    x = images.to(torch.int64)
    a0, a1, u0, u1 = _axis(x.shape[-1], size)
    hx = x[..., a0] * u0 + x[..., a1] * u1  # (B, 3, H, size)
    b0, b1, v0, v1 = _axis(x.shape[-2], size)
    s0 = hx[..., b0, :] >> 4
    s1 = hx[..., b1, :] >> 4
    y = ((s0 * v0[:, None]) >> 16) + ((s1 * v1[:, None]) >> 16)
    return ((y + 2) >> 2).clamp(0, 255).to(torch.uint8)


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
