"""`teacher train-vae`: the preset's autoencoder trained on the dataset's images when no pretrained VAE is at hand
(teacher/train_vae.py); a diffusers directory that `teacher train --vae DIR` loads.

    teacher train-vae --preset tiny --data D/manifest.jsonl --out VAE --steps 300
"""
from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

from runtime.cli.dispatch import dataset_path, positive_int
from runtime.cli.dispatch import print_json
from teacher.presets import PRESETS


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("--preset", default="tiny", help=f"one of {sorted(PRESETS)}")
    p.add_argument("--data", type=dataset_path, required=True)
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


def run(args: argparse.Namespace) -> int:
    import torch

    from runtime.contracts.dataset import DatasetError, load_dataset
    from teacher.device import default_device
    from teacher.latent import build_autoencoder, is_lossless
    from teacher.presets import get_preset
    from teacher.train_vae import fit_lossless, train_autoencoder
    from teacher.trainset import ImageCaptionSet, manifest_path

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
        summary = fit_lossless(vae, data, out, preset.name, device)
        if args.json:
            print_json(summary)
        else:
            print(f"teacher train-vae: {type(vae).__name__} is lossless, nothing to train; scaling factor "
                  f"{summary['scaling_factor']:.4f} -> {out}")
        return 0
    crop = min(args.crop_size or d.vae_crop_size, data.size)
    if crop % 8 or crop > data.size:
        print(f"teacher train-vae: --crop-size {crop} must be a multiple of 8 and <= {data.size}", file=sys.stderr)
        return 2
    summary = train_autoencoder(vae, ds, data, out, preset=preset.name, steps=args.steps, batch_size=bs, lr=lr,
                                kl_weight=kl_w, crop=crop, seed=args.seed, device=device)
    if args.json:
        print_json(summary)
    else:
        print(f"teacher train-vae: psnr {summary['psnr']} dB (val {summary['val_psnr']} dB) -> {out}")
    return 0
