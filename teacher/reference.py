"""Reference detectors: what a user would try instead of lineside, scored on the same images (`teacher baselines`,
teacher/commands/baselines.py).

    teacher baselines --data D/manifest.jsonl [--split test] [--size 128] [--only effnet] --json

Each is PatchCore (Roth et al. 2022) over one patch-feature extractor, with one bank per product (the
MVTec AD protocol: a detector per category), built and scored exactly like the teacher's bank
(``teacher.bank.patch_embedding`` neighbourhood aggregation, ``greedy_coreset``, and
``runtime.scoring.score_embedding``), so the rows differ in the features alone:

* ``pixels``: raw RGB 8×8 patches (stride 8), the floor any learned feature must clear;
* ``random_cnn``: EfficientNet-Lite0 with seeded random weights (blocks at stride 8 and 16): what the
  architecture gives without learning;
* ``effnet``: the same network with its ImageNet weights (teacher/imagenet.py says where they come from and
  why that package builds it). This is the row lineside has to beat.

Thresholds are calibrated like the teacher's good-images-only bank (``calibrate_threshold``) on each
product's val good images, so accuracy and recall are at a deployable threshold, not an oracle one.
"""
from __future__ import annotations

import time

import numpy as np

# torch (and teacher.bank, which imports it) is imported in the functions: `teacher baselines --help` must not pay
# for it

DETECTORS = ("pixels", "random_cnn", "effnet")
PIXEL_PATCH = 8


def pixel_patches(x):
    """(B, 3, S, S) in [0, 1] -> {"s8": (B, 192, S/8, S/8)}: the raw RGB pixels of each 8×8 patch."""
    import torch.nn.functional as F

    b, _, h, w = x.shape
    p = F.unfold(x, PIXEL_PATCH, stride=PIXEL_PATCH)
    return {"s8": p.reshape(b, -1, h // PIXEL_PATCH, w // PIXEL_PATCH)}


def build_extractor(name: str):
    """The patch-feature extractor of detector ``name``: (B, 3, S, S) in [0, 1] -> level -> (B, C, h, w)."""
    if name == "pixels":
        return pixel_patches
    if name in ("random_cnn", "effnet"):
        from teacher.imagenet import EfficientNetLite0Levels

        return EfficientNetLite0Levels(pretrained=name == "effnet")
    raise ValueError(f"unknown reference detector {name!r}; choose from {DETECTORS}")


def embed(extractor, images: list[np.ndarray], size: int, batch_size: int = 16) -> list[np.ndarray]:
    import torch

    from teacher.bank import patch_embedding
    from teacher.model import to_teacher_batch

    out = []
    with torch.no_grad():
        for s in range(0, len(images), batch_size):
            feats = extractor(to_teacher_batch(images[s:s + batch_size], size))
            if "s16" not in feats:
                feats = dict(feats, s16=feats["s8"])  # pixels: one level, aggregated like the others
            emb = patch_embedding(feats).numpy()
            out += [emb[i:i + 1] for i in range(emb.shape[0])]
    return out


def patchcore_scores(extractor, train: list[np.ndarray], val: list[np.ndarray], test: list[np.ndarray],
                     size: int, seed: int = 0):
    """One product: bank from ``train`` goods, threshold from ``val`` goods -> (scores, maps, threshold)."""
    from runtime.scoring import embedding_to_queries, score_embedding
    from teacher.bank import calibrate_threshold, default_budget, greedy_coreset

    vecs = np.concatenate([embedding_to_queries(e)[0] for e in embed(extractor, train, size)])
    bank = vecs[greedy_coreset(vecs, default_budget(len(vecs)), seed)]

    def score(imgs):
        return [score_embedding(e, bank, (size, size)) for e in embed(extractor, imgs, size)]

    thr, _, _ = calibrate_threshold(np.asarray([r.score for r in score(val or train)]), None)
    res = score(test)
    return [r.score for r in res], [r.anomaly_map for r in res], thr


def evaluate(name: str, ds, split: str, size: int, seed: int = 0, log=None) -> dict:
    """The quality row (runtime.quality) of reference detector ``name`` on ``split`` of ``ds``. Each test map is
    resized to its image and folded into the row as it comes (QualityAccumulator): no full-size map is kept."""
    import cv2

    from runtime.quality import QualityAccumulator

    extractor = build_extractor(name)
    acc = QualityAccumulator()
    t0 = time.time()
    for product in sorted({r.product for r in ds.records}):
        recs = lambda sp, good=None: [r for r in ds.split(sp) if r.product == product  # noqa: E731
                                      and (good is None or r.is_defect != good)]
        test = recs(split)
        if not test:
            continue
        images = [ds.read_image(r) for r in test]
        scores, maps, thr = patchcore_scores(extractor, [ds.read_image(r) for r in recs("train", True)],
                                             [ds.read_image(r) for r in recs("val", True)], images, size, seed)
        for r, im, s, m in zip(test, images, scores, maps):
            h, w = im.shape[:2]
            acc.add(product, int(r.is_defect), r.defect_type, s, cv2.resize(m, (w, h), interpolation=cv2.INTER_LINEAR),
                    ds.read_mask(r, (h, w)), int(s >= thr))
        if log:
            log(f"baselines: {name} {product}: {len(test)} images ({time.time() - t0:.1f}s)")
    row = acc.row()
    row["seconds"] = round(time.time() - t0, 2)
    return row
