"""Every Triton kernel under TRITON_INTERPRET=1 (CPU) against its reference on ragged shapes.

Tolerances (stated, not tuned per case):
- knn_score: kernel and reference both compute ‖q‖² − 2q·b + ‖b‖² in float32 from the same float16
  values; checked against float64 brute force on those values with rtol 1e-4, atol 1e-4, except for
  exact duplicates where cancellation bounds the error by sqrt(8·eps32·(‖q‖² + ‖b‖²)).
- preprocess: within ATOL_UINT8_LEVELS (1) uint8 level of OpenCV before normalisation (cv2 rounds its
  fixed-point result to uint8; the kernel does not), plus float16 output rounding.
- anomaly_map: rtol/atol 1e-5 of the grid's range (summation order only).
"""
import os
import sys

_TRITON_PRELOADED = "triton" in sys.modules and os.environ.get("TRITON_INTERPRET") != "1"
os.environ["TRITON_INTERPRET"] = "1"  # before triton is imported: triton.language is built for the interpreter
os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

if _TRITON_PRELOADED:
    pytest.skip("triton was imported before TRITON_INTERPRET=1 was set (by an earlier test module); run "
                "with TRITON_INTERPRET=1 in the environment", allow_module_level=True)
torch = pytest.importorskip("torch")
pytest.importorskip("triton")

from kernels import anomaly_map as am  # noqa: E402
from kernels import knn_score as ks  # noqa: E402
from kernels import preprocess as pp  # noqa: E402

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


def _brute_knn(q: np.ndarray, b: np.ndarray, k: int) -> np.ndarray:
    d = np.sqrt(((q[:, None, :].astype(np.float64) - b[None].astype(np.float64)) ** 2).sum(-1))
    return np.sort(d, axis=1)[:, :k].mean(1)


# ------------------------------------------------------------------------------------------- knn_score
@pytest.mark.parametrize("m,n,d,k", [(1, 1, 1, 1), (1, 7, 3, 1), (5, 1, 9, 1), (37, 70, 33, 1), (70, 129, 17, 3),
                                     (19, 45, 129, 5), (3, 5, 5, 5)])
