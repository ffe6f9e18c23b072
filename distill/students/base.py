"""What every student shares, whatever its backbone: four levels at strides 8/16/32/64, light 1×1
projection heads to the teacher's channels (or through a fixed reduced basis, e.g. PCA of teacher
features, see ``set_basis``), 1×1 copies of the teacher's head outputs, and the bank embedding.

A family subclasses :class:`Student`, builds its backbone and implements ``features(x)`` (four maps, timm's
``forward_features`` with ``feature_info``); ``load_pretrained`` loads its ImageNet weights where it has any.
"""
from __future__ import annotations

import collections
import copy
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from distill.embedding import EmbeddingRecipe, MergedEmbedding, reference_embedding
from runtime.contracts.featurespec import FeatureSpec

STRIDES = (8, 16, 32, 64)


@dataclass(frozen=True)
class HeadSpec:
    """A distilled copy of one teacher head output: spatial logits (B, channels, S/stride, S/stride) when
    stride > 0, else global logits (B, channels), or (B, queries, channels) when queries > 0."""
    name: str  # ONNX output name, e.g. "mask_logits", "class_logits"
    channels: int
    stride: int
    queries: int = 0


class ConvBNReLU(nn.Sequential):
    def __init__(self, cin: int, cout: int, stride: int = 1, k: int = 3):
        super().__init__(nn.Conv2d(cin, cout, k, stride, k // 2, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


_RESULT_TYPES: dict[tuple[str, ...], type] = {}


def result_type(names: tuple[str, ...]) -> type:
    """A NamedTuple type per output-name set: its fields are the ONNX output names."""
    if names not in _RESULT_TYPES:
        _RESULT_TYPES[names] = collections.namedtuple("StudentOutput", names)
    return _RESULT_TYPES[names]


class Projection(nn.Module):
    """1×1 conv to the teacher's channels, optionally through a fixed rank-r basis (r → C, frozen)."""

    def __init__(self, cin: int, cout: int, rank: int | None = None):
        super().__init__()
        self.rank = rank
        if rank is None:
            self.proj = nn.Conv2d(cin, cout, 1)
            self.basis = None
        else:
            self.proj = nn.Conv2d(cin, rank, 1)
            self.basis = nn.Conv2d(rank, cout, 1)
            self.basis.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.proj(x)
        return x if self.basis is None else self.basis(x)

    def linear(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The head as one affine map: weight (C_out, C_in), bias (C_out,)."""
        w, b = self.proj.weight[:, :, 0, 0], self.proj.bias
        if self.basis is not None:
            wb = self.basis.weight[:, :, 0, 0]
            w, b = wb @ w, wb @ b + self.basis.bias
        return w, b


class Student(nn.Module):
    """Projections, head copies and embedding on a backbone whose levels have ``widths`` channels."""
    family = ""

    def __init__(self, name: str, widths: tuple[int, int, int, int], spec: FeatureSpec, *,
                 head_outputs: tuple[HeadSpec, ...] = (), embedding: EmbeddingRecipe | None = None,
                 ranks: dict[str, int] | None = None):
        super().__init__()
        if tuple(lv.stride for lv in spec.levels) != STRIDES:
            raise ValueError(f"students produce strides 8/16/32/64; FeatureSpec has {[lv.stride for lv in spec.levels]}")
        self.name, self.widths, self.spec = name, tuple(widths), spec
        self.head_specs = tuple(head_outputs)
        self.recipe = embedding or EmbeddingRecipe()
        ranks = dict(ranks or {})
        # timm-style feature_info: what each level of the backbone is, and what the projection emits
        self.feature_info = [dict(name=lv.name, stride=lv.stride, num_chs=w, out_chs=lv.channels)
                             for lv, w in zip(spec.levels, widths)]
        self.proj = nn.ModuleDict({lv.name: Projection(w, lv.channels, ranks.get(lv.name))
                                   for lv, w in zip(spec.levels, widths)})
        self.heads = nn.ModuleDict()
        for h in self.head_specs:
            self.heads[h.name] = nn.Conv2d(widths[self._head_source(h)], h.channels * max(1, h.queries), 1)
        full = sum(spec.level(n).channels for n in self.recipe.levels)
        d = self.recipe.dim or full
        # fixed PCA basis of the embedding (identity until fit sets one): embedding = basis (x − mean)
        self.register_buffer("embed_basis", torch.eye(full)[:d].clone())
        self.register_buffer("embed_mean", torch.zeros(full))
        self.embed_merged: MergedEmbedding | None = None
        self.output_names = ("embedding", *spec.names, *(h.name for h in self.head_specs))
        self._Result = result_type(self.output_names)

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The backbone's four levels, strides 8/16/32/64, ``widths`` channels."""
        raise NotImplementedError

    def load_pretrained(self) -> str | None:
        """Load the backbone's pretrained weights; returns where they came from, or None if it has none."""
        return None

    def pretrained_parameters(self) -> list[nn.Parameter]:
        """The parameters ``load_pretrained`` fills (none for a backbone without pretrained weights)."""
        return []

    def _head_source(self, h: HeadSpec) -> int:
        if h.stride == 0:
            return 3
        if h.stride not in STRIDES and h.stride < 8:
            return 0
        return STRIDES.index(h.stride) if h.stride in STRIDES else 3

    def forward(self, image: torch.Tensor):
        feats = self.features(image)
        levels = {lv.name: self.proj[lv.name](f) for lv, f in zip(self.spec.levels, feats)}
        heads = {}
        for h in self.head_specs:
            f = self.heads[h.name](feats[self._head_source(h)])
            if h.stride == 0:
                f = f.mean(dim=(2, 3))  # (B, K) or (B, Q*K)
                if h.queries:
                    f = f.reshape(f.shape[0], h.queries, h.channels)
            elif h.stride < 8:
                f = F.interpolate(f, scale_factor=8 // h.stride, mode="bilinear", align_corners=False)
            heads[h.name] = f
        return self._Result(self.embedding(feats, levels), *levels.values(), *heads.values())

    def embedding(self, feats: list[torch.Tensor], levels: dict[str, torch.Tensor]) -> torch.Tensor:
        """The teacher's bank recipe on the projected levels, PCA-reduced (see distill/embedding.py)."""
        if self.embed_merged is not None:  # frozen export form (fused()): works on the backbone levels
            idx = {lv.name: i for i, lv in enumerate(self.spec.levels)}
            return self.embed_merged([feats[idx[n]] for n in self.recipe.levels])
        return reference_embedding(levels, self.recipe, self.embed_basis, self.embed_mean)

    def set_embedding_basis(self, basis: torch.Tensor, mean: torch.Tensor) -> None:
        if basis.shape != self.embed_basis.shape or mean.shape != self.embed_mean.shape:
            raise ValueError(f"embedding basis {tuple(basis.shape)}/{tuple(mean.shape)} != "
                             f"{tuple(self.embed_basis.shape)}/{tuple(self.embed_mean.shape)}")
        self.embed_basis.copy_(basis)
        self.embed_mean.copy_(mean)

    def set_basis(self, level: str, components: torch.Tensor, mean: torch.Tensor) -> None:
        """Fix a level's reduced basis: teacher ≈ mean + components.T @ code, components (r, C)."""
        p = self.proj[level]
        if p.basis is None or components.shape != (p.rank, p.basis.out_channels):
            raise ValueError(f"level {level}: basis must be ({p.rank}, C) on a projection built with that rank")
        with torch.no_grad():
            p.basis.weight.copy_(components.T[:, :, None, None])
            p.basis.bias.copy_(mean)

    def fold_batchnorms(self) -> None:
        """Fold every BN into the conv before it (eval mode); a family whose BNs are not in ConvBNReLU
        overrides this."""
        from torch.nn.utils.fusion import fuse_conv_bn_eval

        for mod in self.modules():
            if isinstance(mod, ConvBNReLU) and isinstance(mod[1], nn.BatchNorm2d):
                mod[0] = fuse_conv_bn_eval(mod[0], mod[1])
                mod[1] = nn.Identity()

    def fused(self) -> "Student":
        """An eval-mode copy with every BN folded into its conv (what is exported and quantized)."""
        m = copy.deepcopy(self).eval()
        m.fold_batchnorms()
        with torch.no_grad():
            heads = [m.proj[n].linear() for n in m.recipe.levels]
        m.embed_merged = MergedEmbedding(m.recipe, heads, m.embed_basis, m.embed_mean)
        return m
