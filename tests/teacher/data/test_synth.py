"""teacher data synth: valid, deterministic, masks that match the planted change, template captions."""
from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from runtime.contracts.dataset import load_dataset
from teacher.cli import main as teacher_main
from tests.support.teacher_fixtures import tree_hash
from teacher.data import captions
from teacher.data.defects import DEFECT_KINDS, plant
from teacher.data.synth import PRODUCTS, assign_splits, make_sample, synthesize


@pytest.fixture(scope="module")
def synth_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth") / "d"
    rc = teacher_main(["data", "synth", str(out), "--n-good", "12", "--n-defect", "14", "--size", "96",
                       "--seed", "0"])
    assert rc == 0
    return out


def test_cli_writes_a_valid_dataset_with_every_kind(synth_dir):
    ds = load_dataset(synth_dir / "manifest.jsonl", check_files=True)
    assert len(ds) == 26
    assert ds.labels() == sorted(DEFECT_KINDS)
    assert {r.product for r in ds} == set(PRODUCTS)
    for r in ds:
        img = ds.read_image(r)
        assert img.shape == (96, 96, 3) and img.dtype == np.uint8
        if r.is_defect:
            assert r.mask is not None and 0.2 <= r.severity <= 1.0
            m = ds.read_mask(r)
            raw = cv2.imread(str(ds.path(r.mask)), cv2.IMREAD_UNCHANGED)
            assert set(np.unique(raw)) <= {0, 255} and m.any()
        else:
            assert r.mask is None and r.defect_type == "good"
    # Train: goods plus a few defects; val and test: both.
    for split in ("val", "test"):
        labels = {r.label for r in ds.split(split)}
        assert labels == {"good", "defect"}, split
    train = ds.split("train")
    n_def_train = sum(r.is_defect for r in train)
    assert 1 <= n_def_train <= 2 and sum(not r.is_defect for r in train) == 6


def test_same_seed_same_bytes_other_seed_other_bytes(tmp_path):
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    synthesize(a, 4, 7, size=64, seed=3)
    synthesize(b, 4, 7, size=64, seed=3)
    synthesize(c, 4, 7, size=64, seed=4)
    assert tree_hash(a) == tree_hash(b)
    assert tree_hash(a) != tree_hash(c)


def test_written_image_is_make_sample_of_its_meta(synth_dir):
    ds = load_dataset(synth_dir)
    for r in ds.records[::5]:
        s = make_sample(r.product, r.defect_type, 96, r.meta["seed"], r.meta["index"])
        np.testing.assert_array_equal(ds.read_image(r), s.image)
        assert s.caption == r.caption


@pytest.mark.parametrize("kind", DEFECT_KINDS)
def test_mask_covers_the_planted_change_visibly_and_unsaturated(kind):
    for i, product in enumerate(PRODUCTS):
        for j in range(2):
            s = make_sample(product, kind, 128, seed=11, index=10 * i + j)
            diff = np.abs(s.image.astype(np.int32) - s.clean.astype(np.int32)).sum(axis=2)
            m = s.mask
            assert m.any() and not m.all()
            inside = diff[m].sum() / max(diff.sum(), 1)
            assert inside >= 0.85, (product, kind, inside)  # the change is where the mask says
            # Visible: on average at least ~4 grey levels per channel inside the mask.
            assert diff[m].mean() >= 12, (product, kind, diff[m].mean())
            # Not a saturated paste: the texture is still there and few pixels clip.
            clipped = np.mean(np.any((s.image[m] == 0) | (s.image[m] == 255), axis=1))
            assert clipped < 0.5, (product, kind, clipped)
            assert s.image[m].std() > 2.0, (product, kind)


def test_severity_scales_contrast():
    rng_img = make_sample("gravel", "good", 128, seed=2, index=0).clean.astype(np.float32) / 255
    for kind in DEFECT_KINDS:
        # Same rng stream, two severities: the stronger one changes the image more per mask pixel.
        lo, mlo, _ = plant(kind, rng_img, np.random.default_rng(5), 0.2)
        hi, mhi, _ = plant(kind, rng_img, np.random.default_rng(5), 1.0)
        d_lo = np.abs(lo - rng_img).sum() / max(mlo.sum(), 1)
        d_hi = np.abs(hi - rng_img).sum() / max(mhi.sum(), 1)
        assert d_hi > d_lo, kind
    with pytest.raises(KeyError, match="unknown defect kind"):
        plant("smudge", rng_img, np.random.default_rng(0), 0.5)