def test_knn_triton_matches_reference(m, n, d, k):
    rng = np.random.default_rng(m * 1000 + n + d)
    q = rng.standard_normal((m, d)).astype(np.float16)
    b = rng.standard_normal((n, d)).astype(np.float16)
    exact = _brute_knn(q.astype(np.float32), b.astype(np.float32), k)
    got = ks.knn_score(torch.from_numpy(q), torch.from_numpy(b), k, block_m=16, block_n=32, block_d=16).numpy()
    ref = ks.knn_score_reference(q, b, k)
    assert got.shape == (m,) and got.dtype == np.float32
    np.testing.assert_allclose(got, exact, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(ref, exact, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("m,n,d,k,splits", [(5, 7, 3, 1, 4), (37, 170, 33, 3, 3), (20, 100, 16, 1, 100), (3, 5, 5, 5, 2)])
def test_knn_triton_bank_split_across_programs(m, n, d, k, splits):
    """Few query blocks: the bank is sliced over grid axis 1 and partial k-smallest sets are merged."""
    rng = np.random.default_rng(m + n + splits)
    q = rng.standard_normal((m, d)).astype(np.float16)
    b = rng.standard_normal((n, d)).astype(np.float16)
    got = ks.knn_score(torch.from_numpy(q), torch.from_numpy(b), k, block_m=16, block_n=16, block_d=16,
                       splits=splits).numpy()
    np.testing.assert_allclose(got, _brute_knn(q.astype(np.float32), b.astype(np.float32), k), rtol=1e-4, atol=1e-4)


def test_knn_triton_default_blocks_and_bank_sqnorm():
    rng = np.random.default_rng(1)
    q = rng.standard_normal((65, 40)).astype(np.float16)
    b = rng.standard_normal((67, 40)).astype(np.float16)
    bt = torch.from_numpy(b)
    bsq = bt.float().pow(2).sum(1)
    got = ks.knn_score(torch.from_numpy(q), bt, 2, bsq).numpy()  # GPU block sizes 64/64/32
    np.testing.assert_allclose(got, _brute_knn(q.astype(np.float32), b.astype(np.float32), 2), rtol=1e-4, atol=1e-4)


def test_knn_triton_exact_duplicates_within_cancellation_bound():
    rng = np.random.default_rng(2)
    b = (rng.standard_normal((50, 31)) * 3).astype(np.float16)
    q = b[[3, 17, 49]]
    got = ks.knn_score(torch.from_numpy(q), torch.from_numpy(b), 1, block_m=16, block_n=16, block_d=16).numpy()
    sq = (q.astype(np.float32) ** 2).sum(1)
    bound = np.sqrt(8 * np.finfo(np.float32).eps * 2 * sq)
    assert np.all(got <= bound), (got, bound)


def test_knn_launcher_refuses_bad_input():
    q = torch.zeros(4, 8, dtype=torch.float16)
    b = torch.zeros(5, 8, dtype=torch.float16)
    with pytest.raises(TypeError, match="float16"):
        ks.knn_score(q.float(), b)
    with pytest.raises(ValueError, match="must be"):
        ks.knn_score(q, torch.zeros(5, 7, dtype=torch.float16))
    with pytest.raises(ValueError, match="k=6"):
        ks.knn_score(q, b, 6)
    with pytest.raises(ValueError, match="contiguous"):
        ks.knn_score(torch.zeros(8, 4, dtype=torch.float16).t(), b)
    with pytest.raises(TypeError, match="torch tensor"):
        ks.knn_score(q.numpy(), b)


# ------------------------------------------------------------------------------------------ preprocess
def _pre_tol(out_dtype, ref):
    atol = pp.ATOL_UINT8_LEVELS / 255.0 / np.asarray(STD, np.float32).reshape(1, 3, 1, 1) + 1e-5
    if out_dtype == np.float16:
        atol = atol + np.abs(ref) * 2.0 ** -11
    return atol


@pytest.mark.parametrize("shape,size,order,dtype", [
    ((37, 53, 3), 16, "BGR", np.float32),  # downscale, BGR
    ((5, 3), 17, "RGB", np.float32),  # grey 2-D, upscale
    ((1, 1, 3), 7, "RGB", np.float16),  # one pixel
    ((100, 30, 1), 33, "GRAY", np.float16),  # grey (H, W, 1)
    ((31, 97, 3), (19, 23), "RGB", np.float32),  # non-square output
    ((8, 8, 3), 64, "BGR", np.float32),  # 8x upscale
    ((64, 64, 3), 32, "RGB", np.float32),  # exact 2x (cv2 switches to INTER_AREA: same result)
])
def test_preprocess_triton_matches_opencv(shape, size, order, dtype):
    rng = np.random.default_rng(sum(shape))
    frame = rng.integers(0, 256, shape, dtype=np.uint8)
    ref = pp.preprocess_reference(frame, size, MEAN, STD, order, np.float32)
    tdt = torch.float16 if dtype == np.float16 else torch.float32
    got = pp.preprocess(torch.from_numpy(frame), size, MEAN, STD, order, tdt, block=128)
    assert got.dtype == tdt and tuple(got.shape) == ref.shape
    diff = np.abs(got.float().numpy() - ref)
    assert np.all(diff <= _pre_tol(dtype, ref)), diff.max()


def test_preprocess_triton_strided_rows_and_channel_order():
    rng = np.random.default_rng(5)
    full = rng.integers(0, 256, (40, 70, 3), dtype=np.uint8)
    crop = torch.from_numpy(full)[3:33, 5:50]  # rows padded: stride(0) = 70*3
    ref = pp.preprocess_reference(np.ascontiguousarray(full[3:33, 5:50]), 21, MEAN, STD, "BGR")
    got = pp.preprocess(crop, 21, MEAN, STD, "BGR", block=64).numpy()
    assert np.all(np.abs(got - ref) <= _pre_tol(np.float32, ref))
    rgb = pp.preprocess(crop, 21, MEAN, STD, "RGB", block=64).numpy()
    assert np.abs(rgb - got).max() > 0.1  # BGR really swaps channels


def test_preprocess_launcher_refuses_bad_input():
    f = torch.zeros(10, 12, 3, dtype=torch.uint8)
    with pytest.raises(TypeError, match="uint8"):
        pp.preprocess(f.float(), 8, MEAN, STD)
    with pytest.raises(ValueError, match="shape"):
        pp.preprocess(torch.zeros(10, 12, 4, dtype=torch.uint8), 8, MEAN, STD)
    with pytest.raises(ValueError, match="packed"):
        pp.preprocess(f.permute(1, 0, 2), 8, MEAN, STD)
    with pytest.raises(ValueError, match="input_order"):
        pp.preprocess(f, 8, MEAN, STD, "XYZ")


# ----------------------------------------------------------------------------------------- anomaly_map
@pytest.mark.parametrize("grid_hw,out_hw,sigma,topk", [
    ((1, 1), (5, 7), 1.0, 1),
    ((3, 5), (17, 29), 1.5, 3),
    ((7, 6), (20, 33), 2.0, 5),
    ((4, 4), (3, 3), 0.0, 1),  # no blur, downscale
    ((2, 9), (1, 50), 2.0, 2),  # one image row
    ((3, 3), (2, 2), 5.0, 3),  # radius far beyond the image: repeated reflection
])
def test_anomaly_map_triton_matches_reference(grid_hw, out_hw, sigma, topk):
    rng = np.random.default_rng(grid_hw[0] * 31 + out_hw[1])
    grid = (rng.random(grid_hw, dtype=np.float32) * 4 + 1).astype(np.float32)
    ref_map, ref_score = am.anomaly_map_reference(grid, out_hw, sigma, topk)
    got_map, got_score = am.anomaly_map(torch.from_numpy(grid), out_hw, sigma, topk, block_w=16)
    span = float(grid.max() - grid.min()) + 1.0
    np.testing.assert_allclose(got_map.numpy(), ref_map, rtol=am.RTOL, atol=am.ATOL * span)
    assert abs(float(got_score) - ref_score) <= am.ATOL * span + am.RTOL * abs(ref_score)


def test_anomaly_map_launcher_refuses_bad_input():
    with pytest.raises(TypeError, match="float32"):
        am.anomaly_map(torch.zeros(3, 3, dtype=torch.float64), (8, 8), 1.0)
    with pytest.raises(ValueError, match="contiguous"):
        am.anomaly_map(torch.zeros(3, 4).t(), (8, 8), 1.0)
    with pytest.raises(ValueError, match="topk"):
        am.anomaly_map(torch.zeros(3, 3), (8, 8), 1.0, topk=am.MAX_TOPK + 1)
