"""Representation alignment (teacher/align.py): the loss is zero exactly on the target geometry and near one
off it, the target space is fitted from the run's images, and `teacher train` records and lowers it."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from teacher.align import FeatureAlignment


class FakeEncoder(nn.Module):
    """A fixed random conv pair standing in for EfficientNet-Lite0: 6 channels at s8, 10 at s16."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.a = nn.Conv2d(3, 6, 8, stride=8)
        self.b = nn.Conv2d(6, 10, 2, stride=2)

    def forward(self, x):
        s8 = self.a(x)
        return {"s8": s8, "s16": self.b(s8)}


def project(align: FeatureAlignment, enc_maps: dict) -> dict:
    """The U-Net maps that sit exactly on the target: mean-removed encoder maps in the fitted basis
    (the 3×3 aggregation is linear and keeps a constant, so it commutes with this affine map)."""
    out = {}
    for n, e in enc_maps.items():
        mu, basis = getattr(align, f"mean_{n}"), getattr(align, f"basis_{n}")
        out[n] = torch.einsum("kc,bchw->bkhw", basis, e - mu[None, :, None, None])
    return out


def test_loss_is_zero_on_the_target_and_near_one_off_it():
    g = torch.Generator().manual_seed(1)
    images = torch.rand(8, 3, 64, 64, generator=g)
    align = FeatureAlignment(FakeEncoder()).fit(images, {"s8": 4, "s16": 16})
    assert align.basis_s8.shape == (4, 6) and align.basis_s16.shape == (16, 10)
    # narrower than the encoder: orthonormal leading directions; wider: every direction, full rank
    assert torch.allclose(align.basis_s8 @ align.basis_s8.T, torch.eye(4), atol=1e-5)
    assert torch.linalg.matrix_rank(align.basis_s16) == 10
    with torch.no_grad():
        on = project(align, align.encoder(images))
        assert align(on, images).item() < 1e-4
        off = {n: torch.randn(m.shape, generator=g) for n, m in on.items()}
        assert 0.8 < align(off, images).item() < 1.2
        assert align({n: -m for n, m in on.items()}, images).item() > 1.99  # opposite geometry: cosine -1


def test_unfitted_alignment_refuses():
    with pytest.raises(RuntimeError, match="fit"):
        FeatureAlignment(FakeEncoder())({"s8": torch.zeros(1, 4, 8, 8)}, torch.rand(1, 3, 64, 64))


def test_train_records_and_lowers_the_alignment(tmp_path, capsys):
    from teacher.cli import main
    from tests.teacher.test_train import make_dataset

    data = make_dataset(tmp_path / "d", n=8)
    out = tmp_path / "ck"
    assert main(["train", "--preset", "tiny", "--data", str(data), "--out", str(out), "--steps", "24",
                 "--batch-size", "4", "--warmup-steps", "2", "--align-weight", "1"]) == 0
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["train"]["align_weight"] == 1.0 and cfg["train"]["align_encoder"] == "efficientnet-lite0-imagenet"
    rows = [json.loads(s) for s in (out / "metrics.jsonl").read_text().splitlines()]
    first, last = np.mean([r["l_align"] for r in rows[:4]]), np.mean([r["l_align"] for r in rows[-4:]])
    assert 0 < last < 0.8 * first, (first, last)
    off = tmp_path / "off"
    assert main(["train", "--preset", "tiny", "--data", str(data), "--out", str(off), "--steps", "2",
                 "--batch-size", "4", "--align-weight", "0"]) == 0
    cfg = json.loads((off / "config.json").read_text())
    assert cfg["train"]["align_weight"] == 0.0 and "align_encoder" not in cfg["train"]
    assert all(json.loads(s)["l_align"] == 0.0 for s in (off / "metrics.jsonl").read_text().splitlines())
