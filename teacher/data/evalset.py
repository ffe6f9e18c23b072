"""A public evaluation set that no training touches: other photographs, other defects, other code.

`teacher data synth` trains and validates on crops of skimage.data brick / grass / gravel with the seven
kinds of teacher/data/defects.py. A score measured on more of the same rewards a model for learning that
generator (its photos, its planters' brush shapes) instead of "what is not a good surface". This set is
held out on every axis:

* products are OTHER real photographs that ship inside scikit-image (:data:`EVAL_PRODUCTS`, offline);
* defects are six OTHER kinds (:data:`EVAL_KINDS`) planted by the planters below, which share no code
  with teacher/data/defects.py (nor with synth.py), so editing the training generator cannot move it;
* its train split holds good images only (the good-only setting of a new line), val likewise, and test
  mixes goods with defects of every kind for every product.

Each sample is a random crop of its photo, resized, randomly flipped (no rotation or strong re-lighting:
one product keeps one look), given a mild gain and sensor noise. A defect is planted on the noiseless
crop and the same noise is then added to both the clean and the defective image, so their difference is
the defect alone; the mask is where that difference is visible (at least :data:`VISIBLE_DIFF` grey levels)
inside the planted region, closed and dilated a little, and a draw whose change is too faint to see is
redrawn. Captions use the template of teacher/data/captions.py, read off the mask.

Determinism: a sample draws only from ``numpy.random.default_rng([seed, product_index, stream, i])``
with one stream per (split, label), so the same seed gives the same bytes, and the test set does not
change when the train or val counts do. :func:`make_sample` re-makes one sample from its record's meta.
"""
from __future__ import annotations

import math
import sys
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Callable

import numpy as np

from runtime.contracts.dataset import Record, load_dataset, write_manifest
from teacher.data import captions, summary
from teacher.data.writing import Sample, write_sample


@dataclass(frozen=True)
class EvalProduct:
    source: str  # skimage.data function name
    words: str  # caption product words
    material: str  # caption material
    texture: str  # caption texture words for good images
    tint: tuple[float, float, float] | None  # RGB tint of a grey photo; None keeps a colour photo's colours
    crop_frac: tuple[float, float]  # crop side as a share of the photo's short side
    contrast: float = 1.0  # stretch about the photo's mean: a faint texture hides every defect alike
    flips: bool = True  # False where a mirror image is no longer the product (printed text)


# The one list of photographs. None of them is a synth source (brick, grass, gravel); all are surfaces
# a line could inspect. moon is very flat (grey std 0.05), so it is stretched to a texture a camera set up
# for it would see; hubble's galaxies are a few px across, so it is cropped tighter to keep them resolved.
EVAL_PRODUCTS: dict[str, EvalProduct] = {
    "moon": EvalProduct("moon", "regolith tile", "of sintered basalt", "a cratered granular texture",
                        (0.95, 0.93, 0.9), (0.4, 0.6), contrast=2.0),
    "tissue": EvalProduct("immunohistochemistry", "stained tissue slide", "of mounted tissue",
                          "a uniform cellular texture", None, (0.4, 0.6)),
    "page": EvalProduct("page", "printed sheet", "of coated paper", "a uniform printed texture",
                        (1.0, 0.98, 0.92), (0.4, 0.6), flips=False),
    "hubble": EvalProduct("hubble_deep_field", "speckled panel", "of black enamel", "a dark speckled texture",
                          None, (0.2, 0.35)),
}

DEFAULT_SIZE = 128
DEFAULT_N_GOOD_TRAIN = 40
DEFAULT_N_GOOD_VAL = 10
DEFAULT_N_GOOD_TEST = 30
DEFAULT_N_DEFECT_TEST = 30
MIN_SIZE = 32
# One rng stream per (split, label): counts of one split never shift the samples of another.
STREAMS = {("train", "good"): 0, ("val", "good"): 1, ("test", "good"): 2, ("test", "defect"): 3}
SEVERITY_RANGE = (0.3, 1.0)  # below ~0.3 some kinds fade into the texture of busy photos
GAIN_RANGE = (0.95, 1.05)  # a line fixes its exposure; only small drift
NOISE_STD = 0.008  # sensor noise, in [0, 1] units (~2 grey levels)
VISIBLE_DIFF = 8  # grey levels (max over RGB) from which a planted change counts as visible
SUPPORT_EPS = 0.01  # planter weight below which a pixel is outside the planted region (< 3 grey levels)
MIN_VISIBLE_SHARE = 0.2  # of the planted region's core that must change visibly, else the defect is redrawn
PINHOLE_MID = (0.3, 0.7)  # local brightness range where a pinhole may be dark or bright
MAX_ATTEMPTS = 8  # planter draws per crop
SURFACE_DRAWS = 10  # crops per defect sample (one flat crop in ~20 needs a second; cheap)

