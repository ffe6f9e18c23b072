"""How every dataset writer (`teacher data synth`, `teacher data evalset`) puts a sample on disk: its image
and, for a defect, its mask as PNGs under ``images/`` and ``masks/``, deterministically; and the sample both
of them make."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

PNG_COMPRESSION = 3  # zlib level: fast, and deterministic for a given input


@dataclass
class Sample:
    """One generated image with what its record says about it."""
    image: np.ndarray  # uint8 (S, S, 3) RGB, with the defect
    clean: np.ndarray  # uint8 (S, S, 3) RGB, the same crop before the defect (evalset: with the same noise)
    mask: np.ndarray | None  # bool (S, S) for defects
    product: str
    defect_type: str  # "good" or a kind
    severity: float | None
    caption: str
    meta: dict = field(default_factory=dict)


def write_png(path: Path, rgb_or_gray: np.ndarray) -> None:
    import cv2

    arr = rgb_or_gray
    if arr.ndim == 3:
        arr = cv2.cvtColor(arr, cv2.COLOR_RGB2BGR)
    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), arr, [cv2.IMWRITE_PNG_COMPRESSION, PNG_COMPRESSION]):
        raise OSError(f"{path}: could not write PNG")


def write_sample(out: Path, stem: str, image: np.ndarray, mask: np.ndarray | None) -> tuple[str, str | None]:
    """Write ``images/STEM.png`` (and ``masks/STEM.png``, 0/255) under ``out``; -> their paths relative to it."""
    image_rel = f"images/{stem}.png"
    write_png(out / image_rel, image)
    if mask is None:
        return image_rel, None
    mask_rel = f"masks/{stem}.png"
    write_png(out / mask_rel, mask.astype(np.uint8) * 255)
    return image_rel, mask_rel
