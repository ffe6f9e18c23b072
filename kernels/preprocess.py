"""preprocess: uint8 HWC camera frame -> resized, normalised NCHW float tensor, in one pass.

Resize convention (shared by the reference, the Triton and the CUDA kernels): OpenCV's
``INTER_LINEAR`` with half-pixel centres, ``src = (dst + 0.5) * in/out − 0.5``, a source coordinate
below 0 clamps to 0 and one at or beyond the last pixel clamps to it (weight 0 on the next tap).

Tolerance. For uint8 input OpenCV interpolates with 11-bit fixed-point weights and rounds the resized
pixel to uint8 before we normalise it; the kernels interpolate in float32 and do not round. The two
agree to within one uint8 level before normalisation, so after it
``|kernel − reference| <= 1/255 / min(std)`` (plus float16 rounding of the output when
``out_dtype`` is float16: ``+ 2**-11 * |value|``). ``ATOL_UINT8_LEVELS`` states it in levels.

In this file: ``preprocess_reference`` (OpenCV: the CPU path), ``_preprocess_kernel`` and its launcher
``preprocess`` (Triton), ``preprocess_cuda`` (launcher of preprocess.cu), ``IMPLEMENTATIONS`` (the
entries kernels.dispatch picks from) and ``bench_cpu`` / ``bench_gpu`` (this op's rows of kernels.bench).
"""
from __future__ import annotations

import functools

import numpy as np

from kernels import _arrays
from kernels._launch import check_tensor

ATOL_UINT8_LEVELS = 1.0  # kernel vs OpenCV reference, in uint8 levels before normalisation
INPUT_ORDERS = ("RGB", "BGR", "GRAY")


def _channels_and_order(frame_shape: tuple[int, ...], input_order: str) -> tuple[int, bool]:
    """-> (channels in the frame, whether its channels are BGR). Refuses what it cannot read."""
    if input_order not in INPUT_ORDERS:
        raise ValueError(f"preprocess: input_order {input_order!r}, expected one of {INPUT_ORDERS}")
    if len(frame_shape) == 2 or (len(frame_shape) == 3 and frame_shape[2] == 1):
        return 1, False
    if len(frame_shape) == 3 and frame_shape[2] == 3:
        if input_order == "GRAY":
            raise ValueError(f"preprocess: input_order GRAY but frame shape {frame_shape} has 3 channels")
        return 3, input_order == "BGR"
    raise ValueError(f"preprocess: frame shape {frame_shape}, expected (H, W), (H, W, 1) or (H, W, 3)")


def _out_size(size) -> tuple[int, int]:
    """S or (out_h, out_w) -> (out_h, out_w), both >= 1."""
    oh, ow = (int(size), int(size)) if np.isscalar(size) else (int(size[0]), int(size[1]))
    if oh < 1 or ow < 1:
        raise ValueError(f"preprocess: output size {size} must be positive")
    return oh, ow


def _norm_coeffs(mean, std) -> tuple[np.ndarray, np.ndarray]:
    """(x/255 − mean)/std = x·scale + bias, per RGB channel."""
    mean = np.broadcast_to(np.asarray(mean, np.float64), (3,))
    std = np.broadcast_to(np.asarray(std, np.float64), (3,))
    if np.any(std <= 0):
        raise ValueError(f"preprocess: std {std.tolist()} must be > 0")
    return (1.0 / (255.0 * std)).astype(np.float32), (-mean / std).astype(np.float32)


def preprocess_reference(frame: np.ndarray, size: int | tuple[int, int], mean, std, input_order: str = "RGB",
                         out_dtype=np.float32) -> np.ndarray:
    """OpenCV path: bilinear resize (cv2.INTER_LINEAR, half-pixel centres), then (x/255 − mean)/std.

    frame: (H, W) / (H, W, 1) grey or (H, W, 3) in ``input_order``; size S or (out_h, out_w);
    returns (1, 3, S, S) RGB in ``out_dtype``. The resize runs on the 1- or 3-channel uint8 frame
    (OpenCV's fast path), the channel order and normalisation in one numpy expression.
    """
    import cv2

    if not isinstance(frame, np.ndarray) or frame.dtype != np.uint8:
        raise TypeError(f"preprocess: frame dtype {getattr(frame, 'dtype', type(frame))}, expected uint8")
    channels, bgr = _channels_and_order(frame.shape, input_order)
    oh, ow = _out_size(size)
    scale, bias = _norm_coeffs(mean, std)
    resized = cv2.resize(frame, (ow, oh), interpolation=cv2.INTER_LINEAR)  # (oh, ow[, 3]) uint8
    out = np.empty((1, 3, oh, ow), out_dtype)
    for c in range(3):
        src = resized if channels == 1 else resized[..., (2 - c) if bgr else c]
        out[0, c] = src * scale[c] + bias[c]
    return out


