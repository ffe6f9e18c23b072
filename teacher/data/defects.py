"""Planted surface defects: each kind changes a clean float image and returns the pixel mask of the change.

Every planter has the signature ``plant_<kind>(img, rng, severity) -> (out, mask, params)`` with ``img``
float32 (H, W, 3) RGB in [0, 1] (left untouched), ``severity`` in [0, 1] scaling contrast (and size
where it makes sense), ``mask`` bool (H, W). The defect is blended with the texture (multiplicative
darkening, tinting, shading of the texture itself) rather than pasted as flat paint, so it is
visible but not a saturated blob. The mask is where the blend weight is at least ``MASK_ALPHA`` of
its peak: what an annotator would outline. Lengths scale with the image size (reference 256 px).
numpy + OpenCV only.
"""
from __future__ import annotations

import math
from typing import Callable

import numpy as np

MASK_ALPHA = 0.2  # fraction of a planter's peak blend weight from which a pixel belongs to the mask
LINE_MASK_ALPHA = 0.15  # lines and small pits are a few px across: their soft flanks belong to them
REFERENCE_SIZE_PX = 256


def _cv2():
    import cv2

    return cv2


def _scale(img: np.ndarray) -> float:
    """Length scale of a planted defect relative to the 256 px reference. Linear at and above 256 px, but
    only sqrt below it: a linear size/256 halved every length at 128 px, so contamination specks and holes
    became smaller than one 8x8 latent cell and scratches 1-2 px wide -- invisible to a x8 teacher, which
    then scored near chance (`lineside demo` quality investigation). sqrt keeps them ~0.71x at 128 px
    (0.5x at 64 px), still small relative to the image, and leaves 256 px data unchanged."""
    r = min(img.shape[:2]) / REFERENCE_SIZE_PX
    return r if r >= 1.0 else math.sqrt(r)


def _blend(img: np.ndarray, alpha: np.ndarray, target: np.ndarray) -> np.ndarray:
    a = alpha[..., None].astype(np.float32)
    return np.clip(img * (1 - a) + target * a, 0.0, 1.0).astype(np.float32)


def _mask(weight: np.ndarray, frac: float = MASK_ALPHA) -> np.ndarray:
    peak = float(weight.max())
    return weight >= frac * peak if peak > 0 else np.zeros(weight.shape, bool)


def _draw_polyline(shape: tuple[int, int], pts: np.ndarray, thickness: int) -> np.ndarray:
    """Anti-aliased polyline on a float canvas in [0, 1], drawn at 4x sub-pixel precision."""
    cv2 = _cv2()
    canvas = np.zeros(shape, np.uint8)
    shift = 2
    p = np.round(pts * (1 << shift)).astype(np.int32).reshape(-1, 1, 2)
    cv2.polylines(canvas, [p], False, 255, thickness=max(int(thickness), 1), lineType=cv2.LINE_AA, shift=shift)
    return canvas.astype(np.float32) / 255.0


def _random_point(rng: np.random.Generator, h: int, w: int, margin: float = 0.12) -> np.ndarray:
    return np.array([rng.uniform(margin, 1 - margin) * w, rng.uniform(margin, 1 - margin) * h])


def plant_scratch(img, rng, severity):
    """A thin, slightly curved streak, lighter (abraded) or darker (groove) than the surface."""
    cv2 = _cv2()
    h, w = img.shape[:2]
    s = _scale(img)
    p0 = _random_point(rng, h, w)
    length = rng.uniform(0.25, 0.55) * min(h, w)
    ang = rng.uniform(0, math.pi)
    d = np.array([math.cos(ang), math.sin(ang)])
    p2 = np.clip(p0 + d * length, 2, [w - 3, h - 3])
    bend = rng.uniform(-0.15, 0.15) * length * np.array([-d[1], d[0]])
    p1 = (p0 + p2) / 2 + bend
    t = np.linspace(0, 1, 64)[:, None]
    pts = (1 - t) ** 2 * p0 + 2 * (1 - t) * t * p1 + t ** 2 * p2  # quadratic Bezier
    width = max(1, int(round((1 + 1.5 * rng.random()) * s)))
    line = cv2.GaussianBlur(_draw_polyline((h, w), pts, width), (0, 0), max(0.5, 0.6 * s))
    weight = line / max(float(line.max()), 1e-6) * (0.35 + 0.5 * severity)
    light = rng.random() < 0.6
    target = np.clip(img * 0.5 + 0.5, 0, 1) if light else img * 0.3
    return _blend(img, weight, target), _mask(weight, LINE_MASK_ALPHA), {"width_px": width, "light": bool(light),
                                                         "length_px": round(float(length), 1)}


