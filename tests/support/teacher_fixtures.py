"""Tiny hand-made datasets for the teacher tests (no dependency on `teacher data synth`): a line
dataset for head/bank/eval (a smooth grey texture with planted dark discs ("stain") and bright lines
("scratch")), and an all-good one of smooth random colour images for training runs. Also the status
poll the `teacher serve` tests share, and the tree hash the dataset writers' determinism tests compare."""
from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import cv2
import numpy as np

from runtime.contracts.dataset import Record, write_manifest

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


def make_noise_dataset(root: str | Path, n: int, size: int = 128, seed: int = 0, grid: int = 16,
                       product: str = "tile", **record_fields) -> Path:
    """``n`` good train images: a random (grid, grid) colour patch upsampled to (size, size)."""
    root = Path(root)
    (root / "images").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    recs = []
    for i in range(n):
        img = cv2.resize(rng.integers(0, 255, (grid, grid, 3), dtype=np.uint8), (size, size),
                         interpolation=cv2.INTER_CUBIC)
        cv2.imwrite(str(root / f"images/{i}.png"), img)
        recs.append(Record(image=f"images/{i}.png", label="good", product=product, split="train", **record_fields))
    return write_manifest(root, recs)


def tiny_line(root: Path) -> tuple[Path, Path]:
    """A seeded dataset and a random-init tiny teacher checkpoint under ``root``: (manifest dir, checkpoint)."""
    from teacher.checkpoint import build_random_teacher, save_teacher

    data = make_dataset(root / "d")
    ckpt = root / "ckpt"
    save_teacher(build_random_teacher("tiny"), ckpt, {})
    return data, ckpt


def status_until(client, pred, timeout_ms: int, tries: int = 50) -> dict:
    """`teacher serve` status until pred(status) holds: worker snapshots reach the server every few
    tens of ms. ``client`` is a teacher.serve.bench.ServeClient; each status waits ``timeout_ms``."""
    st = None
    for _ in range(tries):
        st = client.status(timeout_ms)
        assert st is not None, "no status reply"
        if pred(st):
            return st
        time.sleep(0.05)
    raise AssertionError(f"status never satisfied the condition: {json.dumps(st)[:2000]}")


def tree_hash(root: Path) -> str:
    """sha256 over every file's relative path and bytes under ``root``: equal iff the trees are equal."""
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if p.is_file():
            h.update(str(p.relative_to(root)).encode())
            h.update(p.read_bytes())
    return h.hexdigest()
