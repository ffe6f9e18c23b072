"""`teacher data synth|import|evalset`: make or import a line dataset, or build the held-out evaluation set.

    teacher data synth OUT --n-good 40 --n-defect 20 --size 256 --seed 0 [--json]
    teacher data import mvtec|visa|folder ROOT OUT [--json]
    teacher data evalset OUT [--size 128] [--n-good-train 40] [--n-good-val 10] [--n-good-test 30]
                             [--n-defect-test 30] [--seed 0] [--json]

With ``--json`` the summary is ONE JSON object on the last stdout line; progress and skip lists go to stderr.
"""
from __future__ import annotations

import argparse
import sys

from runtime.cli.dispatch import input_dir, print_json
from runtime.contracts.dataset import DatasetError


def _csv(s: str) -> tuple[str, ...]:
    return tuple(x.strip() for x in s.split(",") if x.strip())


def configure(parser: argparse.ArgumentParser) -> None:
    from teacher.data.defects import DEFECT_KINDS
    from teacher.data.synth import (DEFAULT_TEST_FRAC, DEFAULT_TRAIN_DEFECT_FRAC, DEFAULT_VAL_FRAC, PRODUCTS)

    sub = parser.add_subparsers(dest="data_command", metavar="{synth,import,evalset}", required=True)

    s = sub.add_parser("synth", help="synthetic dataset from skimage surface photos with planted defects",
                       description="Random crops of skimage.data brick/grass/gravel with planted defects, masks, "
                                   "severities and template captions. Same seed, same bytes.")
    s.add_argument("out", help="output directory (images/, masks/, manifest.jsonl)")
    s.add_argument("--n-good", type=int, required=True, help="good images per product")
    s.add_argument("--n-defect", type=int, required=True, help="defect images per product")
    s.add_argument("--size", type=int, default=256, help="square image size in px (default 256)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--products", type=_csv, default=tuple(PRODUCTS),
                   help=f"comma-separated subset of {','.join(PRODUCTS)} (default all)")
    s.add_argument("--kinds", type=_csv, default=DEFECT_KINDS,
                   help=f"comma-separated defect kinds (default all: {','.join(DEFECT_KINDS)})")
    s.add_argument("--val-frac", type=float, default=DEFAULT_VAL_FRAC, help="share of good images in val")
    s.add_argument("--test-frac", type=float, default=DEFAULT_TEST_FRAC, help="share of good images in test")
    s.add_argument("--train-defect-frac", type=float, default=DEFAULT_TRAIN_DEFECT_FRAC,
                   help="share of defects in train (the rest alternate val/test)")
    s.add_argument("--json", action="store_true", help="print the summary as one JSON object (last line)")

    i = sub.add_parser("import", help="import MVTec AD, VisA or a good/defect folder",
                       description="Convert a public layout into a self-contained dataset (images hard-linked or "
                                   "copied, masks normalised to 0/255 PNG); skipped items are reported.")
    i.add_argument("layout", choices=("mvtec", "visa", "folder"), help="folder layout of the source")
    i.add_argument("root", type=input_dir, help="source tree")
    i.add_argument("out", help="output directory")
    i.add_argument("--val-from", choices=("train", "test"), default="train",
                   help="mvtec/visa: carve val from train goods (default) or from half of test")
    i.add_argument("--val-frac", type=float, default=None,
                   help="mvtec/visa: share of train goods for val (default 0.2); folder: share of goods (0.25)")
    i.add_argument("--product", default=None, help="folder: product name (default: ROOT's name)")
    i.add_argument("--json", action="store_true", help="print the summary as one JSON object (last line)")

    _configure_evalset(sub)


