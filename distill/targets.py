"""Teacher targets: the t=50 features averaged over noise draws, computed once per run and cached.

Either on the fly (``teacher.extract_features(images, noise_draws=K, seed)``) or read from the
safetensors shards ``teacher extract`` writes (``--features DIR``). The cache file is keyed by teacher
hash, image content, noise draws and seed, so a changed input is never served stale targets.
"""
from __future__ import annotations

import hashlib
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


def read_shards(features_dir: str | Path, records, levels: list[str], teacher_hash: str | None = None
                ) -> dict[str, torch.Tensor]:
    """Targets from ``teacher extract`` output (teacher.features_io: index.json + sha256-checked float16
    shards), in the order of ``records``; refuses features of another teacher checkpoint."""
    from runtime.featurespec import ContractError
    from teacher.features_io import load_features

    idx, feats = load_features(features_dir, levels)
    if teacher_hash and idx.get("checkpoint_hash") not in (None, teacher_hash):
        raise ContractError(f"{features_dir}: features of teacher {str(idx.get('checkpoint_hash'))[:16]}, "
                            f"not of the teacher given ({teacher_hash[:16]})")
    row = {r["image"]: i for i, r in enumerate(idx["records"])}
    missing = [r.image for r in records if r.image not in row]
    if missing:
        raise KeyError(f"{features_dir}: no features for {len(missing)} image(s), e.g. {missing[0]}; were they "
                       "extracted from this dataset (all splits)?")
    take = torch.as_tensor([row[r.image] for r in records])
    return {lv: feats[lv][take] for lv in levels}


class _NoBar:
    def update(self, n=1):
        pass

    def close(self):
        pass


def _bar(total: int, desc: str, enabled: bool):
    if not enabled:
        return _NoBar()
    from runtime.progress import progress

    return progress(total, desc, leave=False)
