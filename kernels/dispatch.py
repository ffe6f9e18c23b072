"""One function per hot-path operation; each picks the fastest implementation this machine has and
says which. runtime/ and teacher/ call these, never a kernel directly.

Importing this module needs only numpy (and OpenCV when an operation runs): the edge install has no
torch. GPU implementations are looked up lazily, once per process:

==============  =========================================  ==========================================
operation       preference on an NVIDIA GPU                 CPU (production path on x86 edge PCs)
==============  =========================================  ==========================================
preprocess      cuda (pycuda, no torch needed) > triton     cpu-opencv (cv2.resize + one numpy pass)
knn_score       triton (tensor cores via tl.dot) > cuda     cpu-blas (chunked float32 GEMM)
anomaly_map     cuda > triton                               cpu-fused (blur·upsample as two GEMMs)
==============  =========================================  ==========================================

``LINESIDE_KERNELS=cpu|triton|cuda|auto`` forces a choice; an unavailable forced choice falls back
down the list with a WARNING naming what is missing. ``implementations()`` says what each operation
uses and ``implementation_notes()`` why.

Inputs and outputs. Numpy in, numpy out, on every path (the GPU paths copy in and out). On a GPU
path a torch CUDA tensor in gives a torch CUDA tensor out (no copies), and a cupy array in gives a
cupy array out (zero-copy through DLPack). knn_score on a GPU takes float16 (float32 is rounded to
float16 once per bank and per call: distances then differ from the CPU path by ~1e-3 relative).

The bank passed to ``knn_score`` is prepared once (augmented with its squared norms on the CPU,
uploaded as float16 on a GPU) and cached per bank object (weak reference); a bank mutated in place
must be followed by ``clear_cache()``.
"""
from __future__ import annotations

import logging
import os
import threading
import weakref
from collections import OrderedDict

import numpy as np

from kernels.anomaly_map import anomaly_map_fused, gaussian_weights
from kernels.knn_score import knn_score_reference, prepare_bank
from kernels.preprocess import preprocess_reference

log = logging.getLogger("lineside.kernels")

ENV_FORCE = "LINESIDE_KERNELS"
OPS = ("preprocess", "knn_score", "anomaly_map")
CPU_IMPL = {"preprocess": "cpu-opencv", "knn_score": "cpu-blas", "anomaly_map": "cpu-fused"}
GPU_PREFERENCE = {"preprocess": ("cuda", "triton"), "knn_score": ("triton", "cuda"), "anomaly_map": ("cuda", "triton")}
BANK_CACHE_ENTRIES = 4
_CUDA_KNN_KMAX = 16  # kernels.cuda_runtime.KNN_KMAX (not imported here: the module stays numpy-only)

_choice: dict[str, str] | None = None
_notes: dict[str, str] = {}


# ------------------------------------------------------------------------------------------ detection
def _cuda_devices() -> tuple[int, str]:
    """(number of CUDA devices, reason when 0) from the driver library itself, via ctypes: no torch or
    pycuda import on a machine without an NVIDIA GPU (the edge must not load torch to find out)."""
    import ctypes

    for name in ("libcuda.so.1", "libcuda.so", "nvcuda.dll"):
        try:
            lib = ctypes.CDLL(name)
            break
        except OSError:
            continue
    else:
        return 0, "no NVIDIA driver (libcuda not found)"
    if lib.cuInit(0) != 0:
        return 0, "cuInit failed (driver present, no usable GPU)"
    count = ctypes.c_int(0)
    if lib.cuDeviceGetCount(ctypes.byref(count)) != 0 or count.value == 0:
        return 0, "no CUDA device"
    return count.value, ""


def _probe_triton() -> str | None:
    """None if Triton can launch on a CUDA GPU here, else the reason it cannot."""
    try:
        import torch
    except ImportError:
        return "torch not installed"
    if not torch.cuda.is_available():
        return "torch.cuda.is_available() is False"
    try:
        import triton  # noqa: F401
    except ImportError:
        return "triton not installed"
    return None


