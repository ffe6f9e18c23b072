"""One function per hot-path operation; each picks the fastest implementation this machine has, once,
and says which. runtime/ and teacher/ call these, never a kernel directly.

Importing this module needs only numpy (and OpenCV when an operation runs): the edge install has no
torch. Each operation's implementation is picked at its first use (or for all of them by ``use()``)
from the entries its module declares (``kernels.<op>.IMPLEMENTATIONS``); from then on a call goes
straight to that entry:

==============  =========================================  ==========================================
operation       preference on an NVIDIA GPU                 CPU (production path on x86 edge PCs)
==============  =========================================  ==========================================
preprocess      cuda (pycuda, no torch needed) > triton     cpu-opencv (cv2.resize + one numpy pass)
knn_score       triton (tensor cores via tl.dot) > cuda     cpu-blas (chunked float32 GEMM)
anomaly_map     cuda > triton                               cpu-fused (blur·upsample as two GEMMs)
==============  =========================================  ==========================================

A backend is probed only when an operation asks for it (a Jetson choosing cuda never imports torch),
and once. ``LINESIDE_KERNELS=cpu|triton|cuda|auto`` or ``use(backend)`` forces a choice; an
unavailable forced choice falls back down the list with a WARNING naming what is missing.
``implementations()`` says what each operation uses and ``implementation_notes()`` why.

Inputs and outputs. Numpy in, numpy out, on every path (the GPU paths copy in and out). On a GPU
path a torch CUDA tensor in gives a torch CUDA tensor out (no copies), and a cupy array in gives a
cupy array out (zero-copy through DLPack). knn_score on a GPU takes float16 (float32 is rounded to
float16 once per bank and per call: distances then differ from the CPU path by ~1e-3 relative).

The bank passed to ``knn_score`` is prepared once (augmented with its squared norms on the CPU,
uploaded as float16 on a GPU) and cached per bank object (weak reference, ``kernels.bank_cache``); a
bank mutated in place must be followed by ``clear_cache()``.
"""
from __future__ import annotations

import importlib
import logging
import os
import threading

import numpy as np

from kernels import bank_cache

log = logging.getLogger("lineside.kernels")

ENV_FORCE = "LINESIDE_KERNELS"
BACKENDS = ("auto", "cpu", "triton", "cuda")
OPS = ("preprocess", "knn_score", "anomaly_map")
CPU_IMPL = {"preprocess": "cpu-opencv", "knn_score": "cpu-blas", "anomaly_map": "cpu-fused"}
GPU_PREFERENCE = {"preprocess": ("cuda", "triton"), "knn_score": ("triton", "cuda"), "anomaly_map": ("cuda", "triton")}

_lock = threading.Lock()  # the daemon's judge workers may make the first calls in parallel
_backend: str | None = None  # set by use(); None: LINESIDE_KERNELS
_chosen: dict[str, tuple[str, object]] = {}  # op -> (implementation name, its entry)
_notes: dict[str, str] = {}
_problems: dict[str, str | None] = {}  # backend -> None (usable) or why not, probed once


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
        importlib.import_module("triton")
    except ImportError:
        return "triton not installed"
    return None


def _probe_cuda() -> str | None:
    """None if pycuda can load the lineside CUDA module on a GPU here, else the reason it cannot."""
    try:
        from kernels import cuda_runtime
    except ImportError as e:  # pragma: no cover - cuda_runtime itself imports only the standard library
        return f"kernels.cuda_runtime: {e}"
    return cuda_runtime.probe()


def _problem(backend: str) -> str | None:
    """Why ``backend`` (triton | cuda) cannot run here, or None; probed on first ask."""
    if "gpu" not in _problems:
        n_gpu, why_not = _cuda_devices()
        _problems["gpu"] = None if n_gpu else why_not
    if backend not in _problems:
        _problems[backend] = _problems["gpu"] or (_probe_triton() if backend == "triton" else _probe_cuda())
    return _problems[backend]