def plant_crack(img, rng, severity):
    """A dark jagged fissure: a random walk, or several arms radiating from one point."""
    h, w = img.shape[:2]
    s = _scale(img)
    centre = _random_point(rng, h, w, margin=0.2)
    radial = rng.random() < 0.4
    arms = int(rng.integers(3, 6)) if radial else 2
    base = rng.uniform(0, 2 * math.pi)
    canvas = np.zeros((h, w), np.float32)
    step = 4.0 * s
    n_steps = int(rng.integers(10, 22) * (0.7 + 0.5 * severity))
    thickness = max(1, int(round((1 + severity) * s)))
    for a in range(arms):
        ang = base + (2 * math.pi * a / arms if radial else math.pi * a) + rng.uniform(-0.3, 0.3)
        p = centre.copy()
        pts = [p.copy()]
        for _ in range(n_steps):
            ang += rng.normal(0, 0.35)
            p = p + step * np.array([math.cos(ang), math.sin(ang)])
            p = np.clip(p, 1, [w - 2, h - 2])
            pts.append(p.copy())
        canvas = np.maximum(canvas, _draw_polyline((h, w), np.array(pts), thickness))
    weight = canvas * (0.5 + 0.4 * severity)
    return _blend(img, weight, img * 0.2), _mask(weight, LINE_MASK_ALPHA), {"arms": arms, "radial": bool(radial)}


def plant_hole(img, rng, severity):
    """A dark round pit with a shadowed wall: texture darkened strongly, a gradient across the opening."""
    cv2 = _cv2()
    h, w = img.shape[:2]
    s = _scale(img)
    c = _random_point(rng, h, w)
    r = max(3.0, rng.uniform(4, 9) * s * (0.8 + 0.5 * severity))
    axes = (r, r * rng.uniform(0.75, 1.0))
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    ang = rng.uniform(0, math.pi)
    dx, dy = xx - c[0], yy - c[1]
    u = (dx * math.cos(ang) + dy * math.sin(ang)) / axes[0]
    v = (-dx * math.sin(ang) + dy * math.cos(ang)) / axes[1]
    inside = (u ** 2 + v ** 2 <= 1).astype(np.float32)
    weight = cv2.GaussianBlur(inside, (0, 0), max(0.5, 0.7 * s)) * (0.6 + 0.35 * severity)
    shade = np.clip(0.5 + 0.5 * (dy / max(r, 1)), 0, 1)[..., None]  # wall lit from below, dark at top
    target = img * (0.1 + 0.25 * shade)
    return _blend(img, weight, target), _mask(weight, LINE_MASK_ALPHA), {"radius_px": round(float(r), 1)}


def _blob(rng, h, w, centre, radius) -> np.ndarray:
    """Irregular filled region: an ellipse whose boundary is warped by smooth noise. float {0, 1}."""
    cv2 = _cv2()
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    noise = cv2.resize(rng.normal(0, 1, (6, 6)).astype(np.float32), (w, h), interpolation=cv2.INTER_CUBIC)
    ax = radius * rng.uniform(0.6, 1.0)
    ang = rng.uniform(0, math.pi)
    dx, dy = xx - centre[0], yy - centre[1]
    u = (dx * math.cos(ang) + dy * math.sin(ang)) / radius
    v = (-dx * math.sin(ang) + dy * math.cos(ang)) / ax
    r2 = u ** 2 + v ** 2
    # The core (half the radius) always belongs, so strong negative noise cannot erase the blob.
    return ((r2 < 1 + 0.35 * noise) | (r2 < 0.25)).astype(np.float32)


def plant_stain(img, rng, severity):
    """A tinted irregular patch with soft edges (oil, rust, water): multiplies the texture, keeps it."""
    cv2 = _cv2()
    h, w = img.shape[:2]
    s = _scale(img)
    c = _random_point(rng, h, w)
    region = _blob(rng, h, w, c, rng.uniform(14, 30) * s)
    soft = cv2.GaussianBlur(region, (0, 0), max(0.6, 2.5 * s))
    tints = {"rust": (0.85, 0.55, 0.3), "oil": (0.45, 0.45, 0.4), "water": (0.7, 0.75, 0.8)}
    name = list(tints)[int(rng.integers(len(tints)))]
    weight = soft * (0.35 + 0.45 * severity)
    target = img * np.array(tints[name], np.float32)
    return _blend(img, weight, target), _mask(weight), {"tint": name}


