"""The summary every dataset writer (`teacher data synth`, `teacher data evalset`) returns and prints:
counts per split and label and per defect type, plus what the writer adds of its own."""
from __future__ import annotations

import json
from pathlib import Path

from runtime.contracts.dataset import Record


def summarize(manifest: Path, records: list[Record], **extra) -> dict:
    splits: dict[str, dict[str, int]] = {}
    kinds: dict[str, int] = {}
    for r in records:
        splits.setdefault(r.split, {"good": 0, "defect": 0})[r.label] += 1
        if r.is_defect:
            kinds[r.defect_type] = kinds.get(r.defect_type, 0) + 1
    return {"manifest": str(manifest), "n_images": len(records), "splits": splits,
            "defect_types": dict(sorted(kinds.items())), **extra}


def print_summary(summary: dict, as_json: bool) -> None:
    """One JSON line, or a few lines for people (photo sources when the writer names them)."""
    if as_json:
        print(json.dumps(summary, sort_keys=True))
        return
    print(f"wrote {summary['n_images']} images -> {summary['manifest']}")
    for split in ("train", "val", "test"):
        d = summary["splits"].get(split, {"good": 0, "defect": 0})
        print(f"  {split:5s}: {d['good']:5d} good {d['defect']:5d} defect")
    if summary.get("sources"):
        print("  products: " + ", ".join(f"{p} ({src})" for p, src in summary["sources"].items()))
    if summary.get("defect_types"):
        print("  defect types: " + ", ".join(f"{k} {v}" for k, v in summary["defect_types"].items()))
