"""`teacher train`: stage 1, the text-conditioned diffusion U-Net from random init (paper §4.3-4.4, Table 8).

One process (CPU or one GPU):
    teacher train --preset tiny --data D/manifest.jsonl --out CKPT --steps 200 [--vae VAE]
Several GPUs / nodes (DDP is detected from RANK; NCCL on GPU, gloo on CPU):
    torchrun --nproc-per-node 8 -m teacher train --preset sd15 --data D/manifest.jsonl --out CKPT --steps 484500 \
        --vae SD_VAE --text-encoder CLIP_TEXT --image-encoder CLIP_VISION --gradient-checkpointing
Resume: the same line plus --resume; weights, EMA, optimiser, LR schedule, step, RNG and sampler
position continue exactly. Only rank 0 logs and saves.
"""
from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

from runtime.cli.dispatch import dataset_path, input_dir, positive_int, print_json
from runtime.contracts.dataset import DatasetError, load_dataset
from runtime.contracts.formats import ContractError
from teacher.presets import PRESETS, get_preset

# torch, the training loop and the torch dataset are imported in run(): `teacher train --help` must not pay for them

CHECK_FILES_MAX = 20_000  # above this, a full decode pass at start-up costs more than it saves


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("--preset", default="tiny", help=f"one of {sorted(PRESETS)}")
    p.add_argument("--data", type=dataset_path, required=True, help="dataset manifest.jsonl (its train split is used)")
    p.add_argument("--out", required=True, help="checkpoint directory")
    p.add_argument("--steps", type=positive_int, required=True, help="total optimiser steps of the run")
    p.add_argument("--vae", type=input_dir, help="pretrained diffusers AutoencoderKL directory (frozen); "
                   "else random-init, see train-vae")
    p.add_argument("--text-encoder", type=input_dir, help="transformers CLIP text model directory (frozen, with its tokenizer)")
    p.add_argument("--image-encoder", type=input_dir, help="transformers CLIPVisionModelWithProjection directory (frozen)")
    p.add_argument("--init-from", type=input_dir, metavar="SRC", help="start from trained weights: a lineside teacher checkpoint "
                   "(the shipped foundation: teacher/foundation) or a diffusers pipeline directory (unet/, vae/, "
                   "text_encoder/, tokenizer/), see teacher/init_from.py")
    p.add_argument("--resume", action="store_true", help="continue the run saved in --out")
    p.add_argument("--overwrite", action="store_true", help="replace an existing checkpoint in --out")
    p.add_argument("--seed", type=int, help="default 0 (a resumed run keeps its own)")
    p.add_argument("--batch-size", type=int, help="per process (default: the preset's)")
    p.add_argument("--image-size", type=int, help="training resolution (default: the preset's)")
    p.add_argument("--lr", type=float)
    p.add_argument("--warmup-steps", type=int, help="linear LR warm-up steps (default: the preset's)")
    p.add_argument("--ema-decay", type=float, help="EMA decay of the saved weights (default: the preset's)")
    p.add_argument("--align-weight", type=float, help="λ of the representation alignment to ImageNet "
                   "EfficientNet-Lite0 (teacher/align.py); 0 turns it off (default: the preset's)")
    p.add_argument("--grad-clip", type=float, help="gradient-norm clip (default: the preset's)")
    p.add_argument("--mixed-precision", choices=["auto", "no", "fp16", "bf16"], default="auto",
                   help="auto: bf16 on a GPU that has it, else fp16 with a scaler; fp32 on CPU")
    p.add_argument("--init", choices=["paper", "default"], default="default",
                   help="U-Net init of a fresh run: paper = He (conv) / Xavier (linear), §11.3; default = diffusers'")
    p.add_argument("--gradient-checkpointing", action="store_true", help="recompute U-Net activations in the backward "
                   "pass: less memory, more time (sd15 on one GPU)")
    p.add_argument("--no-augment", action="store_true")
    p.add_argument("--save-every", type=int, default=0, help="also save every N steps (0: only at the end)")
    p.add_argument("--stop-after", type=int, default=0, help="save and stop after this step (a planned interruption)")
    p.add_argument("--num-workers", type=int, default=0, help="data-loading worker processes")
    p.add_argument("--device", help="cpu, cuda, cuda:1 (default: cuda if available)")
    p.add_argument("--check-files", action=argparse.BooleanOptionalAction, default=None,
                   help=f"decode every image and mask before training (default: when <= {CHECK_FILES_MAX} records)")
    p.add_argument("--json", action="store_true", help="print one JSON summary as the last stdout line")


def run(args: argparse.Namespace) -> int:
    from teacher import train_loop
    from teacher.trainset import caption_for, manifest_path

    try:
        preset = get_preset(args.preset)
    except KeyError as e:
        print(f"teacher train: {e.args[0]}", file=sys.stderr)
        return 2
    from teacher.distributed import dist_setup, dist_teardown

    rank, world, device = dist_setup(args.device)
    out = Path(args.out)
    try:
        ds = load_dataset(manifest_path(args.data), check_files=False)
        if args.check_files or (args.check_files is None and len(ds) <= CHECK_FILES_MAX):
            ds = load_dataset(manifest_path(args.data), check_files=True)  # decodes every image once
        records = ds.split("train")
        if not records:
            raise DatasetError(f"{ds.manifest}: no records with split 'train'")
        sources = {"vae": str(Path(args.vae).resolve()) if args.vae else None,
                   "text_encoder": str(Path(args.text_encoder).resolve()) if args.text_encoder else None,
                   "image_encoder": str(Path(args.image_encoder).resolve()) if args.image_encoder else None}
        if args.init_from:
            from teacher.init_from import source_kind

            source_kind(args.init_from)  # says what SRC lacks before any work
            given = [f"--{n.replace('_', '-')}" for n in ("vae", "text_encoder", "image_encoder") if getattr(args, n)]
            if given:
                raise ContractError(f"--init-from brings its own parts; drop {', '.join(given)}")
        size = args.image_size or preset.image_size
        if size % 64:
            raise ContractError(f"--image-size {size} must be a multiple of 64 (the coarsest feature stride)")
        expect = {"preset": preset.name, "dataset_hash": ds.content_hash(),
                  "image_size": args.image_size or preset.image_size, "sources": sources}
        if args.resume:
            from teacher.train_state import check_resume

            check_resume(out, expect)
        elif (out / "config.json").exists() and not args.overwrite:
            raise ContractError(f"{out} already holds a checkpoint; pass --resume to continue it or --overwrite")
        if rank == 0 and not args.resume and args.overwrite and out.exists():
            shutil.rmtree(out)
    except (DatasetError, ContractError) as e:
        print(f"teacher train: {e}", file=sys.stderr)
        dist_teardown(world)
        return 2
    texts = [caption_for(r) for r in ds.records] + [r.product for r in ds.records] + \
        [r.defect_type.replace("_", " ") for r in ds.records]
    t0 = time.time()
    try:
        summary = train_loop.train(args, preset, ds, records, texts, rank=rank, world=world, device=device)
    except ContractError as e:  # parts that do not fit (e.g. a --vae with other latent channels)
        print(f"teacher train: {e}", file=sys.stderr)
        dist_teardown(world)
        return 2
    dist_teardown(world)
    if rank == 0:
        summary["seconds"] = round(time.time() - t0, 2)
        if args.json:
            print_json(summary)
        else:
            print(f"teacher train: step {summary['step']} loss {summary['loss']:.4f} -> {summary['checkpoint']}",
                  file=sys.stderr)
    return 0
