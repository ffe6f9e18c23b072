"""Text-guided defect images from a stage-1 checkpoint (`teacher generate`, teacher/commands/generate.py): DDIM
sampling (diffusers DDIMScheduler) with classifier-free guidance against the learned null embedding, a PNG grid.

    teacher generate --checkpoint CKPT --prompt "metal plate with scratches" --n 8 --guidance 5 --steps 50 --out grid.png

eps = eps(z, t, null) + w * (eps(z, t, e_T) - eps(z, t, null)), w = --guidance (Ho & Salimans 2022).
"""
from __future__ import annotations

import math
from pathlib import Path

import cv2
import numpy as np
import torch


@torch.no_grad()
def sample(model, prompt: str, n: int = 8, guidance: float = 5.0, steps: int = 50, seed: int = 0,
           eta: float = 0.0) -> torch.Tensor:
    """(n, 3, S, S) float images in [0, 1]."""
    from diffusers import DDIMScheduler

    model.eval()
    dev = model.device
    sched = DDIMScheduler.from_config(model.scheduler.config)
    sched.set_timesteps(steps, device=dev)
    s = model.feature_spec.image_size // 8
    g = torch.Generator().manual_seed(seed)
    z = torch.randn((n, model.vae.config.latent_channels, s, s), generator=g).to(dev) * sched.init_noise_sigma
    cond = model.embed_texts([prompt]).expand(n, -1)  # Eq. (3): e_T, (n, D)
    null = model.captioner.null(n)
    ctx = torch.cat([null, cond])[:, None, :]  # (2n, 1, D)
    for t in sched.timesteps:
        zz = sched.scale_model_input(torch.cat([z, z]), t)
        eps_u, eps_c = model.unet(zz, t, encoder_hidden_states=ctx).sample.chunk(2)
        eps = eps_u + guidance * (eps_c - eps_u)
        z = sched.step(eps, t, z, eta=eta, generator=g if eta > 0 else None).prev_sample
    img = model.vae.decode(z / model.vae.config.scaling_factor).sample
    return ((img.float() + 1) / 2).clamp(0, 1)


def grid_png(images01: torch.Tensor, path: str | Path) -> Path:
    n, _, h, w = images01.shape
    cols = math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    canvas = np.full((rows * h + (rows + 1) * 2, cols * w + (cols + 1) * 2, 3), 255, np.uint8)
    arr = (images01.permute(0, 2, 3, 1).cpu().numpy() * 255).round().astype(np.uint8)
    for i in range(n):
        r, c = divmod(i, cols)
        y, x = 2 + r * (h + 2), 2 + c * (w + 2)
        canvas[y:y + h, x:x + w] = arr[i]
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(p), cv2.cvtColor(canvas, cv2.COLOR_RGB2BGR)):
        raise OSError(f"cannot write {p}")
    return p
