"""Exponential moving average of the trained parts' weights (paper Table 8: decay 0.9999, updated
every iteration), with diffusers' EMAModel warm-up: decay_t = min(decay, (1 + n) / (10 + n)).

Kept per module name so the averaged weights can be written in each module's own save_pretrained
layout (``swapped`` puts them into the live modules for the length of a ``with``).
"""
from __future__ import annotations

import contextlib
from typing import Iterator

import torch
from torch import nn


class EMA:
    def __init__(self, modules: dict[str, nn.Module], decay: float):
        self.decay = float(decay)
        self.num_updates = 0
        self.shadow: dict[str, dict[str, torch.Tensor]] = {
            name: {k: p.detach().clone().float() for k, p in m.named_parameters() if p.requires_grad}
            for name, m in modules.items()}

    def current_decay(self) -> float:
        n = self.num_updates
        return min(self.decay, (1 + n) / (10 + n))

    @torch.no_grad()
    def update(self, modules: dict[str, nn.Module]) -> None:
        d = self.current_decay()
        shadows, params = [], []
        for name, m in modules.items():
            sh = self.shadow[name]
            for k, p in m.named_parameters():
                if k in sh:
                    shadows.append(sh[k])
                    params.append(p.detach().float())
        torch._foreach_lerp_(shadows, params, 1.0 - d)  # s = d*s + (1-d)*p, one fused launch per dtype/device
        self.num_updates += 1

    @contextlib.contextmanager
    def swapped(self, modules: dict[str, nn.Module]) -> Iterator[None]:
        """Inside the block the modules hold the EMA weights; the live ones come back afterwards."""
        backup: dict[str, dict[str, torch.Tensor]] = {}
        with torch.no_grad():
            for name, m in modules.items():
                backup[name] = {}
                for k, p in m.named_parameters():
                    if k in self.shadow[name]:
                        backup[name][k] = p.detach().clone()
                        p.copy_(self.shadow[name][k].to(p.dtype))
        try:
            yield
        finally:
            with torch.no_grad():
                for name, m in modules.items():
                    for k, p in m.named_parameters():
                        if k in backup[name]:
                            p.copy_(backup[name][k])

    @torch.no_grad()
    def load_from(self, modules: dict[str, nn.Module], num_updates: int) -> None:
        """Resume: take the EMA weights from modules loaded out of a checkpoint's ema/ folder."""
        for name, m in modules.items():
            params = dict(m.named_parameters())
            for k in self.shadow[name]:
                self.shadow[name][k].copy_(params[k].detach().float())
        self.num_updates = int(num_updates)
