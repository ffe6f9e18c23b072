"""`distill fit` with its teacher targets streamed from memory-mapped files (distill/targets.py) gives the run
it gives with them in RAM: computed on the fly and from `teacher extract` shards."""
from __future__ import annotations

import contextlib
import io
import json

import numpy as np
import pytest
import torch

from tests.support.teacher_fixtures import tiny_line


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from teacher.checkpoint import load_teacher

    root = tmp_path_factory.mktemp("stream")
    data, ckpt = tiny_line(root)
    return root, data, ckpt, load_teacher(ckpt, device="cpu")


def test_streamed_targets_are_the_computed_ones_bit_for_bit(tiny, tmp_path):
    from distill.targets import cat_levels, channel_mean, compute_targets, pca_streamed, stream_computed, take
    from distill.embedding import fit_pca

    _, _, _, teacher = tiny
    rng = np.random.default_rng(0)
    imgs = rng.integers(0, 255, (5, 128, 128, 3), dtype=np.uint8)
    ram = compute_targets(teacher, torch.from_numpy(imgs).permute(0, 3, 1, 2).float() * np.float32(1 / 255),
                          noise_draws=2, batch_size=2)
    mapped, hit = stream_computed(teacher, imgs, tmp_path, "k", noise_draws=2, batch_size=2)
    assert not hit and stream_computed(teacher, imgs, tmp_path, "k", noise_draws=2)[1]  # cached once
    for k, v in ram.items():
        m = mapped[k]
        assert m.shape == tuple(v.shape) and torch.equal(m[np.arange(5)], v)
        assert torch.equal(take(m, slice(1, 4))[[2, 0]], v[1:4][[2, 0]])
        both = cat_levels(take(m, slice(3, None)), take(m, slice(None, 2)))
        assert torch.equal(both[np.arange(4)], torch.cat([v[3:], v[:2]]))
        torch.testing.assert_close(channel_mean(m), v.mean(dim=(0, 2, 3)), rtol=1e-5, atol=1e-6)
    basis, mean, share = fit_pca(ram["s8"], 8)
    b2, m2, s2 = pca_streamed(lambda: (mapped["s8"][s:s + 2] for s in range(0, 5, 2)), 8)
    torch.testing.assert_close(m2, mean, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(b2.abs(), basis.abs(), rtol=1e-4, atol=1e-4)  # an eigenvector's sign is free
    assert s2 == pytest.approx(share, rel=1e-9)


def _fit(tiny, out, **kw):
    from distill.fit import fit
    from distill.fit_options import FitOptions

    _, data, ckpt, teacher = tiny
    with contextlib.redirect_stderr(io.StringIO()):
        return fit(FitOptions(teacher=str(ckpt), data=str(data), student="tiny", out=out, steps=4, noise_draws=2,
                              embed_dim=16, bank_budget=64, pretrained=False, **kw), teacher=teacher, progress=False)


def _same_runs(a: dict, b: dict, ra, rb):
    for k in a["val_cosine"]:
        assert b["val_cosine"][k] == pytest.approx(a["val_cosine"][k], abs=1e-4), k
        assert b["val_cosine_mean_predictor"][k] == pytest.approx(a["val_cosine_mean_predictor"][k], abs=1e-5), k
    assert b["final_loss"] == pytest.approx(a["final_loss"], rel=1e-4)
    assert b["calibration"]["threshold"] == pytest.approx(a["calibration"]["threshold"], rel=1e-3)
    ca, cb = (json.loads((r / "config.json").read_text()) for r in (ra, rb))
    assert ca["embedding_pca_variance"] == pytest.approx(cb["embedding_pca_variance"], rel=1e-6)
    assert cb["train"]["targets_streamed"] is True and "targets_streamed" not in ca["train"]


def test_fit_with_streamed_targets_is_the_in_ram_fit(tiny, tmp_path):
    a = _fit(tiny, tmp_path / "ram", stream_targets=False)
    b = _fit(tiny, tmp_path / "stream", stream_targets=True)
    _same_runs(a, b, tmp_path / "ram", tmp_path / "stream")
    assert list((tmp_path / "stream" / "cache").glob("targets-*/s8.npy"))  # memory-mapped, not a safetensors file


def test_fit_streaming_extract_shards_is_the_in_ram_fit(tiny, tmp_path):
    from teacher.cli import main as teacher_main

    root, data, ckpt, _ = tiny
    feats = tmp_path / "feats"
    with contextlib.redirect_stdout(io.StringIO()):
        assert teacher_main(["extract", "--checkpoint", str(ckpt), "--data", str(data), "--out", str(feats),
                             "--noise-draws", "2", "--shard-size", "5", "--device", "cpu"]) == 0
    a = _fit(tiny, tmp_path / "ram", features=str(feats), stream_targets=False, pseudo_defects=0)
    b = _fit(tiny, tmp_path / "stream", features=str(feats), stream_targets=True, pseudo_defects=0)
    _same_runs(a, b, tmp_path / "ram", tmp_path / "stream")