def plant_contamination(img, rng, severity):
    """A cluster of small foreign particles in a colour the surface does not have."""
    cv2 = _cv2()
    h, w = img.shape[:2]
    s = _scale(img)
    c = _random_point(rng, h, w)
    colours = {"blue": (0.15, 0.3, 0.85), "black": (0.05, 0.05, 0.05), "white": (0.95, 0.95, 0.92),
               "green": (0.2, 0.7, 0.25)}
    name = list(colours)[int(rng.integers(len(colours)))]
    n = int(rng.integers(3, 7))
    region = np.zeros((h, w), np.float32)
    for _ in range(n):
        p = c + rng.normal(0, 12 * s, 2)
        p = np.clip(p, 4, [w - 5, h - 5])
        rad = rng.uniform(1.5, 3.5) * s * (0.8 + 0.5 * severity)
        axes = (max(1, int(round(rad))), max(1, int(round(rad * rng.uniform(0.5, 1.0)))))
        cv2.ellipse(region, (int(p[0]), int(p[1])), axes, float(rng.uniform(0, 180)), 0, 360, 1.0, -1,
                    cv2.LINE_AA)
    weight = np.clip(region, 0, 1) * (0.5 + 0.35 * severity)
    gray = img.mean(axis=2, keepdims=True)
    target = np.array(colours[name], np.float32) * (0.5 + 1.0 * gray)  # keeps a trace of the texture
    return _blend(img, weight, target), _mask(weight), {"colour": name, "particles": n}


def plant_dent(img, rng, severity):
    """A shallow depression: a compact bump height field lit from one side, so one flank brightens and
    the other darkens (shading only, the texture stays)."""
    h, w = img.shape[:2]
    s = _scale(img)
    c = _random_point(rng, h, w)
    r = rng.uniform(10, 22) * s
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    d2 = ((xx - c[0]) ** 2 + (yy - c[1]) ** 2) / r ** 2
    inside = d2 < 1
    # Height (1 - d^2)^2: smooth, zero slope at the rim, no support outside it.
    gx = np.where(inside, -4 * (1 - d2) * (xx - c[0]) / r ** 2, 0) * r
    gy = np.where(inside, -4 * (1 - d2) * (yy - c[1]) / r ** 2, 0) * r
    light = rng.uniform(0, 2 * math.pi)
    shading = (gx * math.cos(light) + gy * math.sin(light)) / 1.54  # max |grad| of the profile is ~1.54/r
    k = 0.25 + 0.4 * severity
    out = np.clip(img * (1 + k * shading[..., None]) * (1 - 0.1 * k * inside[..., None]), 0, 1)
    return out.astype(np.float32), inside, {"radius_px": round(float(r), 1)}


def plant_missing_chunk(img, rng, severity):
    """A piece broken off at an edge: the dark conveyor shows through, with a lighter fracture rim."""
    cv2 = _cv2()
    h, w = img.shape[:2]
    s = _scale(img)
    side = int(rng.integers(4))
    along = rng.uniform(0.2, 0.8)
    c = [(along * w, 0.0), (along * w, h - 1.0), (0.0, along * h), (w - 1.0, along * h)][side]
    region = _blob(rng, h, w, np.array(c), rng.uniform(16, 30) * s * (0.8 + 0.4 * severity))
    weight = cv2.GaussianBlur(region, (0, 0), max(0.5, 0.8 * s)) * (0.75 + 0.2 * severity)
    gray = img.mean(axis=2, keepdims=True)
    background = 0.06 + 0.12 * gray  # conveyor in shadow, a little of the texture's light spill
    rim = cv2.dilate(region, np.ones((3, 3), np.uint8)) - cv2.erode(region, np.ones((5, 5), np.uint8))
    target = np.clip(background + 0.35 * rim[..., None] * (0.4 + gray), 0, 1)
    return _blend(img, weight, target), _mask(weight), {"edge": ("top", "bottom", "left", "right")[side]}


PLANTERS: dict[str, Callable] = {
    "scratch": plant_scratch,
    "crack": plant_crack,
    "hole": plant_hole,
    "stain": plant_stain,
    "contamination": plant_contamination,
    "dent": plant_dent,
    "missing_chunk": plant_missing_chunk,
}
DEFECT_KINDS = tuple(PLANTERS)


def plant(kind: str, img: np.ndarray, rng: np.random.Generator, severity: float):
    """Plant one defect of ``kind``; raises KeyError naming the known kinds."""
    if kind not in PLANTERS:
        raise KeyError(f"unknown defect kind {kind!r}; known: {', '.join(DEFECT_KINDS)}")
    out, mask, params = PLANTERS[kind](img, rng, float(severity))
    mask = mask.astype(bool)
    if not mask.any():
        raise RuntimeError(f"{kind}: planted an empty mask on a {img.shape[1]}x{img.shape[0]} image (a bug)")
    return out, mask, params
