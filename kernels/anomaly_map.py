"""anomaly_map: distance grid -> upsampled, Gaussian-blurred map at image size -> image score."""
from __future__ import annotations

import numpy as np


def anomaly_map_reference(grid: np.ndarray, out_hw: tuple[int, int], sigma: float, topk: int = 1
                          ) -> tuple[np.ndarray, float]:
    """(h, w) float -> ((H, W) float32 map, score). Bilinear (half-pixel centres, as cv2/
    torch align_corners=False), separable Gaussian of ``sigma`` px truncated at 4σ with reflected
    borders (cv2.BORDER_REFLECT_101), score = mean of the ``topk`` largest map values."""
    import cv2

    h, w = out_hw
    up = cv2.resize(np.ascontiguousarray(grid, np.float32), (w, h), interpolation=cv2.INTER_LINEAR)
    if sigma > 0:
        ksize = 2 * int(4.0 * sigma + 0.5) + 1
        up = cv2.GaussianBlur(up, (ksize, ksize), sigmaX=sigma, sigmaY=sigma, borderType=cv2.BORDER_REFLECT_101)
    flat = up.ravel()
    if topk <= 1:
        score = float(flat.max())
    else:
        kk = min(topk, flat.size)
        score = float(np.partition(flat, flat.size - kk)[flat.size - kk:].mean())
    return up, score
