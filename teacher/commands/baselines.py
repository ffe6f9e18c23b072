"""`teacher baselines`: the reference PatchCore detectors (pixels, random CNN, ImageNet EfficientNet-Lite0) scored
on the same images as lineside (teacher/reference.py).

    teacher baselines --data D/manifest.jsonl [--split test] [--size 128] [--only effnet] --json
"""
from __future__ import annotations


from runtime.cli.dispatch import dataset_path, print_json
from runtime.progress import command_log
from teacher.reference import DETECTORS


def configure(p) -> None:
    p.add_argument("--data", type=dataset_path, required=True, help="dataset manifest.jsonl (train goods build the banks, val calibrates)")
    p.add_argument("--split", default="test", choices=("train", "val", "test"))
    p.add_argument("--size", type=int, default=128, help="square input size of every detector")
    p.add_argument("--only", action="append", choices=DETECTORS, help="run only these (repeatable)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true", help="print one JSON object as the last stdout line")


def run(args) -> int:
    from runtime.contracts.dataset import DatasetError, load_dataset
    from teacher.reference import evaluate

    log = command_log()
    if args.size < 32 or args.size % 16:
        log(f"teacher baselines: --size must be a multiple of 16 and at least 32, got {args.size}")
        return 2
    try:
        ds = load_dataset(args.data)
    except DatasetError as e:
        log(f"teacher baselines: {e}")
        return 2
    rows = {}
    for name in args.only or DETECTORS:
        rows[name] = evaluate(name, ds, args.split, args.size, args.seed, log)
        m = rows[name]["mean"]
        log(f"baselines: {name}: I-AUROC {m['image_auroc']:.3f} P-AUROC {m['pixel_auroc']:.3f} "
            f"AU-PRO {m['au_pro']:.3f} ({rows[name]['seconds']}s)")
    result = {"data": str(args.data), "split": args.split, "size": args.size, "dataset_hash": ds.content_hash(),
              "rows": rows}
    if args.json:
        print_json(result)
    return 0