def _probe_cuda() -> str | None:
    """None if pycuda can load the lineside CUDA module on a GPU here, else the reason it cannot."""
    try:
        from kernels import cuda_runtime
    except ImportError as e:  # pragma: no cover - cuda_runtime itself imports only numpy
        return f"kernels.cuda_runtime: {e}"
    return cuda_runtime.probe()


def _select() -> dict[str, str]:
    global _choice
    if _choice is not None:
        return _choice
    force = os.environ.get(ENV_FORCE, "auto").strip().lower() or "auto"
    if force not in ("auto", "cpu", "triton", "cuda"):
        log.warning("%s=%r is not one of auto|cpu|triton|cuda; using auto", ENV_FORCE, force)
        force = "auto"
    problems = {}
    if force != "cpu":
        n_gpu, why_not = _cuda_devices()
        if n_gpu == 0:
            problems = {"triton": why_not, "cuda": why_not}
        else:
            problems = {"triton": _probe_triton(), "cuda": _probe_cuda()}
    choice = {}
    for op in OPS:
        order = GPU_PREFERENCE[op] if force in ("auto", "cpu") else (force,) + tuple(
            x for x in GPU_PREFERENCE[op] if x != force)
        picked = None
        if force != "cpu":
            for impl in order:
                if problems[impl] is None:
                    picked = impl
                    break
        if picked is None:
            picked = CPU_IMPL[op]
            why = "forced by LINESIDE_KERNELS=cpu" if force == "cpu" else "; ".join(
                f"{impl}: {problems[impl]}" for impl in order)
        else:
            why = f"first available of {order}"
        if force not in ("auto", "cpu") and picked != force:
            log.warning("%s=%s but %s is unavailable (%s); %s uses %s", ENV_FORCE, force, force,
                        problems[force], op, picked)
        choice[op] = picked
        _notes[op] = why
    log.info("kernels: %s", ", ".join(f"{op}={choice[op]}" for op in OPS))
    _choice = choice
    return choice


def implementations() -> dict[str, str]:
    """Which implementation each operation uses on this machine."""
    return dict(_select())


def implementation_notes() -> dict[str, str]:
    """Why each operation uses what it uses (the missing pieces when it is the CPU)."""
    _select()
    return dict(_notes)


def reset() -> None:
    """Forget the detected implementations and cached banks (tests; after changing LINESIDE_KERNELS)."""
    global _choice
    _choice = None
    _notes.clear()
    clear_cache()


# ----------------------------------------------------------------------------------------- bank cache
_bank_cache: OrderedDict[tuple, tuple[weakref.ref, object]] = OrderedDict()
_bank_cache_lock = threading.Lock()  # the daemon's judge workers score in parallel


def clear_cache() -> None:
    with _bank_cache_lock:
        _bank_cache.clear()


def _cached(bank, what: str, build):
    """build(bank) once per (bank object, what); the entry dies with the bank."""
    key = (id(bank), what)
    with _bank_cache_lock:
        hit = _bank_cache.get(key)
        if hit is not None and hit[0]() is bank:
            _bank_cache.move_to_end(key)
            return hit[1]
    value = build(bank)  # outside the lock: two threads may both build a first entry, one of them is kept
    try:
        ref = weakref.ref(bank)
    except TypeError:  # not weak-referenceable: do not cache
        return value
    with _bank_cache_lock:
        _bank_cache[key] = (ref, value)
        while len(_bank_cache) > BANK_CACHE_ENTRIES:
            _bank_cache.popitem(last=False)
    return value


# ------------------------------------------------------------------------------------- array plumbing
def _kind(x) -> str:
    """'numpy' | 'torch' (CUDA tensor) | 'torch-cpu' | 'cupy'."""
    mod = type(x).__module__
    if mod.startswith("torch"):
        return "torch" if x.is_cuda else "torch-cpu"
    if mod.startswith("cupy"):
        return "cupy"
    return "numpy"


def _host(x) -> np.ndarray:
    k = _kind(x)
    if k == "numpy":
        return np.asarray(x)
    if k == "torch-cpu":
        return x.numpy()
    if k == "torch":
        return x.cpu().numpy()
    return x.get()  # cupy


