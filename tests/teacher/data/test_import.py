"""teacher data import: MVTec AD, VisA and folder layouts built here from tiny images."""
from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from runtime.contracts.dataset import load_dataset
from teacher.cli import main as teacher_main
from teacher.data import captions
from teacher.data.importers import DatasetImportError, import_folder, import_mvtec, import_visa

SIZE = 32


def _img(path: Path, seed: int, ext: str = ".png") -> Path:
    rng = np.random.default_rng(seed)
    path = path.with_suffix(ext)
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8))
    return path


def _mask(path: Path, box: tuple[int, int, int, int], value: int = 255, size: int = SIZE) -> Path:
    m = np.zeros((size, size), np.uint8)
    x0, y0, x1, y1 = box
    m[y0:y1, x0:x1] = value
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), m)
    return path


def _corrupt(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\x89PNG\r\n\x1a\n this is not a png")
    return path


def _skipped(summary: dict) -> dict[str, str]:
    return {Path(s["path"]).name: s["reason"] for s in summary["skipped"]}


# ------------------------------------------------------------------------------------------ MVTec AD

@pytest.fixture
def mvtec_root(tmp_path):
    root = tmp_path / "mvtec"
    cat = root / "bottle"
    for i in range(5):
        _img(cat / "train" / "good" / f"{i:03d}", i)
    _img(cat / "test" / "good" / "000", 10)
    _img(cat / "test" / "good" / "001", 15)
    _img(cat / "test" / "broken_large" / "002", 16)
    _mask(cat / "ground_truth" / "broken_large" / "002_mask.png", (1, 1, 9, 9))  # upper-left
    _img(cat / "test" / "broken_large" / "000", 11)
    _mask(cat / "ground_truth" / "broken_large" / "000_mask.png", (2, 2, 10, 8))  # upper-left
    _img(cat / "test" / "broken_large" / "001", 12)  # no mask -> skipped
    _corrupt(cat / "test" / "contamination" / "000.png")  # unreadable -> skipped
    _mask(cat / "ground_truth" / "contamination" / "000_mask.png", (0, 0, 4, 4))
    _img(cat / "test" / "contamination" / "001", 13)
    _mask(cat / "ground_truth" / "contamination" / "001_mask.png", (0, 0, 5, 5), size=SIZE + 2)  # wrong size
    _img(cat / "test" / "contamination" / "002", 14)
    _mask(cat / "ground_truth" / "contamination" / "002_mask.png", (22, 22, 30, 30))  # lower-right
    # a second category, to check multi-category roots
    for i in range(2):
        _img(root / "tile" / "train" / "good" / f"{i:03d}", 20 + i)
    return root


def test_mvtec_import(mvtec_root, tmp_path):
    out = tmp_path / "out"
    summary = import_mvtec(mvtec_root, out)
    ds = load_dataset(out / "manifest.jsonl", check_files=True)
    assert summary["n_images"] == len(ds) == 12
    reasons = sorted(s["reason"].split(":")[0] for s in summary["skipped"])
    assert reasons == ["mask size mismatch", "missing mask", "unreadable image"]
    assert summary["skipped_by_reason"] == {"mask size mismatch": 1, "missing mask": 1, "unreadable image": 1}
    assert ds.labels() == ["broken_large", "contamination"]
    assert {r.product for r in ds} == {"bottle", "tile"}
    # Val carved from train goods (one per category here: 20% of 5, at least one of 2), test untouched.
    assert sorted((r.product, r.label) for r in ds.split("val")) == [("bottle", "good"), ("tile", "good")]
    assert sorted(r.defect_type for r in ds.split("test")) == ["broken_large", "broken_large", "contamination",
                                                               "good", "good"]
    for r in ds:
        assert not Path(r.image).is_absolute() and (out / r.image).is_file()
        fields = captions.parse_caption(r.caption)
        assert fields is not None
        if r.is_defect:
            raw = cv2.imread(str(out / r.mask), cv2.IMREAD_UNCHANGED)
            assert set(np.unique(raw)) == {0, 255}
            assert fields["defect"] == r.defect_type.replace("_", " ")
            assert fields["location"] == {"broken_large": "upper-left", "contamination": "lower-right"}[r.defect_type]
            assert r.caption.startswith("Bottle of glass with")
    # Images are the source bytes (hard link or copy).
    rec = next(r for r in ds if r.defect_type == "broken_large")
    assert (out / rec.image).read_bytes() == (mvtec_root / "bottle/test/broken_large/000.png").read_bytes()


def test_mvtec_val_from_test_and_single_category_root(mvtec_root, tmp_path):
    summary = import_mvtec(mvtec_root / "bottle", tmp_path / "o", val_from="test")
    ds = load_dataset(tmp_path / "o", check_files=True)
    assert summary["products"] == ["bottle"]
    assert all(r.split == "train" for r in ds if r.meta["source"].find("/train/") >= 0)
    # Every second usable test image of each (product, type) goes to val: good 001, broken_large 002;
    # contamination has one usable image (002; 000 corrupt, 001 bad mask) and it stays in test.
    assert len(ds.split("train")) == 5
    assert sorted(Path(r.image).name for r in ds.split("val")) == ["001.png", "002.png"]
    assert sorted(r.defect_type for r in ds.split("val")) == ["broken_large", "good"]
    assert sorted(r.defect_type for r in ds.split("test")) == ["broken_large", "contamination", "good"]
    with pytest.raises(DatasetImportError, match="not an MVTec AD tree"):
        import_mvtec(tmp_path / "nowhere", tmp_path / "x")


# ----------------------------------------------------------------------------------------------- VisA

@pytest.fixture
def visa_root(tmp_path):
    root = tmp_path / "visa"
    d = root / "candle" / "Data"
    rows = ["object,split,label,image,mask"]
    for i in range(4):
        _img(d / "Images" / "Normal" / f"{i:04d}", i, ".JPG")
        rows.append(f"candle,train,normal,candle/Data/Images/Normal/{i:04d}.JPG,")
    _img(d / "Images" / "Normal" / "0100", 50, ".JPG")
    rows.append("candle,test,normal,candle/Data/Images/Normal/0100.JPG,")
    _img(d / "Images" / "Anomaly" / "000", 60, ".JPG")
    _mask(d / "Masks" / "Anomaly" / "000.png", (20, 2, 30, 10), value=1)  # 0/1 mask, upper-right
    rows.append("candle,test,anomaly,candle/Data/Images/Anomaly/000.JPG,candle/Data/Masks/Anomaly/000.png")
    _img(d / "Images" / "Anomaly" / "001", 61, ".JPG")  # mask listed but absent
    rows.append("candle,test,anomaly,candle/Data/Images/Anomaly/001.JPG,candle/Data/Masks/Anomaly/001.png")
    rows.append("candle,test,anomaly,candle/Data/Images/Anomaly/404.JPG,candle/Data/Masks/Anomaly/404.png")
    rows.append("candle,test,broken,candle/Data/Images/Anomaly/000.JPG,")
    (root / "split_csv").mkdir(parents=True)
    (root / "split_csv" / "1cls.csv").write_text("\n".join(rows) + "\n")
    (root / "candle" / "image_anno.csv").write_text(
        "image,label,mask\ncandle/Data/Images/Anomaly/000.JPG,wax melded,candle/Data/Masks/Anomaly/000.png\n")
    return root


def test_visa_import(visa_root, tmp_path):
    out = tmp_path / "out"
    summary = import_visa(visa_root, out)
    ds = load_dataset(out, check_files=True)
    assert len(ds) == 6
    reasons = sorted(s["reason"].split(":")[0] for s in summary["skipped"])
    assert reasons == ["malformed row", "missing image", "missing mask"]
    bad_row = next(s for s in summary["skipped"] if s["reason"].startswith("malformed"))
    assert bad_row["path"].endswith("1cls.csv:10") and "'broken'" in bad_row["reason"]
    defect = [r for r in ds if r.is_defect]
    assert len(defect) == 1 and defect[0].defect_type == "wax_melded" and defect[0].product == "candle"
    raw = cv2.imread(str(out / defect[0].mask), cv2.IMREAD_UNCHANGED)
    assert set(np.unique(raw)) == {0, 255} and int((raw == 255).sum()) == 80  # 0/1 mask normalised
    assert captions.parse_caption(defect[0].caption)["location"] == "upper-right"
    assert defect[0].image.endswith(".JPG")
    assert [r.split for r in ds if not r.is_defect].count("val") == 1
    with pytest.raises(DatasetImportError, match="1cls.csv"):
        import_visa(tmp_path, tmp_path / "y")


# --------------------------------------------------------------------------------------------- folder

def test_folder_import(tmp_path):
    root = tmp_path / "widget"
    for i in range(8):
        _img(root / "good" / f"g{i}", i)
    (root / "good" / "notes.txt").write_text("not an image")
    _img(root / "defect" / "scratch" / "a", 30)
    _mask(root / "masks" / "scratch" / "a.png", (12, 12, 20, 20))  # centre
    _img(root / "defect" / "b", 31, ".jpg")  # no mask: kept
    _img(root / "defect" / "c", 32)
    _mask(root / "masks" / "c.png", (0, 20, 6, 30), size=SIZE + 4)  # wrong size: skipped
    _corrupt(root / "good" / "g9.png")
    out = tmp_path / "out"
    summary = import_folder(root, out)
    ds = load_dataset(out, check_files=True)
    assert len(ds) == 10
    assert {r.product for r in ds} == {"widget"}
    skipped = _skipped(summary)
    assert skipped["notes.txt"].startswith("not an image file")
    assert skipped["g9.png"].startswith("unreadable image")
    assert skipped["c.png"].startswith("mask size mismatch")
    assert any("kept without mask" in n for n in summary["notes"])
    by_type = {r.defect_type: r for r in ds if r.is_defect}
    assert set(by_type) == {"scratch", "defect"}
    assert by_type["defect"].mask is None
    assert "unspecified location" in by_type["defect"].caption
    assert captions.parse_caption(by_type["scratch"].caption)["location"] == "center"
    assert {r.split for r in ds if not r.is_defect} == {"train", "val", "test"}
    with pytest.raises(DatasetImportError, match="good/"):
        import_folder(tmp_path / "empty", tmp_path / "z")


def test_import_cli_reports_skips(mvtec_root, tmp_path, capsys):
    rc = teacher_main(["data", "import", "mvtec", str(mvtec_root), str(tmp_path / "cli"), "--json"])
    assert rc == 0
    cap = capsys.readouterr()
    summary = json.loads(cap.out.strip().splitlines()[-1])
    assert summary["n_skipped"] == 3 and summary["layout"] == "mvtec"
    assert "skipped" in cap.err and "missing mask" in cap.err
    rc = teacher_main(["data", "import", "mvtec", str(mvtec_root), str(tmp_path / "cli2")])
    text = capsys.readouterr().out
    assert rc == 0 and "skipped 3" in text and "imported 12 images" in text
    rc = teacher_main(["data", "import", "visa", str(tmp_path), str(tmp_path / "cli3")])
    assert rc == 2 and "1cls.csv" in capsys.readouterr().err
