"""Plain conv students: 3×3 conv + BN + ReLU stacks (RepVGG's deploy form), designed for INT8 speed.

No depthwise, no SE, no hard-swish: ONNX Runtime's and OpenVINO's INT8 conv kernels (VNNI/AMX) and
TensorRT's take every layer, and BN folds into the conv at export. Each network declares per level its
channels and stride (timm's ``feature_info``); light 1×1 projection heads map the levels to the teacher's
channels (or through a fixed reduced basis, e.g. PCA of teacher features, see ``set_basis``).
"""
from __future__ import annotations

import collections
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from distill.embedding import EmbeddingRecipe, MergedEmbedding, reference_embedding
from distill.students.registry import register_student
from runtime.featurespec import FeatureSpec


@dataclass(frozen=True)
class PlainConfig:
    stem: tuple[int, ...]  # widths of the stride-2 stem convs that bring the input to stride 4
    widths: tuple[int, int, int, int]  # stage widths at strides 8, 16, 32, 64
    depths: tuple[int, int, int, int]  # convs per stage (the first has stride 2)


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


class PlainStudent(nn.Module):
    family = "plain"

    def __init__(self, name: str, cfg: PlainConfig, spec: FeatureSpec, *, head_outputs: tuple[HeadSpec, ...] = (),
                 embedding: EmbeddingRecipe | None = None, ranks: dict[str, int] | None = None):
        super().__init__()
        if [lv.stride for lv in spec.levels] != [8, 16, 32, 64]:
            raise ValueError(f"plain students produce strides 8/16/32/64; FeatureSpec has {[lv.stride for lv in spec.levels]}")
        self.name, self.cfg, self.spec = name, cfg, spec
        self.head_specs = tuple(head_outputs)
        self.recipe = embedding or EmbeddingRecipe()
        if len(cfg.stem) != 2:
            raise ValueError(f"the stem must bring the input to stride 4 with two stride-2 convs, got {cfg.stem}")
        ranks = dict(ranks or {})
        layers, c = [], 3
        for w in cfg.stem:
            layers.append(ConvBNReLU(c, w, stride=2))
            c = w
        self.stem = nn.Sequential(*layers)
        self.stages = nn.ModuleList()
        for w, d in zip(cfg.widths, cfg.depths):
            self.stages.append(nn.Sequential(ConvBNReLU(c, w, stride=2), *[ConvBNReLU(w, w) for _ in range(d - 1)]))
            c = w
        # timm-style feature_info: what each level of the backbone is, and what the projection emits
        self.feature_info = [dict(name=lv.name, stride=lv.stride, num_chs=w, out_chs=lv.channels)
                             for lv, w in zip(spec.levels, cfg.widths)]
        self.proj = nn.ModuleDict({lv.name: Projection(w, lv.channels, ranks.get(lv.name))
                                   for lv, w in zip(spec.levels, cfg.widths)})
        self.heads = nn.ModuleDict()
        for h in self.head_specs:
            src = self._head_source(h)
            self.heads[h.name] = nn.Conv2d(cfg.widths[src], h.channels * max(1, h.queries), 1)
        full = sum(spec.level(n).channels for n in self.recipe.levels)
        d = self.recipe.dim or full
        # fixed PCA basis of the embedding (identity until fit sets one): embedding = basis (x − mean)
        self.register_buffer("embed_basis", torch.eye(full)[:d].clone())
        self.register_buffer("embed_mean", torch.zeros(full))
        self.embed_merged: MergedEmbedding | None = None
        self.output_names = ("embedding", *spec.names, *(h.name for h in self.head_specs))
        self._Result = result_type(self.output_names)

    def _head_source(self, h: HeadSpec) -> int:
        if h.stride == 0:
            return 3
        strides = [8, 16, 32, 64]
        if h.stride not in strides and h.stride < 8:
            return 0
        return strides.index(h.stride) if h.stride in strides else 3

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.stem(x)
        out = []
        for stage in self.stages:
            x = stage(x)
            out.append(x)
        return out

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

    def fused(self) -> "PlainStudent":
        """An eval-mode copy with every BN folded into its conv (what is exported and quantized)."""
        import copy

        from torch.nn.utils.fusion import fuse_conv_bn_eval

        m = copy.deepcopy(self).eval()
        for mod in m.modules():
            if isinstance(mod, ConvBNReLU) and isinstance(mod[1], nn.BatchNorm2d):
                mod[0] = fuse_conv_bn_eval(mod[0], mod[1])
                mod[1] = nn.Identity()
        with torch.no_grad():
            heads = [m.proj[n].linear() for n in m.recipe.levels]
        m.embed_merged = MergedEmbedding(m.recipe, heads, m.embed_basis, m.embed_mean)
        return m


def _create_plain(name: str, cfg: PlainConfig, spec: FeatureSpec, **kw) -> PlainStudent:
    return PlainStudent(name, cfg, spec, **kw)


@register_student("tiny")
def plain_tiny(spec: FeatureSpec, **kw) -> PlainStudent:
    """Test variant: a few thousand parameters."""
    return _create_plain("tiny", PlainConfig(stem=(8, 8), widths=(8, 16, 16, 16), depths=(1, 1, 1, 1)), spec, **kw)


@register_student("xs")
def plain_xs(spec: FeatureSpec, **kw) -> PlainStudent:
    """~0.08M parameters with the tiny teacher's levels (~0.24M with sd15's): the demo's student, an order
    of magnitude below the tiny teacher (~3M) and student "s"; fits in a few hundred CPU steps."""
    return _create_plain("xs", PlainConfig(stem=(8, 16), widths=(16, 32, 48, 64), depths=(1, 1, 2, 1)), spec, **kw)


@register_student("s")
def plain_s(spec: FeatureSpec, **kw) -> PlainStudent:
    """~4.4M parameters with sd15 heads (3.7M with tiny ones): Jetson Orin Nano, 2-core PCs. Sized so that
    the 3×3 convs dominate: ONNX Runtime INT8 ≈ 2.1× FP32 at 256 px on one core (AVX512-VNNI)."""
    return _create_plain("s", PlainConfig(stem=(16, 32), widths=(64, 160, 224, 256), depths=(3, 4, 4, 2)), spec, **kw)


@register_student("m")
def plain_m(spec: FeatureSpec, **kw) -> PlainStudent:
    """~10–20M parameters with sd15 heads: industrial PCs with more cores, Jetson Orin NX/AGX."""
    return _create_plain("m", PlainConfig(stem=(24, 48), widths=(96, 192, 384, 512), depths=(2, 3, 4, 3)), spec, **kw)
