"""`teacher generate`: text-guided defect images from a stage-1 checkpoint (DDIM + classifier-free guidance,
teacher/generate.py), saved as a PNG grid.

    teacher generate --checkpoint CKPT --prompt "metal plate with scratches" --n 8 --guidance 5 --steps 50 --out grid.png
"""
from __future__ import annotations

import argparse
import sys

from runtime.cli.dispatch import input_dir, print_json
from runtime.contracts.formats import ContractError


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", type=input_dir, required=True)
    p.add_argument("--prompt", required=True, help="what to generate, e.g. \"metal plate with scratch\"")
    p.add_argument("--out", required=True, help="PNG grid")
    p.add_argument("--n", type=int, default=8, help="images to generate")
    p.add_argument("--guidance", type=float, default=5.0, help="classifier-free guidance scale")
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--eta", type=float, default=0.0, help="DDIM eta (0: deterministic)")
    p.add_argument("--device")
    p.add_argument("--json", action="store_true")


def run(args: argparse.Namespace) -> int:
    from teacher.checkpoint import load_teacher
    from teacher.device import default_device
    from teacher.generate import grid_png, sample

    try:
        model = load_teacher(args.checkpoint, device=default_device(args.device))
    except ContractError as e:
        print(f"teacher generate: {e}", file=sys.stderr)
        return 2
    if args.n < 1 or args.steps < 1:
        print("teacher generate: --n and --steps must be >= 1", file=sys.stderr)
        return 2
    imgs = sample(model, args.prompt, n=args.n, guidance=args.guidance, steps=args.steps, seed=args.seed, eta=args.eta)
    p = grid_png(imgs, args.out)
    summary = {"out": str(p.resolve()), "n": args.n, "prompt": args.prompt, "guidance": args.guidance,
               "steps": args.steps, "checkpoint_hash": model.checkpoint_hash}
    if args.json:
        print_json(summary)
    else:
        print(f"teacher generate: {args.n} images -> {p}")
    return 0
