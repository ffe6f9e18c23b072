"""PatchCore's coreset (Roth et al. 2022, §3.2): greedy k-centre selection of the bank vectors and its covering
radius. teacher.bank builds its memory bank with it; teacher.reference and distill's bank call the same function.
"""
from __future__ import annotations

import numpy as np
import torch

CORESET_PROJ_DIM = 128


def greedy_coreset(features: torch.Tensor | np.ndarray, budget: int, seed: int = 0, *,
                   proj_dim: int | None = CORESET_PROJ_DIM, start: int | None = None,
                   device: str | torch.device | None = None) -> np.ndarray:
    """Greedy k-centre (farthest-point) coreset, PatchCore Alg. 1: start from one point (``start`` or a
    seeded random one), then repeatedly add the point farthest from everything chosen so far.
    features (N, D) -> int64 indices (min(budget, N),) in selection order. Vectors longer than
    ``proj_dim`` are compared after a seeded Gaussian random projection (Johnson–Lindenstrauss).
    ``device`` runs the search there (a GPU makes large banks fast); results do not depend on it
    beyond float rounding."""
    x = torch.as_tensor(np.asarray(features) if not isinstance(features, torch.Tensor) else features).float()
    if device is not None:
        x = x.to(device)
    n = x.shape[0]
    budget = int(min(budget, n))
    if budget <= 0:
        return np.zeros(0, np.int64)
    if budget == n:  # everything is kept: no search needed
        return np.arange(n, dtype=np.int64)
    g = torch.Generator().manual_seed(int(seed))
    if proj_dim is not None and x.shape[1] > proj_dim:
        p = torch.randn(x.shape[1], proj_dim, generator=g) / proj_dim ** 0.5
        x = x @ p.to(x.device)
    first = int(torch.randint(n, (1,), generator=g)) if start is None else int(start)
    # Squared distances from ||a||^2 - 2 a.b + ||b||^2: each step is one (N,) matrix-vector product into
    # preallocated buffers, so memory stays O(N*D) once whatever the budget (``x - x[i]`` made a new
    # (N, D) temporary per selected point, and the allocator kept them: RSS grew with the budget).
    sq = (x * x).sum(1)
    mind = torch.empty(n, device=x.device)
    step = torch.empty(n, device=x.device)
    chosen = torch.empty(budget, dtype=torch.long)
    i = first
    for j in range(budget):
        chosen[j] = i
        torch.mv(x, x[i], out=step)
        step.mul_(-2).add_(sq).add_(sq[i])
        if j == 0:
            mind.copy_(step)
        else:
            torch.minimum(mind, step, out=mind)
        mind[i] = -1.0  # chosen points are never picked again (rounding can leave them a tiny positive)
        i = int(torch.argmax(mind))
    return chosen.numpy().astype(np.int64)


def covering_radius(x: np.ndarray, centres: np.ndarray, chunk: int = 8192) -> float:
    """max over rows of x of the Euclidean distance to the nearest row of ``centres`` (k-centre cost)."""
    c = torch.from_numpy(np.ascontiguousarray(centres, np.float32))
    r = 0.0
    for s in range(0, len(x), chunk):
        d = torch.cdist(torch.from_numpy(np.ascontiguousarray(x[s:s + chunk], np.float32)), c)
        r = max(r, float(d.min(1).values.max()))
    return r
