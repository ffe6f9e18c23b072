"""anomaly_map: distance grid -> upsampled, Gaussian-blurred map at image size -> image score.

Convention (reference, Triton and CUDA alike): bilinear upsampling with half-pixel centres
(cv2.INTER_LINEAR on float32 = torch ``interpolate(align_corners=False)`` for upsampling), a
separable Gaussian of σ px truncated at radius ``int(4σ + 0.5)`` with reflected borders
(cv2.BORDER_REFLECT_101), weights from ``gaussian_weights``; score = max, or mean of the ``topk``
largest map values.

The kernels run in two passes: ``_upsample_hblur_kernel`` produces the horizontally blurred rows of
the upsampled map straight from the small grid (the upsampled map itself is never stored), and
``_vblur_topk_kernel`` blurs columns, writes the map and each program's ``topk`` largest values; the
launcher takes the final top-k over those candidates (a few thousand numbers). Float32 throughout;
kernel vs reference agree to ``RTOL``/``ATOL`` (summation order only).

On the CPU, ``anomaly_map_fused`` computes the same map in one pass: bilinear resizing and the separable
blur are both linear along each axis, so map = A_y · grid · A_xᵀ with A = blur · upsample (H × h and
W × w, built once per shape and σ). Two small GEMMs replace a resize and a 2·(2r + 1)-tap filter over
every image pixel; it agrees with the reference to ``RTOL``/``ATOL`` like the kernels.

In this file: ``anomaly_map_reference`` (OpenCV) and ``anomaly_map_fused`` (the CPU path), the Triton
kernels and their launcher ``anomaly_map``, ``anomaly_map_cuda`` (launcher of anomaly_map.cu),
``IMPLEMENTATIONS`` (the entries kernels.dispatch picks from) and ``bench_cpu`` / ``bench_gpu`` (this
op's rows of kernels.bench).
"""
from __future__ import annotations

import functools

import numpy as np

from kernels import _arrays
from kernels._launch import check_tensor

RTOL = 1e-5
ATOL = 1e-5  # relative to the grid's value range
MAX_TOPK = 64


def gaussian_weights(sigma: float) -> np.ndarray:
    """Normalised 1-D Gaussian taps, length 2·int(4σ + 0.5) + 1 (a single 1 when σ <= 0): the same
    taps cv2.getGaussianKernel gives for that size."""
    if sigma <= 0:
        return np.ones(1, np.float32)
    r = int(4.0 * sigma + 0.5)
    x = np.arange(-r, r + 1, dtype=np.float64)
    g = np.exp(-0.5 * (x / sigma) ** 2)
    return (g / g.sum()).astype(np.float32)


def _topk_mean(flat: np.ndarray, topk: int) -> float:
    if topk <= 1:
        return float(flat.max())
    kk = min(topk, flat.size)
    return float(np.partition(flat, flat.size - kk)[flat.size - kk:].mean())


def anomaly_map_reference(grid: np.ndarray, out_hw: tuple[int, int], sigma: float, topk: int = 1
                          ) -> tuple[np.ndarray, float]:
    """(h, w) float -> ((H, W) float32 map, score). Bilinear (half-pixel centres, as cv2/
    torch align_corners=False), separable Gaussian of ``sigma`` px truncated at 4σ with reflected
    borders (cv2.BORDER_REFLECT_101), score = mean of the ``topk`` largest map values."""
    import cv2

    if grid.ndim != 2 or grid.size == 0:
        raise ValueError(f"anomaly_map: grid shape {grid.shape}, expected non-empty (h, w)")
    h, w = out_hw
    up = cv2.resize(np.ascontiguousarray(grid, np.float32), (w, h), interpolation=cv2.INTER_LINEAR)
    if sigma > 0:
        ksize = gaussian_weights(sigma).size  # cv2.getGaussianKernel(ksize, σ) gives the same taps
        up = cv2.GaussianBlur(up, (ksize, ksize), sigmaX=sigma, sigmaY=sigma, borderType=cv2.BORDER_REFLECT_101)
    return up, _topk_mean(up.ravel(), topk)


def _reflect101(i: np.ndarray, n: int) -> np.ndarray:
    """cv2.BORDER_REFLECT_101 for any offset: fold into one period of 2(n − 1) (as the kernels do)."""
    if n == 1:
        return np.zeros_like(i)
    period = 2 * (n - 1)
    i = np.abs(i) % period
    return np.where(i >= n, period - i, i)


