"""Teacher targets: the t=50 features averaged over noise draws, computed once per run and cached.

Either on the fly (``teacher.extract_features(images, noise_draws=K, seed)``) or read from the
safetensors shards ``teacher extract`` writes (``--features DIR``). The cache file is keyed by teacher
hash, image content, noise draws and seed, so a changed input is never served stale targets.
"""
from __future__ import annotations

import hashlib
import sys
from pathlib import Path

import numpy as np
import torch


def cache_key(teacher_hash: str, images: np.ndarray, noise_draws: int, seed: int) -> str:
    h = hashlib.sha256()
    h.update(f"{teacher_hash}|{noise_draws}|{seed}|{images.shape}".encode())
    h.update(np.ascontiguousarray(images).tobytes())
    return h.hexdigest()[:16]


@torch.no_grad()
def compute_targets(teacher, images_01: torch.Tensor, noise_draws: int = 4, seed: int = 0, batch_size: int = 8,
                    progress: bool = False) -> dict[str, torch.Tensor]:
    """(N, 3, S, S) in [0, 1] -> level -> (N, C, h, w) float32 (each image independent of its batch)."""
    out: dict[str, list[torch.Tensor]] = {}
    n = images_01.shape[0]
    bar = _bar(n, "teacher targets", progress)
    for s in range(0, n, batch_size):
        f = teacher.extract_features(images_01[s:s + batch_size], noise_draws=noise_draws, seed=seed)
        for k, v in f.items():
            out.setdefault(k, []).append(v.detach().float().cpu())
        bar.update(min(batch_size, n - s))
    bar.close()
    return {k: torch.cat(v) for k, v in out.items()}


def cached_targets(cache_dir: Path, key: str, compute) -> tuple[dict[str, torch.Tensor], bool]:
    """(targets, hit). Stored as float16 safetensors: the cache of a whole small dataset stays small."""
    from safetensors.torch import load_file, save_file

    p = Path(cache_dir) / f"targets-{key}.safetensors"
    if p.is_file():
        return {k: v.float() for k, v in load_file(str(p)).items()}, True
    t = compute()
    p.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.half().contiguous() for k, v in t.items()}, str(p))
    return t, False


def read_shards(features_dir: str | Path, records, levels: list[str]) -> dict[str, torch.Tensor]:
    """Targets from ``teacher extract`` output: safetensors shards holding, per image, ``<image>/<level>``
    tensors (C, h, w) or per-shard stacked ``<level>`` tensors with an ``images`` index in the metadata."""
    from safetensors import safe_open

    d = Path(features_dir)
    shards = sorted(d.rglob("*.safetensors"))
    if not shards:
        raise FileNotFoundError(f"{d}: no .safetensors feature shards (run `teacher extract`)")
    by_image: dict[str, dict[str, torch.Tensor]] = {}
    for sh in shards:
        with safe_open(str(sh), framework="pt") as f:
            meta = f.metadata() or {}
            keys = list(f.keys())
            if "images" in meta:  # stacked: <level> (n, C, h, w), metadata images = json list
                import json

                names = json.loads(meta["images"])
                for lv in levels:
                    t = f.get_tensor(lv)
                    for i, name in enumerate(names):
                        by_image.setdefault(name, {})[lv] = t[i]
            else:
                for k in keys:
                    name, _, lv = k.rpartition("/")
                    if lv in levels:
                        by_image.setdefault(name, {})[lv] = f.get_tensor(k)
    out: dict[str, list[torch.Tensor]] = {lv: [] for lv in levels}
    for r in records:
        got = by_image.get(r.image)
        if got is None or any(lv not in got for lv in levels):
            raise KeyError(f"{d}: no features for image {r.image} (levels {levels}); were they extracted "
                           "from this dataset?")
        for lv in levels:
            out[lv].append(got[lv].float())
    return {lv: torch.stack(v) for lv, v in out.items()}


class _NoBar:
    def update(self, n=1):
        pass

    def close(self):
        pass


def _bar(total: int, desc: str, enabled: bool):
    if not enabled:
        return _NoBar()
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, file=sys.stderr, leave=False)
