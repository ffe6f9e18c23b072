"""`distill fit --teacher CKPT --data D/manifest.jsonl --out RUN`: distil the teacher's t=50 features into a
student (distill/fit.py; under torchrun, DDP over shards of the train split). Its flags are generated from
distill.fit_options.FitOptions, which carries every default and help line."""
from __future__ import annotations

import sys
from dataclasses import MISSING, fields

from distill.fit_options import FitOptions
from runtime.cli.dispatch import dataset_path, input_dir, print_json


# The paths a fit reads, typed so that the dispatcher checks them before the run (runtime.cli.dispatch.check_inputs)
PATH_TYPES = {"teacher": input_dir, "data": dataset_path, "features": input_dir}


def _flag(f) -> tuple[str, str]:
    """(flag, argparse dest) of an options field: --no-<name> for a negated switch."""
    name = f"no_{f.name}" if f.metadata.get("negate") else f.name
    return "--" + name.replace("_", "-"), name


def add_option_flags(p, cls=FitOptions) -> None:
    for f in fields(cls):
        flag, dest = _flag(f)
        kw = {k: f.metadata[k] for k in ("type", "choices", "metavar", "action") if k in f.metadata}
        if f.name in PATH_TYPES:
            kw["type"] = PATH_TYPES[f.name]
        if f.metadata.get("negate"):
            kw["action"] = "store_true"
        elif f.default is MISSING:
            kw["required"] = True
        else:
            kw["default"] = f.default
        p.add_argument(flag, dest=dest, help=f.metadata.get("help"), **kw)


def options_from_args(args, cls=FitOptions):
    values = {}
    for f in fields(cls):
        v = getattr(args, _flag(f)[1])
        values[f.name] = not v if f.metadata.get("negate") else v
    return cls(**values)


def configure(p) -> None:
    add_option_flags(p)
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    p.add_argument("--json", action="store_true")


def run(args) -> int:
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    from distill.fit import fit
    from teacher.checkpoint import load_teacher
    from teacher.distributed import dist_setup, dist_teardown

    _, world, _ = dist_setup("cpu")  # under torchrun: gloo, the student trains on the CPU; else one process
    teacher = load_teacher(args.teacher)
    summary = fit(options_from_args(args), teacher=teacher, progress=not args.json or sys.stderr.isatty())
    dist_teardown(world)
    if args.json and summary.get("run") is not None:  # rank 0 (or the one process) reports
        print_json(summary)
    return 0
