"""Importers: MVTec AD, VisA and a plain folder layout -> a self-contained line dataset.

Output: ``OUT/manifest.jsonl`` with each image at ``OUT/images/<its path relative to ROOT>`` (hard-linked
when source and output share a file system, else copied; the original encoding is kept) and its mask
re-encoded at ``OUT/masks/<same relative path>.png`` as a binary 0/255 PNG. Every image is decoded
once (a truncated file is caught here, not in training) and every mask checked against its image's
size. Items that cannot be used are skipped and reported with the reason; nothing is "fixed" by
guessing (a mask of the wrong size is skipped, not resized). Splits are assigned after this check, so
skipped items do not unbalance them.

Mask binarisation: a mask whose maximum is 1 is read as 0/1 (VisA ships some that way), otherwise a
pixel is defective when its grey value is >= 128 (0/255 masks, and anti-aliased ones).

Layouts
-------
MVTec AD  ``ROOT/<category>/train/good/*``, ``test/<defect>/*`` (``test/good`` included),
          ``ground_truth/<defect>/<stem>_mask.png``. ROOT may also be one category directory.
          MVTec has no validation split. ``val_from="train"`` (default) moves ``round(val_frac * n)``
          (at least one when n >= 2, never all) evenly spaced train good images of each category,
          sorted by name, to val, so the official test set stays intact and results compare with the
          papers; val then has no defects.
          ``val_from="test"`` instead sends every second test image of each defect type (and of good),
          sorted by name, to val: calibration sees defects, at the cost of a halved test set.
VisA      ``ROOT/split_csv/1cls.csv`` with columns object,split,label,image,mask (paths relative to ROOT,
          label normal|anomaly, split train|test). The defect type comes from
          ``ROOT/<object>/image_anno.csv`` (columns image,label,...) when present, else "anomaly".
          Validation is carved as for MVTec.
folder    ``ROOT/good/*`` and ``ROOT/defect/*`` (or ``ROOT/defect/<type>/*``, the sub-folder naming the
          defect type), optional ``ROOT/masks/<stem>.png`` (any image extension) for defects. Splits as
          ``teacher data synth`` makes them (goods 50/25/25, 10% of defects to train); a defect
          without a mask is kept (mask null) and counted.
"""
from __future__ import annotations

import csv
import os
import shutil
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from runtime.contracts.dataset import MANIFEST_NAME, Record, load_dataset, write_manifest
from teacher.data import captions
from teacher.data.synth import (DEFAULT_TEST_FRAC, DEFAULT_TRAIN_DEFECT_FRAC, DEFAULT_VAL_FRAC, spread_indices,
                                assign_splits)

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
DEFAULT_MVTEC_VAL_FRAC = 0.2

# Materials of the public benchmarks' categories, for captions; unknown categories say "surface".
MATERIALS = {
    # MVTec AD
    "bottle": "glass", "cable": "copper and polymer insulation", "capsule": "gelatin", "carpet": "textile",
    "grid": "metal mesh", "hazelnut": "nut shell", "leather": "leather", "metal_nut": "metal", "pill": "pressed powder",
    "screw": "steel", "tile": "ceramic", "toothbrush": "plastic", "transistor": "electronic component",
    "wood": "wood", "zipper": "metal and fabric",
    # VisA
    "candle": "wax", "capsules": "gelatin", "cashew": "nut", "chewinggum": "gum", "fryum": "fried snack",
    "macaroni1": "pasta", "macaroni2": "pasta", "pcb1": "printed circuit board", "pcb2": "printed circuit board",
    "pcb3": "printed circuit board", "pcb4": "printed circuit board", "pipe_fryum": "fried snack",
}


def material_for(category: str) -> str:
    return "of " + MATERIALS.get(category.lower(), "surface material")


@dataclass
class Item:
    """One source image before it is copied: where it is and what it is."""
    image: Path
    mask: Path | None
    label: str  # good | defect
    defect_type: str
    product: str
    split: str
    require_mask: bool = False