# ------------------------------------------------------------------------------------------ selection
def _forced() -> tuple[str, str]:
    """(backend, where it was asked for): use()'s, else LINESIDE_KERNELS's (auto when unset or unknown)."""
    if _backend is not None:
        return _backend, f"use({_backend!r})"
    force = os.environ.get(ENV_FORCE, "auto").strip().lower() or "auto"
    if force not in BACKENDS:
        log.warning("%s=%r is not one of auto|cpu|triton|cuda; using auto", ENV_FORCE, force)
        force = "auto"
    return force, f"{ENV_FORCE}={force}"


def _pick(op: str) -> tuple[str, str]:
    """-> (implementation of ``op``, why)."""
    force, source = _forced()
    if force == "cpu":
        return CPU_IMPL[op], f"forced by {source}"
    order = GPU_PREFERENCE[op] if force == "auto" else (force,) + tuple(x for x in GPU_PREFERENCE[op] if x != force)
    picked = next((impl for impl in order if _problem(impl) is None), None)
    if force != "auto" and picked != force:
        log.warning("%s but %s is unavailable (%s); %s uses %s", source, force, _problem(force), op,
                    picked or CPU_IMPL[op])
    if picked is None:
        return CPU_IMPL[op], "; ".join(f"{impl}: {_problem(impl)}" for impl in order)
    return picked, f"first available of {order}"


def _implementation(op: str):
    """The entry ``op`` calls: picked on its first use, then the same one until ``reset()``."""
    hit = _chosen.get(op)
    if hit is not None:
        return hit[1]
    with _lock:
        if op not in _chosen:
            name, why = _pick(op)
            entry = importlib.import_module(f"kernels.{op}").IMPLEMENTATIONS[name]
            _chosen[op], _notes[op] = (name, entry), why
            log.info("kernels: %s uses %s (%s)", op, name, why)
        return _chosen[op][1]


def use(backend: str | None = None) -> dict[str, str]:
    """Pick every operation's implementation now, for ``backend`` (auto | cpu | triton | cuda; None:
    what LINESIDE_KERNELS says), instead of at first use. Returns ``implementations()``."""
    global _backend
    if backend is not None and backend not in BACKENDS:
        raise ValueError(f"kernels backend {backend!r}, expected one of {BACKENDS}")
    reset()
    _backend = backend
    return implementations()


def implementations() -> dict[str, str]:
    """Which implementation each operation uses on this machine."""
    for op in OPS:
        _implementation(op)
    return {op: _chosen[op][0] for op in OPS}


def implementation_notes() -> dict[str, str]:
    """Why each operation uses what it uses (the missing pieces when it is the CPU)."""
    implementations()
    return {op: _notes[op] for op in OPS}


def reset() -> None:
    """Forget the chosen implementations, probes and cached banks (tests; after changing LINESIDE_KERNELS)."""
    global _backend
    with _lock:
        _backend = None
        _chosen.clear()
        _notes.clear()
        _problems.clear()
    clear_cache()


def clear_cache() -> None:
    """Forget every prepared bank (after mutating a bank in place)."""
    bank_cache.clear()


# ------------------------------------------------------------------------------------------ operations
def preprocess(frame, size: int, mean, std, input_order: str = "RGB", out_dtype=np.float32):
    """uint8 (H, W[, 1|3]) frame in ``input_order`` ('RGB', 'BGR'; grey for 1 channel) -> (1, 3, S, S)
    normalised RGB in ``out_dtype`` (float32 or float16). Resize: cv2.INTER_LINEAR convention."""
    return _implementation("preprocess")(frame, size, mean, std, input_order, out_dtype)


def knn_score(queries, bank, k: int = 1, *, bank_sqnorm=None):
    """(M, D) queries, (N, D) bank -> (M,) float32 distance to the nearest bank row (mean of the k
    nearest). ``bank_sqnorm`` (N,) may be given when the caller already has ‖b‖²."""
    return _implementation("knn_score")(queries, bank, k, bank_sqnorm)


def anomaly_map(grid, out_hw: tuple[int, int], sigma: float, topk: int = 1):
    """(h, w) distance grid -> ((H, W) float32 map, float score): bilinear upsample, Gaussian blur of
    ``sigma`` px (radius int(4σ + 0.5), reflected borders), score = mean of the ``topk`` largest."""
    return _implementation("anomaly_map")(grid, out_hw, sigma, topk)
