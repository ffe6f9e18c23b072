"""Ground truth for the head: regions = connected components of a record's mask, each labelled by
the record's defect_type; caption-only records give nouns as pseudo-labels (§4.6)."""
from __future__ import annotations

import re

import numpy as np

MIN_REGION_PX = 4  # components smaller than this (in image pixels) are annotation specks, not regions

_STOP = set("""a an the this that these those of on in at to from with without by for and or but is are was were be
been being has have had it its there here image photo picture shows showing shown visible seen some any
several many few small large big tiny long short thin thick left right top bottom upper lower middle center
centre near across along over under surface part product area region piece which who what where when how
very slightly clearly also into onto within like as one two three four five light dark""".split())


def regions_from_mask(mask: np.ndarray, min_area_px: int = MIN_REGION_PX) -> list[np.ndarray]:
    """bool (H, W) -> list of bool (H, W), one per 8-connected component of at least min_area_px."""
    import cv2

    n, lab = cv2.connectedComponents(mask.astype(np.uint8), connectivity=8)
    out = []
    for i in range(1, n):
        comp = lab == i
        if comp.sum() >= min_area_px:
            out.append(comp)
    return out


def downsample_masks(masks: list[np.ndarray], size: int) -> np.ndarray:
    """(M of (H, W) bool) -> (M, size, size) float32 area fractions (soft targets keep small defects)."""
    import cv2

    if not masks:
        return np.zeros((0, size, size), np.float32)
    return np.stack([cv2.resize(m.astype(np.float32), (size, size), interpolation=cv2.INTER_AREA) for m in masks])


def caption_nouns(caption: str, vocabulary: list[str] | None = None, max_words: int = 8) -> list[str]:
    """Pseudo-labels from a caption. Vocabulary terms found in the caption come first (multi-word
    names matched as phrases, e.g. "pin hole"); then content words: lower-case alphabetic tokens of 3+
    letters that are not stop words. A heuristic noun filter (no POS tagger is installed)."""
    text = caption.lower()
    words: list[str] = []
    for v in vocabulary or []:
        if re.search(r"\b" + re.escape(v.lower().replace("_", " ")) + r"\b", text.replace("_", " ")):
            words.append(v)
    for tok in re.findall(r"[a-z]+", text):
        if len(tok) >= 3 and tok not in _STOP and tok not in words:
            words.append(tok)
    return words[:max_words]