CAUSES = {
    "bubble": "trapped air under the coating",
    "blur_spot": "a local out-of-plane bulge that leaves the focal plane",
    "ghost": "printing misregistration that left a double impression",
    "warp": "local deformation of the surface during forming",
    "pinholes": "outgassing during curing",
    "smudge": "contact with a greasy glove or roller",
}


# ---------------------------------------------------------------------------------------------- surfaces

@lru_cache(maxsize=None)
def _photo(product: str) -> np.ndarray:
    """The product's photo, float32 [0, 1], (H, W) if grey and (H, W, 3) if colour, contrast applied."""
    import skimage.data

    spec = EVAL_PRODUCTS[product]
    img = getattr(skimage.data, spec.source)()
    if img.ndim == 3:
        img = img[..., :3]
    img = img.astype(np.float32) / 255.0
    if spec.contrast != 1.0:
        img = np.clip(img.mean() + (img - img.mean()) * spec.contrast, 0, 1)
    return np.ascontiguousarray(img, dtype=np.float32)


def _to_uint8(img: np.ndarray) -> np.ndarray:
    return np.clip(np.round(img * 255.0), 0, 255).astype(np.uint8)


def render_surface(product: str, size: int, rng: np.random.Generator) -> tuple[np.ndarray, dict]:
    """A noiseless RGB float32 (size, size, 3) surface in [0, 1] and the augmentation that made it."""
    import cv2

    spec = EVAL_PRODUCTS[product]
    photo = _photo(product)
    ph, pw = photo.shape[:2]
    short = min(ph, pw)
    lo, hi = spec.crop_frac
    crop = int(rng.integers(int(lo * short), int(hi * short) + 1))
    y0, x0 = int(rng.integers(0, ph - crop + 1)), int(rng.integers(0, pw - crop + 1))
    g = photo[y0:y0 + crop, x0:x0 + crop]
    interp = cv2.INTER_AREA if crop >= size else cv2.INTER_CUBIC
    g = cv2.resize(g, (size, size), interpolation=interp)
    flip_h, flip_v = bool(rng.random() < 0.5), bool(rng.random() < 0.5)  # drawn always: same stream layout
    flip_h, flip_v = flip_h and spec.flips, flip_v and spec.flips
    if flip_h:
        g = g[:, ::-1]
    if flip_v:
        g = g[::-1]
    gain = float(rng.uniform(*GAIN_RANGE))
    rgb = g[..., None] * np.array(spec.tint, np.float32) if spec.tint is not None else g
    rgb = np.ascontiguousarray(np.clip(rgb * gain, 0, 1), dtype=np.float32)
    return rgb, {"crop": [x0, y0, crop], "flip_h": flip_h, "flip_v": flip_v, "gain": round(gain, 4)}


# ---------------------------------------------------------------------------------------------- planters
# plant_<kind>(img, rng, severity) -> (out, weight, params): img float32 (H, W, 3) in [0, 1], left untouched;
# weight float32 (H, W) >= 0, where the planter acted (its support is weight > SUPPORT_EPS). Lengths are
# shares of the image's short side, so a defect covers the same share of any size.

