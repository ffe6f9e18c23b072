"""The caller's arrays on their way to a kernel and back, for every op (kernels/<op>.py).

An op takes numpy, a torch tensor or a cupy array and answers in the same kind. The Triton path moves
numpy and cupy into torch (``to_torch``) and back (``from_torch``); the CUDA path uses a caller's
device array in place (``Borrowed``) or owns a pycuda allocation (``DeviceBuffer``) inside the context
``kernels.cuda_runtime.context()`` makes current. Importing this module needs numpy only.
"""
from __future__ import annotations

import numpy as np


def kind(x) -> str:
    """'numpy' | 'torch' (CUDA tensor) | 'torch-cpu' | 'cupy'."""
    mod = type(x).__module__
    if mod.startswith("torch"):
        return "torch" if x.is_cuda else "torch-cpu"
    if mod.startswith("cupy"):
        return "cupy"
    return "numpy"


def host(x) -> np.ndarray:
    """A numpy view (or copy, from a device) of ``x``."""
    k = kind(x)
    if k == "numpy":
        return np.asarray(x)
    if k == "torch-cpu":
        return x.numpy()
    if k == "torch":
        return x.cpu().numpy()
    return x.get()  # cupy


def to_torch(x, device="cuda"):
    """``x`` as a torch tensor on ``device``: a CUDA tensor as is, cupy zero-copy (DLPack), else uploaded."""
    import torch

    k = kind(x)
    if k == "torch":
        return x
    if k == "cupy":
        return torch.from_dlpack(x)
    return torch.from_numpy(np.ascontiguousarray(host(x))).to(device, non_blocking=True)


def from_torch(t, like_kind: str):
    """A torch result back in the caller's kind (``like_kind`` from ``kind``)."""
    if like_kind == "torch":
        return t
    if like_kind == "cupy":
        import cupy

        return cupy.from_dlpack(t)
    return t.cpu().numpy()


# ------------------------------------------------------------------------------- pycuda device buffers
def device_ptr(x) -> int:
    """The device address of a torch CUDA tensor or a cupy array."""
    return int(x.data_ptr()) if kind(x).startswith("torch") else int(x.data.ptr)


def device_strides(x) -> tuple[int, ...]:
    """Strides in elements of a torch CUDA tensor or a cupy array (cupy counts bytes)."""
    return tuple(x.stride()) if kind(x).startswith("torch") else tuple(s // x.itemsize for s in x.strides)


class Borrowed:
    """A caller's torch/cupy device array used in place (kept referenced while the kernel runs)."""

    def __init__(self, obj):
        self.obj, self.ptr = obj, device_ptr(obj)


class DeviceBuffer:
    """A device buffer: an array of the caller's kind (``like`` a torch/cupy input), or a pycuda
    allocation of ``nbytes`` (filled from ``host`` when given). ``st`` is cuda_runtime.context()'s state."""

    def __init__(self, st, host: np.ndarray | None = None, nbytes: int = 0, like=None, shape=None, dtype=None):
        self.alloc, self.obj = None, None
        if like is not None and kind(like) != "numpy":  # allocate the same kind as the caller's input
            if kind(like).startswith("torch"):
                import torch

                tdt = {np.dtype(np.float32): torch.float32, np.dtype(np.float16): torch.float16}[np.dtype(dtype)]
                self.obj = torch.empty(shape, dtype=tdt, device=like.device)
            else:
                import cupy

                self.obj = cupy.empty(shape, dtype=dtype)
            self.ptr = device_ptr(self.obj)
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

    def result(self, st, shape, dtype):
        """The caller's kind: the device array itself, or a numpy copy of the allocation."""
        return self.obj if self.obj is not None else self.get(st, shape, dtype)


def cdiv(n: int, b: int) -> int:
    return (n + b - 1) // b
