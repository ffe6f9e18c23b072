"""A tiny hand-made line dataset for the head/bank/eval tests (no dependency on `teacher data synth`):
a smooth grey texture with planted dark discs ("stain") and bright lines ("scratch")."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from runtime.dataset import Record, write_manifest

SPLITS = {"train": (6, 6), "val": (2, 2), "test": (3, 3)}  # split -> (good, defect)


def texture(rng: np.random.Generator, size: int) -> np.ndarray:
    base = rng.normal(0, 1, (size // 8, size // 8)).astype(np.float32)
    base = cv2.resize(base, (size, size), interpolation=cv2.INTER_CUBIC)
    img = 150 + 12 * base + rng.normal(0, 3, (size, size))
    return np.repeat(np.clip(img, 0, 255).astype(np.uint8)[..., None], 3, axis=2)


def plant(img: np.ndarray, kind: str, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    s = img.shape[0]
    mask = np.zeros(img.shape[:2], np.uint8)
    if kind == "stain":
        c = tuple(int(v) for v in rng.integers(s // 4, 3 * s // 4, 2))
        cv2.circle(mask, c, int(rng.integers(s // 10, s // 6)), 1, -1)
        val = (40, 30, 20)
    else:
        p0 = tuple(int(v) for v in rng.integers(s // 8, s // 2, 2))
        p1 = tuple(int(v) for v in rng.integers(s // 2, 7 * s // 8, 2))
        cv2.line(mask, p0, p1, 1, max(3, s // 24))
        val = (250, 250, 250)
    out = img.copy()
    out[mask > 0] = val
    return out, mask > 0


def make_dataset(root: str | Path, size: int = 128, seed: int = 0, kinds=("stain", "scratch"),
                 with_masks: bool = True) -> Path:
    root = Path(root)
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(exist_ok=True)
    rng = np.random.default_rng(seed)
    recs = []
    i = 0
    for split, (n_good, n_def) in SPLITS.items():
        for j in range(n_good + n_def):
            img = texture(rng, size)
            name = f"images/{i:04d}.png"
            if j < n_good:
                recs.append(Record(image=name, label="good", product="plate", split=split,
                                   caption="a plate with a uniform regular texture"))
            else:
                kind = kinds[j % len(kinds)]
                img, m = plant(img, kind, rng)
                mname = f"masks/{i:04d}.png" if with_masks else None
                if with_masks:
                    cv2.imwrite(str(root / mname), m.astype(np.uint8) * 255)
                recs.append(Record(image=name, mask=mname, label="defect", defect_type=kind, product="plate",
                                   split=split, caption=f"a plate with a {kind} near the centre"))
            cv2.imwrite(str(root / name), cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
            i += 1
    return write_manifest(root, recs)
