"""`teacher finetune`: stage 2, the mask head on frozen t=50 features (teacher/finetune.py), written to CKPT/head/.

    teacher finetune --checkpoint CKPT --data D/manifest.jsonl --steps N [--json]
    torchrun --nproc_per_node 8 -m teacher finetune --checkpoint CKPT --data D/manifest.jsonl --steps N

Under torchrun (RANK set) every rank trains on its own shard of the train records (records[rank::world]);
--batch-size is per rank; only rank 0 logs, calibrates and writes the head.
"""
from __future__ import annotations

import math
import os
import time
from pathlib import Path

from runtime.cli.dispatch import dataset_path, input_dir, positive_int, print_json
from runtime.progress import command_log


def configure(p) -> None:
    from teacher.data.pseudo_defects import PSEUDO_LABEL  # torch-free, unlike teacher.finetune

    p.add_argument("--checkpoint", type=input_dir, required=True, help="teacher checkpoint; the head is written to CKPT/head/")
    p.add_argument("--data", type=dataset_path, required=True, help="dataset manifest.jsonl (train split trains, val calibrates)")
    p.add_argument("--steps", type=positive_int, required=True)
    p.add_argument("--batch-size", type=int, default=None, help="default 16 (Table 9), 8 for tiny")
    p.add_argument("--lr", type=float, default=None, help="default 5e-5 (Table 9); 1e-3 for tiny")
    p.add_argument("--warmup", type=int, default=None, help="default min(500, steps/10)")
    p.add_argument("--vocab", nargs="*", default=None, help="category names (default: the dataset's defect types)")
    p.add_argument("--pseudo-defects", type=int, default=0, metavar="K",
                   help="plant K pseudo-defects on every good train image (texture pastes, cut-paste, the synth's "
                        f"planters), labelled {PSEUDO_LABEL!r}: a head for a line with good images only")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default=None, help="cpu | cuda (default: cuda if available)")
    p.add_argument("--out", default=None, help="head directory (default CKPT/head)")
    p.add_argument("--json", action="store_true", help="print one JSON summary as the last stdout line")


def _init_distributed(device: str) -> tuple[int, int, str]:
    """(rank, world, device): torchrun's process group when RANK is set (NCCL on GPU, gloo on CPU)."""
    import torch

    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    if "RANK" in os.environ:
        import torch.distributed as dist

        dist.init_process_group("nccl" if device.startswith("cuda") else "gloo")
        if device.startswith("cuda"):
            device = f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}"
            torch.cuda.set_device(device)
    return rank, world, device


_log = command_log()


def _quiet(msg: str) -> None:
    pass


def _teardown(world: int) -> None:
    if world > 1:
        import torch.distributed as dist

        dist.barrier()
        dist.destroy_process_group()


def run(args) -> int:
    import torch

    from runtime.contracts.dataset import load_dataset
    from teacher import finetune as ft
    from teacher.checkpoint import load_teacher
    from teacher.device import default_device
    from teacher.head.model import save_head

    t0 = time.time()
    rank, world, device = _init_distributed(default_device(args.device))
    log = _log if rank == 0 else _quiet  # only rank 0 speaks
    torch.manual_seed(args.seed)
    ds = load_dataset(args.data)
    train, val = ds.split("train"), ds.split("val")
    # The kinds the whole train split teaches, before sharding so every rank agrees (a kind seen only in val
    # or test cannot be learnt, and naming it would leak the evaluation's kinds into the head).
    vocab = list(args.vocab) if args.vocab else sorted({r.defect_type for r in train if r.is_defect})
    train = train[rank::world]
    if args.pseudo_defects < 0:
        log(f"error: --pseudo-defects must be >= 0, got {args.pseudo_defects}")
        return 2
    if args.pseudo_defects and ft.PSEUDO_LABEL not in vocab:
        vocab.append(ft.PSEUDO_LABEL)
    if not vocab:
        log("error: the dataset has no defect types to learn (every record is good); pass --pseudo-defects K "
            "or use `teacher bank`")
        return 2
    teacher = load_teacher(args.checkpoint, device=device)
    text_emb = ft.embed_vocabulary(teacher, vocab, device, log)
    try:
        samples = ft.training_samples(ds, train, vocab, teacher, args.pseudo_defects, args.seed, log)
    except ValueError as e:
        log(f"error: {e}")
        return 2
    if not samples:
        log(f"error: no usable train records in {args.data}")
        return 2
    state = ft.train_head(teacher, ds, samples, val, vocab, text_emb, steps=args.steps, batch_size=args.batch_size,
                          lr=args.lr, warmup=args.warmup, seed=args.seed, rank=rank, world=world,
                          pseudo_defects=args.pseudo_defects, device=device, log=log)
    if state is None:  # a rank other than 0 under torchrun
        _teardown(world)
        return 0
    out = save_head(args.out or Path(args.checkpoint) / "head", state)
    before, after = state.info["train_loss_before"], state.info["train_loss_after"]
    summary = {"head_dir": str(out), "vocabulary": vocab, "steps": args.steps, "threshold": state.threshold,
               "mask_loss_before": before.get("mask"), "mask_loss_after": after.get("mask"),
               "cls_loss_before": before.get("cls"), "cls_loss_after": after.get("cls"),
               "seconds": round(time.time() - t0, 2)}
    log(f"finetune: wrote {out}; train mask loss {before.get('mask', math.nan):.4f} -> "
        f"{after.get('mask', math.nan):.4f}")
    if args.json:
        print_json(summary)
    _teardown(world)
    return 0
