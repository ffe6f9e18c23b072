"""Teacher targets: the t=50 features averaged over noise draws, computed once per run and cached.

Either on the fly (``teacher.extract_features(images, noise_draws=K, seed)``) or read from the
safetensors shards ``teacher extract`` writes (``--features DIR``). The cache file is keyed by teacher
hash, image content, noise draws and seed, so a changed input is never served stale targets.

Held in RAM (a dict of tensors) while the set fits in ``STREAM_ABOVE_BYTES``; above it (or with
``distill fit --stream-targets``) they stream: level -> teacher.features_io.MappedLevel, memory-mapped
from the extract shards or from a float32 ``.npy`` per level that ``stream_computed`` fills batch by
batch, so only the rows a step indexes are read. The helpers below (``channel_mean``, ``pca_streamed``)
compute over either kind in batches.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # torch is imported in the functions: `distill fit --help` reads STREAM_ABOVE_BYTES, torch-free
    import torch

STREAM_ABOVE_BYTES = 2 << 30  # float32 targets above this stream from disk instead of RAM (as teacher finetune's cache)
STREAM_BATCH = 64  # images per pass of the batched statistics


def cache_key(teacher_hash: str, images: np.ndarray, noise_draws: int, seed: int) -> str:
    h = hashlib.sha256()
    h.update(f"{teacher_hash}|{noise_draws}|{seed}|{images.shape}".encode())
    h.update(np.ascontiguousarray(images).tobytes())
    return h.hexdigest()[:16]


def compute_targets(teacher, images_01: torch.Tensor, noise_draws: int = 4, seed: int = 0, batch_size: int = 8,
                    progress: bool = False) -> dict[str, torch.Tensor]:
    """(N, 3, S, S) in [0, 1] -> level -> (N, C, h, w) float32 (each image independent of its batch)."""
    import torch

    out: dict[str, list[torch.Tensor]] = {}
    n = images_01.shape[0]
    bar = _bar(n, "teacher targets", progress)
    with torch.no_grad():
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


def _rows(features_dir, idx: dict, records, teacher_hash: str | None) -> list[int]:
    """Each record's row in a `teacher extract` index; refuses another teacher's features or a missing image."""
    from runtime.contracts.formats import ContractError

    if teacher_hash and idx.get("checkpoint_hash") not in (None, teacher_hash):
        raise ContractError(f"{features_dir}: features of teacher {str(idx.get('checkpoint_hash'))[:16]}, "
                            f"not of the teacher given ({teacher_hash[:16]})")
    row = {r["image"]: i for i, r in enumerate(idx["records"])}
    missing = [r.image for r in records if r.image not in row]
    if missing:
        raise KeyError(f"{features_dir}: no features for {len(missing)} image(s), e.g. {missing[0]}; were they "
                       "extracted from this dataset (all splits)?")
    return [row[r.image] for r in records]


def read_shards(features_dir: str | Path, records, levels: list[str], teacher_hash: str | None = None
                ) -> dict[str, torch.Tensor]:
    """Targets from ``teacher extract`` output (teacher.features_io: index.json + sha256-checked float16
    shards), in the order of ``records``; refuses features of another teacher checkpoint."""
    import torch

    from teacher.features_io import load_features

    idx, feats = load_features(features_dir, levels)
    take = torch.as_tensor(_rows(features_dir, idx, records, teacher_hash))
    return {lv: feats[lv][take] for lv in levels}


def target_bytes(spec, n_images: int) -> int:
    """float32 bytes of every level's targets of ``n_images`` images."""
    return 4 * n_images * sum(lv.channels * spec.grid(lv) ** 2 for lv in spec.levels)


def stream_shards(features_dir: str | Path, records, levels: list[str], teacher_hash: str | None = None) -> dict:
    """As read_shards, memory-mapped: level -> MappedLevel in the order of ``records``."""
    from teacher.features_io import open_features

    idx, feats = open_features(features_dir, levels)
    take = np.asarray(_rows(features_dir, idx, records, teacher_hash), np.int64)
    return {lv: feats[lv].select(take) for lv in levels}


