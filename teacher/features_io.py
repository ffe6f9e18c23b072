"""On-disk format of extracted teacher features (written by `teacher extract`, read by distill).

    FEATS/index.json                  format, version, checkpoint_hash, feature_spec, noise_draws, seed,
                                      noise_space, dataset {manifest, hash}, shards [{file, n, sha256}],
                                      records [{image, split, label, defect_type, shard, row}]
    FEATS/features-00000.safetensors  one float16 tensor per level, (n, C, S/stride, S/stride); metadata
                                      "images": JSON list of the n image paths (manifest-relative)
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

from runtime.featurespec import ContractError, FeatureSpec

FORMAT = "lineside-teacher-features"
VERSION = 1
INDEX = "index.json"


def shard_name(i: int) -> str:
    return f"features-{i:05d}.safetensors"


def write_shard(out: Path, i: int, feats: dict[str, torch.Tensor], images: list[str], checkpoint_hash: str) -> dict:
    """One shard; its safetensors metadata also names the images of its rows (``images``, a JSON list),
    so a shard can be read without the index."""
    from safetensors.torch import save_file

    from teacher.checkpoint import file_sha256

    name = shard_name(i)
    save_file({k: v.to(torch.float16).contiguous() for k, v in feats.items()}, str(out / name),
              metadata={"images": json.dumps(images), "checkpoint_hash": checkpoint_hash, "format": FORMAT})
    n = next(iter(feats.values())).shape[0]
    return {"file": name, "n": int(n), "sha256": file_sha256(out / name)}


def write_index(out: Path, index: dict) -> None:
    index = dict(index, format=FORMAT, version=VERSION)
    tmp = out / (INDEX + ".tmp")
    tmp.write_text(json.dumps(index, indent=1))
    tmp.replace(out / INDEX)


def read_index(feats_dir: str | Path) -> dict:
    p = Path(feats_dir) / INDEX
    if not p.is_file():
        raise ContractError(f"{feats_dir}: no {INDEX}; not a `teacher extract` output")
    idx = json.loads(p.read_text())
    if idx.get("format") != FORMAT or idx.get("version") != VERSION:
        raise ContractError(f"{p}: format {idx.get('format')!r} version {idx.get('version')!r} is not "
                            f"{FORMAT!r} version {VERSION}")
    FeatureSpec.from_dict(idx["feature_spec"])
    return idx


def load_features(feats_dir: str | Path, levels: list[str] | None = None,
                  dtype: torch.dtype = torch.float32) -> tuple[dict, dict[str, torch.Tensor]]:
    """(index, level -> (N, C, h, w)) in record order of index["records"]; shards checked by sha256."""
    from safetensors.torch import load_file

    from teacher.checkpoint import file_sha256

    root = Path(feats_dir)
    idx = read_index(root)
    parts: dict[str, list[torch.Tensor]] = {}
    for sh in idx["shards"]:
        f = root / sh["file"]
        if not f.is_file() or file_sha256(f) != sh["sha256"]:
            raise ContractError(f"{f}: feature shard missing or does not match its recorded sha256")
        t = load_file(str(f))
        for k in levels or list(t):
            parts.setdefault(k, []).append(t[k].to(dtype))
    order = [n for n in FeatureSpec.from_dict(idx["feature_spec"]).names if n in parts]
    return idx, {k: torch.cat(parts[k]) for k in order}
