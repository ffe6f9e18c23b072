"""Synthetic line data from real surface photographs that ship with scikit-image.

Each sample is a random crop of ``skimage.data.brick`` / ``grass`` / ``gravel`` (512x512 grey), resized
to the requested size, randomly flipped / rotated by 90 degrees, given a product tint and a random
illumination (gain, gamma, a linear light gradient) and a little sensor noise. Defective samples then get
one planted defect (teacher/data/defects.py) with its mask, severity and a template caption whose
location and morphology are read off the mask (teacher/data/captions.py).

Determinism: sample ``i`` draws from ``numpy.random.default_rng([seed, i])`` only, so the same seed gives
the same bytes (PNG encoding included) whatever else changes, and a single sample can be re-made with
:func:`make_sample` from the ``meta`` stored in its record.

Splits (defaults): goods 50% train / 25% val / 25% test; defects 10% train (the "few labelled
defects"), the rest alternating val/test. Defect kinds cycle, so with at least 7 defects every kind
appears, and val and test each see every kind once there are enough.
"""
from __future__ import annotations

import math
import sys
from functools import lru_cache
from pathlib import Path

import numpy as np

from runtime.contracts.dataset import Record, load_dataset, write_manifest
from teacher.data import captions, summary
from teacher.data.defects import DEFECT_KINDS, plant
from teacher.data.writing import Sample, write_sample

PRODUCTS = {
    # product: (skimage.data source, caption product words, caption material, RGB tint of the grey photo,
    #           texture words for good captions)
    "brick": ("brick", "brick tile", "of fired clay", (1.0, 0.74, 0.62), "a uniform regular brick texture"),
    "grass": ("grass", "turf mat", "of woven fibre", (0.78, 1.0, 0.62), "a uniform fibrous texture"),
    "gravel": ("gravel", "aggregate panel", "of crushed stone", (0.96, 0.94, 0.9), "a uniform granular texture"),
}
DEFAULT_VAL_FRAC = 0.25
DEFAULT_TEST_FRAC = 0.25
DEFAULT_TRAIN_DEFECT_FRAC = 0.1


@lru_cache(maxsize=None)
def _photo(name: str) -> np.ndarray:
    import skimage.data

    img = getattr(skimage.data, name)()
    if img.ndim == 3:
        img = img[..., :3].mean(axis=2)
    return np.ascontiguousarray(img.astype(np.float32) / 255.0)


def _to_uint8(img: np.ndarray) -> np.ndarray:
    return np.clip(np.round(img * 255.0), 0, 255).astype(np.uint8)


def render_surface(product: str, size: int, rng: np.random.Generator) -> tuple[np.ndarray, dict]:
    """A clean RGB float32 (size, size, 3) surface in [0, 1] and the augmentation that made it."""
    import cv2

    src, _, _, tint, _ = PRODUCTS[product]
    photo = _photo(src)
    ph, pw = photo.shape
    crop = int(rng.integers(int(0.45 * min(ph, pw)), min(ph, pw) + 1))
    y0, x0 = int(rng.integers(0, ph - crop + 1)), int(rng.integers(0, pw - crop + 1))
    g = photo[y0:y0 + crop, x0:x0 + crop]
    interp = cv2.INTER_AREA if crop >= size else cv2.INTER_CUBIC
    g = cv2.resize(g, (size, size), interpolation=interp)
    flip_h, flip_v, rot = bool(rng.random() < 0.5), bool(rng.random() < 0.5), int(rng.integers(4))
    if flip_h:
        g = g[:, ::-1]
    if flip_v:
        g = g[::-1]
    g = np.rot90(g, rot)
    # A line has controlled lighting: modest gain (+-6 %), gamma and gradient variation. With the former
    # +-15 % gain, gamma 0.85-1.2 and +-10 % gradient, good-vs-good nearest-neighbour feature distances were
    # as large as defect distances (48 train goods cannot cover that appearance range), so no detector could
    # separate them; real inspection cells fix exposure and light far tighter than that.
    gain, gamma = float(rng.uniform(0.94, 1.06)), float(rng.uniform(0.95, 1.06))
    gx, gy = rng.uniform(-0.04, 0.04, 2)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / max(size - 1, 1) - 0.5
    light = 1 + gx * xx + gy * yy
    g = np.clip(np.clip(g, 0, 1) ** gamma * gain * light, 0, 1)
    t = np.array(tint, np.float32) * rng.uniform(0.96, 1.04, 3).astype(np.float32)
    rgb = np.clip(g[..., None] * t + rng.normal(0, 0.008, (size, size, 3)), 0, 1).astype(np.float32)
    aug = {"crop": [x0, y0, crop], "flip_h": flip_h, "flip_v": flip_v, "rot90": rot,
           "gain": round(gain, 4), "gamma": round(gamma, 4)}
    return rgb, aug


def make_sample(product: str, kind: str, size: int, seed: int, index: int) -> Sample:
    """Sample ``index`` of a run with ``seed``: ``kind`` "good" or a defect kind."""
    if product not in PRODUCTS:
        raise KeyError(f"unknown product {product!r}; known: {', '.join(PRODUCTS)}")
    rng = np.random.default_rng([seed, index])
    surface, aug = render_surface(product, size, rng)
    clean = _to_uint8(surface)
    _, words, material, _, texture = PRODUCTS[product]
    meta = {"source": f"skimage.data.{PRODUCTS[product][0]}", "seed": seed, "index": index, **aug}
    if kind == "good":
        return Sample(clean, clean, None, product, "good", None, captions.good_caption(words, material, texture),
                      meta)
    severity = round(float(rng.uniform(0.2, 1.0)), 3)
    out, mask, params = plant(kind, clean.astype(np.float32) / 255.0, rng, severity)
    causes = captions.ROOT_CAUSES[kind]
    cause = causes[int(rng.integers(len(causes)))]
    caption = captions.defect_caption(words, material, kind, mask, severity, cause)
    st = captions.shape_stats(mask)
    meta.update({"defect": params, "area_px": st["area"], "location": captions.location_from_mask(mask)})
    return Sample(_to_uint8(out), clean, mask, product, kind, severity, caption, meta)


