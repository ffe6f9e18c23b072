"""Plain conv students: 3×3 conv + BN + ReLU stacks (RepVGG's deploy form), designed for INT8 speed.

No depthwise, no SE, no hard-swish: ONNX Runtime's and OpenVINO's INT8 conv kernels (VNNI/AMX) and
TensorRT's take every layer, and BN folds into the conv at export. Projections, head copies and the
embedding are the shared ones of distill/students/base.py.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from distill.embedding import EmbeddingRecipe
from distill.students.base import ConvBNReLU, HeadSpec, Student
from distill.students.registry import register_student
from runtime.contracts.featurespec import FeatureSpec


@dataclass(frozen=True)
class PlainConfig:
    stem: tuple[int, ...]  # widths of the stride-2 stem convs that bring the input to stride 4
    widths: tuple[int, int, int, int]  # stage widths at strides 8, 16, 32, 64
    depths: tuple[int, int, int, int]  # convs per stage (the first has stride 2)


class PlainStudent(Student):
    family = "plain"

    def __init__(self, name: str, cfg: PlainConfig, spec: FeatureSpec, *, head_outputs: tuple[HeadSpec, ...] = (),
                 embedding: EmbeddingRecipe | None = None, ranks: dict[str, int] | None = None):
        if len(cfg.stem) != 2:
            raise ValueError(f"the stem must bring the input to stride 4 with two stride-2 convs, got {cfg.stem}")
        super().__init__(name, cfg.widths, spec, head_outputs=head_outputs, embedding=embedding, ranks=ranks)
        self.cfg = cfg
        layers, c = [], 3
        for w in cfg.stem:
            layers.append(ConvBNReLU(c, w, stride=2))
            c = w
        self.stem = nn.Sequential(*layers)
        self.stages = nn.ModuleList()
        for w, d in zip(cfg.widths, cfg.depths):
            self.stages.append(nn.Sequential(ConvBNReLU(c, w, stride=2), *[ConvBNReLU(w, w) for _ in range(d - 1)]))
            c = w

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.stem(x)
        out = []
        for stage in self.stages:
            x = stage(x)
            out.append(x)
        return out


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
