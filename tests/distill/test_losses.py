import pytest
import torch

from distill.losses import binary_kl_distill, cosine_distance, feature_loss, kl_distill, normalized_mse


def _levels(seed, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    return {"s8": torch.randn(2, 6, 8, 8, generator=g) * scale, "s16": torch.randn(2, 10, 4, 4, generator=g) * scale}


def test_feature_loss_is_zero_only_for_identical_features():
    t = _levels(0)
    loss, logs = feature_loss({k: v.clone() for k, v in t.items()}, t)
    assert loss.item() == pytest.approx(0.0, abs=1e-5)
    assert logs["cos_s8"] == pytest.approx(1.0, abs=1e-5)
    loss2, _ = feature_loss(_levels(1), t)
    assert loss2.item() > 0.5


def test_normalised_mse_is_scale_free_and_cosine_ignores_scale():
    s, t = _levels(1), _levels(0)
    a = normalized_mse(s["s8"], t["s8"])
    b = normalized_mse(100 * s["s8"], 100 * t["s8"])
    torch.testing.assert_close(a, b)
    torch.testing.assert_close(cosine_distance(3 * t["s8"], t["s8"]), torch.tensor(0.0), atol=1e-6, rtol=0)


def test_feature_loss_gradients_reach_every_level():
    t = _levels(0)
    s = {k: torch.zeros_like(v, requires_grad=True) for k, v in _levels(2).items()}
    with torch.no_grad():
        for k in s:
            s[k].copy_(_levels(2)[k])
    loss, _ = feature_loss(s, t)
    loss.backward()
    assert all(v.grad is not None and v.grad.abs().sum() > 0 for v in s.values())


def test_feature_loss_rejects_mismatched_levels_and_shapes():
    t = _levels(0)
    with pytest.raises(KeyError):
        feature_loss({"s8": t["s8"]}, t)
    bad = dict(t, s16=torch.zeros(2, 10, 2, 2))
    with pytest.raises(ValueError, match="s16"):
        feature_loss(bad, t)


def test_kl_distillation():
    z = torch.randn(4, 5)
    assert kl_distill(z, z, 2.0).item() == pytest.approx(0.0, abs=1e-6)
    assert kl_distill(torch.zeros(4, 5), z, 2.0).item() > 0
    m = torch.randn(2, 3, 8, 8)
    assert binary_kl_distill(m, m, 2.0).item() == pytest.approx(0.0, abs=1e-5)
    assert binary_kl_distill(-m, m, 2.0).item() > 0
