"""`distill quantize` calibrates on a bounded subset of the train split: only those images are decoded, only
those reach the calibrator, and a split smaller than the bound is used whole, in order, as before."""
from __future__ import annotations

import contextlib
import io

import numpy as np
import pytest

from tests.support.teacher_fixtures import SPLITS, tiny_line


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    from distill.fit import fit
    from distill.fit_options import FitOptions
    from teacher.checkpoint import load_teacher

    root = tmp_path_factory.mktemp("quantize")
    data, ckpt = tiny_line(root)
    run = root / "run"
    with contextlib.redirect_stderr(io.StringIO()):
        fit(FitOptions(teacher=str(ckpt), data=str(data), student="tiny", out=run, steps=2, noise_draws=1,
                       embed_dim=16, bank_budget=64, pretrained=False),
            teacher=load_teacher(ckpt, device="cpu"), progress=False)
    return run, data


def _count_reads(monkeypatch, split: str) -> list[str]:
    """The images of ``split`` decoded from now on (Dataset.read_image wrapped), in order."""
    from runtime.contracts.dataset import Dataset

    decoded: list[str] = []
    real_read = Dataset.read_image

    def counting_read(self, rec):
        if rec.split == split:
            decoded.append(rec.image)
        return real_read(self, rec)

    monkeypatch.setattr(Dataset, "read_image", counting_read)
    return decoded


def _quantize_counting(monkeypatch, run, data, calib_size):
    """-> (report, images each quantize_static call was fed, train images decoded)."""
    import onnxruntime.quantization as oq

    from distill.int8.quantize import quantize_run

    fed: list[np.ndarray] = []
    real_static = oq.quantize_static

    def counting_static(model_in, model_out, reader, **kw):
        class Counting:  # what the calibrator pulls, one batch-1 input per image
            def __init__(self):
                self.seen = []

            def get_next(self):
                item = reader.get_next()
                if item is not None:
                    self.seen.append(item["image"][0])
                return item

            def rewind(self):
                pass

        c = Counting()
        out = real_static(model_in, model_out, c, **kw)
        fed.append(np.stack(c.seen))
        return out

    monkeypatch.setattr(oq, "quantize_static", counting_static)
    decoded = _count_reads(monkeypatch, "train")
    with contextlib.redirect_stderr(io.StringIO()):
        rep = quantize_run(run, str(data), methods=("ort",), force=True, calib_size=calib_size)
    return rep, fed, decoded


def test_calibration_uses_exactly_the_bound(tiny_run, monkeypatch):
    run, data = tiny_run
    n_train = sum(SPLITS["train"])
    bound = 5
    assert bound < n_train
    rep, fed, decoded = _quantize_counting(monkeypatch, run, data, bound)
    assert fed and all(len(f) == bound for f in fed)  # every plan's calibrator saw exactly the bound
    assert len(decoded) == bound  # and only those train images were ever decoded
    assert rep["calibration_images"] == bound
    np.testing.assert_array_equal(fed[0], fed[-1])  # deterministic: the same subset for every plan


def test_a_split_below_the_bound_is_used_whole_as_before(tiny_run, monkeypatch):
    from distill.data import load_images
    from distill.run import load_run
    from runtime.contracts.dataset import load_dataset

    run, data = tiny_run
    n_train = sum(SPLITS["train"])
    rep, fed, _ = _quantize_counting(monkeypatch, run, data, 64)
    r = load_run(run)
    every = load_images(load_dataset(data), ("train",), r.size).student_inputs(r.mean, r.std).numpy()
    assert rep["calibration_images"] == n_train
    np.testing.assert_array_equal(fed[0], every)  # the whole split, in manifest order: the old calibration


def test_calib_size_beyond_the_cap_is_refused(tiny_run):
    from distill.int8.quantize import MAX_CALIB_SIZE, quantize_run

    run, data = tiny_run
    with pytest.raises(SystemExit, match="--calib-size"):
        quantize_run(run, str(data), methods=("ort",), calib_size=MAX_CALIB_SIZE + 1)


def test_bounded_sample_is_seeded_stratified_and_whole_below_the_bound():
    from distill.int8.quantize import bounded_sample

    np.testing.assert_array_equal(bounded_sample(5, 8), np.arange(5))  # a small split: whole, in order
    labels = np.r_[np.zeros(900, bool), np.ones(100, bool)]
    pick = bounded_sample(1000, 50, labels)
    assert len(pick) == 50 and np.all(np.diff(pick) > 0)
    assert labels[pick].sum() == 5  # each label keeps its share
    np.testing.assert_array_equal(pick, bounded_sample(1000, 50, labels))  # seeded: the same images
    rare = np.r_[np.zeros(999, bool), [True]]
    assert rare[bounded_sample(1000, 10, rare)].sum() == 1  # a rare label keeps one image
    # without labels: the calibration subset as it always was
    np.testing.assert_array_equal(bounded_sample(30, 7), np.sort(np.random.default_rng(0).permutation(30)[:7]))


def test_at_most_val_size_val_images_reach_the_guard(tiny_run, monkeypatch):
    import distill.int8.quantize as Q

    run, data = tiny_run
    n_val = sum(SPLITS["val"])
    seen = []
    real_eval = Q.evaluate

    def counting_eval(runner, inputs, labels, *a, **kw):
        seen.append((len(inputs), int(np.sum(labels))))
        return real_eval(runner, inputs, labels, *a, **kw)

    monkeypatch.setattr(Q, "evaluate", counting_eval)
    decoded = _count_reads(monkeypatch, "val")
    bound = 2
    assert bound < n_val
    with contextlib.redirect_stderr(io.StringIO()):
        rep = Q.quantize_run(run, str(data), methods=("ort",), force=True, val_size=bound)
    assert seen and all(n == bound for n, _ in seen)  # the FP32 reference and every INT8 model: the bound
    assert all(d == 1 for _, d in seen)  # one good, one defect: the split's label shares
    assert len(decoded) == bound and rep["validation_images"] == bound
    seen.clear()
    with contextlib.redirect_stderr(io.StringIO()):
        rep = Q.quantize_run(run, str(data), methods=("ort",), force=True)  # the default: the whole small split
    assert rep["validation_images"] == n_val and all(n == n_val for n, _ in seen)