def _to_torch(x, device="cuda"):
    import torch

    k = _kind(x)
    if k == "torch":
        return x
    if k == "cupy":
        return torch.from_dlpack(x)
    return torch.from_numpy(np.ascontiguousarray(_host(x))).to(device, non_blocking=True)


def _from_torch(t, like_kind: str):
    if like_kind == "torch":
        return t
    if like_kind == "cupy":
        import cupy

        return cupy.from_dlpack(t)
    return t.cpu().numpy()


# ------------------------------------------------------------------------------------------ operations
def preprocess(frame, size: int, mean, std, input_order: str = "RGB", out_dtype=np.float32):
    """uint8 (H, W[, 1|3]) frame in ``input_order`` ('RGB', 'BGR'; grey for 1 channel) -> (1, 3, S, S)
    normalised RGB in ``out_dtype`` (float32 or float16). Resize: cv2.INTER_LINEAR convention."""
    impl = _select()["preprocess"]
    kind = _kind(frame)
    if impl == "cpu-opencv" or kind == "torch-cpu":
        return preprocess_reference(_host(frame), size, mean, std, input_order, out_dtype)
    if impl == "cuda":
        from kernels import cuda_runtime

        return cuda_runtime.preprocess(frame, size, mean, std, input_order, out_dtype)
    import torch

    from kernels.preprocess import preprocess as _triton

    tdtype = torch.float16 if np.dtype(out_dtype) == np.float16 else torch.float32
    out = _triton(_to_torch(frame), size, mean, std, input_order, tdtype)
    return _from_torch(out, kind)


def knn_score(queries, bank, k: int = 1, *, bank_sqnorm=None):
    """(M, D) queries, (N, D) bank -> (M,) float32 distance to the nearest bank row (mean of the k
    nearest). ``bank_sqnorm`` (N,) may be given when the caller already has ‖b‖²."""
    impl = _select()["knn_score"]
    kind = _kind(queries)
    if impl == "cuda" and k > _CUDA_KNN_KMAX and kind == "numpy":
        log.warning("knn_score: the CUDA kernel averages at most %d neighbours; k=%d runs on the CPU",
                    _CUDA_KNN_KMAX, k)
        impl = "cpu-blas"
    if impl == "cpu-blas" or kind == "torch-cpu":
        b = _host(bank)
        prepared = _cached(bank, "cpu-aug", lambda x: prepare_bank(b, bank_sqnorm))
        return knn_score_reference(_host(queries), b, k, prepared=prepared)
    if impl == "cuda":
        from kernels import cuda_runtime

        return cuda_runtime.knn_score(queries, bank, k, cache=lambda what, build: _cached(bank, what, build))
    import torch

    from kernels.knn_score import knn_score as _triton

    def upload(x):
        b16 = _to_torch(x).to(torch.float16).contiguous()
        return b16, b16.float().pow(2).sum(1).contiguous()

    b16, bsq = _cached(bank, "triton-f16", upload)
    q16 = _to_torch(queries).to(torch.float16).contiguous()
    out = _triton(q16, b16, k, bsq)
    return _from_torch(out, kind)


def anomaly_map(grid, out_hw: tuple[int, int], sigma: float, topk: int = 1):
    """(h, w) distance grid -> ((H, W) float32 map, float score): bilinear upsample, Gaussian blur of
    ``sigma`` px (radius int(4σ + 0.5), reflected borders), score = mean of the ``topk`` largest."""
    impl = _select()["anomaly_map"]
    kind = _kind(grid)
    if impl == "cpu-fused" or kind == "torch-cpu":
        return anomaly_map_fused(_host(grid), out_hw, sigma, topk)
    if impl == "cuda":
        from kernels import cuda_runtime

        return cuda_runtime.anomaly_map(grid, out_hw, sigma, topk)
    import torch

    from kernels.anomaly_map import anomaly_map as _triton

    g = _to_torch(grid).to(torch.float32).contiguous()
    w = torch.from_numpy(gaussian_weights(sigma)).to(g.device)
    amap, score = _triton(g, out_hw, sigma, topk, weights=w)
    return _from_torch(amap, kind), float(score)
