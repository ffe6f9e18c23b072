"""Captions in the IMDD-1M annotation template, with location and morphology read off the mask.

Template (IMDD-1M, the teacher paper's dataset)::

    "[Product] [Material] with [Defect Type] located at [Spatial Location],
     characterized by [Morphological Descriptors], potentially caused by [Root Cause]"

The location is the 3x3 cell of the image holding the mask's centroid ("upper-left" ... "center" ...
"lower-right"); morphology comes from the mask's moments and contours (size, elongation, orientation,
solidity, circularity, number of parts). So a caption says what the mask shows, never random words.
numpy + OpenCV only.
"""
from __future__ import annotations

import math
import re

import numpy as np

TEMPLATE = ("{product} {material} with {defect} located at {location}, characterized by {morphology}, "
            "potentially caused by {cause}")
CAPTION_RE = re.compile(r"^(?P<head>.+) with (?P<defect>.+?) located at (?P<location>.+?), characterized by "
                        r"(?P<morphology>.+?), potentially caused by (?P<cause>.+)$")

ROWS = ("upper", "middle", "lower")
COLS = ("left", "center", "right")

# Area as a fraction of the image: upper bounds of each size word.
SIZE_WORDS = ((0.002, "tiny"), (0.01, "small"), (0.04, "medium"), (math.inf, "large"))
THIN_ELONGATION = 4.0  # major/minor axis ratio from which a region reads as a line
ELONGATED = 2.0
BRANCHING_SOLIDITY = 0.4  # area / convex-hull area below which a compact region is star-like
ROUND_CIRCULARITY = 0.7  # 4*pi*A / P^2

ROOT_CAUSES = {
    "scratch": ("abrasive contact during handling", "a burr on a conveyor guide"),
    "crack": ("thermal stress during curing", "mechanical overload at a clamping point"),
    "hole": ("a gas inclusion that burst", "a puncture by a sharp tool"),
    "stain": ("a lubricant or coolant spill", "moisture ingress and drying residue"),
    "contamination": ("foreign particles from the process environment", "debris shed by worn equipment"),
    "dent": ("an impact during transport", "excessive clamping pressure"),
    "missing_chunk": ("a chipped edge from a drop", "spalling of a weak inclusion"),
}
GENERIC_CAUSES = ("a process deviation", "handling damage")
# Keywords in public dataset defect names (MVTec AD, VisA) -> a plausible cause; first match wins.
KEYWORD_CAUSES = (
    ("scratch", "abrasive contact during handling"), ("crack", "mechanical or thermal stress"),
    ("broken", "a mechanical impact"), ("chip", "a mechanical impact"), ("missing", "an assembly omission"),
    ("hole", "a puncture or gas inclusion"), ("poke", "a puncture by a sharp object"),
    ("cut", "contact with a sharp edge"), ("contamination", "foreign material in the process"),
    ("stain", "a liquid spill or residue"), ("oil", "a lubricant leak"), ("color", "pigment or process variation"),
    ("glue", "excess adhesive"), ("fold", "improper material handling"), ("thread", "loose fibres"),
    ("bent", "mechanical deformation"), ("misplaced", "an assembly error"), ("flip", "an assembly error"),
    ("imprint", "printing misregistration"), ("print", "printing misregistration"), ("squeeze", "excess pressure"),
    ("rough", "tool wear"), ("melt", "excess heat"), ("burnt", "excess heat"), ("dent", "an impact"),
    ("bubble", "trapped air"), ("spot", "foreign particles"), ("swap", "an assembly error"),
    ("damage", "handling damage"), ("insulation", "a damaged insulation layer"), ("hair", "foreign fibres"),
)


def root_cause_for(defect_type: str) -> str:
    """A cause phrase for a defect-type name: the synthetic kinds' own, else by keyword, else generic."""
    if defect_type in ROOT_CAUSES:
        return ROOT_CAUSES[defect_type][0]
    name = defect_type.lower()
    for key, cause in KEYWORD_CAUSES:
        if key in name:
            return cause
    return GENERIC_CAUSES[0]


def location_from_mask(mask: np.ndarray) -> str:
    """3x3 cell of the mask centroid, e.g. "upper-left", "center", "lower-center"."""
    ys, xs = np.nonzero(mask)
    if ys.size == 0:
        return "the entire surface"
    h, w = mask.shape
    return location_from_point(float(xs.mean()) / w, float(ys.mean()) / h)


def location_from_point(x: float, y: float) -> str:
    """Relative (x, y) in [0, 1] -> cell name."""
    r = ROWS[min(int(y * 3), 2)]
    c = COLS[min(int(x * 3), 2)]
    if r == "middle" and c == "center":
        return "center"
    if r == "middle":
        return f"middle-{c}"
    return f"{r}-{c}"