def _frame(h: int, w: int, centre: np.ndarray, angle: float) -> tuple[np.ndarray, np.ndarray]:
    """Pixel coordinates rotated by ``angle`` about ``centre``: (along, across)."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    dx, dy = xx - centre[0], yy - centre[1]
    c, s = math.cos(angle), math.sin(angle)
    return dx * c + dy * s, -dx * s + dy * c


def _centre(rng: np.random.Generator, h: int, w: int, margin: float) -> np.ndarray:
    return np.array([rng.uniform(margin, 1 - margin) * w, rng.uniform(margin, 1 - margin) * h], np.float32)


def _soft_ellipse(h, w, centre, axes, angle, feather_px) -> np.ndarray:
    """A filled ellipse with Gaussian-feathered edges, float32 in [0, 1]."""
    import cv2

    u, v = _frame(h, w, centre, angle)
    inside = ((u / axes[0]) ** 2 + (v / axes[1]) ** 2 <= 1).astype(np.float32)
    return cv2.GaussianBlur(inside, (0, 0), max(0.5, feather_px)) if feather_px > 0 else inside


def _blend(img: np.ndarray, weight: np.ndarray, target: np.ndarray) -> np.ndarray:
    a = np.clip(weight, 0, 1)[..., None]
    return np.clip(img * (1 - a) + target * a, 0, 1).astype(np.float32)


def _disc(img, rng, margin: float, radius_frac: tuple[float, float], min_radius_px: float):
    """A random disc: centre c, radius r (a share of the short side, at least ``min_radius_px``), pixel
    offsets u, v from c and the distance d from c in units of r."""
    h, w = img.shape[:2]
    c = _centre(rng, h, w, margin)
    r = max(min_radius_px, rng.uniform(*radius_frac) * min(h, w))
    u, v = _frame(h, w, c, 0.0)
    return c, r, u, v, np.sqrt(u ** 2 + v ** 2) / r


def plant_bubble(img, rng, severity):
    """A trapped air bubble: a lighter round dome with a dark refracting rim and a small highlight."""
    c, r, u, v, d = _disc(img, rng, 0.15, (0.04, 0.09), 2.5)
    rim_w = max(1.0, 0.15 * r) / r  # rim width in units of r, at least one pixel
    k = 0.35 + 0.45 * severity
    dome = np.clip(1 - d ** 2, 0, 1)
    inside = (d < 1).astype(np.float32)
    rim = np.exp(-(((d - 1.0) / rim_w) ** 2)).astype(np.float32)
    hl = np.exp(-((u + 0.35 * r) ** 2 + (v + 0.35 * r) ** 2) / (2 * (0.22 * r) ** 2)) * inside
    out = _blend(img, inside * k * (0.6 + 0.4 * dome), img * 0.5 + 0.5)  # the film lifts and veils the texture
    out = out * (1 - 0.6 * k * rim)[..., None] + (0.4 * k * hl)[..., None]
    weight = np.maximum(inside, rim) * (d < 1 + 3 * rim_w)
    return np.clip(out, 0, 1).astype(np.float32), weight.astype(np.float32), {"radius_px": round(float(r), 1)}


def plant_blur_spot(img, rng, severity):
    """Local defocus: an elliptical region replaced by a Gaussian-blurred copy, feathered at its edge."""
    import cv2

    h, w = img.shape[:2]
    side = min(h, w)
    c = _centre(rng, h, w, 0.18)
    a = rng.uniform(0.08, 0.14) * side
    axes = (a, a * rng.uniform(0.5, 0.9))
    weight = _soft_ellipse(h, w, c, axes, rng.uniform(0, math.pi), 0.25 * axes[1])
    sigma = max(1.0, rng.uniform(0.015, 0.03) * side * (0.6 + 0.8 * severity))
    blurred = cv2.GaussianBlur(img, (0, 0), sigma)
    return _blend(img, weight, blurred), weight, {"axes_px": [round(float(x), 1) for x in axes],
                                                  "sigma_px": round(float(sigma), 2)}


def plant_ghost(img, rng, severity):
    """A misprint: a translucent copy of a patch, shifted a little and laid over the surface."""
    import cv2

    h, w = img.shape[:2]
    side = min(h, w)
    pw, ph = (rng.uniform(0.15, 0.28, 2) * side).tolist()
    c = _centre(rng, h, w, 0.2)
    shift = rng.uniform(0.04, 0.09) * side
    ang = rng.uniform(0, 2 * math.pi)
    dx, dy = shift * math.cos(ang), shift * math.sin(ang)
    # shifted(x, y) = img(x - dx, y - dy): the patch around c - (dx, dy) lands on the window around c.
    m = np.float32([[1, 0, dx], [0, 1, dy]])
    shifted = cv2.warpAffine(img, m, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
    window = np.zeros((h, w), np.float32)
    x0, y0 = int(round(c[0] - pw / 2)), int(round(c[1] - ph / 2))
    window[max(0, y0):y0 + int(round(ph)), max(0, x0):x0 + int(round(pw))] = 1.0
    window = cv2.GaussianBlur(window, (0, 0), max(0.5, 0.04 * side))
    alpha = 0.35 + 0.35 * severity
    return _blend(img, window * alpha, shifted), window, {"shift_px": [round(dx, 1), round(dy, 1)],
                                                          "alpha": round(alpha, 3)}


def plant_warp(img, rng, severity):
    """Local distortion: a swirl that rotates the texture inside a disc, most at its centre (cv2.remap)."""
    import cv2

    c, r, u, v, d = _disc(img, rng, 0.18, (0.07, 0.13), 4.0)
    theta_max = (0.8 + 1.4 * severity) * (1 if rng.random() < 0.5 else -1)
    theta = theta_max * np.clip(1 - d, 0, 1) ** 2  # zero, with zero slope, at the rim: no seam
    ct, st = np.cos(theta), np.sin(theta)
    map_x = (c[0] + ct * u - st * v).astype(np.float32)
    map_y = (c[1] + st * u + ct * v).astype(np.float32)
    out = cv2.remap(img, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
    weight = (d < 1).astype(np.float32)
    out = np.where(weight[..., None] > 0, out, img)  # outside the disc the map is the identity anyway
    return out.astype(np.float32), weight, {"radius_px": round(float(r), 1),
                                            "swirl_rad": round(float(theta_max), 3)}


def plant_pinholes(img, rng, severity):
    """A cluster of 3-8 tiny pinholes, all dark (through to the substrate) or all bright (light through)."""
    import cv2

    h, w = img.shape[:2]
    side = min(h, w)
    c = _centre(rng, h, w, 0.15)
    n = int(rng.integers(3, 9))
    shift = 2  # sub-pixel bits for cv2.circle
    canvas = np.zeros((h, w), np.uint8)
    for _ in range(n):
        p = np.clip(c + rng.normal(0, 0.04 * side, 2), 2, [w - 3, h - 3])
        rad = max(0.8, rng.uniform(0.008, 0.018) * side)
        cv2.circle(canvas, (int(round(p[0] * 4)), int(round(p[1] * 4))), int(round(rad * 4)), 255, -1,
                   cv2.LINE_AA, shift)
    dots = cv2.GaussianBlur(canvas.astype(np.float32) / 255.0, (0, 0), 0.5)
    # Polarity: random on mid tones, but a pinhole shows what is behind the surface, which contrasts with
    # it: bright on a dark surface, dark on a light one.
    local = float(img[dots > 0.1].mean()) if (dots > 0.1).any() else float(img.mean())
    dark = bool(rng.random() < 0.6) if PINHOLE_MID[0] <= local <= PINHOLE_MID[1] else local > PINHOLE_MID[1]
    target = img * 0.12 if dark else np.clip(0.9 + 0.1 * img, 0, 1)
    weight = np.clip(dots * 1.5, 0, 1) * (0.6 + 0.35 * severity)
    return _blend(img, weight, target), weight, {"holes": n, "dark": dark}


def plant_smudge(img, rng, severity):
    """A greasy smear: a long soft streaky region where the texture is dragged along the stroke and veiled
    (darker on light surfaces, a faint haze on dark ones). Low contrast by design."""
    import cv2

    h, w = img.shape[:2]
    side = min(h, w)
    c = _centre(rng, h, w, 0.2)
    length = rng.uniform(0.12, 0.22) * side  # half-length
    axes = (length, length * rng.uniform(0.18, 0.35))
    ang = rng.uniform(0, math.pi)
    soft = _soft_ellipse(h, w, c, axes, ang, 0.35 * axes[1])
    # Streaks: smooth 1-D noise across the stroke, constant along it (finger or rag lines).
    _, across = _frame(h, w, c, ang)
    knots = rng.uniform(0, 1, 9)
    streak = np.interp(across / axes[1], np.linspace(-1.2, 1.2, knots.size), knots).astype(np.float32)
    weight = soft * (0.55 + 0.45 * streak)
    # Drag: directional box blur along the stroke.
    k = max(3, int(round(0.06 * side)) | 1)
    kernel = np.zeros((k, k), np.float32)
    kernel[k // 2, :] = 1.0 / k
    rot = cv2.getRotationMatrix2D((k / 2 - 0.5, k / 2 - 0.5), -math.degrees(ang), 1.0)
    kernel = cv2.warpAffine(kernel, rot, (k, k))
    kernel /= max(float(kernel.sum()), 1e-6)
    smeared = cv2.filter2D(img, -1, kernel, borderType=cv2.BORDER_REFLECT)
    target = smeared * 0.6 + 0.08
    strength = 0.35 + 0.4 * severity
    return _blend(img, weight * strength, target), weight, {"length_px": round(float(2 * length), 1),
                                                            "strength": round(strength, 3)}


PLANTERS: dict[str, Callable] = {
    "bubble": plant_bubble,
    "blur_spot": plant_blur_spot,
    "ghost": plant_ghost,
    "warp": plant_warp,
    "pinholes": plant_pinholes,
    "smudge": plant_smudge,
}
EVAL_KINDS = tuple(PLANTERS)


# ---------------------------------------------------------------------------------------------- samples

def visible_change(clean: np.ndarray, image: np.ndarray, support: np.ndarray) -> np.ndarray:
    """Pixels of ``support`` where ``image`` differs from ``clean`` (uint8 RGB) by VISIBLE_DIFF or more."""
    return (np.abs(image.astype(np.int16) - clean.astype(np.int16)).max(axis=2) >= VISIBLE_DIFF) & support


def visible_mask(clean: np.ndarray, image: np.ndarray, support: np.ndarray) -> np.ndarray:
    """The visible change, closed so a textured change reads as one region, and dilated by a pixel so its
    soft edge belongs to it."""
    import cv2

    m = visible_change(clean, image, support).astype(np.uint8)
    k = max(3, (min(m.shape) // 48) | 1)
    m = cv2.morphologyEx(m, cv2.MORPH_CLOSE, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (k, k)))
    m = cv2.dilate(m & support.astype(np.uint8), np.ones((3, 3), np.uint8))
    return m.astype(bool)


class InvisibleDefect(RuntimeError):
    """No draw of a planter changed its surface visibly (see :func:`plant`)."""


def plant(kind: str, surface: np.ndarray, noise: np.ndarray, rng: np.random.Generator,
          severity: float) -> tuple[np.ndarray, np.ndarray, dict]:
    """Plant one visible defect of ``kind`` on a noiseless ``surface``; returns (uint8 image with ``noise``
    added, bool mask, params). A draw that changes less than MIN_VISIBLE_SHARE of its region visibly (a
    blur on a flat patch, a swirl in empty sky) is redrawn from the same rng; InvisibleDefect after
    MAX_ATTEMPTS draws."""
    if kind not in PLANTERS:
        raise KeyError(f"unknown eval defect kind {kind!r}; known: {', '.join(EVAL_KINDS)}")
    clean = _to_uint8(surface + noise)
    for attempt in range(1, MAX_ATTEMPTS + 1):
        out, weight, params = PLANTERS[kind](surface, rng, float(severity))
        support = weight > SUPPORT_EPS
        image = _to_uint8(out + noise)
        # Judged on the raw change (closing and dilation would let a few stray pixels pass as a defect)
        # against the region's core (feathered tails would make wide-support kinds fail for nothing).
        core = weight >= 0.5 * float(weight.max())
        if visible_change(clean, image, support).sum() >= max(1.0, MIN_VISIBLE_SHARE * core.sum()):
            return image, visible_mask(clean, image, support), {**params, "attempts": attempt}
    raise InvisibleDefect(f"{kind}: no visible defect in {MAX_ATTEMPTS} draws on a {surface.shape[1]}x"
                          f"{surface.shape[0]} surface")


def _draw_surface(product: str, size: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, dict]:
    """(noiseless surface, its sensor noise, augmentation meta)."""
    surface, aug = render_surface(product, size, rng)
    return surface, rng.normal(0, NOISE_STD, surface.shape).astype(np.float32), aug


def make_sample(product: str, kind: str, size: int, seed: int, stream: int, index: int) -> Sample:
    """Sample ``index`` of ``stream`` (see STREAMS) for ``product``: ``kind`` "good" or an eval kind."""
    if product not in EVAL_PRODUCTS:
        raise KeyError(f"unknown eval product {product!r}; known: {', '.join(EVAL_PRODUCTS)}")
    if kind != "good" and kind not in PLANTERS:
        raise KeyError(f"unknown eval defect kind {kind!r}; known: {', '.join(EVAL_KINDS)}")
    spec = EVAL_PRODUCTS[product]
    rng = np.random.default_rng([seed, list(EVAL_PRODUCTS).index(product), stream, index])
    meta = {"source": f"skimage.data.{spec.source}", "seed": seed, "stream": stream, "index": index}
    if kind == "good":
        surface, noise, aug = _draw_surface(product, size, rng)
        clean = _to_uint8(surface + noise)
        return Sample(clean, clean, None, product, "good", None,
                      captions.good_caption(spec.words, spec.material, spec.texture), {**meta, **aug})
    severity = round(float(rng.uniform(*SEVERITY_RANGE)), 3)
    # A crop too flat for the kind (a blur spot on a smooth lunar mare) gets a new crop. A defect sample's
    # crop is its own, so only defects lean slightly to textured crops (~3 % need a second one).
    for draw in range(1, SURFACE_DRAWS + 1):
        surface, noise, aug = _draw_surface(product, size, rng)
        try:
            image, mask, params = plant(kind, surface, noise, rng, severity)
            break
        except InvisibleDefect:
            if draw == SURFACE_DRAWS:
                raise
    caption = captions.defect_caption(spec.words, spec.material, kind, mask, severity, CAUSES[kind])
    meta.update({**aug, "defect": {**params, "surface_draws": draw}, "area_px": int(mask.sum()),
                 "location": captions.location_from_mask(mask)})
    return Sample(image, _to_uint8(surface + noise), mask, product, kind, severity, caption, meta)


# ---------------------------------------------------------------------------------------------- writing

def plan(n_good_train: int, n_good_val: int, n_good_test: int,
         n_defect_test: int) -> list[tuple[str, str, str, int]]:
    """(product, kind, split, stream index) for every image, in manifest order. Defect kinds cycle per
    product, so with at least len(EVAL_KINDS) defects each product shows every kind."""
    counts = {("train", "good"): n_good_train, ("val", "good"): n_good_val, ("test", "good"): n_good_test,
              ("test", "defect"): n_defect_test}
    jobs = []
    for (split, label), n in counts.items():
        for product in EVAL_PRODUCTS:
            kinds = [label if label == "good" else EVAL_KINDS[i % len(EVAL_KINDS)] for i in range(n)]
            jobs += [(product, kind, split, i) for i, kind in enumerate(kinds)]
    return jobs


def build_evalset(out: str | Path, size: int = DEFAULT_SIZE, n_good_train: int = DEFAULT_N_GOOD_TRAIN,
                  n_good_val: int = DEFAULT_N_GOOD_VAL, n_good_test: int = DEFAULT_N_GOOD_TEST,
                  n_defect_test: int = DEFAULT_N_DEFECT_TEST, seed: int = 0, progress: bool = False) -> dict:
    """Write the evaluation set under ``out`` (images/, masks/, manifest.jsonl) and return a summary dict."""
    for name, n in (("n_good_train", n_good_train), ("n_good_val", n_good_val), ("n_good_test", n_good_test),
                    ("n_defect_test", n_defect_test)):
        if n < 0:
            raise ValueError(f"{name} must be >= 0, got {n}")
    if n_good_train == 0 or n_good_test == 0 or n_defect_test == 0:
        raise ValueError("need train goods, test goods and test defects (n_good_train, n_good_test, "
                         "n_defect_test > 0)")
    if size < MIN_SIZE:
        raise ValueError(f"size must be at least {MIN_SIZE} px, got {size}")
    out = Path(out)
    manifest = out / "manifest.jsonl"
    if manifest.exists():
        manifest.unlink()  # a half-written old set must not survive a failed run
    jobs = plan(n_good_train, n_good_val, n_good_test, n_defect_test)
    records: list[Record] = []
    for index, (product, kind, split, i) in enumerate(jobs):
        label = "good" if kind == "good" else "defect"
        s = make_sample(product, kind, size, seed, STREAMS[(split, label)], i)
        image_rel, mask_rel = write_sample(out, f"{index:06d}_{product}_{split}_{kind}", s.image, s.mask)
        records.append(Record(image=image_rel, mask=mask_rel, caption=s.caption, label=label,
                              defect_type=s.defect_type, product=product, split=split, severity=s.severity,
                              meta=s.meta))
        if progress and (index + 1) % 100 == 0:
            print(f"evalset: {index + 1}/{len(jobs)} images", file=sys.stderr)
    write_manifest(manifest, records)
    load_dataset(manifest, check_files=False)  # the writer must produce what the reader accepts
    return summarize(out, manifest, records)


def summarize(out: Path, manifest: Path, records: list[Record]) -> dict:
    products: dict[str, dict[str, dict[str, int]]] = {}
    for r in records:
        products.setdefault(r.product, {}).setdefault(r.split, {"good": 0, "defect": 0})[r.label] += 1
    return summary.summarize(manifest, records, out=str(out), products=products,
                             sources={p: f"skimage.data.{s.source}" for p, s in EVAL_PRODUCTS.items()})
