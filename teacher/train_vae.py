"""`teacher train-vae`: train the preset's AutoencoderKL on the dataset's images when no pretrained VAE
is at hand (the paper uses the frozen SD VAE, Eq. 1). A preset with the lossless pixel-unshuffle latent
(teacher/latent.py) has nothing to train: only its scaling factor is fitted. The result is a diffusers directory that
`teacher train --vae DIR` loads; its scaling_factor is set to 1/std of the training latents, as SD's
0.18215 was, so the U-Net sees unit-variance latents.

    teacher train-vae --preset tiny --data D/manifest.jsonl --out VAE --steps 300

Loss: L1 + MSE reconstruction + kl_weight * KL(q(z|x) || N(0, I)). One process (the VAE is small
next to the U-Net; for sd15 use the pretrained SD VAE).
"""
from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from runtime.cli.dispatch import positive_int
from runtime.contracts.dataset import DatasetError, load_dataset
from teacher.augment import augment
from teacher.device import default_device
from teacher.latent import build_autoencoder, is_lossless
from teacher.presets import PRESETS, get_preset
from teacher.trainset import BatchOrder, ImageCaptionSet, collate, manifest_path


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("--preset", default="tiny", help=f"one of {sorted(PRESETS)}")
    p.add_argument("--data", required=True)
    p.add_argument("--out", required=True, help="VAE directory (diffusers save_pretrained layout)")
    p.add_argument("--steps", type=positive_int, required=True)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument("--kl-weight", type=float, help="weight of the KL term (default: the preset's)")
    p.add_argument("--image-size", type=int)
    p.add_argument("--crop-size", type=int, help="train on random square crops of this size (the VAE is fully "
                   "convolutional; default: the preset's, 64 px for tiny, 4x cheaper per image than 128 px)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device")
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("--json", action="store_true")


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


def fit_lossless(vae, data: ImageCaptionSet, out: Path, preset: str, device, as_json: bool) -> int:
    """A lossless latent has nothing to learn but its scaling factor: fit that and save."""
    t0 = time.time()
    sf = latent_scaling_factor(vae, data, device)
    vae.register_to_config(scaling_factor=sf)
    out.mkdir(parents=True, exist_ok=True)
    vae.save_pretrained(out)
    summary = {"vae": str(out.resolve()), "kind": type(vae).__name__, "lossless": True, "steps": 0,
               "psnr": None, "val_psnr": None, "scaling_factor": sf, "seconds": round(time.time() - t0, 2),
               "preset": preset}
    (out / "train_vae.json").write_text(json.dumps(summary, indent=1))
    print(json.dumps(summary) if as_json else f"teacher train-vae: {type(vae).__name__} is lossless, nothing to "
                                              f"train; scaling factor {sf:.4f} -> {out}")
    return 0


def run(args: argparse.Namespace) -> int:
    from runtime.progress import progress

    try:
        preset = get_preset(args.preset)
        ds = load_dataset(manifest_path(args.data))
        data = ImageCaptionSet(ds, ds.split("train"), args.image_size or preset.image_size)
    except (KeyError, DatasetError) as e:
        print(f"teacher train-vae: {e.args[0] if isinstance(e, KeyError) else e}", file=sys.stderr)
        return 2
    out = Path(args.out)
    if (out / "config.json").exists():
        if not args.overwrite:
            print(f"teacher train-vae: {out} already holds a VAE; pass --overwrite", file=sys.stderr)
            return 2
        shutil.rmtree(out)
    d = preset.train
    device = torch.device(default_device(args.device))
    bs, lr = args.batch_size or d.vae_batch_size, args.lr or d.vae_lr
    kl_w = d.vae_kl_weight if args.kl_weight is None else args.kl_weight
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(args.seed)
        vae = build_autoencoder(preset.vae).to(device)
    if is_lossless(vae):
        return fit_lossless(vae, data, out, preset.name, device, args.json)
    opt = torch.optim.AdamW(vae.parameters(), lr=lr, weight_decay=1e-4)
    warm = max(1, args.steps // 20)
    def lr_factor(s: int) -> float:  # linear warm-up, cosine decay to 0.1
        return min(1.0, (s + 1) / warm) * (0.1 + 0.45 * (1 + math.cos(math.pi * min(1.0, s / args.steps))))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_factor)
    order = BatchOrder(len(data), bs, 1, 0, args.seed)
    crop = min(args.crop_size or d.vae_crop_size, data.size)
    if crop % 8 or crop > data.size:
        print(f"teacher train-vae: --crop-size {crop} must be a multiple of 8 and <= {data.size}", file=sys.stderr)
        return 2
    out.mkdir(parents=True, exist_ok=True)
    metrics = open(out / "metrics.jsonl", "w")
    bar = progress(args.steps, "teacher train-vae")
    t_start, rec = time.time(), float("nan")
    vae.train()
    for step, (_, _, idx) in zip(range(1, args.steps + 1), order.batches_from(0, 0)):
        g = torch.Generator().manual_seed(args.seed * 1_000_003 + step)
        imgs, _ = collate([data[i] for i in idx])
        x = augment(imgs.to(device).float() / 255.0, g) * 2 - 1
        x = random_crops(x, crop, g)
        post = vae.encode(x).latent_dist
        z = post.mean + post.std * torch.randn(post.mean.shape, generator=g).to(device)
        recon = vae.decode(z).sample
        l1, l2 = F.l1_loss(recon, x), F.mse_loss(recon, x)
        kl = post.kl().mean() / x[0].numel()  # per pixel, so kl_weight does not depend on resolution
        loss = l1 + l2 + kl_w * kl
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
    summary = {"vae": str(out.resolve()), "steps": args.steps, "mse": rec,
               "psnr": round(10 * math.log10(4.0 / max(rec, 1e-12)), 2), "val_psnr": val_psnr,
               "val_split": "val" if val_recs else "train", "scaling_factor": sf, "crop_size": crop,
               "seconds": round(time.time() - t_start, 2), "preset": preset.name}
    (out / "train_vae.json").write_text(json.dumps(summary, indent=1))
    print(json.dumps(summary) if args.json else f"teacher train-vae: psnr {summary['psnr']} dB "
                                                   f"(val {val_psnr} dB) -> {out}")
    return 0