def _upsample_matrix(n_out: int, n_in: int) -> np.ndarray:
    """(n_out, n_in) float64: cv2 INTER_LINEAR along one axis, half-pixel centres, clamped at both borders."""
    y = np.arange(n_out)
    f = (y + 0.5) * np.float32(n_in / n_out) - 0.5  # the kernels' float32 scale
    g = np.floor(f)
    wt = f - g
    i0 = g.astype(np.int64)
    wt = np.where(i0 < 0, 0.0, wt)
    i0 = np.maximum(i0, 0)
    wt = np.where(i0 >= n_in - 1, 0.0, wt)
    i0 = np.minimum(i0, n_in - 1)
    u = np.zeros((n_out, n_in))
    np.add.at(u, (y, i0), 1.0 - wt)
    np.add.at(u, (y, np.minimum(i0 + 1, n_in - 1)), wt)
    return u


@functools.lru_cache(maxsize=16)
def _axis_operator(n_out: int, n_in: int, sigma: float) -> np.ndarray:
    """(n_out, n_in) float32 blur · upsample along one axis; read-only (shared between judge threads)."""
    op = _upsample_matrix(n_out, n_in)
    taps = gaussian_weights(sigma).astype(np.float64)
    if taps.size > 1:
        r = taps.size // 2
        rows = np.arange(n_out)
        blur = np.zeros((n_out, n_out))
        for t in range(-r, r + 1):
            np.add.at(blur, (rows, _reflect101(rows + t, n_out)), taps[t + r])
        op = blur @ op
    op = op.astype(np.float32)
    op.setflags(write=False)
    return op


def anomaly_map_fused(grid: np.ndarray, out_hw: tuple[int, int], sigma: float, topk: int = 1
                      ) -> tuple[np.ndarray, float]:
    """``anomaly_map_reference``'s map and score as A_y · grid · A_xᵀ (see the module doc): the CPU path."""
    if grid.ndim != 2 or grid.size == 0:
        raise ValueError(f"anomaly_map: grid shape {grid.shape}, expected non-empty (h, w)")
    (h, w), (H, W) = grid.shape, (int(out_hw[0]), int(out_hw[1]))
    ay, ax = _axis_operator(H, h, float(sigma)), _axis_operator(W, w, float(sigma))
    # the smaller intermediate first: (H, h)·(h, w) then ·(w, W), or the other way round
    g = np.asarray(grid, np.float32)
    up = (ay @ g) @ ax.T if H * w <= h * W else ay @ (g @ ax.T)
    return up, _topk_mean(up.ravel(), topk)


