"""pycuda loader and launchers for the CUDA kernels (preprocess.cu, knn_score.cu, anomaly_map.cu).

Importing this module needs numpy only; pycuda is imported on first use. ``probe()`` says whether the
CUDA path can run here (pycuda importable, a GPU present, the module loadable) and why not.

Module: the shipped fatbin (kernels/cuda/lineside_kernels.fatbin, built by ``python -m kernels.build``)
if it was built from the current sources and the driver accepts it; otherwise the sources are
compiled once with the local nvcc for this GPU's arch into the user cache dir (see kernels.build).

Context: the device's primary context, pushed around every call (so worker threads and torch share
it). Work goes to the legacy default stream, which orders itself with torch's default stream; a
caller using other streams must synchronise them first.

Arrays: numpy in -> numpy out (copied through device buffers). A torch CUDA tensor or a cupy array in
gives the same kind out, on the device, no copies.
"""
from __future__ import annotations

import threading
from contextlib import contextmanager

import numpy as np

from kernels import build
from kernels.anomaly_map import MAX_TOPK, _topk_mean, gaussian_weights
from kernels.knn_score import _check as _knn_check
from kernels.preprocess import _channels_and_order, _norm_coeffs, _out_size

PRE_BLOCK = (32, 8, 1)
AMAP_THREADS = 256  # LINESIDE_AMAP_THREADS in anomaly_map.cu
KNN_BM = 64  # KNN_BM in knn_score.cu
KNN_BN = 64  # KNN_BN in knn_score.cu
KNN_MERGE_THREADS = 128
KNN_THREADS = (16, 16, 1)
KNN_KMAX = 16  # lineside_knn_k16 handles 1 < k <= 16

_lock = threading.Lock()
_state: dict = {}


def _init():
    """-> state dict (driver, context, module, functions, origin); raises with the reason."""
    with _lock:
        if _state:
            return _state
        import pycuda.driver as cuda

        cuda.init()
        if cuda.Device.count() == 0:
            raise RuntimeError("no CUDA device")
        dev = cuda.Device(0)
        ctx = dev.retain_primary_context()
        major, minor = dev.compute_capability()
        sms = dev.get_attribute(cuda.device_attribute.MULTIPROCESSOR_COUNT)
        arch = f"sm_{major}{minor}"
        ctx.push()
        try:
            module, origin = None, ""
            errors = []
            shipped = build.shipped_fatbin()
            if shipped is not None:
                try:
                    module = cuda.module_from_buffer(shipped.read_bytes())
                    origin = str(shipped)
                except cuda.Error as e:  # e.g. driver older than the toolkit that built it
                    errors.append(f"shipped fatbin refused by the driver: {e}")
            else:
                errors.append("no shipped fatbin built from the current sources")
            if module is None:
                path = build.cached_fatbin(arch)
                module = cuda.module_from_buffer(path.read_bytes())
                origin = f"{path} (compiled here: {'; '.join(errors)})"
            names = [n for names in build.KERNEL_NAMES.values() for n in names]
            funcs = {n: module.get_function(n) for n in names}
        finally:
            ctx.pop()
        _state.update(cuda=cuda, ctx=ctx, module=module, funcs=funcs, origin=origin, arch=arch,
                      device=dev.name(), sms=sms)
        return _state


def probe() -> str | None:
    """None when the CUDA kernels can run here, else why not."""
    try:
        import pycuda.driver  # noqa: F401
    except ImportError:
        return "pycuda not installed"
    try:
        _init()
    except Exception as e:  # noqa: BLE001 - any failure means "not available", with its reason
        return f"{type(e).__name__}: {e}"
    return None


def loaded_from() -> str:
    return _init()["origin"]


@contextmanager
def _context():
    st = _init()
    st["ctx"].push()
    try:
        yield st
    finally:
        st["ctx"].pop()


# -------------------------------------------------------------------------------- device array glue
def _kind(x) -> str:
    mod = type(x).__module__
    if mod.startswith("torch"):
        return "torch"
    if mod.startswith("cupy"):
        return "cupy"
    return "numpy"


def _ptr(x) -> int:
    return int(x.data_ptr()) if _kind(x) == "torch" else int(x.data.ptr)


class _Borrowed:
    """A caller's torch/cupy device array used in place (kept referenced while the kernel runs)."""

    def __init__(self, obj):
        self.obj, self.ptr = obj, _ptr(obj)