# ----------------------------------------------------------------------------------------------- Triton
def _build_triton_kernel():
    import triton
    import triton.language as tl

    @triton.jit
    def _preprocess_kernel(
        src_ptr,  # (H, W, C) uint8 frame, rows stride_h apart, pixels C apart (HWC, packed)
        out_ptr,  # (3, OH, OW) float16/float32 output, contiguous (the batch dim is 1)
        H, W, stride_h,  # source size and row stride in bytes
        OH, OW,  # output size
        scale_y, scale_x,  # H/OH, W/OW (float32)
        k0, k1, k2,  # per output channel (RGB) scale: 1 / (255·std)
        b0, b1, b2,  # per output channel bias: −mean / std
        C: tl.constexpr,  # source channels: 1 (grey, replicated) or 3
        BGR: tl.constexpr,  # source channel order is B, G, R
        BLOCK: tl.constexpr,  # output pixels per program
    ):
        pid = tl.program_id(0)
        idx = pid * BLOCK + tl.arange(0, BLOCK)
        ok = idx < OH * OW
        oy = idx // OW
        ox = idx % OW
        # cv2 INTER_LINEAR: half-pixel centres, clamp at both borders
        fy = (oy.to(tl.float32) + 0.5) * scale_y - 0.5
        fx = (ox.to(tl.float32) + 0.5) * scale_x - 0.5
        y0 = tl.floor(fy)
        x0 = tl.floor(fx)
        wy = fy - y0
        wx = fx - x0
        y0i = y0.to(tl.int32)
        x0i = x0.to(tl.int32)
        wy = tl.where(y0i < 0, 0.0, wy)
        wx = tl.where(x0i < 0, 0.0, wx)
        y0i = tl.maximum(y0i, 0)
        x0i = tl.maximum(x0i, 0)
        wy = tl.where(y0i >= H - 1, 0.0, wy)
        wx = tl.where(x0i >= W - 1, 0.0, wx)
        y0i = tl.minimum(y0i, H - 1)
        x0i = tl.minimum(x0i, W - 1)
        y1i = tl.minimum(y0i + 1, H - 1)
        x1i = tl.minimum(x0i + 1, W - 1)
        r0 = y0i.to(tl.int64) * stride_h
        r1 = y1i.to(tl.int64) * stride_h
        p00 = src_ptr + r0 + x0i * C
        p01 = src_ptr + r0 + x1i * C
        p10 = src_ptr + r1 + x0i * C
        p11 = src_ptr + r1 + x1i * C
        npix = OH * OW
        for c in tl.static_range(3):
            if C == 1:
                sc = 0
            elif BGR:
                sc = 2 - c
            else:
                sc = c
            v00 = tl.load(p00 + sc, mask=ok, other=0).to(tl.float32)
            v01 = tl.load(p01 + sc, mask=ok, other=0).to(tl.float32)
            v10 = tl.load(p10 + sc, mask=ok, other=0).to(tl.float32)
            v11 = tl.load(p11 + sc, mask=ok, other=0).to(tl.float32)
            top = v00 + (v01 - v00) * wx
            bot = v10 + (v11 - v10) * wx
            v = top + (bot - top) * wy
            if c == 0:
                v = v * k0 + b0
            elif c == 1:
                v = v * k1 + b1
            else:
                v = v * k2 + b2
            tl.store(out_ptr + c * npix + idx, v.to(out_ptr.dtype.element_ty), mask=ok)

    return _preprocess_kernel


@functools.cache
def _kernel():
    return _build_triton_kernel()