def assign_splits(n_good: int, n_defect: int, val_frac: float = DEFAULT_VAL_FRAC,
                  test_frac: float = DEFAULT_TEST_FRAC,
                  train_defect_frac: float = DEFAULT_TRAIN_DEFECT_FRAC) -> tuple[list[str], list[str]]:
    """(good splits, defect splits), deterministic. Goods: the last ``val_frac``/``test_frac`` shares go
    to val/test (interleaved so products stay balanced); defects: ``train_defect_frac`` to train,
    spread evenly over the kind cycle, the rest alternating val/test."""
    for name, v in (("val_frac", val_frac), ("test_frac", test_frac), ("train_defect_frac", train_defect_frac)):
        if not 0.0 <= v <= 1.0:
            raise ValueError(f"{name} must be in [0, 1], got {v}")
    if val_frac + test_frac > 1.0:
        raise ValueError(f"val_frac + test_frac must be <= 1, got {val_frac + test_frac}")
    n_val, n_test = int(round(n_good * val_frac)), int(round(n_good * test_frac))
    n_val, n_test = min(n_val, n_good), min(n_test, n_good - min(n_val, n_good))
    good = ["train"] * n_good
    # Evenly spaced picks so consecutive (product-cycling) indices spread over all splits.
    picks = spread_indices(n_good, n_val + n_test)
    _rebalance(good, picks, n_val, n_test)
    n_tr = int(round(n_defect * train_defect_frac))
    defect = [""] * n_defect
    train_idx = set(spread_indices(n_defect, n_tr))
    k = 0
    for i in range(n_defect):
        if i in train_idx:
            defect[i] = "train"
        else:
            defect[i] = ("val", "test")[k % 2]
            k += 1
    return good, defect


def spread_indices(n: int, k: int) -> list[int]:
    """``k`` evenly spaced distinct indices in range(n) (k <= n)."""
    if k <= 0:
        return []
    return sorted({min(n - 1, int(math.floor((j + 0.5) * n / k))) for j in range(k)})


def _rebalance(splits: list[str], picks: list[int], n_val: int, n_test: int) -> None:
    """Alternate the picked indices val/test, then move the surplus so the counts are exact."""
    for j, i in enumerate(picks):
        splits[i] = "val" if j % 2 == 0 else "test"
    vals = [i for i in picks if splits[i] == "val"]
    tests = [i for i in picks if splits[i] == "test"]
    while len(vals) > n_val:
        splits[vals[-1]] = "test"
        tests.append(vals.pop())
    while len(tests) > n_test:
        splits[tests[-1]] = "val"
        vals.append(tests.pop())


def synthesize(out: str | Path, n_good: int, n_defect: int, size: int = 256, seed: int = 0,
               products: tuple[str, ...] = tuple(PRODUCTS), kinds: tuple[str, ...] = DEFECT_KINDS,
               val_frac: float = DEFAULT_VAL_FRAC, test_frac: float = DEFAULT_TEST_FRAC,
               train_defect_frac: float = DEFAULT_TRAIN_DEFECT_FRAC, progress: bool = False) -> dict:
    """Write a dataset under ``out`` (images/, masks/, manifest.jsonl) and return a summary dict."""
    if n_good < 0 or n_defect < 0 or n_good + n_defect == 0:
        raise ValueError(f"need at least one image: n_good={n_good}, n_defect={n_defect}")
    if size < 32:
        raise ValueError(f"size must be at least 32 px, got {size}")
    for p in products:
        if p not in PRODUCTS:
            raise ValueError(f"unknown product {p!r}; known: {', '.join(PRODUCTS)}")
    for k in kinds:
        if k not in DEFECT_KINDS:
            raise ValueError(f"unknown defect kind {k!r}; known: {', '.join(DEFECT_KINDS)}")
    if not products or not kinds:
        raise ValueError("need at least one product and one defect kind")
    out = Path(out)
    manifest = out / "manifest.jsonl"
    if manifest.exists():
        manifest.unlink()  # a half-written old dataset must not survive a failed run
    good_splits, defect_splits = assign_splits(n_good, n_defect, val_frac, test_frac, train_defect_frac)
    records: list[Record] = []
    jobs = [("good", products[i % len(products)], good_splits[i]) for i in range(n_good)]
    # Products advance once per kind cycle so every (product, kind) pair comes up.
    jobs += [(kinds[i % len(kinds)], products[(i + i // len(kinds)) % len(products)], defect_splits[i])
             for i in range(n_defect)]
    for index, (kind, product, split) in enumerate(jobs):
        s = make_sample(product, kind, size, seed, index)
        image_rel, mask_rel = write_sample(out, f"{index:06d}_{product}_{kind}", s.image, s.mask)
        records.append(Record(image=image_rel, mask=mask_rel, caption=s.caption,
                              label="good" if kind == "good" else "defect", defect_type=s.defect_type,
                              product=product, split=split, severity=s.severity, meta=s.meta))
        if progress and (index + 1) % 50 == 0:
            print(f"synth: {index + 1}/{len(jobs)} images", file=sys.stderr)
    write_manifest(manifest, records)
    load_dataset(manifest, check_files=False)  # the writer must produce what the reader accepts
    return summarize(manifest, records)


def summarize(manifest: Path, records: list[Record]) -> dict:
    return summary.summarize(manifest, records, products=sorted({r.product for r in records}))
