"""What every Triton launcher (kernels/<op>.py) checks on a torch input before it launches."""
from __future__ import annotations

import os


def interpreting() -> bool:
    """TRITON_INTERPRET=1: the kernels run on CPU tensors under Triton's interpreter (no GPU)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def check_tensor(op: str, name: str, t, dtype) -> None:
    """``t`` is a torch tensor of ``dtype`` on a CUDA device (any device when interpreting)."""
    import torch

    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{op}: {name} must be a torch tensor, got {type(t).__name__}")
    if t.dtype != dtype:
        raise TypeError(f"{op}: {name} dtype {t.dtype}, expected {dtype}")
    if not (t.is_cuda or interpreting()):
        raise ValueError(f"{op}: {name} is on {t.device}; the Triton kernel needs a CUDA device")
