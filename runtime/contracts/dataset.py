"""The line dataset format every stage reads: a directory with ``manifest.jsonl``.

One JSON object per line::

    {"image": "images/000001.png", "mask": "masks/000001.png" | null, "caption": "..." | null,
     "label": "good" | "defect", "defect_type": "scratch" | "good", "product": "brick",
     "split": "train" | "val" | "test", "severity": 0.4 (optional), "meta": {...} (optional)}

Paths are relative to the manifest's directory. Masks are binary PNGs (0 / 255) the size of the image.
Validation names the line and field of anything wrong, so a bad dataset fails here and not deep inside
training. numpy + OpenCV only: the edge can replay a dataset too.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Iterable, Literal, Optional

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError

MANIFEST_NAME = "manifest.jsonl"
SPLITS = ("train", "val", "test")
LABELS = ("good", "defect")


class DatasetError(ValueError):
    """A dataset that cannot be used; the message names file, line and field."""


class Record(BaseModel):
    model_config = ConfigDict(extra="forbid")

    image: str
    mask: Optional[str] = None
    caption: Optional[str] = None
    label: Literal["good", "defect"]
    defect_type: str = "good"
    product: str
    split: Literal["train", "val", "test"]
    severity: Optional[float] = Field(default=None, ge=0.0, le=1.0)
    meta: dict = Field(default_factory=dict)

    @property
    def is_defect(self) -> bool:
        return self.label == "defect"


class Dataset:
    """Records of one manifest, with helpers to read images and masks (RGB uint8, mask bool)."""

    def __init__(self, manifest: str | Path, records: list[Record]):
        self.manifest = Path(manifest)
        self.root = self.manifest.parent
        self.records = records

    def __len__(self) -> int:
        return len(self.records)

    def __iter__(self):
        return iter(self.records)

    def split(self, *names: str) -> list[Record]:
        for n in names:
            if n not in SPLITS:
                raise DatasetError(f"unknown split {n!r}; splits are {SPLITS}")
        return [r for r in self.records if r.split in names]

    def path(self, rel: str) -> Path:
        return self.root / rel

    def read_image(self, rec: Record) -> np.ndarray:
        return read_rgb(self.path(rec.image))

    def read_mask(self, rec: Record, shape: tuple[int, int] | None = None) -> np.ndarray:
        """bool (H, W); all False for a record without a mask (good images)."""
        if rec.mask is None:
            if shape is None:
                shape = self.read_image(rec).shape[:2]
            return np.zeros(shape, dtype=bool)
        return read_mask(self.path(rec.mask))

    def labels(self) -> list[str]:
        """Defect-type vocabulary, sorted, 'good' excluded."""
        return sorted({r.defect_type for r in self.records if r.is_defect})

    def content_hash(self) -> str:
        """sha256 of the manifest text: recorded in checkpoints so a resume can refuse another dataset."""
        return hashlib.sha256(self.manifest.read_bytes()).hexdigest()


IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")  # what a folder of frames may hold


def _imread(path: str | Path, what: str, colour: bool) -> np.ndarray:
    """The decoded file (BGR or grey), or a DatasetError naming it and ``what`` it is."""
    import cv2

    p = Path(path)
    if not p.is_file():
        raise DatasetError(f"{p}: {what} file is missing")
    img = cv2.imread(str(p), cv2.IMREAD_COLOR if colour else cv2.IMREAD_GRAYSCALE)
    if img is None:
        raise DatasetError(f"{p}: {what} cannot be decoded (corrupt or not an image)")
    return img


def read_rgb(path: str | Path) -> np.ndarray:
    import cv2

    return cv2.cvtColor(_imread(path, "image", colour=True), cv2.COLOR_BGR2RGB)


def read_mask(path: str | Path) -> np.ndarray:
    return _imread(path, "mask", colour=False) > 127


def write_manifest(path: str | Path, records: Iterable[Record]) -> Path:
    p = Path(path)
    if p.is_dir():
        p = p / MANIFEST_NAME
    p.parent.mkdir(parents=True, exist_ok=True)
    with open(p, "w") as f:
        for r in records:
            f.write(json.dumps(r.model_dump(exclude_none=False), sort_keys=True) + "\n")
    return p


def load_dataset(manifest: str | Path, check_files: bool = True) -> Dataset:
    """Parse and validate a manifest. ``check_files`` also opens every image and mask (header only
    is not enough to catch truncated files, so they are decoded) and checks mask sizes."""
    p = Path(manifest)
    if p.is_dir():
        p = p / MANIFEST_NAME
    if not p.is_file():
        raise DatasetError(f"{p}: manifest not found")
    records: list[Record] = []
    seen: dict[str, int] = {}
    for lineno, line in enumerate(p.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{p}:{lineno}"
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise DatasetError(f"{where}: not valid JSON ({e.msg} at column {e.colno})") from None
        if not isinstance(obj, dict):
            raise DatasetError(f"{where}: a record must be a JSON object, got {type(obj).__name__}")
        try:
            rec = Record(**obj)
        except ValidationError as e:
            err = e.errors()[0]
            field = ".".join(str(x) for x in err["loc"]) or "record"
            raise DatasetError(f"{where}: field {field!r}: {err['msg']} (got {err.get('input')!r})") from None
        if rec.image in seen:
            raise DatasetError(f"{where}: field 'image': {rec.image} already listed on line {seen[rec.image]}")
        seen[rec.image] = lineno
        if rec.label == "good" and rec.mask is not None:
            raise DatasetError(f"{where}: field 'mask': a good image must not have a mask")
        if check_files:
            _check_files(p.parent, rec, where)
        records.append(rec)
    if not records:
        raise DatasetError(f"{p}: manifest has no records")
    return Dataset(p, records)


def _check_files(root: Path, rec: Record, where: str) -> None:
    try:
        img = read_rgb(root / rec.image)
    except DatasetError as e:
        raise DatasetError(f"{where}: field 'image': {e}") from None
    if rec.mask is not None:
        try:
            m = read_mask(root / rec.mask)
        except DatasetError as e:
            raise DatasetError(f"{where}: field 'mask': {e}") from None
        if m.shape != img.shape[:2]:
            raise DatasetError(
                f"{where}: field 'mask': size {m.shape[1]}x{m.shape[0]} does not match image {img.shape[1]}x{img.shape[0]}")
