"""FPN pixel decoder (§4.6): the four t=50 feature maps -> per-pixel embeddings F (hidden, h, w) at the
finest level, plus the three coarser FPN outputs the query decoder attends to (Mask2Former feeds its
transformer decoder the 1/32, 1/16, 1/8 maps round-robin; here the levels below the finest)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _norm(c: int) -> nn.GroupNorm:
    return nn.GroupNorm(min(32, c // 4) if c >= 8 else 1, c)


class FPNPixelDecoder(nn.Module):
    def __init__(self, in_channels: list[int], hidden_dim: int = 256, mask_dim: int = 256):
        """``in_channels`` finest level first (s8, s16, s32, s64)."""
        super().__init__()
        self.lateral = nn.ModuleList(
            nn.Sequential(nn.Conv2d(c, hidden_dim, 1, bias=False), _norm(hidden_dim)) for c in in_channels)
        self.output = nn.ModuleList(
            nn.Sequential(nn.Conv2d(hidden_dim, hidden_dim, 3, padding=1, bias=False), _norm(hidden_dim), nn.ReLU())
            for _ in in_channels)
        self.mask_proj = nn.Conv2d(hidden_dim, mask_dim, 1)

    def forward(self, feats: list[torch.Tensor]) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """feats finest first -> (mask_features (B, mask_dim, h0, w0), multi-scale list coarsest first)."""
        y = None
        outs: list[torch.Tensor] = []
        for i in range(len(feats) - 1, -1, -1):  # top-down: coarsest to finest
            lat = self.lateral[i](feats[i])
            if y is not None:
                lat = lat + F.interpolate(y, size=lat.shape[-2:], mode="nearest")
            y = self.output[i](lat)
            outs.append(y)
        mask_features = self.mask_proj(y)  # (B, mask_dim, h0, w0), F of §4.6
        multi = outs[:-1] if len(outs) > 1 else outs  # coarse levels for masked cross-attention
        return mask_features, multi
