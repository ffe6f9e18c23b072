"""Pseudo-defects planted on a line's own good images, so the mask head can train where no defect was labelled.

A new line has good parts only. `teacher finetune --pseudo-defects K` gives each good training image K
planted variants, drawn from three families that teach "what is not this surface" rather than one look:

* ``texture_paste`` (DRAEM, Zavrtanik et al. 2021): a region shaped by thresholded multi-octave noise is
  replaced, at a random opacity, by another texture: a re-oriented, re-coloured good image of the same line,
  or a crop of a synth surface photo. Irregular shapes, foreign texture, from faint to opaque.
* ``cutpaste`` (Li et al. 2021): a patch of the same image, colour-jittered and possibly rotated, pasted
  elsewhere: locally plausible texture in the wrong place, the hardest kind for a texture model.
* the synth's own planters (teacher/data/defects.py: scratches, cracks, holes, stains, ...).

Only lineside's training sources are used: the line's train images, and the synth photos (brick, grass,
gravel). The evaluation set's photographs and planters (teacher/data/evalset.py) are never touched, so the
evaluation stays held out. The mask is where the image visibly changed (``VISIBLE_DIFF``) inside the
planted region: a faint paste is not labelled where it cannot be seen.

Every function takes float32 (H, W, 3) RGB in [0, 1] and a numpy Generator, and is deterministic for it.
"""
from __future__ import annotations

import numpy as np

from teacher.data import defects

PSEUDO_LABEL = "defect"  # the one class of pseudo-defects: they teach "not this surface", not a kind
FAMILIES = ("texture_paste", "cutpaste", "planter")
VISIBLE_DIFF = 4 / 255  # max-over-RGB change from which a planted pixel counts as visible
MIN_AREA_FRAC = 0.002  # a draw whose visible mask is smaller than this share of the image is redrawn
MAX_DRAWS = 6
NOISE_OCTAVES = (4, 8, 16)  # grid cells per side of each noise octave
OPACITY = (0.25, 1.0)
PASTE_AREA_FRAC = (0.01, 0.12)  # share of the image a texture paste or cut-paste covers
SYNTH_PHOTOS = ("brick", "grass", "gravel")


def _cv2():
    import cv2

    return cv2


