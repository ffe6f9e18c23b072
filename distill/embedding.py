"""The patch embedding a memory bank is built from, computed inside the student (ONNX output "embedding").

Recipe: ``teacher.bank.patch_embedding`` applied to the student's projected levels (so student and
teacher embeddings live in one space): levels s8 and s16, each averaged over 3×3 (stride 1, PatchCore's
local aggregation), resized bilinearly to the s8 grid, L2-normalised over channels, concatenated; then
reduced to ``dim`` components by a fixed PCA basis fitted on the teacher's embeddings of the training
images (the kNN at the edge costs h·w·N·D, so D matters more than anything in the network).

Exported form (``MergedEmbedding``): average pooling and bilinear resizing are convex combinations and a
projection head is an affine 1×1 map y = W a + b, so they commute: pool(proj(f)) = proj(pool(f)). With
W = QR, ‖W a + b‖² = ‖R a + Qᵀb‖² + ‖b − QQᵀb‖², so each level's norm is taken in the backbone's few
channels and PCA(concat(y_l/‖y_l‖)) = Σ_l (B_l W_l a_l + B_l b_l)/‖y_l‖ − B μ. The graph pools the
backbone levels (48 + 128 channels for ``s``) instead of 960 projected ones, and applies the 1×1 convs
before pooling (they commute too), so they read the quantized backbone output directly: identical
numbers (tested against teacher.bank.patch_embedding), a fraction of the memory traffic, plain ops only.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

NORM_EPS = 1e-12  # F.normalize's eps: y / max(‖y‖, eps)


@dataclass(frozen=True)
class EmbeddingRecipe:
    levels: tuple[str, ...] = ("s8", "s16")
    pool: int = 3  # local neighbourhood, odd
    normalize: bool = True  # L2 per level over channels (teacher.bank)
    dim: int | None = None  # PCA components; None keeps the full concatenation

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "EmbeddingRecipe":
        dim = d.get("dim")
        return cls(levels=tuple(d["levels"]), pool=int(d["pool"]), normalize=bool(d.get("normalize", True)),
                   dim=None if dim is None else int(dim))


def teacher_recipe(dim: int | None = None) -> EmbeddingRecipe:
    """teacher.bank's levels (its pooling and normalisation are the defaults here), PCA to ``dim``."""
    try:
        from teacher.bank import BANK_LEVELS
    except ImportError:
        return EmbeddingRecipe(dim=dim)
    return EmbeddingRecipe(levels=tuple(BANK_LEVELS), dim=dim)


def _pool_resize(m: torch.Tensor, pool: int, hw: tuple[int, int]) -> torch.Tensor:
    if pool > 1:
        m = F.avg_pool2d(m, pool, stride=1, padding=pool // 2, count_include_pad=False)
    if (int(m.shape[-2]), int(m.shape[-1])) != hw:
        m = F.interpolate(m, size=hw, mode="bilinear", align_corners=False)
    return m


def _grid(m: torch.Tensor) -> tuple[int, int]:
    return int(m.shape[-2]), int(m.shape[-1])  # python ints: static in the exported graph


def reference_embedding(levels: dict[str, torch.Tensor], recipe: EmbeddingRecipe,
                        basis: torch.Tensor | None = None, mean: torch.Tensor | None = None) -> torch.Tensor:
    """The recipe applied literally to teacher-space levels: (B, D, h, w). Also the teacher's embedding."""
    hw = _grid(levels[recipe.levels[0]])
    parts = []
    for name in recipe.levels:
        m = _pool_resize(levels[name].float(), recipe.pool, hw)
        parts.append(F.normalize(m, dim=1) if recipe.normalize else m)
    e = torch.cat(parts, dim=1)
    if basis is None:
        return e
    return F.conv2d(e - mean.view(1, -1, 1, 1), basis[:, :, None, None])


def fit_pca(embeddings: torch.Tensor, dim: int) -> tuple[torch.Tensor, torch.Tensor, float]:
    """(B, C, h, w) -> basis (dim, C), mean (C,), explained variance share of the kept components."""
    x = embeddings.permute(0, 2, 3, 1).reshape(-1, embeddings.shape[1]).double()
    mean = x.mean(0)
    xc = x - mean
    cov = xc.T @ xc / max(1, xc.shape[0] - 1)
    evals, evecs = torch.linalg.eigh(cov)  # ascending
    evals, evecs = evals.flip(0), evecs.flip(1)
    dim = min(dim, x.shape[1])
    share = float(evals[:dim].clamp_min(0).sum() / evals.clamp_min(0).sum().clamp_min(1e-12))
    return evecs[:, :dim].T.float().contiguous(), mean.float(), share


def _conv1x1(w: torch.Tensor, b: torch.Tensor | None) -> nn.Conv2d:
    c = nn.Conv2d(w.shape[1], w.shape[0], 1, bias=b is not None)
    with torch.no_grad():
        c.weight.copy_(w[:, :, None, None])
        if b is not None:
            c.bias.copy_(b)
    return c.requires_grad_(False)


class MergedEmbedding(nn.Module):
    """Frozen exported form of reference_embedding(proj(levels)) computed on the backbone levels."""

    def __init__(self, recipe: EmbeddingRecipe, heads: list[tuple[torch.Tensor, torch.Tensor]],
                 basis: torch.Tensor, mean: torch.Tensor):
        super().__init__()
        self.recipe = recipe
        self.value = nn.ModuleList()  # per level: a -> B_l (W_l a + b_l)      (D channels)
        self.normz = nn.ModuleList()  # per level: a -> R_l a + Q_lᵀ b_l        (min(C_l, c_l) channels)
        consts = []
        off = 0
        with torch.no_grad():
            for w, b in heads:
                w, b = w.double(), b.double()
                bl = basis[:, off:off + w.shape[0]].double()
                off += w.shape[0]
                self.value.append(_conv1x1((bl @ w).float(), (bl @ b).float()))
                if recipe.normalize:
                    q, r = torch.linalg.qr(w)  # w (C, c) = q (C, k) r (k, c)
                    qb = q.T @ b
                    self.normz.append(_conv1x1(r.float(), qb.float()))
                    consts.append(float((b - q @ qb).pow(2).sum()))
        self.register_buffer("offset", (basis @ mean).view(1, -1, 1, 1).clone())
        self.register_buffer("norm_const", torch.tensor(consts if consts else [0.0]))

    def forward(self, feats: list[torch.Tensor]) -> torch.Tensor:
        r = self.recipe
        hw = _grid(feats[0])
        out = None
        for i, f in enumerate(feats):
            # 1×1 convs first, on the backbone level itself (pooling/resizing commute with them): the
            # convs then read the quantized ReLU output directly (INT8 kernels, no requantization), and
            # pooling/resizing run on their float outputs
            v = _pool_resize(self.value[i](f), r.pool, hw)
            if r.normalize:
                z = _pool_resize(self.normz[i](f), r.pool, hw)
                n = (z.pow(2).sum(1, keepdim=True) + self.norm_const[i]).sqrt().clamp_min(NORM_EPS)
                v = v / n
            out = v if out is None else out + v
        return out - self.offset