@dataclass
class ImportReport:
    records: list[Record] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (source path, reason)
    notes: list[str] = field(default_factory=list)

    def skip(self, path: Path | str, reason: str) -> None:
        self.skipped.append((str(path), reason))

    def summary(self, manifest: Path, layout: str) -> dict:
        splits: dict[str, dict[str, int]] = {}
        for r in self.records:
            d = splits.setdefault(r.split, {"good": 0, "defect": 0})
            d[r.label] += 1
        reasons = Counter(reason.split(":")[0] for _, reason in self.skipped)
        return {"manifest": str(manifest), "layout": layout, "n_images": len(self.records), "splits": splits,
                "products": sorted({r.product for r in self.records}),
                "defect_types": dict(sorted(Counter(r.defect_type for r in self.records if r.is_defect).items())),
                "n_skipped": len(self.skipped), "skipped_by_reason": dict(sorted(reasons.items())),
                "skipped": [{"path": p, "reason": r} for p, r in self.skipped], "notes": self.notes}


class DatasetImportError(ValueError):
    """A layout that cannot be imported at all (wrong root, missing index file); names the path."""


def _images_in(d: Path) -> list[Path]:
    if not d.is_dir():
        return []
    return sorted(p for p in d.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTS)


def _read_mask_binary(path: Path) -> np.ndarray | None:
    import cv2

    m = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    if m is None:
        return None
    return m > 0 if int(m.max()) <= 1 else m >= 128