def smooth_noise(h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    """Multi-octave value noise in [0, 1] (a Perlin-like field: bicubic-upsampled random grids)."""
    cv2 = _cv2()
    acc = np.zeros((h, w), np.float32)
    for i, cells in enumerate(NOISE_OCTAVES):
        grid = rng.random((cells + 1, cells + 1)).astype(np.float32)
        acc += cv2.resize(grid, (w, h), interpolation=cv2.INTER_CUBIC) / 2 ** i
    acc -= acc.min()
    return acc / max(float(acc.max()), 1e-6)


def noise_region(h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    """A bool region of irregular shape covering roughly PASTE_AREA_FRAC of the image, kept inside a
    random window so it is one defect, not a speckle over the whole frame."""
    field = smooth_noise(h, w, rng)
    frac = rng.uniform(*PASTE_AREA_FRAC)
    side = np.sqrt(frac * 2.5) * np.array([h, w])  # the window is ~2.5x the region: room for its shape
    cy, cx = rng.uniform(side[0] / 2, h - side[0] / 2), rng.uniform(side[1] / 2, w - side[1] / 2)
    yy, xx = np.mgrid[:h, :w]
    window = (np.abs(yy - cy) <= side[0] / 2) & (np.abs(xx - cx) <= side[1] / 2)
    level = np.quantile(field[window], 1 - frac * h * w / max(window.sum(), 1))
    return window & (field >= level)


def _recolour(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Brightness, contrast and channel order changed: the same structure in another look."""
    out = img[..., rng.permutation(3)] if rng.random() < 0.5 else img
    mean = out.mean()
    out = (out - mean) * rng.uniform(0.5, 1.8) + mean + rng.uniform(-0.25, 0.25)
    return np.clip(out, 0, 1).astype(np.float32)


def _synth_texture(h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    from teacher.data.synth import _photo

    photo = _photo(SYNTH_PHOTOS[int(rng.integers(len(SYNTH_PHOTOS)))])
    photo = photo if photo.ndim == 3 else np.repeat(photo[..., None], 3, axis=2)
    ph, pw = photo.shape[:2]
    y0, x0 = int(rng.integers(0, max(1, ph - h))), int(rng.integers(0, max(1, pw - w)))
    crop = photo[y0:y0 + h, x0:x0 + w]
    crop = _cv2().resize(crop, (w, h), interpolation=_cv2().INTER_AREA)
    return crop.astype(np.float32) / (255.0 if crop.dtype == np.uint8 else 1.0)


def texture_paste(img: np.ndarray, rng: np.random.Generator, pool: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    h, w = img.shape[:2]
    if pool and rng.random() < 0.5:
        src = np.rot90(pool[int(rng.integers(len(pool)))], int(rng.integers(1, 4)))
        src = _cv2().resize(np.ascontiguousarray(src), (w, h), interpolation=_cv2().INTER_AREA)
    else:
        src = _synth_texture(h, w, rng)
    src = _recolour(src, rng)
    region = noise_region(h, w, rng)
    beta = rng.uniform(*OPACITY)
    a = region[..., None].astype(np.float32) * beta
    return (img * (1 - a) + src * a).astype(np.float32), region


def cutpaste(img: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    cv2 = _cv2()
    h, w = img.shape[:2]
    area = rng.uniform(*PASTE_AREA_FRAC) * h * w
    aspect = np.exp(rng.uniform(np.log(0.3), np.log(3.3)))
    ph = int(np.clip(np.sqrt(area * aspect), 3, h - 2))
    pw = int(np.clip(np.sqrt(area / aspect), 3, w - 2))
    sy, sx = int(rng.integers(0, h - ph + 1)), int(rng.integers(0, w - pw + 1))
    patch = _recolour(img[sy:sy + ph, sx:sx + pw], rng) if rng.random() < 0.7 else img[sy:sy + ph, sx:sx + pw]
    # Rotate inside the canvas of the patch (corners outside it stay unpasted).
    angle = rng.uniform(-45, 45) if rng.random() < 0.5 else 0.0
    m = cv2.getRotationMatrix2D((pw / 2, ph / 2), angle, 1.0)
    patch = cv2.warpAffine(patch, m, (pw, ph), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
    keep = cv2.warpAffine(np.ones((ph, pw), np.float32), m, (pw, ph), flags=cv2.INTER_NEAREST) > 0.5
    ty, tx = int(rng.integers(0, h - ph + 1)), int(rng.integers(0, w - pw + 1))
    out = img.copy()
    region = np.zeros((h, w), bool)
    region[ty:ty + ph, tx:tx + pw] = keep
    out[region] = patch[keep]
    return out, region


def planter(img: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    kind = defects.DEFECT_KINDS[int(rng.integers(len(defects.DEFECT_KINDS)))]
    out, mask, _ = defects.plant(kind, img, rng, float(rng.uniform(0.4, 1.0)))
    return out.astype(np.float32), mask.astype(bool)


def plant_pseudo(img: np.ndarray, rng: np.random.Generator, pool: list[np.ndarray] | None = None,
                 family: str | None = None) -> tuple[np.ndarray, np.ndarray, str]:
    """-> (image, visible mask, family). Redraws (up to MAX_DRAWS) a plant too faint or small to see."""
    h, w = img.shape[:2]
    for _ in range(MAX_DRAWS):
        fam = family or FAMILIES[int(rng.integers(len(FAMILIES)))]
        if fam == "texture_paste":
            out, region = texture_paste(img, rng, pool or [])
        elif fam == "cutpaste":
            out, region = cutpaste(img, rng)
        elif fam == "planter":
            out, region = planter(img, rng)
        else:
            raise ValueError(f"unknown pseudo-defect family {fam!r}; families are {FAMILIES}")
        mask = region & (np.abs(out - img).max(axis=2) >= VISIBLE_DIFF)
        if mask.sum() >= MIN_AREA_FRAC * h * w:
            return np.clip(out, 0, 1), mask, fam
    return np.clip(out, 0, 1), mask, fam


def pseudo_defect_images(images: list[np.ndarray], per_image: int, seed: int
                         ) -> list[tuple[np.ndarray, np.ndarray, str]]:
    """uint8 RGB good images -> ``per_image`` planted variants each: (uint8 image, bool mask, family).
    Image i's k-th variant draws from rng([seed, i, k]) only, so it does not depend on the others."""
    floats = [im.astype(np.float32) / 255.0 for im in images]
    out = []
    for i, img in enumerate(floats):
        pool = floats[:i] + floats[i + 1:]
        for k in range(per_image):
            rng = np.random.default_rng([seed, i, k])
            planted, mask, fam = plant_pseudo(img, rng, pool)
            out.append(((planted * 255 + 0.5).astype(np.uint8), mask, fam))
    return out
