"""`teacher info --preset sd15 --json`: parameter counts per part and the FeatureSpec of a preset,
built on the meta device (no weights allocated, well under a second even for sd15); see teacher/info.py."""
from __future__ import annotations

import argparse
import sys

from runtime.cli.dispatch import print_json
from teacher.presets import PRESETS


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("--preset", default="sd15", help=f"one of {sorted(PRESETS)}")
    p.add_argument("--image-size", type=int)
    p.add_argument("--json", action="store_true")


def run(args: argparse.Namespace) -> int:
    from teacher.info import describe

    try:
        d = describe(args.preset, args.image_size)
    except KeyError as e:
        print(f"teacher info: {e.args[0]}", file=sys.stderr)
        return 2
    if args.json:
        print_json(d)
    else:
        print(f"preset {d['preset']} (image {d['image_size']} px)")
        for k, v in d["params"].items():
            print(f"  {k:14s} {v:>14,d}")
        for lv in d["feature_spec"]["levels"]:
            print(f"  feature {lv['name']}: stride {lv['stride']}, {lv['channels']} channels")
    return 0
