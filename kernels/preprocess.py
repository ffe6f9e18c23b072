"""preprocess: uint8 HWC camera frame -> resized, normalised NCHW float tensor."""
from __future__ import annotations

import numpy as np


def preprocess_reference(frame: np.ndarray, size: int, mean, std, input_order: str = "RGB",
                         out_dtype=np.float32) -> np.ndarray:
    """OpenCV path: bilinear resize (cv2.INTER_LINEAR, half-pixel centres), then (x/255 - mean)/std.

    frame: (H, W) grey or (H, W, 3) in ``input_order``; returns (1, 3, size, size) RGB.
    """
    import cv2

    if frame.dtype != np.uint8:
        raise TypeError(f"preprocess: frame dtype {frame.dtype}, expected uint8")
    if frame.ndim == 2:
        frame = cv2.cvtColor(frame, cv2.COLOR_GRAY2RGB)
    elif frame.ndim == 3 and frame.shape[2] == 3:
        if input_order == "BGR":
            frame = cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
    else:
        raise ValueError(f"preprocess: frame shape {frame.shape}, expected (H, W) or (H, W, 3)")
    resized = cv2.resize(frame, (size, size), interpolation=cv2.INTER_LINEAR)
    scale = np.float32(1.0 / 255.0)
    mean = np.asarray(mean, np.float32)
    inv_std = 1.0 / np.asarray(std, np.float32)
    x = (resized.astype(np.float32) * scale - mean) * inv_std  # (S, S, 3)
    return np.ascontiguousarray(x.transpose(2, 0, 1)[None]).astype(out_dtype, copy=False)