# ----------------------------------------------------------------------------------------------- Triton
def _build_triton_kernels():
    import triton
    import triton.language as tl

    @triton.jit
    def _upsample_hblur_kernel(
        grid_ptr,  # (h, w) float32 distance grid, contiguous
        wts_ptr,  # (KSIZE,) float32 Gaussian taps
        tmp_ptr,  # (H, W) float32 output: upsampled rows blurred along x, contiguous
        h, w, H, W,  # grid and image sizes
        scale_y, scale_x,  # h/H, w/W
        KSIZE,  # taps (odd); radius = KSIZE // 2
        BLOCK_W: tl.constexpr,  # image columns per program
    ):
        y = tl.program_id(0)
        xs = tl.program_id(1) * BLOCK_W + tl.arange(0, BLOCK_W)
        ok = xs < W
        # source row of this image row (scalar): cv2 INTER_LINEAR, clamped at both borders
        fy = (y.to(tl.float32) + 0.5) * scale_y - 0.5
        gy = tl.floor(fy)
        wy = fy - gy
        y0 = gy.to(tl.int32)
        wy = tl.where(y0 < 0, 0.0, wy)
        y0 = tl.maximum(y0, 0)
        wy = tl.where(y0 >= h - 1, 0.0, wy)
        y0 = tl.minimum(y0, h - 1)
        y1 = tl.minimum(y0 + 1, h - 1)
        r = KSIZE // 2
        period_x = tl.maximum(2 * (W - 1), 1)
        acc = tl.zeros((BLOCK_W,), tl.float32)
        for t in range(0, KSIZE):
            # cv2.BORDER_REFLECT_101 for any offset: fold into one period of 2(W − 1)
            x = tl.abs(xs + (t - r)) % period_x
            x = tl.where(x >= W, period_x - x, x)
            fx = (x.to(tl.float32) + 0.5) * scale_x - 0.5
            gx = tl.floor(fx)
            wx = fx - gx
            x0 = gx.to(tl.int32)
            wx = tl.where(x0 < 0, 0.0, wx)
            x0 = tl.maximum(x0, 0)
            wx = tl.where(x0 >= w - 1, 0.0, wx)
            x0 = tl.minimum(x0, w - 1)
            x1 = tl.minimum(x0 + 1, w - 1)
            v00 = tl.load(grid_ptr + y0 * w + x0, mask=ok, other=0.0)
            v01 = tl.load(grid_ptr + y0 * w + x1, mask=ok, other=0.0)
            v10 = tl.load(grid_ptr + y1 * w + x0, mask=ok, other=0.0)
            v11 = tl.load(grid_ptr + y1 * w + x1, mask=ok, other=0.0)
            top = v00 + (v01 - v00) * wx
            bot = v10 + (v11 - v10) * wx
            acc += tl.load(wts_ptr + t) * (top + (bot - top) * wy)
        tl.store(tmp_ptr + y * W + xs, acc, mask=ok)

    @triton.jit
    def _vblur_topk_kernel(
        tmp_ptr,  # (H, W) float32 rows blurred along x (from _upsample_hblur_kernel)
        wts_ptr,  # (KSIZE,) float32 Gaussian taps
        map_ptr,  # (H, W) float32 output anomaly map
        cand_ptr,  # (H · cdiv(W, BLOCK_W), TOPK) float32 output: each program's TOPK largest values
        H, W,  # image size
        KSIZE,  # taps (odd)
        TOPK: tl.constexpr,  # candidates kept per program
        BLOCK_W: tl.constexpr,  # image columns per program
    ):
        y = tl.program_id(0)
        pb = tl.program_id(1)
        xs = pb * BLOCK_W + tl.arange(0, BLOCK_W)
        ok = xs < W
        r = KSIZE // 2
        period_y = tl.maximum(2 * (H - 1), 1)
        acc = tl.zeros((BLOCK_W,), tl.float32)
        for t in range(0, KSIZE):
            yy = tl.abs(y + (t - r)) % period_y  # BORDER_REFLECT_101, as along x
            yy = tl.where(yy >= H, period_y - yy, yy)
            acc += tl.load(wts_ptr + t) * tl.load(tmp_ptr + yy * W + xs, mask=ok, other=0.0)
        tl.store(map_ptr + y * W + xs, acc, mask=ok)
        v = tl.where(ok, acc, float("-inf"))
        base = (y * tl.num_programs(1) + pb) * TOPK
        for j in tl.static_range(TOPK):
            mx = tl.max(v, axis=0)
            tl.store(cand_ptr + base + j, mx)
            v = tl.where(tl.arange(0, BLOCK_W) == tl.argmax(v, axis=0), float("-inf"), v)

    return _upsample_hblur_kernel, _vblur_topk_kernel


@functools.cache
def _kernels():
    return _build_triton_kernels()