def _orientation(theta: float) -> str:
    """Major-axis angle in image coordinates (radians, y down) -> word."""
    deg = abs(math.degrees(theta)) % 180
    deg = min(deg, 180 - deg)  # 0 = horizontal, 90 = vertical
    if deg < 22.5:
        return "horizontal"
    if deg > 67.5:
        return "vertical"
    return "diagonal"


def shape_stats(mask: np.ndarray) -> dict:
    """Numbers the descriptors are built from (also stored in record meta for inspection)."""
    import cv2

    m = mask.astype(np.uint8)
    ys, xs = np.nonzero(m)
    area = int(ys.size)
    if area == 0:
        return {"area": 0}
    n, _, stats, _ = cv2.connectedComponentsWithStats(m, connectivity=8)
    parts = int(n - 1)
    cov = np.cov(np.stack([xs, ys]).astype(np.float64)) if area > 1 else np.zeros((2, 2))
    evals, evecs = np.linalg.eigh(cov + 1e-9 * np.eye(2))
    major, minor = float(max(evals[1], 1e-9)), float(max(evals[0], 1e-9))
    # A 1-px line has variance 1/12 across it; floor the minor axis there so lines are not "infinitely" thin.
    elongation = math.sqrt(major / max(minor, 1.0 / 12))
    vx, vy = evecs[:, 1]
    theta = math.atan2(vy, vx)
    contours, _ = cv2.findContours(m, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    pts = np.concatenate(contours, axis=0)
    hull_area = float(cv2.contourArea(cv2.convexHull(pts))) + 1e-9
    biggest = max(contours, key=cv2.contourArea)
    perimeter = float(cv2.arcLength(biggest, True)) + 1e-9
    big_area = float(stats[1:, cv2.CC_STAT_AREA].max())
    return {
        "area": area,
        "area_frac": area / m.size,
        "parts": parts,
        "elongation": elongation,
        "theta_deg": math.degrees(theta),
        "solidity": min(area / hull_area, 1.0) if parts == 1 else min(big_area / hull_area, 1.0),
        "circularity": min(4 * math.pi * big_area / perimeter ** 2, 1.0),
        "centroid": (float(xs.mean()) / m.shape[1], float(ys.mean()) / m.shape[0]),
    }


def morphology_from_mask(mask: np.ndarray, severity: float | None = None) -> str:
    """Comma-separated descriptors: size, shape (and orientation), and contrast when severity is known."""
    st = shape_stats(mask)
    if st["area"] == 0:
        return "no visible irregularity"
    size = next(word for bound, word in SIZE_WORDS if st["area_frac"] < bound)
    orient = _orientation(math.radians(st["theta_deg"]))
    if st["parts"] >= 3:
        shape = f"{st['parts']} scattered spots"
    elif st["elongation"] >= THIN_ELONGATION:
        shape = f"thin {orient}"
    elif st["elongation"] >= ELONGATED:
        shape = f"elongated {orient}"
    elif st["solidity"] < BRANCHING_SOLIDITY:
        shape = "radial branching"
    elif st["circularity"] >= ROUND_CIRCULARITY:
        shape = "round compact"
    else:
        shape = "irregular"
    words = [size, shape]
    if st["parts"] == 2:
        words.append("two separate parts")
    if severity is not None:
        words.append("faint contrast" if severity < 0.4 else "distinct contrast" if severity < 0.75
                     else "pronounced contrast")
    return ", ".join(words)


def defect_caption(product: str, material: str, defect_type: str, mask: np.ndarray | None,
                   severity: float | None = None, cause: str | None = None) -> str:
    """Caption of a defective image. Without a mask the location is "an unspecified location"."""
    name = defect_type.replace("_", " ")
    if mask is not None and mask.any():
        location, morphology = location_from_mask(mask), morphology_from_mask(mask, severity)
    else:
        location, morphology = "an unspecified location", "an appearance not localised by a mask"
    if cause is None:
        cause = root_cause_for(defect_type)
    return TEMPLATE.format(product=product.capitalize(), material=material, defect=name, location=location,
                           morphology=morphology, cause=cause)


def good_caption(product: str, material: str, texture: str = "a uniform appearance") -> str:
    """Caption of a good image, in the same template so one text encoder sees one sentence shape."""
    return TEMPLATE.format(product=product.capitalize(), material=material, defect="no defect",
                           location="the entire surface", morphology=texture, cause="normal production")


def parse_caption(caption: str) -> dict[str, str] | None:
    """Fields of a template caption, or None when it does not follow the template."""
    m = CAPTION_RE.match(caption)
    return m.groupdict() if m else None