def _place(src: Path, dst: Path) -> None:
    """Hard link when possible (same file system), else copy."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    if dst.exists() or dst.is_symlink():
        dst.unlink()
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)


def _validate(items: list[Item], report: ImportReport) -> list[tuple[Item, np.ndarray | None]]:
    """Decode every image and mask; skip (and report) what cannot be used. Returns (item, mask) pairs."""
    import cv2

    seen: set[Path] = set()
    valid = []
    for it in items:
        if it.image in seen:
            report.skip(it.image, "duplicate: listed more than once")
            continue
        seen.add(it.image)
        img = cv2.imread(str(it.image), cv2.IMREAD_COLOR)
        if img is None:
            report.skip(it.image, "unreadable image: cannot be decoded (corrupt or not an image)")
            continue
        mask = None
        if it.label == "defect":
            if it.mask is None or not it.mask.is_file():
                if it.require_mask:
                    where = f" (expected {it.mask})" if it.mask is not None else ""
                    report.skip(it.image, f"missing mask: defect image has no mask{where}")
                    continue
            else:
                mask = _read_mask_binary(it.mask)
                if mask is None:
                    report.skip(it.image, f"unreadable mask: {it.mask} cannot be decoded")
                    continue
                if mask.shape != img.shape[:2]:
                    report.skip(it.image, f"mask size mismatch: mask {mask.shape[1]}x{mask.shape[0]} vs image "
                                          f"{img.shape[1]}x{img.shape[0]} ({it.mask})")
                    continue
                if not mask.any():
                    report.notes.append(f"{it.mask}: mask is empty; kept as a defect without location")
        valid.append((it, mask))
    return valid


def _write(valid: list[tuple[Item, np.ndarray | None]], root: Path, out: Path, report: ImportReport) -> None:
    """Place images under OUT/images/<path relative to ROOT> (unique because source paths are), masks as
    0/255 PNG under OUT/masks/ with the same relative stem, and build the records."""
    import cv2

    for it, mask in valid:
        rel = it.image.relative_to(root)
        image_rel = (Path("images") / rel).as_posix()
        _place(it.image, out / image_rel)
        mask_rel = None
        if mask is not None:
            mask_rel = (Path("masks") / rel.with_suffix(".png")).as_posix()
            (out / mask_rel).parent.mkdir(parents=True, exist_ok=True)
            if not cv2.imwrite(str(out / mask_rel), mask.astype(np.uint8) * 255):
                raise OSError(f"{out / mask_rel}: could not write mask")
        material = material_for(it.product)
        words = it.product.replace("_", " ")
        if it.label == "good":
            caption = captions.good_caption(words, material)
        else:
            caption = captions.defect_caption(words, material, it.defect_type, mask)
        report.records.append(Record(image=image_rel, mask=mask_rel, caption=caption, label=it.label,
                                     defect_type=it.defect_type if it.label == "defect" else "good",
                                     product=it.product, split=it.split,
                                     meta={"source": str(it.image)}))


def _finish(root: Path, out: str | Path, valid: list, report: ImportReport, layout: str) -> dict:
    if not valid:
        raise DatasetImportError(f"{root}: nothing to import with the {layout} layout "
                                 f"({len(report.skipped)} item(s) skipped)")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    manifest = out / MANIFEST_NAME
    if manifest.exists():
        manifest.unlink()  # never leave an old manifest pointing at a half-updated tree
    _write(valid, root, out, report)
    write_manifest(manifest, report.records)
    load_dataset(manifest, check_files=False)  # the writer must produce what the reader accepts
    return report.summary(manifest, layout)


def _carve_val(items: list[Item], val_from: str, val_frac: float) -> None:
    """MVTec/VisA have no val split: carve it deterministically (see the module docstring)."""
    if val_from == "train":
        if val_frac <= 0:
            return
        per_product: dict[str, list[Item]] = {}
        for it in items:
            if it.split == "train" and it.label == "good":
                per_product.setdefault(it.product, []).append(it)
        for goods in per_product.values():
            goods.sort(key=lambda it: str(it.image))
            n_val = max(1 if len(goods) >= 2 else 0, int(round(len(goods) * val_frac)))
            for j in spread_indices(len(goods), min(n_val, len(goods) - 1)):
                goods[j].split = "val"
    elif val_from == "test":
        groups: dict[tuple[str, str], list[Item]] = {}
        for it in items:
            if it.split == "test":
                groups.setdefault((it.product, it.defect_type), []).append(it)
        for group in groups.values():
            for j, it in enumerate(sorted(group, key=lambda it: str(it.image))):
                if j % 2 == 1:
                    it.split = "val"
    else:
        raise ValueError(f"val_from must be 'train' or 'test', got {val_from!r}")


# ------------------------------------------------------------------------------------------- MVTec AD

def _mvtec_categories(root: Path) -> list[Path]:
    if (root / "train" / "good").is_dir():
        return [root]
    cats = sorted(p for p in root.iterdir() if p.is_dir() and (p / "train" / "good").is_dir()) if root.is_dir() else []
    if not cats:
        raise DatasetImportError(f"{root}: not an MVTec AD tree (no <category>/train/good/ and no train/good/)")
    return cats


def import_mvtec(root: str | Path, out: str | Path, val_from: str = "train",
                 val_frac: float = DEFAULT_MVTEC_VAL_FRAC) -> dict:
    root = Path(root)
    report = ImportReport()
    items: list[Item] = []
    for cat_dir in _mvtec_categories(root):
        cat = cat_dir.name
        for img in _images_in(cat_dir / "train" / "good"):
            items.append(Item(img, None, "good", "good", cat, "train"))
        test = cat_dir / "test"
        if not test.is_dir():
            report.notes.append(f"{test}: no test split")
            continue
        for d in sorted(p for p in test.iterdir() if p.is_dir()):
            for img in _images_in(d):
                if d.name == "good":
                    items.append(Item(img, None, "good", "good", cat, "test"))
                else:
                    mask = cat_dir / "ground_truth" / d.name / f"{img.stem}_mask.png"
                    items.append(Item(img, mask, "defect", d.name, cat, "test", require_mask=True))
    valid = _validate(items, report)
    _carve_val([it for it, _ in valid], val_from, val_frac)
    return _finish(root, out, valid, report, "mvtec")


# ----------------------------------------------------------------------------------------------- VisA

def _visa_defect_types(root: Path, objects: set[str]) -> dict[str, str]:
    types: dict[str, str] = {}
    for obj in sorted(objects):
        anno = root / obj / "image_anno.csv"
        if not anno.is_file():
            continue
        with open(anno, newline="") as f:
            for row in csv.DictReader(f):
                if row.get("image") and row.get("label"):
                    name = row["label"].strip().replace(" ", "_").replace(",", "+")
                    types[row["image"].strip()] = name
    return types


def import_visa(root: str | Path, out: str | Path, val_from: str = "train",
                val_frac: float = DEFAULT_MVTEC_VAL_FRAC) -> dict:
    root = Path(root)
    index = root / "split_csv" / "1cls.csv"
    if not index.is_file():
        raise DatasetImportError(f"{index}: VisA split file not found (expected ROOT/split_csv/1cls.csv)")
    report = ImportReport()
    with open(index, newline="") as f:
        reader = csv.DictReader(f)
        missing = {"object", "split", "label", "image", "mask"} - set(reader.fieldnames or [])
        if missing:
            raise DatasetImportError(f"{index}: missing column(s) {', '.join(sorted(missing))}")
        rows = list(enumerate(reader, start=2))
    types = _visa_defect_types(root, {r["object"].strip() for _, r in rows if r.get("object")})
    items: list[Item] = []
    for lineno, row in rows:
        where = f"{index}:{lineno}"
        obj, split = (row["object"] or "").strip(), (row["split"] or "").strip().lower()
        label, image = (row["label"] or "").strip().lower(), (row["image"] or "").strip()
        if not obj or not image:
            report.skip(where, "malformed row: empty object or image")
            continue
        if split not in ("train", "test", "val"):
            report.skip(where, f"malformed row: split {split!r} is not train/val/test")
            continue
        if label not in ("normal", "anomaly"):
            report.skip(where, f"malformed row: label {label!r} is not normal/anomaly")
            continue
        img = root / image
        if not img.is_file():
            report.skip(img, "missing image: listed in 1cls.csv but not on disk")
            continue
        if label == "normal":
            items.append(Item(img, None, "good", "good", obj, split))
        else:
            mask_rel = (row["mask"] or "").strip()
            dtype = types.get(image, "anomaly")
            items.append(Item(img, root / mask_rel if mask_rel else None, "defect", dtype, obj, split,
                              require_mask=True))
    valid = _validate(items, report)
    _carve_val([it for it, _ in valid], val_from, val_frac)
    return _finish(root, out, valid, report, "visa")


# --------------------------------------------------------------------------------------------- folder

def _find_mask(masks_dir: Path, stem: str, defect_type: str) -> Path | None:
    """masks/<type>/<stem>.* first (stems may repeat across type folders), then masks/<stem>.*."""
    for d in (masks_dir / defect_type, masks_dir):
        for ext in IMAGE_EXTS:
            for cand in (d / f"{stem}{ext}", d / f"{stem}_mask{ext}"):
                if cand.is_file():
                    return cand
    return None


def import_folder(root: str | Path, out: str | Path, product: str | None = None,
                  val_frac: float = DEFAULT_VAL_FRAC, test_frac: float = DEFAULT_TEST_FRAC,
                  train_defect_frac: float = DEFAULT_TRAIN_DEFECT_FRAC) -> dict:
    root = Path(root)
    if not (root / "good").is_dir():
        raise DatasetImportError(f"{root}: not a folder dataset (expected good/ and defect/ sub-folders)")
    product = product or root.name
    report = ImportReport()
    goods = _images_in(root / "good")
    for p in sorted((root / "good").iterdir()):
        if p.is_file() and p.suffix.lower() not in IMAGE_EXTS:
            report.skip(p, f"not an image file: extension {p.suffix!r}")
    defects: list[tuple[Path, str]] = []
    ddir = root / "defect"
    if ddir.is_dir():
        defects += [(p, "defect") for p in _images_in(ddir)]
        for sub in sorted(p for p in ddir.iterdir() if p.is_dir()):
            defects += [(p, sub.name) for p in _images_in(sub)]
    else:
        report.notes.append(f"{ddir}: no defect/ folder; good images only")
    items = [Item(p, None, "good", "good", product, "train") for p in goods]
    items += [Item(p, _find_mask(root / "masks", p.stem, dtype), "defect", dtype, product, "train")
              for p, dtype in defects]
    valid = _validate(items, report)
    good_items = [it for it, _ in valid if it.label == "good"]
    defect_items = [it for it, _ in valid if it.label == "defect"]
    good_splits, defect_splits = assign_splits(len(good_items), len(defect_items), val_frac, test_frac,
                                               train_defect_frac)
    for it, split in zip(good_items + defect_items, good_splits + defect_splits):
        it.split = split
    n_unmasked = sum(1 for it, m in valid if it.label == "defect" and m is None)
    if n_unmasked:
        report.notes.append(f"{n_unmasked} defect image(s) have no mask in {root / 'masks'}: kept without mask")
    return _finish(root, out, valid, report, "folder")


IMPORTERS = {"mvtec": import_mvtec, "visa": import_visa, "folder": import_folder}
