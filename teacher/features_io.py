"""On-disk format of extracted teacher features (written by `teacher extract`, read by distill).

    FEATS/index.json                  format, version, checkpoint_hash, feature_spec, noise_draws, seed,
                                      noise_space, dataset {manifest, hash}, shards [{file, n, sha256}],
                                      records [{image, split, label, defect_type, shard, row}]
    FEATS/features-00000.safetensors  one float16 tensor per level, (n, C, S/stride, S/stride); metadata
                                      "images": JSON list of the n image paths (manifest-relative)
    FEATS/features-r001-00000.safetensors  the same, written by rank 1 of a torchrun extraction

A record's features are row ``row`` of shard ``shard``; readers place them by that, so the shards of a
sharded extraction (each rank's records[rank::world]) read back in manifest order. ``open_features``
memory-maps the shards instead of loading them (safetensors is an 8-byte header length, a JSON header
and the raw little-endian tensors, so a tensor is an np.memmap at its offset): rows are read when used.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from runtime.contracts.featurespec import FeatureSpec
from runtime.contracts.formats import ContractError, check_format

FORMAT = "lineside-teacher-features"
VERSION = 1
INDEX = "index.json"


def shard_name(i: int, rank: int | None = None) -> str:
    return f"features-{i:05d}.safetensors" if rank is None else f"features-r{rank:03d}-{i:05d}.safetensors"


def write_shard(out: Path, i: int, feats: dict[str, torch.Tensor], images: list[str], checkpoint_hash: str,
                rank: int | None = None) -> dict:
    """One shard; its safetensors metadata also names the images of its rows (``images``, a JSON list),
    so a shard can be read without the index. ``rank``: the torchrun rank that wrote it (None: one process)."""
    from safetensors.torch import save_file

    from teacher.checkpoint import file_sha256

    name = shard_name(i, rank)
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
    check_format(idx, str(p), versions=(VERSION,), fmt=FORMAT, version_key="version")
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
    take = torch.as_tensor(_record_rows(idx))
    cat = {k: torch.cat(parts[k]) for k in order}
    if bool((take == torch.arange(len(take))).all()) and all(len(v) == len(take) for v in cat.values()):
        return idx, cat  # one process: the shards are already in record order
    return idx, {k: v[take] for k, v in cat.items()}


def _record_rows(idx: dict) -> np.ndarray:
    """Each record's row in the concatenation of idx["shards"] (in their order)."""
    start, at = {}, 0
    for sh in idx["shards"]:
        start[sh["file"]] = at
        at += int(sh["n"])
    try:
        return np.asarray([start[r["shard"]] + int(r["row"]) for r in idx["records"]], np.int64)
    except KeyError as e:
        raise ContractError(f"index.json: a record names shard {e.args[0]!r}, which the index does not list")


class MappedLevel:
    """One level of a feature set, (N, C, h, w), memory-mapped from its shards; ``rows`` selects and
    orders the records. Indexing (an int array, a tensor or a slice) reads just those rows and returns
    a float32 tensor, so loops that index a tensor of targets work unchanged; ``select`` is a view."""

    def __init__(self, segments: list[np.ndarray], rows: np.ndarray):
        self.segments = segments  # per shard an np.memmap (n_i, C, h, w) float16
        self._start = np.cumsum([0] + [len(s) for s in segments])
        self.rows = np.asarray(rows, np.int64)

    @property
    def shape(self) -> tuple[int, ...]:
        return (len(self.rows),) + tuple(self.segments[0].shape[1:])

    def __len__(self) -> int:
        return len(self.rows)

    def select(self, rows) -> "MappedLevel":
        return MappedLevel(self.segments, self.rows[_as_index(rows, len(self.rows))])

    def __getitem__(self, rows) -> torch.Tensor:
        g = self.rows[_as_index(rows, len(self.rows))]
        seg = np.searchsorted(self._start, g, side="right") - 1
        out = np.empty((len(g),) + self.shape[1:], np.float32)
        for s in np.unique(seg):
            at = np.flatnonzero(seg == s)
            out[at] = self.segments[s][g[at] - self._start[s]]
        return torch.from_numpy(out)


def _as_index(rows, n: int) -> np.ndarray:
    if isinstance(rows, slice):
        return np.arange(n)[rows]
    if isinstance(rows, torch.Tensor):
        rows = rows.numpy()
    return np.atleast_1d(np.asarray(rows, np.int64))


def mmap_safetensors(path: str | Path) -> dict[str, np.ndarray]:
    """Every tensor of a safetensors file as a read-only np.memmap (float16/float32 only)."""
    dtypes = {"F16": np.float16, "F32": np.float32}
    with open(path, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(n))
    out = {}
    for name, t in header.items():
        if name == "__metadata__":
            continue
        if t["dtype"] not in dtypes:
            raise ContractError(f"{path}: tensor {name} is {t['dtype']}, not one of {sorted(dtypes)}")
        a, b = t["data_offsets"]
        dt = np.dtype(dtypes[t["dtype"]]).newbyteorder("<")
        out[name] = np.memmap(path, dtype=dt, mode="r", offset=8 + n + a, shape=tuple(t["shape"])) \
            if b > a else np.zeros(tuple(t["shape"]), dt)
    return out


def open_features(feats_dir: str | Path, levels: list[str] | None = None, verify: bool = True
                  ) -> tuple[dict, dict[str, MappedLevel]]:
    """As load_features, but memory-mapped: (index, level -> MappedLevel in record order). Nothing is
    read until indexed; ``verify`` checks every shard's sha256 first (a streaming read of each file)."""
    from teacher.checkpoint import file_sha256

    root = Path(feats_dir)
    idx = read_index(root)
    maps: list[dict[str, np.ndarray]] = []
    for sh in idx["shards"]:
        f = root / sh["file"]
        if not f.is_file() or (verify and file_sha256(f) != sh["sha256"]):
            raise ContractError(f"{f}: feature shard missing or does not match its recorded sha256")
        maps.append(mmap_safetensors(f))
    rows = _record_rows(idx)
    names = [n for n in FeatureSpec.from_dict(idx["feature_spec"]).names if maps and n in maps[0]]
    return idx, {k: MappedLevel([m[k] for m in maps], rows) for k in (levels or names)}