def test_captions_follow_template_and_location_matches_mask(synth_dir):
    ds = load_dataset(synth_dir)
    for r in ds:
        fields = captions.parse_caption(r.caption)
        assert fields is not None, r.caption
        if not r.is_defect:
            assert fields["defect"] == "no defect" and fields["location"] == "the entire surface"
            continue
        assert fields["defect"] == r.defect_type.replace("_", " ")
        m = ds.read_mask(r)
        ys, xs = np.nonzero(m)
        expected = captions.location_from_point(xs.mean() / m.shape[1], ys.mean() / m.shape[0])
        assert fields["location"] == expected
        assert fields["cause"] in captions.ROOT_CAUSES[r.defect_type]
        assert fields["morphology"] == captions.morphology_from_mask(m, r.severity)


def test_location_words():
    m = np.zeros((90, 90), bool)
    m[5:15, 5:15] = True
    assert captions.location_from_mask(m) == "upper-left"
    m[:] = False
    m[40:50, 40:50] = True
    assert captions.location_from_mask(m) == "center"
    m[:] = False
    m[70:80, 40:50] = True
    assert captions.location_from_mask(m) == "lower-center"
    m[:] = False
    m[40:50, 75:85] = True
    assert captions.location_from_mask(m) == "middle-right"


def test_morphology_words_from_mask_shape():
    m = np.zeros((100, 100), np.uint8)
    cv2.line(m, (50, 10), (52, 80), 1, 2)
    assert "thin vertical" in captions.morphology_from_mask(m > 0)
    m[:] = 0
    cv2.line(m, (10, 50), (80, 52), 1, 2)
    assert "thin horizontal" in captions.morphology_from_mask(m > 0)
    m[:] = 0
    cv2.line(m, (10, 10), (80, 80), 1, 2)
    assert "thin diagonal" in captions.morphology_from_mask(m > 0)
    m[:] = 0
    cv2.circle(m, (50, 50), 12, 1, -1)
    words = captions.morphology_from_mask(m > 0, severity=0.9)
    assert "round compact" in words and "pronounced contrast" in words
    m[:] = 0
    for ang in (0, 72, 144, 216, 288):
        a = np.radians(ang)
        cv2.line(m, (50, 50), (int(50 + 35 * np.cos(a)), int(50 + 35 * np.sin(a))), 1, 2)
    assert "radial branching" in captions.morphology_from_mask(m > 0)
    m[:] = 0
    for c in ((20, 20), (50, 60), (80, 30)):
        cv2.circle(m, c, 3, 1, -1)
    assert "3 scattered spots" in captions.morphology_from_mask(m > 0)


def test_assign_splits_options():
    good, defect = assign_splits(40, 20)
    assert good.count("val") == 10 and good.count("test") == 10 and good.count("train") == 20
    assert defect.count("train") == 2 and defect.count("val") == 9 and defect.count("test") == 9
    good, defect = assign_splits(10, 10, val_frac=0.1, test_frac=0.3, train_defect_frac=0.0)
    assert (good.count("val"), good.count("test"), good.count("train")) == (1, 3, 6)
    assert defect.count("train") == 0 and defect.count("val") == 5
    with pytest.raises(ValueError, match="val_frac"):
        assign_splits(10, 10, val_frac=0.8, test_frac=0.5)


def test_cli_json_and_errors(tmp_path, capsys):
    rc = teacher_main(["data", "synth", str(tmp_path / "j"), "--n-good", "2", "--n-defect", "1", "--size", "64",
                       "--seed", "1", "--products", "brick", "--kinds", "hole", "--json"])
    assert rc == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["n_images"] == 3 and summary["products"] == ["brick"] and summary["defect_types"] == {"hole": 1}
    rc = teacher_main(["data", "synth", str(tmp_path / "k"), "--n-good", "2", "--n-defect", "1", "--kinds", "smudge"])
    assert rc == 2
    assert "unknown defect kind 'smudge'" in capsys.readouterr().err


@pytest.mark.parametrize("size", [32, 300])
def test_every_kind_plants_a_bounded_mask_at_odd_sizes(size):
    for kind in DEFECT_KINDS:
        for i in range(8 if size == 32 else 2):
            s = make_sample(list(PRODUCTS)[i % 3], kind, size, seed=i, index=i)
            assert s.image.shape == (size, size, 3)
            assert 0 < s.mask.mean() < 0.5, (kind, size, i)