def anomaly_map(grid, out_hw: tuple[int, int], sigma: float, topk: int = 1, *, weights=None,
                block_w: int = 256):
    """Triton launcher. grid: (h, w) float32 torch tensor on a CUDA device (CPU under
    TRITON_INTERPRET=1), contiguous. Returns ((H, W) float32 map on the device, score tensor ()).
    ``weights`` (the Gaussian taps as a device float32 tensor) may be passed to skip the upload."""
    import torch

    check_tensor("anomaly_map", "grid", grid, torch.float32)
    if grid.ndim != 2 or grid.numel() == 0 or not grid.is_contiguous():
        raise ValueError(f"anomaly_map: grid must be contiguous non-empty (h, w), got {tuple(grid.shape)}")
    H, W = (int(v) for v in out_hw)
    if H < 1 or W < 1:
        raise ValueError(f"anomaly_map: output size {out_hw} must be positive")
    kk = max(1, min(int(topk), MAX_TOPK, H * W))
    if int(topk) > MAX_TOPK:
        raise ValueError(f"anomaly_map: topk={topk} > {MAX_TOPK}")
    block_w = min(block_w, max(16, 1 << (W - 1).bit_length()))
    if weights is None:
        weights = torch.from_numpy(gaussian_weights(sigma)).to(grid.device)
    h, w = grid.shape
    tmp = torch.empty((H, W), dtype=torch.float32, device=grid.device)
    out = torch.empty((H, W), dtype=torch.float32, device=grid.device)
    nb = (W + block_w - 1) // block_w
    cand = torch.empty((H * nb, kk), dtype=torch.float32, device=grid.device)
    up_hblur, vblur_topk = _kernels()
    up_hblur[(H, nb)](grid, weights, tmp, h, w, H, W, float(np.float32(h / H)), float(np.float32(w / W)),
                      weights.numel(), BLOCK_W=block_w)
    vblur_topk[(H, nb)](tmp, weights, out, cand, H, W, weights.numel(), TOPK=kk, BLOCK_W=block_w)
    flat = cand.reshape(-1)
    score = flat.max() if kk == 1 else torch.topk(flat, kk).values.mean()
    return out, score


# ------------------------------------------------------------------------------------------------- CUDA
CUDA_THREADS = 256  # LINESIDE_AMAP_THREADS in anomaly_map.cu: image columns per block


def anomaly_map_cuda(grid, out_hw: tuple[int, int], sigma: float, topk: int = 1):
    """CUDA launcher (anomaly_map.cu through kernels.cuda_runtime): (h, w) numpy, torch CUDA or cupy
    grid -> ((H, W) float32 map, float score); the map is numpy for numpy in, else a device array of
    the input's kind."""
    from kernels import cuda_runtime

    kind = _arrays.kind(grid)
    if grid.ndim != 2 or 0 in tuple(grid.shape):
        raise ValueError(f"anomaly_map: grid shape {tuple(grid.shape)}, expected non-empty (h, w)")
    H, W = (int(v) for v in out_hw)
    if H < 1 or W < 1:
        raise ValueError(f"anomaly_map: output size {out_hw} must be positive")
    if topk > MAX_TOPK:
        raise ValueError(f"anomaly_map: topk={topk} > {MAX_TOPK}")
    kk = max(1, min(int(topk), H * W))
    h, w = (int(v) for v in grid.shape)
    wts = gaussian_weights(sigma)
    nb = _arrays.cdiv(W, CUDA_THREADS)
    with cuda_runtime.context() as st:
        if kind == "numpy":
            g = _arrays.DeviceBuffer(st, host=np.ascontiguousarray(grid, np.float32))
        else:
            g32 = grid.float().contiguous() if kind.startswith("torch") else grid.astype("float32", order="C")
            g = _arrays.Borrowed(g32)
        wdev = _arrays.DeviceBuffer(st, host=wts)
        tmp = _arrays.DeviceBuffer(st, nbytes=4 * H * W)
        out = _arrays.DeviceBuffer(st, nbytes=4 * H * W, like=grid, shape=(H, W), dtype=np.float32)
        cand = _arrays.DeviceBuffer(st, nbytes=4 * H * nb * kk)
        f32, i32 = np.float32, np.int32
        st["funcs"]["lineside_upsample_hblur"](
            np.uintp(g.ptr), np.uintp(wdev.ptr), np.uintp(tmp.ptr), i32(h), i32(w), i32(H), i32(W),
            f32(h / H), f32(w / W), i32(wts.size), block=(CUDA_THREADS, 1, 1), grid=(nb, H, 1))
        st["funcs"]["lineside_vblur_topk"](
            np.uintp(tmp.ptr), np.uintp(wdev.ptr), np.uintp(out.ptr), np.uintp(cand.ptr), i32(H), i32(W),
            i32(wts.size), i32(kk), block=(CUDA_THREADS, 1, 1), grid=(nb, H, 1))
        score = _topk_mean(cand.get(st, (H * nb * kk,), np.float32), kk)
        return out.result(st, (H, W), np.float32), score