def _configure_evalset(sub) -> None:
    from teacher.data import evalset as ev

    e = sub.add_parser("evalset", help="held-out evaluation set: other skimage photos, other defect kinds",
                       description=f"Products {', '.join(ev.EVAL_PRODUCTS)} (skimage.data photos the synth does "
                                   f"not use) with defects {', '.join(ev.EVAL_KINDS)} (kinds and code the synth "
                                   "does not have). train/val: good only; test: goods and every kind per product. "
                                   "Same seed, same bytes.")
    e.add_argument("out", help="output directory (images/, masks/, manifest.jsonl)")
    e.add_argument("--size", type=int, default=ev.DEFAULT_SIZE,
                   help=f"square image size in px (default {ev.DEFAULT_SIZE})")
    e.add_argument("--n-good-train", type=int, default=ev.DEFAULT_N_GOOD_TRAIN, help="good train images per product")
    e.add_argument("--n-good-val", type=int, default=ev.DEFAULT_N_GOOD_VAL, help="good val images per product")
    e.add_argument("--n-good-test", type=int, default=ev.DEFAULT_N_GOOD_TEST, help="good test images per product")
    e.add_argument("--n-defect-test", type=int, default=ev.DEFAULT_N_DEFECT_TEST,
                   help="defective test images per product (kinds cycle)")
    e.add_argument("--seed", type=int, default=0)
    e.add_argument("--json", action="store_true", help="print the summary as one JSON object (last line)")


def run(args: argparse.Namespace) -> int:
    if args.data_command == "synth":
        return _run_synth(args)
    if args.data_command == "evalset":
        return _run_evalset(args)
    return _run_import(args)


def _run_evalset(args) -> int:
    from teacher.data import evalset as ev
    from teacher.data.summary import print_summary

    try:
        summary = ev.build_evalset(args.out, args.size, args.n_good_train, args.n_good_val, args.n_good_test,
                                   args.n_defect_test, args.seed, progress=True)
    except (ValueError, DatasetError, ev.InvisibleDefect) as e:
        print(f"teacher data evalset: error: {e}", file=sys.stderr)
        return 2
    print_summary(summary, args.json)
    return 0


def _run_synth(args) -> int:
    from teacher.data.summary import print_summary
    from teacher.data.synth import synthesize

    try:
        summary = synthesize(args.out, args.n_good, args.n_defect, args.size, args.seed, args.products, args.kinds,
                             args.val_frac, args.test_frac, args.train_defect_frac, progress=True)
    except (ValueError, DatasetError) as e:
        print(f"teacher data synth: error: {e}", file=sys.stderr)
        return 2
    print_summary(summary, args.json)
    return 0


def _run_import(args) -> int:
    from teacher.data import importers

    kw = {}
    if args.layout in ("mvtec", "visa"):
        kw["val_from"] = args.val_from
        if args.val_frac is not None:
            kw["val_frac"] = args.val_frac
    else:
        if args.val_frac is not None:
            kw["val_frac"] = args.val_frac
        kw["product"] = args.product
    try:
        summary = importers.IMPORTERS[args.layout](args.root, args.out, **kw)
    except (importers.DatasetImportError, DatasetError, ValueError) as e:
        print(f"teacher data import {args.layout}: error: {e}", file=sys.stderr)
        return 2
    for item in summary["skipped"]:
        print(f"skipped {item['path']}: {item['reason']}", file=sys.stderr)
    for note in summary["notes"]:
        print(f"note: {note}", file=sys.stderr)
    if args.json:
        print_json(summary)
        return 0
    print(f"imported {summary['n_images']} images ({args.layout}) -> {summary['manifest']}")
    for split in ("train", "val", "test"):
        d = summary["splits"].get(split, {"good": 0, "defect": 0})
        print(f"  {split:5s}: {d['good']:5d} good {d['defect']:5d} defect")
    if summary["n_skipped"]:
        reasons = ", ".join(f"{k} {v}" for k, v in summary["skipped_by_reason"].items())
        print(f"  skipped {summary['n_skipped']}: {reasons}")
    else:
        print("  skipped 0")
    return 0
