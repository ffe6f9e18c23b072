"""CPU references (the production path on x86 edge PCs) against brute force / first principles."""
import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from kernels import anomaly_map as am  # noqa: E402
from kernels import knn_score as ks  # noqa: E402
from kernels import preprocess as pp  # noqa: E402


def _brute(q, b, k):
    d = np.sqrt(((q[:, None, :].astype(np.float64) - b[None].astype(np.float64)) ** 2).sum(-1))
    return np.sort(d, axis=1)[:, :k].mean(1)


@pytest.mark.parametrize("m,n,d,k", [(1, 1, 1, 1), (0, 4, 3, 1), (13, 7, 5, 7), (50, 301, 17, 1), (50, 301, 17, 4)])
def test_knn_reference_chunked_matches_brute_force(m, n, d, k, monkeypatch):
    monkeypatch.setattr(ks, "REF_ROWS", 8)  # several query chunks ...
    monkeypatch.setattr(ks, "REF_COLS", 64)  # ... and several bank chunks, ragged at the end
    rng = np.random.default_rng(m + n + d + k)
    q = rng.standard_normal((m, d)).astype(np.float32)
    b = rng.standard_normal((n, d)).astype(np.float32)
    got = ks.knn_score_reference(q, b, k)
    assert got.shape == (m,) and got.dtype == np.float32
    np.testing.assert_allclose(got, _brute(q, b, k), rtol=1e-4, atol=1e-4)


def test_knn_reference_prepared_bank_and_sqnorm_agree():
    rng = np.random.default_rng(0)
    q = rng.standard_normal((20, 9)).astype(np.float32)
    b = rng.standard_normal((30, 9)).astype(np.float32)
    plain = ks.knn_score_reference(q, b, 2)
    sq = (b.astype(np.float64) ** 2).sum(1)
    np.testing.assert_allclose(ks.knn_score_reference(q, b, 2, bank_sqnorm=sq), plain, rtol=1e-6)
    np.testing.assert_allclose(ks.knn_score_reference(q, b, 2, prepared=ks.prepare_bank(b)), plain, rtol=1e-6)
    # the prepared bank is what decides the answer (so a stale one is visible)
    shifted = ks.prepare_bank(b + 1.0)
    assert not np.allclose(ks.knn_score_reference(q, b, 2, prepared=shifted), plain)


def test_knn_reference_refuses_bad_shapes():
    with pytest.raises(ValueError, match="must be"):
        ks.knn_score_reference(np.zeros((3, 4)), np.zeros((5, 3)))
    with pytest.raises(ValueError, match="k=6"):
        ks.knn_score_reference(np.zeros((3, 4)), np.zeros((5, 4)), 6)


def test_preprocess_reference_layout_order_and_dtype():
    rng = np.random.default_rng(0)
    frame = rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)
    rgb = pp.preprocess_reference(frame, 30, 0.0, 1.0, "RGB")
    bgr = pp.preprocess_reference(frame[..., ::-1].copy(), 30, 0.0, 1.0, "BGR")
    assert rgb.shape == (1, 3, 30, 30) and rgb.dtype == np.float32
    np.testing.assert_array_equal(rgb, bgr)
    expect = cv2.resize(frame, (30, 30), interpolation=cv2.INTER_LINEAR).transpose(2, 0, 1)[None] / 255.0
    np.testing.assert_allclose(rgb, expect, atol=1e-6)
    grey = pp.preprocess_reference(frame[..., 0].copy(), (7, 9), 0.5, 0.25, out_dtype=np.float16)
    assert grey.shape == (1, 3, 7, 9) and grey.dtype == np.float16
    np.testing.assert_array_equal(grey[0, 0], grey[0, 2])


def test_preprocess_reference_refuses_what_it_cannot_read():
    with pytest.raises(TypeError, match="uint8"):
        pp.preprocess_reference(np.zeros((4, 4, 3), np.float32), 4, 0, 1)
    with pytest.raises(ValueError, match="shape"):
        pp.preprocess_reference(np.zeros((4, 4, 2), np.uint8), 4, 0, 1)
    with pytest.raises(ValueError, match="GRAY"):
        pp.preprocess_reference(np.zeros((4, 4, 3), np.uint8), 4, 0, 1, "GRAY")
    with pytest.raises(ValueError, match="std"):
        pp.preprocess_reference(np.zeros((4, 4, 3), np.uint8), 4, 0, 0)
    with pytest.raises(ValueError, match="output size"):
        pp.preprocess_reference(np.zeros((4, 4, 3), np.uint8), (0, 4), 0, 1)


def test_gaussian_weights_match_opencv():
    for sigma in (0.5, 1.0, 2.5, 4.0):
        g = am.gaussian_weights(sigma)
        np.testing.assert_allclose(g, cv2.getGaussianKernel(g.size, sigma, cv2.CV_32F).ravel(), atol=1e-7)
    assert am.gaussian_weights(0).tolist() == [1.0]


def test_anomaly_map_reference_peak_and_topk():
    grid = np.zeros((8, 8), np.float32)
    grid[2, 5] = 10.0
    amap, score = am.anomaly_map_reference(grid, (64, 64), 2.0, 1)
    assert amap.shape == (64, 64) and amap.dtype == np.float32
    y, x = np.unravel_index(amap.argmax(), amap.shape)
    assert abs(y - 20) <= 4 and abs(x - 44) <= 4 and score == pytest.approx(float(amap.max()))
    _, s5 = am.anomaly_map_reference(grid, (64, 64), 2.0, 5)
    assert s5 == pytest.approx(float(np.sort(amap.ravel())[-5:].mean()), rel=1e-6) and s5 <= score


@pytest.mark.parametrize("grid_hw,out_hw,sigma,topk", [
    ((32, 32), (256, 256), 4.0, 1),  # the edge's 256 px map
    ((7, 13), (61, 45), 2.0, 3),  # ragged, different scale per axis
    ((3, 5), (5, 9), 3.0, 1),  # blur radius larger than the image: repeated reflection
    ((1, 4), (1, 9), 2.0, 1),  # a single row
    ((16, 12), (9, 7), 1.5, 2),  # downsampling
    ((8, 8), (64, 64), 0.0, 1),  # no blur
])
def test_anomaly_map_fused_matches_reference(grid_hw, out_hw, sigma, topk):
    grid = np.random.default_rng(3).random(grid_hw).astype(np.float32) * 5.0
    ref, ref_score = am.anomaly_map_reference(grid, out_hw, sigma, topk)
    got, score = am.anomaly_map_fused(grid, out_hw, sigma, topk)
    assert got.shape == ref.shape and got.dtype == np.float32
    np.testing.assert_allclose(got, ref, rtol=am.RTOL, atol=am.ATOL * float(np.ptp(grid)))
    assert score == pytest.approx(ref_score, rel=am.RTOL, abs=am.ATOL * float(np.ptp(grid)))
