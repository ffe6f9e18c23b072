"""Train the preset's AutoencoderKL on the dataset's images when no pretrained VAE is at hand (`teacher train-vae`,
teacher/commands/train_vae.py; the paper uses the frozen SD VAE, Eq. 1). A preset with the lossless pixel-unshuffle latent
(teacher/latent.py) has nothing to train: only its scaling factor is fitted. The result is a diffusers directory that
`teacher train --vae DIR` loads; its scaling_factor is set to 1/std of the training latents, as SD's
0.18215 was, so the U-Net sees unit-variance latents.

    teacher train-vae --preset tiny --data D/manifest.jsonl --out VAE --steps 300

Loss: L1 + MSE reconstruction + kl_weight * KL(q(z|x) || N(0, I)). One process (the VAE is small
next to the U-Net; for sd15 use the pretrained SD VAE).
"""
from __future__ import annotations

import json
import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from teacher.augment import augment
from teacher.trainset import BatchOrder, ImageCaptionSet, collate


@torch.no_grad()
def latent_scaling_factor(vae, data: ImageCaptionSet, device, max_images: int = 256) -> float:
    """1 / std of the posterior means over (up to) ``max_images`` training images."""
    zs = []
    for i in range(0, min(len(data), max_images), 16):
        imgs, _ = collate([data[j] for j in range(i, min(i + 16, len(data), max_images))])
        zs.append(vae.encode(imgs.to(device).float() / 127.5 - 1).latent_dist.mean.flatten())
    return float(1.0 / torch.cat(zs).std().clamp_min(1e-6))


@torch.no_grad()
def reconstruction_psnr(vae, data: ImageCaptionSet, device, max_images: int = 64) -> float:
    """PSNR (dB, images in [0, 1]) of posterior-mean reconstructions of whole images (not crops): how much
    detail survives the latent the U-Net sees. Same dB scale as the training PSNR (peak-to-peak 2 on [-1, 1])."""
    se, n = 0.0, 0
    for i in range(0, min(len(data), max_images), 16):
        imgs, _ = collate([data[j] for j in range(i, min(i + 16, len(data), max_images))])
        x = imgs.to(device).float() / 127.5 - 1
        recon = vae.decode(vae.encode(x).latent_dist.mean).sample.clamp(-1, 1)
        se += float(((recon - x) ** 2).sum())
        n += x.numel()
    return round(10 * math.log10(4.0 / max(se / max(n, 1), 1e-12)), 2)


def random_crops(x: torch.Tensor, size: int, g: torch.Generator) -> torch.Tensor:
    """One random size x size crop per image of (B, C, S, S)."""
    s = x.shape[-1]
    if size >= s:
        return x
    off = torch.randint(0, s - size + 1, (x.shape[0], 2), generator=g).tolist()
    return torch.stack([x[i, :, r:r + size, c:c + size] for i, (r, c) in enumerate(off)])


def fit_lossless(vae, data: ImageCaptionSet, out: Path, preset: str, device) -> dict:
    """A lossless latent has nothing to learn but its scaling factor: fit that and save -> the summary."""
    t0 = time.time()
    sf = latent_scaling_factor(vae, data, device)
    vae.register_to_config(scaling_factor=sf)
    out.mkdir(parents=True, exist_ok=True)
    vae.save_pretrained(out)
    summary = {"vae": str(out.resolve()), "kind": type(vae).__name__, "lossless": True, "steps": 0,
               "psnr": None, "val_psnr": None, "scaling_factor": sf, "seconds": round(time.time() - t0, 2),
               "preset": preset}
    (out / "train_vae.json").write_text(json.dumps(summary, indent=1))
    return summary


def train_autoencoder(vae, ds, data: ImageCaptionSet, out: Path, *, preset: str, steps: int, batch_size: int,
                      lr: float, kl_weight: float, crop: int, seed: int, device) -> dict:
    """Train ``vae`` on ``data`` (random ``crop`` px crops of augmented images), fit its scaling factor, save it
    to ``out`` with metrics.jsonl, loss.png and train_vae.json -> the summary."""
    from runtime.progress import progress

    opt = torch.optim.AdamW(vae.parameters(), lr=lr, weight_decay=1e-4)
    warm = max(1, steps // 20)
    def lr_factor(s: int) -> float:  # linear warm-up, cosine decay to 0.1
        return min(1.0, (s + 1) / warm) * (0.1 + 0.45 * (1 + math.cos(math.pi * min(1.0, s / steps))))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_factor)
    order = BatchOrder(len(data), batch_size, 1, 0, seed)
    out.mkdir(parents=True, exist_ok=True)
    metrics = open(out / "metrics.jsonl", "w")
    bar = progress(steps, "teacher train-vae")
    t_start, rec = time.time(), float("nan")
    vae.train()
    for step, (_, _, idx) in zip(range(1, steps + 1), order.batches_from(0, 0)):
        g = torch.Generator().manual_seed(seed * 1_000_003 + step)
        imgs, _ = collate([data[i] for i in idx])
        x = augment(imgs.to(device).float() / 255.0, g) * 2 - 1
        x = random_crops(x, crop, g)
        post = vae.encode(x).latent_dist
        z = post.mean + post.std * torch.randn(post.mean.shape, generator=g).to(device)
        recon = vae.decode(z).sample
        l1, l2 = F.l1_loss(recon, x), F.mse_loss(recon, x)
        kl = post.kl().mean() / x[0].numel()  # per pixel, so kl_weight does not depend on resolution
        loss = l1 + l2 + kl_weight * kl
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        opt.step()
        sched.step()
        rec = l2.item()
        psnr = 10 * math.log10(4.0 / max(rec, 1e-12))  # images in [-1, 1]: peak-to-peak 2
        metrics.write(json.dumps({"step": step, "loss": loss.item(), "l1": l1.item(), "mse": rec, "kl": kl.item(),
                                  "psnr": round(psnr, 3), "lr": sched.get_last_lr()[0]}) + "\n")
        bar.set_postfix(loss=f"{loss.item():.4f}", psnr=f"{psnr:.1f}")
        bar.update(1)
    bar.close()
    metrics.close()
    vae.eval()
    sf = latent_scaling_factor(vae, data, device)
    val_recs = ds.split("val")
    val = ImageCaptionSet(ds, val_recs, data.size) if val_recs else data  # no val split: train images
    val_psnr = reconstruction_psnr(vae, val, device)
    vae.register_to_config(scaling_factor=sf)
    vae.save_pretrained(out)
    from teacher.plots import loss_curve

    loss_curve(out / "metrics.jsonl", out / "loss.png")
    summary = {"vae": str(out.resolve()), "steps": steps, "mse": rec,
               "psnr": round(10 * math.log10(4.0 / max(rec, 1e-12)), 2), "val_psnr": val_psnr,
               "val_split": "val" if val_recs else "train", "scaling_factor": sf, "crop_size": crop,
               "seconds": round(time.time() - t_start, 2), "preset": preset}
    (out / "train_vae.json").write_text(json.dumps(summary, indent=1))
    return summary