def preprocess(frame, size: int | tuple[int, int], mean, std, input_order: str = "RGB", out_dtype=None,
               *, out=None, block: int = 1024):
    """Triton launcher. frame: uint8 torch tensor (H, W), (H, W, 1) or (H, W, 3) on a CUDA device
    (CPU under TRITON_INTERPRET=1), pixels packed (row stride free). Returns (1, 3, OH, OW) in
    ``out_dtype`` (torch.float16 or torch.float32, default float32), or writes into ``out``."""
    import torch

    check_tensor("preprocess", "frame", frame, torch.uint8)
    channels, bgr = _channels_and_order(tuple(frame.shape), input_order)
    h, w = frame.shape[:2]
    if h < 1 or w < 1:
        raise ValueError(f"preprocess: empty frame {tuple(frame.shape)}")
    if frame.ndim == 3 and frame.stride(2) != 1 or frame.stride(1) != channels:
        raise ValueError(f"preprocess: frame pixels must be packed HWC (strides {frame.stride()})")
    oh, ow = _out_size(size)
    out_dtype = out_dtype or torch.float32
    if out is None:
        out = torch.empty((1, 3, oh, ow), dtype=out_dtype, device=frame.device)
    if out.shape != (1, 3, oh, ow) or out.dtype not in (torch.float16, torch.float32) or not out.is_contiguous():
        raise ValueError(f"preprocess: out must be contiguous float16/float32 (1, 3, {oh}, {ow}), got "
                         f"{tuple(out.shape)} {out.dtype}")
    if out.device != frame.device:
        raise ValueError(f"preprocess: out on {out.device}, frame on {frame.device}")
    k, b = _norm_coeffs(mean, std)
    grid = ((oh * ow + block - 1) // block,)
    _kernel()[grid](frame, out, h, w, frame.stride(0), oh, ow, float(np.float32(h / oh)), float(np.float32(w / ow)),
                    float(k[0]), float(k[1]), float(k[2]), float(b[0]), float(b[1]), float(b[2]),
                    C=channels, BGR=bgr, BLOCK=block)
    return out


# ------------------------------------------------------------------------------------------------- CUDA
CUDA_BLOCK = (32, 8, 1)  # threads per block of lineside_preprocess_f32 / _f16 (preprocess.cu)


def preprocess_cuda(frame, size: int | tuple[int, int], mean, std, input_order: str = "RGB", out_dtype=np.float32):
    """CUDA launcher (preprocess.cu through kernels.cuda_runtime). frame: numpy uint8, or a packed uint8
    torch/cupy CUDA array. Returns (1, 3, OH, OW) ``out_dtype`` (np.float32 or np.float16): numpy for
    numpy in, else a device array of the input's kind (no copies)."""
    from kernels import cuda_runtime

    kind = _arrays.kind(frame)
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
    with cuda_runtime.context() as st:
        if kind == "numpy":
            src = _arrays.DeviceBuffer(st, host=np.ascontiguousarray(frame))
            row_stride = w * channels
        else:
            strides = _arrays.device_strides(frame)
            if strides[1] != channels or (len(shape) == 3 and strides[2] != 1):
                raise ValueError(f"preprocess: frame pixels must be packed HWC (strides {strides})")
            src = _arrays.Borrowed(frame)
            row_stride = strides[0]
        out = _arrays.DeviceBuffer(st, nbytes=3 * oh * ow * out_dtype.itemsize, like=frame, shape=(1, 3, oh, ow),
                                   dtype=out_dtype)
        fn = st["funcs"]["lineside_preprocess_f16" if out_dtype == np.float16 else "lineside_preprocess_f32"]
        f32 = np.float32
        fn(np.uintp(src.ptr), np.uintp(out.ptr), np.int32(h), np.int32(w), np.int64(row_stride),
           np.int32(oh), np.int32(ow), f32(h / oh), f32(w / ow), f32(k[0]), f32(k[1]), f32(k[2]),
           f32(b[0]), f32(b[1]), f32(b[2]), np.int32(channels), np.int32(bgr), block=CUDA_BLOCK,
           grid=(_arrays.cdiv(ow, CUDA_BLOCK[0]), _arrays.cdiv(oh, CUDA_BLOCK[1]), 1))
        return out.result(st, (1, 3, oh, ow), out_dtype)


# ------------------------------------------------------------------------------------- dispatch entries
# kernels.dispatch.preprocess calls the one it picked: any array kind in, the same kind out (a CPU
# torch tensor takes the reference on every path).
def _on_cpu(frame, size, mean, std, input_order="RGB", out_dtype=np.float32):
    return preprocess_reference(_arrays.host(frame), size, mean, std, input_order, out_dtype)


def _on_triton(frame, size, mean, std, input_order="RGB", out_dtype=np.float32):
    kind = _arrays.kind(frame)
    if kind == "torch-cpu":
        return _on_cpu(frame, size, mean, std, input_order, out_dtype)
    import torch

    tdtype = torch.float16 if np.dtype(out_dtype) == np.float16 else torch.float32
    out = preprocess(_arrays.to_torch(frame), size, mean, std, input_order, tdtype)
    return _arrays.from_torch(out, kind)


def _on_cuda(frame, size, mean, std, input_order="RGB", out_dtype=np.float32):
    if _arrays.kind(frame) == "torch-cpu":
        return _on_cpu(frame, size, mean, std, input_order, out_dtype)
    return preprocess_cuda(frame, size, mean, std, input_order, out_dtype)


IMPLEMENTATIONS = {"cpu-opencv": _on_cpu, "triton": _on_triton, "cuda": _on_cuda}


# ------------------------------------------------------------------------------------------------ bench
BENCH_SHAPES = [((1080, 1920, 3), 256, "BGR"), ((480, 640, 1), 224, "GRAY"), ((1024, 1024, 3), 512, "RGB")]
BENCH_SHAPES_QUICK = [((120, 160, 3), 64, "BGR")]  # (frame shape, size, input order)
BENCH_MEAN = (0.485, 0.456, 0.406)
BENCH_STD = (0.229, 0.224, 0.225)


def _bench_bytes(frame_numel: int, size: int) -> int:
    return frame_numel + 3 * size * size * 4  # frame in + float32 tensor out


def bench_cpu(shapes, timer, rng) -> list[dict]:
    """kernels.bench's CPU rows: the OpenCV reference (the dispatcher's CPU path) in GB/s."""
    rows = []
    for shape, size, order in shapes:
        frame = rng.integers(0, 256, shape, dtype=np.uint8)
        t = timer(lambda: preprocess_reference(frame, size, BENCH_MEAN, BENCH_STD, order))
        rows.append({"impl": "cpu-opencv", "frame": list(shape), "size": size, "order": order,
                     "ms": round(t * 1e3, 3), "gbps": round(_bench_bytes(frame.size, size) / t / 1e9, 3)})
    return rows


def bench_gpu(shapes, measure, dev, gen, cuda_ok: bool) -> list[dict]:
    """kernels.bench's GPU rows: the Triton (and CUDA) kernels beside torch interpolate + normalise on
    ``dev``, each checked against it. ``measure(base, impl, fn, work, unit, ref)`` times one row."""
    import torch
    import torch.nn.functional as F

    mean = torch.tensor(BENCH_MEAN, device=dev).view(1, 3, 1, 1)
    std = torch.tensor(BENCH_STD, device=dev).view(1, 3, 1, 1)
    rows = []
    for shape, size, order in shapes:
        frame = torch.randint(0, 256, shape, generator=gen, dtype=torch.uint8).to(dev)
        nbytes = _bench_bytes(frame.numel(), size)
        base = {"frame": list(shape), "size": size, "order": order}

        def torch_pre():
            x = frame if frame.ndim == 3 else frame[..., None]
            x = x.permute(2, 0, 1)[None].float()
            x = x.expand(1, 3, -1, -1) if x.shape[1] == 1 else (x.flip(1) if order == "BGR" else x)
            x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
            return (x / 255.0 - mean) / std

        ref = torch_pre()
        rows.append(measure(base, "triton", lambda: preprocess(frame, size, BENCH_MEAN, BENCH_STD, order), nbytes,
                            "gbps", ref))
        if cuda_ok:
            rows.append(measure(base, "cuda", lambda: preprocess_cuda(frame, size, BENCH_MEAN, BENCH_STD, order),
                                nbytes, "gbps", ref))
        rows.append(measure(base, "torch-interpolate", torch_pre, nbytes, "gbps"))
    return rows
