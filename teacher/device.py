"""The torch device a teacher command runs on when ``--device`` is not given."""
from __future__ import annotations

import torch


def default_device(requested: str | None = None) -> str:
    """``requested`` when given, else "cuda" when this torch sees a GPU, else "cpu"."""
    return requested or ("cuda" if torch.cuda.is_available() else "cpu")