def stream_computed(teacher, images_u8: np.ndarray, cache_dir: Path, key: str, noise_draws: int = 4, seed: int = 0,
                    batch_size: int = 8, progress: bool = False) -> tuple[dict, bool]:
    """(level -> MappedLevel, hit): the targets of (N, S, S, 3) uint8 images written batch by batch into
    float32 ``.npy`` files under cache_dir/targets-KEY/ and memory-mapped back (the values of
    compute_targets, bit for bit; only one batch is in RAM). A directory without its ``done.json`` (an
    interrupted run) is recomputed."""
    import torch

    from teacher.features_io import MappedLevel

    d = Path(cache_dir) / f"targets-{key}"
    spec = teacher.feature_spec
    names = list(spec.names)
    hit = (d / "done.json").is_file()
    if not hit:
        d.mkdir(parents=True, exist_ok=True)
        n = len(images_u8)
        arrs = {lv.name: np.lib.format.open_memmap(d / f"{lv.name}.npy", mode="w+", dtype=np.float32,
                                                   shape=(n, lv.channels, spec.grid(lv), spec.grid(lv)))
                for lv in spec.levels}
        bar = _bar(n, "teacher targets", progress)
        with torch.no_grad():
            for s in range(0, n, batch_size):
                x = torch.from_numpy(images_u8[s:s + batch_size]).permute(0, 3, 1, 2).float() * np.float32(1 / 255)
                f = teacher.extract_features(x, noise_draws=noise_draws, seed=seed)
                for k, v in f.items():
                    arrs[k][s:s + len(x)] = v.detach().float().cpu().numpy()
                bar.update(len(x))
        bar.close()
        for a in arrs.values():
            a.flush()
        del arrs
        (d / "done.json").write_text(json.dumps({"n": int(n), "levels": names}))
    maps = {k: np.load(d / f"{k}.npy", mmap_mode="r") for k in names}
    return {k: MappedLevel([m], np.arange(len(m))) for k, m in maps.items()}, hit


def is_streamed(targets: dict) -> bool:
    import torch

    return not isinstance(next(iter(targets.values())), torch.Tensor)


def take(v, rows):
    """Rows of a target level, a tensor or a MappedLevel (then a view)."""
    import torch

    return v[rows] if isinstance(v, torch.Tensor) else v.select(rows)


def cat_levels(a, b):
    """Two target sets of one level, one after the other (tensors: torch.cat; MappedLevels: a view)."""
    import torch

    if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
        return torch.cat([a, b])
    from teacher.features_io import MappedLevel

    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        raise TypeError("cat_levels: both sets must be tensors or both memory-mapped")
    off = sum(len(s) for s in a.segments)
    return MappedLevel(a.segments + b.segments, np.r_[a.rows, b.rows + off])


def batches(v, batch_size: int = STREAM_BATCH):
    """float32 tensors of consecutive rows of a level (tensor or MappedLevel)."""
    for s in range(0, len(v), batch_size):
        yield v[s:s + batch_size].float()


def channel_mean(v, reduce=None) -> torch.Tensor:
    """(C,) mean over images and positions, accumulated in float64 batch by batch. ``reduce``: a sum over
    processes (distill fit under torchrun: each rank holds a shard), applied to the sums and the count."""
    import torch

    total, count = None, 0
    for b in batches(v):
        t = b.double().sum(dim=(0, 2, 3))
        total = t if total is None else total + t
        count += b.shape[0] * b.shape[2] * b.shape[3]
    if reduce is not None:
        total, count = reduce(total), int(reduce(torch.tensor([count], dtype=torch.float64)))
    return (total / max(count, 1)).float()


def pca_streamed(make_batches, dim: int, reduce=None) -> tuple[torch.Tensor, torch.Tensor, float]:
    """distill.embedding.fit_pca over (B, C, h, w) batches from ``make_batches()`` (called twice: the mean,
    then the centred covariance, both in float64, as fit_pca computes them in one piece). ``reduce``: a sum
    over processes, applied to the sums, the count and the scatter matrix, so every rank of a sharded fit
    gets the PCA of the whole set."""
    import torch

    total, n = None, 0
    for e in make_batches():
        x = e.permute(0, 2, 3, 1).reshape(-1, e.shape[1]).double()
        total = x.sum(0) if total is None else total + x.sum(0)
        n += x.shape[0]
    if reduce is not None:
        total, n = reduce(total), int(reduce(torch.tensor([n], dtype=torch.float64)))
    mean = total / max(n, 1)
    cov = None
    for e in make_batches():
        xc = e.permute(0, 2, 3, 1).reshape(-1, e.shape[1]).double() - mean
        c = xc.T @ xc
        cov = c if cov is None else cov + c
    if reduce is not None:
        cov = reduce(cov)
    cov = cov / max(1, n - 1)
    evals, evecs = torch.linalg.eigh(cov)  # ascending
    evals, evecs = evals.flip(0), evecs.flip(1)
    dim = min(dim, cov.shape[0])
    share = float(evals[:dim].clamp_min(0).sum() / evals.clamp_min(0).sum().clamp_min(1e-12))
    return evecs[:, :dim].T.float().contiguous(), mean.float(), share


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