class _Dev:
    """A device buffer: wraps a caller's torch/cupy array, or owns a pycuda allocation."""

    def __init__(self, st, host: np.ndarray | None = None, nbytes: int = 0, like=None, shape=None, dtype=None):
        self.alloc, self.obj = None, None
        if like is not None and _kind(like) != "numpy":  # allocate the same kind as the caller's input
            if _kind(like) == "torch":
                import torch

                tdt = {np.dtype(np.float32): torch.float32, np.dtype(np.float16): torch.float16}[np.dtype(dtype)]
                self.obj = torch.empty(shape, dtype=tdt, device=like.device)
            else:
                import cupy

                self.obj = cupy.empty(shape, dtype=dtype)
            self.ptr = _ptr(self.obj)
            return
        if host is not None:
            host = np.ascontiguousarray(host)
            nbytes = host.nbytes
        self.alloc = st["cuda"].mem_alloc(max(int(nbytes), 1))
        self.ptr = int(self.alloc)
        if host is not None:
            st["cuda"].memcpy_htod(self.alloc, host)

    def get(self, st, shape, dtype) -> np.ndarray:
        out = np.empty(shape, dtype)
        st["cuda"].memcpy_dtoh(out, self.alloc)
        return out


def _grid(n: int, b: int) -> int:
    return (n + b - 1) // b