# ------------------------------------------------------------------------------------- dispatch entries
# kernels.dispatch.anomaly_map calls the one it picked: any array kind in, the map in the same kind and
# a float score out (a CPU torch tensor takes the CPU path everywhere).
def _on_cpu(grid, out_hw, sigma, topk=1):
    return anomaly_map_fused(_arrays.host(grid), out_hw, sigma, topk)


def _on_triton(grid, out_hw, sigma, topk=1):
    kind = _arrays.kind(grid)
    if kind == "torch-cpu":
        return _on_cpu(grid, out_hw, sigma, topk)
    import torch

    g = _arrays.to_torch(grid).to(torch.float32).contiguous()
    w = torch.from_numpy(gaussian_weights(sigma)).to(g.device)
    amap, score = anomaly_map(g, out_hw, sigma, topk, weights=w)
    return _arrays.from_torch(amap, kind), float(score)


def _on_cuda(grid, out_hw, sigma, topk=1):
    if _arrays.kind(grid) == "torch-cpu":
        return _on_cpu(grid, out_hw, sigma, topk)
    return anomaly_map_cuda(grid, out_hw, sigma, topk)


IMPLEMENTATIONS = {"cpu-fused": _on_cpu, "triton": _on_triton, "cuda": _on_cuda}


# ------------------------------------------------------------------------------------------------ bench
BENCH_SHAPES = [((32, 32), (256, 256), 4.0, 1), ((64, 64), (512, 512), 4.0, 10)]  # grid, image, σ, topk
BENCH_SHAPES_QUICK = [((8, 8), (64, 64), 2.0, 3)]


def bench_cpu(shapes, timer, rng) -> list[dict]:
    """kernels.bench's CPU rows in GB/s (grid in + float32 map out): the dispatcher's CPU path (fused)
    beside the cv2 reference it replaces."""
    rows = []
    for (h, w), (H, W), sigma, topk in shapes:
        grid = rng.random((h, w), dtype=np.float32)
        nbytes = grid.nbytes + H * W * 4
        for impl, fn in (("cpu-fused", anomaly_map_fused), ("cpu-opencv", anomaly_map_reference)):
            t = timer(lambda: fn(grid, (H, W), sigma, topk))
            rows.append({"impl": impl, "grid": [h, w], "image": [H, W], "sigma": sigma, "topk": topk,
                         "ms": round(t * 1e3, 3), "gbps": round(nbytes / t / 1e9, 3)})
    return rows


def bench_gpu(shapes, measure, dev, gen, cuda_ok: bool) -> list[dict]:
    """kernels.bench's GPU rows: the Triton (and CUDA) kernels beside torch interpolate + conv2d
    (separable Gaussian) + max/topk on ``dev``, each map checked against torch's."""
    import torch
    import torch.nn.functional as F

    rows = []
    for (h, w), (H, W), sigma, topk in shapes:
        grid = torch.rand(h, w, generator=gen).to(dev)
        wts = torch.from_numpy(gaussian_weights(sigma)).to(dev)
        nbytes = grid.numel() * 4 + H * W * 4
        base = {"grid": [h, w], "image": [H, W], "sigma": sigma, "topk": topk}
        r = wts.numel() // 2

        def torch_amap():
            up = F.interpolate(grid[None, None], size=(H, W), mode="bilinear", align_corners=False)
            up = F.pad(up, (r, r, 0, 0), mode="reflect")  # torch "reflect" = cv2 BORDER_REFLECT_101
            up = F.conv2d(up, wts.view(1, 1, 1, -1))
            up = F.pad(up, (0, 0, r, r), mode="reflect")
            up = F.conv2d(up, wts.view(1, 1, -1, 1))[0, 0]
            return up, (up.max() if topk <= 1 else up.flatten().topk(topk).values.mean())

        ref = torch_amap()[0] if r < min(H, W) else None  # torch's reflect pad needs pad < size
        rows.append(measure(base, "triton", lambda: anomaly_map(grid, (H, W), sigma, topk, weights=wts), nbytes,
                            "gbps", ref, pick=lambda o: o[0]))
        if cuda_ok:
            rows.append(measure(base, "cuda", lambda: anomaly_map_cuda(grid, (H, W), sigma, topk), nbytes, "gbps",
                                ref, pick=lambda o: o[0]))
        if ref is not None:
            rows.append(measure(base, "torch-conv2d", torch_amap, nbytes, "gbps"))
    return rows
