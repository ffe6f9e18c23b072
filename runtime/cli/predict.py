"""`lineside predict ARTIFACT SOURCE`: judge images offline with the edge artifact, no daemon, as
`anomalib predict` and `yolo predict` do.

    lineside predict art/ parts/                      # a folder of images
    lineside predict art/ 'line3/*.png' --out pred    # a glob (quoted, so the shell leaves it alone)
    lineside predict art/ data/manifest.jsonl --split test --json   # a manifest: also the metrics

Writes into ``--out``: ``verdicts.jsonl`` (one verdict header per image, the edge's own verdicts, plus
the image's path), ``overlays/`` (anomaly map, regions and, from a manifest, the ground-truth contour)
and, when the source is a manifest with defect labels, ``metrics.json``: the runtime.quality row the
quality bench reports (I-AUROC, P-AUROC, AU-PRO, confusion at the artifact's threshold, recall per
defect type, per product). Torch-free: the edge install runs it.
"""
from __future__ import annotations

import argparse
import glob
import json
from pathlib import Path
from typing import Iterator

import numpy as np

from runtime.cli.dispatch import print_json
from runtime.contracts.dataset import IMAGE_SUFFIXES

OVERLAY_DIR = "overlays"
VERDICTS_FILE = "verdicts.jsonl"
METRICS_FILE = "metrics.json"


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("artifact", help="the artifact directory `distill export` wrote (manifest.json inside)")
    p.add_argument("source", help="an image, a folder of images, a quoted glob, or a manifest.jsonl")
    p.add_argument("--out", default="predictions", help="folder for verdicts.jsonl, overlays/ and metrics.json")
    p.add_argument("--split", choices=("train", "val", "test"), default=None,
                   help="with a manifest: only this split (default: every record)")
    p.add_argument("--backend", default="auto", help="auto, onnxruntime, openvino or tensorrt")
    p.add_argument("--threads", type=int, default=1, help="inference threads of the backend")
    p.add_argument("--allow-forced", action="store_true",
                   help="judge with a model its INT8 guard failed (distill quantize --force)")
    p.add_argument("--trusted-signers", metavar="DIR",
                   help="judge only with an artifact signed by a key in DIR (*.ed25519.pub), as `lineside run` does")
    p.add_argument("--no-overlays", action="store_true", help="write verdicts (and metrics) only")
    p.add_argument("--json", action="store_true", help="print one JSON summary as the last stdout line")


class Item:
    """One image to judge, and what a manifest knows about it (nothing for a plain file)."""

    def __init__(self, path: Path, record=None, dataset=None):
        self.path, self.record, self.dataset = path, record, dataset

    @property
    def frame_id(self) -> str:
        return self.path.stem

    def image(self) -> np.ndarray:
        from runtime.contracts.dataset import read_rgb

        return read_rgb(self.path)

    def mask(self, hw: tuple[int, int]) -> np.ndarray | None:
        return None if self.record is None else self.dataset.read_mask(self.record, hw)


def items(source: str, split: str | None) -> Iterator[Item]:
    """The images of ``source``, sorted; a DatasetError names a source that holds none."""
    from runtime.contracts.dataset import DatasetError, load_dataset

    p = Path(source)
    if p.suffix == ".jsonl" and p.is_file():
        ds = load_dataset(p)
        recs = ds.split(split) if split else list(ds)
        if not recs:
            raise DatasetError(f"{p}: no records{f' in split {split!r}' if split else ''}")
        return (Item(ds.path(r.image), r, ds) for r in recs)
    if p.is_dir():
        files = sorted(f for f in p.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)
    elif p.is_file():
        files = [p]
    else:
        files = sorted(Path(f) for f in glob.glob(source) if Path(f).suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise DatasetError(f"{source}: no images (a folder, an image, a glob or a manifest.jsonl)")
    return (Item(f) for f in files)


def run(args: argparse.Namespace) -> int:
    import cv2

    from runtime.engine import Engine
    from runtime.progress import progress
    from runtime.plots import overlay

    todo = list(items(args.source, args.split))
    out = Path(args.out)
    (out / OVERLAY_DIR).mkdir(parents=True, exist_ok=True)
    engine = Engine(args.artifact, backend=args.backend, threads=args.threads, allow_forced=args.allow_forced,
                    trusted_signers=args.trusted_signers)
    cols = {k: [] for k in ("products", "labels", "types", "scores", "maps", "masks", "decisions")}
    counts: dict[str, int] = {}
    try:
        bar = progress(len(todo), "lineside predict", unit="img")
        with open(out / VERDICTS_FILE, "w") as f:
            for it in todo:
                img = it.image()
                v = engine.judge(img, frame_id=it.frame_id)
                f.write(json.dumps({**v.to_header(), "image": str(it.path)}) + "\n")
                counts[v.decision] = counts.get(v.decision, 0) + 1
                h, w = img.shape[:2]
                amap = cv2.resize(v.anomaly_map, (w, h), interpolation=cv2.INTER_LINEAR)
                gt = it.mask((h, w))
                if not args.no_overlays:
                    rgb = overlay(img, anomaly_map=amap, regions=v.regions, gt_mask=gt,
                                  map_range=(0.0, max(engine.threshold, 1e-12) * 2),
                                  text=f"{v.decision} {v.score_norm:.2f}/1 (raw {v.score:.3g}, thr {engine.threshold:.3g})")
                    cv2.imwrite(str(out / OVERLAY_DIR / f"{it.frame_id}.png"), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
                if it.record is not None:
                    r = it.record
                    for k, val in (("products", r.product), ("labels", int(r.is_defect)), ("types", r.defect_type),
                                   ("scores", v.score), ("maps", amap), ("masks", gt),
                                   ("decisions", int(v.decision == "defect"))):
                        cols[k].append(val)
                bar.update(1)
        bar.close()
    finally:
        engine.close()
    summary = {"artifact": str(engine.artifact_dir), "model_hash": engine.model_hash, "signer": engine.signer,
               "backend": engine.backend_name,
               "n_images": len(todo), "decisions": counts, "verdicts": str(out / VERDICTS_FILE),
               "overlays": None if args.no_overlays else str(out / OVERLAY_DIR)}
    if cols["labels"] and 0 < sum(cols["labels"]) < len(cols["labels"]):
        from runtime.quality import quality_row

        row = quality_row(cols["products"], cols["labels"], cols["types"], cols["scores"], cols["maps"],
                          cols["masks"], cols["decisions"])
        (out / METRICS_FILE).write_text(json.dumps(row, indent=1))
        summary["metrics"] = {k: row["mean"][k] for k in ("image_auroc", "pixel_auroc", "au_pro", "accuracy",
                                                          "false_reject_rate", "escape_rate")}
    if args.json:
        print_json(summary)
    else:
        print(f"lineside predict: {len(todo)} images -> {out / VERDICTS_FILE}: "
              + ", ".join(f"{k} {n}" for k, n in sorted(counts.items())))
        for k, val in summary.get("metrics", {}).items():
            print(f"  {k:<18} {'—' if val is None else f'{val:.3f}'}")
    return 0
