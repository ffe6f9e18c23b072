"""A broken dataset fails in load_dataset with one clear error naming file, line and field."""
from __future__ import annotations

import json
import shutil

import pytest

from runtime.contracts.dataset import DatasetError, load_dataset
from teacher.data.synth import synthesize


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    d = tmp_path_factory.mktemp("base") / "d"
    synthesize(d, n_good=3, n_defect=2, size=48, seed=5)
    return d


@pytest.fixture
def ds_dir(base, tmp_path):
    d = tmp_path / "d"
    shutil.copytree(base, d)
    return d


def _lines(d):
    return (d / "manifest.jsonl").read_text().splitlines()


def _write(d, lines):
    (d / "manifest.jsonl").write_text("\n".join(lines) + "\n")


def _defect_line(d) -> tuple[int, dict]:
    for i, line in enumerate(_lines(d)):
        rec = json.loads(line)
        if rec["label"] == "defect":
            return i, rec
    raise AssertionError("no defect record")


def test_valid_copy_loads(ds_dir):
    assert len(load_dataset(ds_dir, check_files=True)) == 5


def test_corrupt_image_names_file_line_and_field(ds_dir):
    rec = json.loads(_lines(ds_dir)[1])
    (ds_dir / rec["image"]).write_bytes(b"\x89PNG\r\n\x1a\ntruncated")
    with pytest.raises(DatasetError) as e:
        load_dataset(ds_dir, check_files=True)
    msg = str(e.value)
    assert "manifest.jsonl:2" in msg and "'image'" in msg and rec["image"] in msg and "corrupt" in msg
    # Without file checks the manifest itself is fine.
    assert len(load_dataset(ds_dir, check_files=False)) == 5


def test_missing_mask_names_file_line_and_field(ds_dir):
    i, rec = _defect_line(ds_dir)
    (ds_dir / rec["mask"]).unlink()
    with pytest.raises(DatasetError) as e:
        load_dataset(ds_dir, check_files=True)
    msg = str(e.value)
    assert f"manifest.jsonl:{i + 1}" in msg and "'mask'" in msg and "missing" in msg and rec["mask"] in msg


def test_mask_of_wrong_size(ds_dir):
    import cv2
    import numpy as np

    i, rec = _defect_line(ds_dir)
    cv2.imwrite(str(ds_dir / rec["mask"]), np.zeros((10, 12), np.uint8))
    with pytest.raises(DatasetError, match=rf"manifest.jsonl:{i + 1}: field 'mask': size 12x10 does not match"):
        load_dataset(ds_dir, check_files=True)


def test_malformed_json_line(ds_dir):
    lines = _lines(ds_dir)
    lines[2] = lines[2][:-5]
    _write(ds_dir, lines)
    with pytest.raises(DatasetError, match=r"manifest.jsonl:3: not valid JSON"):
        load_dataset(ds_dir, check_files=False)


@pytest.mark.parametrize("field,value,expect", [
    ("label", "broken", "'label'"),
    ("split", "holdout", "'split'"),
    ("severity", 1.5, "'severity'"),
    ("colour", "red", "'colour'"),
])
def test_bad_field_is_named(ds_dir, field, value, expect):
    lines = _lines(ds_dir)
    rec = json.loads(lines[3])
    rec[field] = value
    lines[3] = json.dumps(rec)
    _write(ds_dir, lines)
    with pytest.raises(DatasetError) as e:
        load_dataset(ds_dir, check_files=False)
    assert "manifest.jsonl:4" in str(e.value) and expect in str(e.value)


def test_not_an_object_duplicate_and_good_with_mask(ds_dir):
    lines = _lines(ds_dir)
    _write(ds_dir, lines[:1] + ["[1, 2]"] + lines[1:])
    with pytest.raises(DatasetError, match=r"manifest.jsonl:2: a record must be a JSON object"):
        load_dataset(ds_dir, check_files=False)
    _write(ds_dir, lines + [lines[0]])
    dup = rf"manifest.jsonl:{len(lines) + 1}: field 'image': .* already listed on line 1"
    with pytest.raises(DatasetError, match=dup):
        load_dataset(ds_dir, check_files=False)
    _, drec = _defect_line(ds_dir)
    good = json.loads(lines[0])
    good["mask"] = drec["mask"]
    _write(ds_dir, [json.dumps(good)] + lines[1:])
    with pytest.raises(DatasetError, match=r"manifest.jsonl:1: field 'mask': a good image must not have a mask"):
        load_dataset(ds_dir, check_files=False)


def test_missing_manifest_and_empty(tmp_path):
    with pytest.raises(DatasetError, match="manifest not found"):
        load_dataset(tmp_path)
    (tmp_path / "manifest.jsonl").write_text("\n")
    with pytest.raises(DatasetError, match="no records"):
        load_dataset(tmp_path)