# -------------------------------------------------------------------------------------- operations
def preprocess(frame, size, mean, std, input_order: str = "RGB", out_dtype=np.float32):
    """See kernels.dispatch.preprocess. frame: numpy uint8, or a packed uint8 torch/cupy CUDA array."""
    kind = _kind(frame)
    if str(frame.dtype) not in ("uint8", "torch.uint8"):
        raise TypeError(f"preprocess: frame dtype {frame.dtype}, expected uint8")
    shape = tuple(frame.shape)
    channels, bgr = _channels_and_order(shape, input_order)
    h, w = shape[:2]
    if h < 1 or w < 1:
        raise ValueError(f"preprocess: empty frame {shape}")
    oh, ow = _out_size(size)
    out_dtype = np.dtype(out_dtype)
    if out_dtype not in (np.float32, np.float16):
        raise TypeError(f"preprocess: out_dtype {out_dtype}, expected float32 or float16")
    k, b = _norm_coeffs(mean, std)
    with _context() as st:
        if kind == "numpy":
            src = _Dev(st, host=np.ascontiguousarray(frame))
            row_stride = w * channels
        else:
            strides = frame.stride() if kind == "torch" else tuple(s // frame.itemsize for s in frame.strides)
            if strides[1] != channels or (len(shape) == 3 and strides[2] != 1):
                raise ValueError(f"preprocess: frame pixels must be packed HWC (strides {strides})")
            src = _Borrowed(frame)
            row_stride = strides[0]
        out = _Dev(st, nbytes=3 * oh * ow * out_dtype.itemsize, like=frame, shape=(1, 3, oh, ow), dtype=out_dtype)
        fn = st["funcs"]["lineside_preprocess_f16" if out_dtype == np.float16 else "lineside_preprocess_f32"]
        f32 = np.float32
        fn(np.uintp(src.ptr), np.uintp(out.ptr), np.int32(h), np.int32(w), np.int64(row_stride),
           np.int32(oh), np.int32(ow), f32(h / oh), f32(w / ow), f32(k[0]), f32(k[1]), f32(k[2]),
           f32(b[0]), f32(b[1]), f32(b[2]), np.int32(channels), np.int32(bgr),
           block=PRE_BLOCK, grid=(_grid(ow, PRE_BLOCK[0]), _grid(oh, PRE_BLOCK[1]), 1))
        if out.obj is not None:
            return out.obj
        return out.get(st, (1, 3, oh, ow), out_dtype)


def knn_score(queries, bank, k: int = 1, cache=None, splits: int | None = None):
    """See kernels.dispatch.knn_score. ``cache(what, build)`` memoises the uploaded bank per bank
    object (the dispatcher passes its cache); without it a host bank is uploaded on every call.
    ``splits`` slices the bank over grid axis y when there are too few query blocks to fill the GPU
    (default: ~4 blocks per SM); lineside_knn_merge then merges the slices' partial lists."""
    _knn_check(queries, bank, k)
    if k > KNN_KMAX:
        raise ValueError(f"knn_score: the CUDA kernel averages at most k={KNN_KMAX} neighbours, got {k}")
    kind = _kind(queries)
    m, d = queries.shape
    n = bank.shape[0]
    with _context() as st:
        def upload(b):
            if _kind(b) == "torch":  # already on the device: convert there, no host round trip
                b16 = b.detach().half().contiguous()
                return _Borrowed(b16), _Borrowed(b16.float().pow(2).sum(1).contiguous())
            if _kind(b) == "cupy":
                b16 = b.astype("float16", order="C")
                return _Borrowed(b16), _Borrowed((b16.astype("float32") ** 2).sum(1))
            b16 = np.ascontiguousarray(b, dtype=np.float16)
            bsq = np.einsum("nd,nd->n", b16.astype(np.float32), b16.astype(np.float32)).astype(np.float32)
            return _Dev(st, host=b16), _Dev(st, host=bsq)

        bdev, bsq = cache("cuda-f16", upload) if cache else upload(bank)
        if kind == "numpy":
            q = _Dev(st, host=np.ascontiguousarray(queries, dtype=np.float16))
        else:
            q16 = queries.half().contiguous() if kind == "torch" else queries.astype("float16", order="C")
            q = _Borrowed(q16)
        out = _Dev(st, nbytes=4 * m, like=queries, shape=(m,), dtype=np.float32)
        if m:
            m_blocks, n_blocks = _grid(m, KNN_BM), _grid(n, KNN_BN)
            if splits is None:
                splits = max(1, (4 * st["sms"]) // m_blocks)
            splits = max(1, min(int(splits), n_blocks))
            per = _grid(n_blocks, splits) * KNN_BN
            splits = _grid(n, per)
            fn = st["funcs"]["lineside_knn_k1" if k == 1 else "lineside_knn_k16"]
            i32 = np.int32
            target = out if splits == 1 else _Dev(st, nbytes=4 * splits * m * k)
            fn(np.uintp(q.ptr), np.uintp(bdev.ptr), np.uintp(bsq.ptr), np.uintp(target.ptr), i32(m), i32(n), i32(d),
               i32(d), i32(d), i32(k), i32(per), i32(splits > 1), block=KNN_THREADS, grid=(m_blocks, splits, 1))
            if splits > 1:
                st["funcs"]["lineside_knn_merge"](np.uintp(target.ptr), np.uintp(out.ptr), i32(m), i32(splits), i32(k),
                                                  block=(KNN_MERGE_THREADS, 1, 1),
                                                  grid=(_grid(m, KNN_MERGE_THREADS), 1, 1))
        if out.obj is not None:
            return out.obj
        return out.get(st, (m,), np.float32)


def anomaly_map(grid, out_hw, sigma: float, topk: int = 1):
    """See kernels.dispatch.anomaly_map. Returns (map, float score); the map is numpy for numpy input,
    else a device array of the input's kind."""
    kind = _kind(grid)
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
    nb = _grid(W, AMAP_THREADS)
    with _context() as st:
        if kind == "numpy":
            g = _Dev(st, host=np.ascontiguousarray(grid, np.float32))
        else:
            g32 = grid.float().contiguous() if kind == "torch" else grid.astype("float32", order="C")
            g = _Borrowed(g32)
        wdev = _Dev(st, host=wts)
        tmp = _Dev(st, nbytes=4 * H * W)
        out = _Dev(st, nbytes=4 * H * W, like=grid, shape=(H, W), dtype=np.float32)
        cand = _Dev(st, nbytes=4 * H * nb * kk)
        f32, i32 = np.float32, np.int32
        st["funcs"]["lineside_upsample_hblur"](
            np.uintp(g.ptr), np.uintp(wdev.ptr), np.uintp(tmp.ptr), i32(h), i32(w), i32(H), i32(W),
            f32(h / H), f32(w / W), i32(wts.size), block=(AMAP_THREADS, 1, 1), grid=(nb, H, 1))
        st["funcs"]["lineside_vblur_topk"](
            np.uintp(tmp.ptr), np.uintp(wdev.ptr), np.uintp(out.ptr), np.uintp(cand.ptr), i32(H), i32(W),
            i32(wts.size), i32(kk), block=(AMAP_THREADS, 1, 1), grid=(nb, H, 1))
        score = _topk_mean(cand.get(st, (H * nb * kk,), np.float32), kk)
        if out.obj is not None:
            return out.obj, score
        return out.get(st, (H, W), np.float32), score

