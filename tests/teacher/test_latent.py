"""The lossless pixel-unshuffle latent (teacher/latent.py) and the pseudo-defects that train a head on a
good-only line (teacher/data/pseudo_defects.py, `teacher finetune --pseudo-defects`). CPU, tiny preset."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from teacher.data.pseudo_defects import FAMILIES, VISIBLE_DIFF, plant_pseudo, pseudo_defect_images
from teacher.latent import PixelUnshuffleAutoencoder, build_autoencoder, downsample_factor, load_autoencoder


@settings(max_examples=20, deadline=None)
@given(side=st.sampled_from([8, 16, 40]), factor=st.sampled_from([2, 4, 8]), seed=st.integers(0, 2 ** 16))
def test_pixel_unshuffle_latent_is_exact(side, factor, seed):
    if side % factor:
        return
    ae = PixelUnshuffleAutoencoder(factor=factor, latent_channels=3 * factor * factor)
    x = torch.rand((2, 3, side, side), generator=torch.Generator().manual_seed(seed)) * 2 - 1
    dist = ae.encode(x).latent_dist
    assert dist.mean.shape == (2, 3 * factor * factor, side // factor, side // factor)
    assert float(dist.std.abs().max()) == 0.0
    torch.testing.assert_close(dist.sample(torch.Generator().manual_seed(1)), dist.mean)
    torch.testing.assert_close(ae.decode(dist.mean).sample, x, rtol=0, atol=0)


def test_pixel_unshuffle_latent_saves_loads_and_refuses_bad_shapes(tmp_path):
    with pytest.raises(ValueError, match="latent_channels"):
        PixelUnshuffleAutoencoder(factor=8, latent_channels=16)
    ae = build_autoencoder({"kind": "PixelUnshuffleAutoencoder", "factor": 8, "latent_channels": 192,
                            "scaling_factor": 2.5})
    with pytest.raises(ValueError, match="multiple of 8"):
        ae.encode(torch.zeros(1, 3, 20, 20))
    ae.save_pretrained(tmp_path / "vae")
    back = load_autoencoder(tmp_path / "vae")
    assert isinstance(back, PixelUnshuffleAutoencoder) and back.config.scaling_factor == 2.5
    assert downsample_factor(back) == 8
    kl = build_autoencoder({"block_out_channels": (8, 8, 8), "norm_num_groups": 4, "latent_channels": 4,
                            "down_block_types": ("DownEncoderBlock2D",) * 3,
                            "up_block_types": ("UpDecoderBlock2D",) * 3})
    assert downsample_factor(kl) == 4
    with pytest.raises(ValueError, match="unknown autoencoder kind"):
        build_autoencoder({"kind": "VQ"})


def test_tiny_teacher_on_the_lossless_latent_trains_and_keeps_its_strides(tmp_path):
    from teacher.checkpoint import build_random_teacher, load_teacher, save_teacher
    from teacher.cli import main
    from tests.support.teacher_fixtures import make_dataset

    m = build_random_teacher("tiny", seed=0)
    assert isinstance(m.vae, PixelUnshuffleAutoencoder) and m.unet.config.in_channels == 192
    feats = m.extract_features(torch.rand(2, 3, 128, 128))
    assert {k: tuple(v.shape[-2:]) for k, v in feats.items()} == {"s8": (16, 16), "s16": (8, 8), "s32": (4, 4),
                                                                   "s64": (2, 2)}
    save_teacher(m, tmp_path / "ckpt", {"note": "random tiny teacher on the lossless latent"})
    back = load_teacher(tmp_path / "ckpt")
    torch.testing.assert_close(back.extract_features(torch.ones(1, 3, 128, 128) / 2)["s8"],
                               m.extract_features(torch.ones(1, 3, 128, 128) / 2)["s8"])
    # train-vae only fits the scaling factor (1/std of the line's pixels), then train uses it.
    data = make_dataset(tmp_path / "d")
    assert main(["train-vae", "--preset", "tiny", "--data", str(data), "--out", str(tmp_path / "vae"),
                 "--steps", "5", "--json"]) == 0
    summary = json.loads((tmp_path / "vae" / "train_vae.json").read_text())
    assert summary["lossless"] is True and summary["steps"] == 0 and summary["scaling_factor"] > 1.0
    assert load_autoencoder(tmp_path / "vae").config.scaling_factor == pytest.approx(summary["scaling_factor"])


def _texture(seed: int, size: int = 64) -> np.ndarray:
    rng = np.random.default_rng(seed)
    import cv2

    base = cv2.resize(rng.random((8, 8, 3)).astype(np.float32), (size, size), interpolation=cv2.INTER_CUBIC)
    return np.clip(0.2 + 0.6 * base + 0.05 * rng.standard_normal((size, size, 3)), 0, 1).astype(np.float32)


@pytest.mark.parametrize("family", FAMILIES)
def test_every_pseudo_defect_family_changes_what_its_mask_marks(family):
    img = _texture(0)
    for seed in range(4):
        out, mask, fam = plant_pseudo(img, np.random.default_rng(seed), [_texture(1), _texture(2)], family)
        assert fam == family and out.shape == img.shape and out.dtype == np.float32
        assert 0.0 <= out.min() and out.max() <= 1.0
        assert mask.any(), (family, seed)
        diff = np.abs(out - img).max(axis=2)
        assert (diff[mask] >= VISIBLE_DIFF).all()  # marked pixels visibly changed
        assert mask.mean() < 0.5  # one defect, not a new image


def test_pseudo_defect_images_are_deterministic_per_image():
    goods = [(_texture(s) * 255).astype(np.uint8) for s in range(3)]
    a = pseudo_defect_images(goods, 2, seed=7)
    b = pseudo_defect_images(goods, 2, seed=7)
    assert len(a) == 6
    for (ia, ma, fa), (ib, mb, fb) in zip(a, b):
        np.testing.assert_array_equal(ia, ib)
        np.testing.assert_array_equal(ma, mb)
        assert fa == fb and ia.dtype == np.uint8
    assert any(not np.array_equal(x[0], y[0]) for x, y in zip(a, pseudo_defect_images(goods, 2, seed=8)))


def test_finetune_with_pseudo_defects_trains_a_head_on_good_images_only(tmp_path):
    from runtime.contracts.dataset import load_dataset
    from teacher.checkpoint import build_random_teacher, save_teacher
    from teacher.cli import main
    from teacher.head.model import load_head
    from tests.support.teacher_fixtures import make_noise_dataset

    data = make_noise_dataset(tmp_path / "d", n=6)
    ds = load_dataset(data)
    assert not any(r.is_defect for r in ds.split("train"))
    save_teacher(build_random_teacher("tiny", seed=0), tmp_path / "ckpt", {"note": "random tiny teacher"})
    args = ["finetune", "--checkpoint", str(tmp_path / "ckpt"), "--data", str(data), "--steps", "20"]
    assert main(args) == 2  # good images only and no pseudo-defects: nothing to learn, said so
    assert main(args + ["--pseudo-defects", "2", "--json"]) == 0
    state = load_head(tmp_path / "ckpt" / "head")
    assert state.vocabulary == ["defect"]
    assert state.info["pseudo_defects_per_image"] == 2
    assert state.info["train_loss_after"]["mask"] < state.info["train_loss_before"]["mask"]
