"""teacher data evalset: held out from the synth on photos, kinds and code; valid, deterministic, honest masks."""
from __future__ import annotations

import ast
import json
from pathlib import Path

import numpy as np
import pytest

from runtime.contracts.dataset import load_dataset
from teacher.cli import main as teacher_main
from tests.support.teacher_fixtures import tree_hash
from teacher.data import captions, evalset
from teacher.data.defects import DEFECT_KINDS
from teacher.data.evalset import (EVAL_KINDS, EVAL_PRODUCTS, STREAMS, VISIBLE_DIFF, build_evalset, make_sample,
                                  visible_mask)
from teacher.data.synth import PRODUCTS

SIZE = 64
COUNTS = ["--n-good-train", "2", "--n-good-val", "1", "--n-good-test", "2", "--n-defect-test", str(len(EVAL_KINDS))]


@pytest.fixture(scope="module")
def eval_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("evalset") / "d"
    assert teacher_main(["data", "evalset", str(out), "--size", str(SIZE), *COUNTS, "--seed", "0"]) == 0
    return out


def test_held_out_from_the_synth():
    assert not set(EVAL_KINDS) & set(DEFECT_KINDS)
    assert not set(EVAL_PRODUCTS) & set(PRODUCTS)
    assert not {p.source for p in EVAL_PRODUCTS.values()} & {v[0] for v in PRODUCTS.values()}
    # Separate code: the eval planters must not come from the synth's modules.
    tree = ast.parse(Path(evalset.__file__).read_text())
    imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    imported |= {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    assert not imported & {"teacher.data.defects", "teacher.data.synth"}


def test_cli_writes_a_valid_set_with_every_split_product_and_kind(eval_dir):
    ds = load_dataset(eval_dir / "manifest.jsonl", check_files=True)
    n_per_product = 2 + 1 + 2 + len(EVAL_KINDS)
    assert len(ds) == len(EVAL_PRODUCTS) * n_per_product
    assert all(not r.is_defect for r in ds.split("train", "val"))
    for product in EVAL_PRODUCTS:
        recs = [r for r in ds if r.product == product]
        assert sum(r.split == "train" for r in recs) == 2 and sum(r.split == "val" for r in recs) == 1
        test = [r for r in recs if r.split == "test"]
        assert sum(not r.is_defect for r in test) == 2
        assert sorted(r.defect_type for r in test if r.is_defect) == sorted(EVAL_KINDS)
    for r in ds:
        assert ds.read_image(r).shape == (SIZE, SIZE, 3)
        assert captions.parse_caption(r.caption) is not None, r.caption
        if r.is_defect:
            assert 0.0 < r.severity <= 1.0 and ds.read_mask(r).any()
        else:
            assert r.mask is None and r.defect_type == "good" and r.severity is None


def test_written_image_is_make_sample_of_its_meta(eval_dir):
    ds = load_dataset(eval_dir)
    for r in ds.records[::7]:
        s = make_sample(r.product, r.defect_type, SIZE, r.meta["seed"], r.meta["stream"], r.meta["index"])
        np.testing.assert_array_equal(ds.read_image(r), s.image)
        if r.is_defect:
            np.testing.assert_array_equal(ds.read_mask(r), s.mask)


@pytest.mark.parametrize("kind", EVAL_KINDS)
def test_mask_is_where_the_image_visibly_changed(kind):
    stream = STREAMS[("test", "defect")]
    for product in EVAL_PRODUCTS:
        s = make_sample(product, kind, SIZE, seed=5, stream=stream, index=1)
        diff = np.abs(s.image.astype(np.int16) - s.clean.astype(np.int16)).max(axis=2)
        m = s.mask
        assert m.any() and m.mean() < 0.25, (product, kind, m.mean())
        # Clean and defective share crop and noise: every visible change lies in the mask ...
        assert not (diff >= VISIBLE_DIFF)[~m].any(), (product, kind)
        # ... and the mask is largely pixels that did change visibly (the rest: closing and a 1 px rim).
        assert (diff[m] >= VISIBLE_DIFF).mean() >= 0.2, (product, kind)
        assert diff[~m].max() < VISIBLE_DIFF


def test_visible_mask_ignores_changes_outside_the_region_and_below_threshold():
    clean = np.full((32, 32, 3), 100, np.uint8)
    image = clean.copy()
    image[4:8, 4:8] += VISIBLE_DIFF  # visible, inside the region
    image[20:24, 20:24] += VISIBLE_DIFF  # visible, outside it
    image[12:14, 4:8] += VISIBLE_DIFF - 1  # inside, too faint
    support = np.zeros((32, 32), bool)
    support[:16, :16] = True
    m = visible_mask(clean, image, support)
    assert m[4:8, 4:8].all() and not m[20:24, 20:24].any() and not m[13, 6]


def test_same_seed_same_bytes_other_seed_other_bytes(tmp_path, eval_dir):
    small = dict(size=SIZE, n_good_train=1, n_good_val=0, n_good_test=1, n_defect_test=len(EVAL_KINDS))
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    build_evalset(a, seed=3, **small)
    build_evalset(b, seed=3, **small)
    build_evalset(c, seed=4, **small)
    assert tree_hash(a) == tree_hash(b)
    assert tree_hash(a) != tree_hash(c)
    # The test split does not depend on the train / val counts (one rng stream per split and label).
    d = tmp_path / "d"
    build_evalset(d, seed=0, size=SIZE, n_good_train=1, n_good_val=0, n_good_test=2, n_defect_test=len(EVAL_KINDS))
    test_d = [r for r in load_dataset(d) if r.split == "test"]
    test_0 = [r for r in load_dataset(eval_dir) if r.split == "test"]
    assert [(r.product, r.defect_type, r.meta["index"]) for r in test_d] == \
        [(r.product, r.defect_type, r.meta["index"]) for r in test_0]
    for rd, r0 in zip(test_d, test_0):
        assert (d / rd.image).read_bytes() == (eval_dir / r0.image).read_bytes()


def test_cli_json_summary_and_errors(tmp_path, capsys):
    out = tmp_path / "j"
    rc = teacher_main(["data", "evalset", str(out), "--size", "48", "--n-good-train", "1", "--n-good-val", "0",
                       "--n-good-test", "1", "--n-defect-test", "2", "--json"])
    assert rc == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    n = len(EVAL_PRODUCTS)
    assert summary["out"] == str(out) and summary["n_images"] == 4 * n
    assert summary["splits"] == {"train": {"good": n, "defect": 0}, "test": {"good": n, "defect": 2 * n}}
    assert summary["products"]["moon"]["test"] == {"good": 1, "defect": 2}
    assert summary["defect_types"] == {EVAL_KINDS[0]: n, EVAL_KINDS[1]: n}
    rc = teacher_main(["data", "evalset", str(tmp_path / "k"), "--size", "16"])
    assert rc == 2
    assert "size must be at least" in capsys.readouterr().err
    with pytest.raises(KeyError, match="unknown eval defect kind"):
        make_sample("moon", "scratch", SIZE, 0, 3, 0)
