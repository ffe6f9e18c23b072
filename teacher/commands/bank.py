"""`teacher bank`: the good-images-only memory bank of teacher features (teacher/bank.py), written to CKPT/bank/.

    teacher bank --checkpoint CKPT --data D/manifest.jsonl [--budget N] [--json]
    torchrun --nproc-per-node 8 -m teacher bank --checkpoint CKPT --data D/manifest.jsonl [--merge coresets]
"""
from __future__ import annotations

import time
from pathlib import Path

from runtime.cli.dispatch import dataset_path, input_dir, print_json
from runtime.progress import command_log
from runtime.scoring import DEFAULT_BLUR_SIGMA_PX, DEFAULT_K
from teacher.bank_defaults import BUDGET_FRACTION, BUDGET_MAX, BUDGET_MIN, DEFAULT_BATCH_SIZE, DEFAULT_MERGE, MERGES


def configure(p) -> None:
    p.add_argument("--checkpoint", type=input_dir, required=True, help="teacher checkpoint directory; the bank goes to CKPT/bank/")
    p.add_argument("--data", type=dataset_path, required=True,
                   help="dataset manifest.jsonl (train good images build the bank, val calibrates)")
    p.add_argument("--budget", type=int, default=None,
                   help=f"coreset size (bank vectors); default {round(BUDGET_FRACTION * 100)}%% of the patch vectors, "
                        f"clipped to [{BUDGET_MIN}, {BUDGET_MAX}]")
    p.add_argument("--k", type=int, default=DEFAULT_K, help="mean distance to the k nearest bank vectors")
    p.add_argument("--blur-sigma", type=float, default=DEFAULT_BLUR_SIGMA_PX, help="anomaly-map blur, px at image size")
    p.add_argument("--max-images", type=int, default=0, help="use at most this many train good images (0 = all)")
    p.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default=None, help="cpu | cuda (default: cuda if available)")
    p.add_argument("--out", default=None, help="bank directory (default CKPT/bank)")
    p.add_argument("--merge", choices=MERGES, default=DEFAULT_MERGE,
                   help="under torchrun: rank 0 runs the coreset on every rank's patch vectors (features: the "
                        "one-process bank) or on the union of the ranks' own coresets (coresets: rank 0's memory "
                        "bounded by world x budget); see fit_bank")
    p.add_argument("--json", action="store_true", help="print one JSON summary as the last stdout line")


def run(args) -> int:
    from runtime.contracts.dataset import load_dataset
    from teacher.bank import Comm, LazyImages, fit_bank
    from teacher.checkpoint import load_teacher
    from teacher.device import default_device
    from teacher.distributed import dist_setup, dist_teardown

    rank, world, device = dist_setup(args.device)

    log = command_log() if rank == 0 else (lambda msg: None)  # one rank speaks
    ds = load_dataset(args.data)
    train = [r for r in ds.split("train") if not r.is_defect]
    if args.max_images:
        train = train[: args.max_images]
    if not train:
        log(f"error: {args.data} has no good images in the train split; the bank is built from them")
        dist_teardown(world)
        return 2
    val = ds.split("val")
    teacher = load_teacher(args.checkpoint, device=device if world > 1 else default_device(args.device))
    t0 = time.time()
    # images are decoded a batch at a time (LazyImages); under torchrun each rank takes its records[rank::world]
    bank = fit_bank(teacher, LazyImages(ds, train[rank::world]),
                    LazyImages(ds, [r for r in val if not r.is_defect][rank::world]),
                    LazyImages(ds, [r for r in val if r.is_defect][rank::world]),
                    budget=args.budget, seed=args.seed, k=args.k, blur_sigma_px=args.blur_sigma,
                    batch_size=args.batch_size, log=log, comm=Comm(rank, world), merge=args.merge)
    if rank != 0:
        dist_teardown(world)
        return 0
    bank.info.update(teacher_hash=teacher.checkpoint_hash, dataset_hash=ds.content_hash(),
                     feature_spec=teacher.feature_spec.to_dict())
    out = bank.save(args.out or Path(args.checkpoint) / "bank")
    dist_teardown(world)
    summary = {"bank_dir": str(out), "n_vectors": int(bank.bank.shape[0]), "dim": int(bank.bank.shape[1]),
               "threshold": bank.threshold, "band": list(bank.band), "calibration": bank.info["calibration"],
               "seconds": round(time.time() - t0, 2)}
    if world > 1:
        summary["world_size"], summary["merge"] = world, args.merge
    log(f"bank: wrote {out} ({summary['n_vectors']}x{summary['dim']}), threshold {bank.threshold:.4f} "
        f"({bank.info['calibration']})")
    if args.json:
        print_json(summary)
    return 0
