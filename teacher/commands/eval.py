"""`teacher eval`: detection, segmentation and classification figures of the teacher pipeline on a split
(teacher/evaluate.py), and with ``--report DIR`` an HTML report.

    teacher eval --checkpoint CKPT --data D/manifest.jsonl --json [--report DIR] [--split test]
"""
from __future__ import annotations

from pathlib import Path

from runtime.cli.dispatch import dataset_path, input_dir, print_json
from runtime.progress import command_log
from runtime.scoring import SCORING_MODES


def configure(p) -> None:
    p.add_argument("--checkpoint", type=input_dir, required=True, help="teacher checkpoint with head/ and/or bank/")
    p.add_argument("--data", type=dataset_path, required=True, help="dataset manifest.jsonl")
    p.add_argument("--split", default="test", choices=("train", "val", "test"))
    p.add_argument("--report", default=None, help="write an HTML report (index.html + PNGs) to this directory")
    p.add_argument("--mode", choices=SCORING_MODES, default=None,
                   help="evaluate these parts only (default: every part CKPT holds)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--max-images", type=int, default=0, help="evaluate at most this many images (0 = all)")
    p.add_argument("--vocab", nargs="*", default=None, help="classify against these names instead of the head's")
    p.add_argument("--device", default=None, help="cpu | cuda (default: cuda if available)")
    p.add_argument("--json", action="store_true", help="print one JSON object as the last stdout line")


def run(args) -> int:
    from runtime.contracts.dataset import load_dataset
    from teacher.device import default_device
    from teacher.evaluate import evaluate_split, threshold_words, write_report
    from teacher.pipeline import TeacherPipeline

    log = command_log()
    device = default_device(args.device)
    ds = load_dataset(args.data)
    records = ds.split(args.split)
    if args.max_images:
        records = records[: args.max_images]
    if not records:
        log(f"error: split {args.split!r} of {args.data} is empty")
        return 2
    try:
        pipe = TeacherPipeline.load(args.checkpoint, device=device, max_batch=args.batch_size, mode=args.mode)
    except FileNotFoundError as e:
        log(f"error: {e}")
        return 2
    if args.vocab:
        pipe.set_vocabulary(args.vocab)
    ev = evaluate_split(pipe, ds, records, args.batch_size)  # streamed: one batch of maps at a time
    secs, metrics = ev.seconds, ev.metrics
    info = {"checkpoint": str(args.checkpoint), "data": str(args.data), "split": args.split, "mode": pipe.mode,
            "model_hash": pipe.model_hash, "n_images": len(records), "batch_size": args.batch_size,
            "device": device, "seconds": round(secs, 2), "ms_per_image": round(1e3 * secs / len(records), 2),
            "vocabulary": pipe.vocabulary, "data_hash": ds.content_hash()}
    result = {**info, "metrics": metrics, "quality": ev.quality}
    if args.report:
        page = write_report(args.report, f"teacher eval — {Path(args.checkpoint).name} ({args.split})", ev, info,
                            threshold_note=threshold_words(pipe))
        result["report"] = str(page)
        log(f"eval: report {page}")
    log("eval: " + ", ".join(f"{k} {v:.4f}" for k, v in metrics.items() if isinstance(v, float)))
    if args.json:
        print_json(result)
    return 0
