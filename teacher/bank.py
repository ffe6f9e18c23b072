"""Good-images-only mode: a PatchCore memory bank of teacher features (`teacher bank`, teacher/commands/bank.py).

    teacher bank --checkpoint CKPT --data D/manifest.jsonl [--budget N] [--json]
    torchrun --nproc-per-node 8 -m teacher bank --checkpoint CKPT --data D/manifest.jsonl [--merge coresets]

Under torchrun each rank embeds its shard of the records (records[rank::world]) and rank 0 merges
(``fit_bank``: ``--merge features`` gives the one-process bank, ``coresets`` bounds rank 0's memory).

writes CKPT/bank/: ``bank.npy`` (float16 (N, D), the same format as a student artifact's bank) and
``bank.json`` (embedding recipe, scoring parameters, calibrated threshold and band, figures).

Embedding (``patch_embedding``, mirrored by distill for the student): levels s8 and s16 of the t=50
features, each locally averaged over 3×3 (stride 1, PatchCore's neighbourhood aggregation), s16
upsampled bilinearly to the s8 grid, each level L2-normalised over channels, concatenated:
D = C_s8 + C_s16 (sd15: 960, tiny: 96), every vector of norm √2. No random projection, so the
embedding is a fixed function of the features. The coreset search alone uses a seeded Gaussian
projection to ``teacher.coreset.CORESET_PROJ_DIM`` dims for speed (PatchCore §3.2); the bank keeps full vectors.

Scoring is runtime.scoring.score_embedding (nearest-bank distance, bilinear to the teacher input size
S×S, Gaussian blur, image score = max), identical to the edge, which scores at its input size too.
Threshold: with defect images in the val split, the F1-max threshold on val image scores; with only
good ones, the ``GOOD_PERCENTILE`` percentile of good val scores times ``GOOD_MARGIN``; with no val
split, the same from the train good images' scores (leave-image-out: an image's own patches excluded).
``bank.json`` names which was used.
"""
from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from runtime.scoring import DEFAULT_BLUR_SIGMA_PX, DEFAULT_K, DEFAULT_SCORE_TOPK
from teacher.bank_defaults import (BUDGET_FRACTION, BUDGET_MAX, BUDGET_MIN, DEFAULT_BATCH_SIZE, DEFAULT_MERGE,
                                   MERGES)
from teacher.coreset import covering_radius, greedy_coreset

BANK_LEVELS = ("s8", "s16")
GOOD_PERCENTILE = 99.0
GOOD_MARGIN = 1.05
BANK_FILE = "bank.npy"
BANK_META = "bank.json"


def patch_embedding(features: dict[str, torch.Tensor]) -> torch.Tensor:
    """level -> (B, C, h, w) features -> (B, C_s8 + C_s16, h_s8, w_s8) float32 patch embedding (see module doc)."""
    ref = features[BANK_LEVELS[0]]
    hw = ref.shape[-2:]
    parts = []
    for name in BANK_LEVELS:
        f = local_patch(features[name])
        if f.shape[-2:] != hw:
            f = F.interpolate(f, size=hw, mode="bilinear", align_corners=False)
        parts.append(F.normalize(f, dim=1))
    return torch.cat(parts, dim=1)


def local_patch(f: torch.Tensor) -> torch.Tensor:
    """PatchCore's local neighbourhood aggregation of one level: a 3×3 mean, same size."""
    return F.avg_pool2d(f.float(), kernel_size=3, stride=1, padding=1, count_include_pad=False)


@dataclass
class MemoryBank:
    bank: np.ndarray  # float32 (N, D)
    threshold: float
    band: tuple[float, float]
    k: int = DEFAULT_K
    blur_sigma_px: float = DEFAULT_BLUR_SIGMA_PX
    score_topk: int = DEFAULT_SCORE_TOPK
    min_region_px: int = 16
    info: dict = field(default_factory=dict)

    def score(self, embedding: np.ndarray, image_hw: tuple[int, int]):
        """embedding (1, D, h, w) -> runtime.scoring.ScoreResult with a map of ``image_hw``. Callers pass
        the teacher's input size (S, S), as the edge scores at its network input size, so the two
        scores are on one scale; the pipeline then resizes the map to the frame."""
        from runtime.scoring import score_embedding

        return score_embedding(embedding, self.bank, image_hw, k=self.k, blur_sigma_px=self.blur_sigma_px,
                               score_topk=self.score_topk)

    def save(self, out_dir: str | Path) -> Path:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        np.save(out / BANK_FILE, self.bank.astype(np.float16))
        meta = {k: v for k, v in asdict(self).items() if k != "bank"}
        meta.update(bank_file=BANK_FILE, shape=list(self.bank.shape), embedding=embedding_recipe())
        (out / BANK_META).write_text(json.dumps(meta, indent=2))
        return out

    @classmethod
    def load(cls, bank_dir: str | Path) -> "MemoryBank":
        d = Path(bank_dir)
        for f in (BANK_FILE, BANK_META):
            if not (d / f).is_file():
                raise FileNotFoundError(f"{d}: memory bank is incomplete, {f} is missing (run `teacher bank`)")
        meta = json.loads((d / BANK_META).read_text())
        bank = np.load(d / BANK_FILE).astype(np.float32)
        return cls(bank=bank, threshold=float(meta["threshold"]), band=tuple(meta["band"]), k=int(meta["k"]),
                   blur_sigma_px=float(meta["blur_sigma_px"]), score_topk=int(meta["score_topk"]),
                   min_region_px=int(meta["min_region_px"]), info=meta.get("info", {}))


def default_budget(n_vectors: int) -> int:
    return int(min(n_vectors, np.clip(int(np.ceil(BUDGET_FRACTION * n_vectors)), BUDGET_MIN, BUDGET_MAX)))


def embedding_recipe() -> dict:
    return {"levels": list(BANK_LEVELS), "local_pool": "avg 3x3 stride 1 (count_include_pad=False)",
            "resample": "bilinear to the s8 grid (align_corners=False)", "normalise": "L2 per level over channels",
            "concat": "s8 then s16"}


@torch.no_grad()
def embed_images(teacher, images, batch_size: int = DEFAULT_BATCH_SIZE, seed: int = 0) -> list[np.ndarray]:
    """uint8 RGB images (any size; a list or a LazyImages) -> list of (1, D, h, w) float32 patch embeddings."""
    from teacher.model import to_teacher_batch

    out = []
    size = teacher.feature_spec.image_size
    for s in range(0, len(images), batch_size):
        x = to_teacher_batch(images[s:s + batch_size], size)
        emb = patch_embedding(teacher.extract_features(x, seed=seed)).cpu().numpy()
        out += [emb[i:i + 1] for i in range(emb.shape[0])]
    return out


@torch.no_grad()
def embed_flat(teacher, images, batch_size: int = DEFAULT_BATCH_SIZE, seed: int = 0) -> tuple[np.ndarray, tuple[int, int]]:
    """Images -> ((n·h·w, D) float32 patch vectors, image after image, each row-major over its (h, w) grid;
    (h, w)). Built batch by batch into one preallocated array: the only copy of the set."""
    from teacher.model import to_teacher_batch

    size = teacher.feature_spec.image_size
    allv, hw = None, (0, 0)
    for s in range(0, len(images), batch_size):
        x = to_teacher_batch(images[s:s + batch_size], size)
        emb = patch_embedding(teacher.extract_features(x, seed=seed)).cpu().numpy()  # (B, D, h, w)
        b, d, h, w = emb.shape
        if allv is None:
            allv, hw = np.empty((len(images) * h * w, d), np.float32), (h, w)
        allv[s * h * w:(s + b) * h * w] = emb.transpose(0, 2, 3, 1).reshape(-1, d)
    if allv is None:
        d = sum(lv.channels for lv in teacher.feature_spec.levels if lv.name in BANK_LEVELS)
        allv = np.zeros((0, d), np.float32)
    return allv, hw


def _image_embedding(allv: np.ndarray, j: int, hw: tuple[int, int]) -> np.ndarray:
    """Image j's (1, D, h, w) embedding back out of embed_flat's rows."""
    n = hw[0] * hw[1]
    return np.ascontiguousarray(allv[j * n:(j + 1) * n].T.reshape(1, -1, *hw))


class LazyImages:
    """A dataset's records as a sequence of uint8 RGB images, decoded when indexed: fit_bank then holds
    one batch of images at a time, not the whole split."""

    def __init__(self, ds, records):
        self.ds, self.records = ds, list(records)

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self.ds.read_image(r) for r in self.records[i]]
        return self.ds.read_image(self.records[i])


class Comm:
    """The collectives fit_bank needs, over torch.distributed (gloo or NCCL, as torchrun set it up);
    world 1 is one process and needs no process group."""

    def __init__(self, rank: int = 0, world: int = 1):
        self.rank, self.world = rank, world

    def gather(self, obj) -> list | None:
        """Every rank's obj, in rank order, on rank 0 (None elsewhere)."""
        if self.world == 1:
            return [obj]
        import torch.distributed as dist

        out = [None] * self.world if self.rank == 0 else None
        dist.gather_object(obj, out, dst=0)
        return out

    def all_gather(self, obj) -> list:
        if self.world == 1:
            return [obj]
        import torch.distributed as dist

        out = [None] * self.world
        dist.all_gather_object(out, obj)
        return out

    def broadcast(self, obj):
        """Rank 0's obj on every rank."""
        if self.world == 1:
            return obj
        import torch.distributed as dist

        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]


def interleave(parts: list[np.ndarray]) -> np.ndarray:
    """Per-rank results of items[rank::world] -> the results in item order (item i: rank i % world)."""
    world = len(parts)
    n = sum(len(p) for p in parts)
    out = np.empty((n,) + np.asarray(parts[0]).shape[1:], np.asarray(parts[0]).dtype)
    for r, p in enumerate(parts):
        out[r::world] = p
    return out


def calibrate_threshold(good_scores: np.ndarray, defect_scores: np.ndarray | None
                        ) -> tuple[float, tuple[float, float], str]:
    """-> (threshold, band, method). F1-max when defects are present, else a percentile of good scores.
    Band: ± half the gap between the good p95 and the threshold (at least 5 % of the threshold)."""
    good = np.asarray(good_scores, float)
    if defect_scores is not None and len(defect_scores) and len(good):
        from runtime.metrics import f1_max

        labels = np.r_[np.zeros(len(good)), np.ones(len(defect_scores))]
        _, thr = f1_max(labels, np.r_[good, defect_scores])
        method = "f1-max on val"
    else:
        thr = float(np.percentile(good, GOOD_PERCENTILE)) * GOOD_MARGIN
        method = f"p{GOOD_PERCENTILE:g} of good scores x {GOOD_MARGIN}"
    half = max(0.05 * abs(thr), 0.5 * abs(thr - float(np.percentile(good, 95))) if len(good) else 0.0)
    return float(thr), (float(thr - half), float(thr + half)), method


def fit_bank(teacher, train_images, val_good=None, val_defect=None, *, budget: int | None = None, seed: int = 0,
             k: int = DEFAULT_K, blur_sigma_px: float = DEFAULT_BLUR_SIGMA_PX, min_region_px: int = 16,
             batch_size: int = DEFAULT_BATCH_SIZE, log=None, comm: Comm | None = None,
             merge: str = DEFAULT_MERGE) -> MemoryBank | None:
    """Build and calibrate a bank from good training images; val images (good / defect) calibrate.
    Images: lists of uint8 RGB arrays or LazyImages.

    Under torchrun (``comm`` of world W > 1) each rank passes its shard of every list (items[rank::W]);
    rank 0 returns the bank, the others None. ``merge`` says how rank 0 builds it:
      - "features": every rank's patch vectors go to rank 0, which runs the one-process coreset on their
        union in image order: the same bank as one process (extraction, the costly part, is what is
        shared out; rank 0 holds the O(N·D) union once, as one process does).
      - "coresets": each rank keeps its own greedy coreset of its shard and rank 0 runs the final one on
        the union of those (at most W·budget vectors, so rank 0's memory does not grow with N). This is
        the composable k-centre coreset (Indyk et al., PODS 2014; Malkomes et al., NeurIPS 2015): greedy
        farthest-point is a 2-approximation of the k-centre cost PatchCore's coreset minimises (§3.2), a
        shard's optimum is at most twice the whole set's, and by the triangle inequality every patch
        vector lies within r_shard + r_final of the bank, so the bank still covers every good patch
        within a bounded radius (≤ 8 × the optimum; in practice close to the one-process radius). Both
        radii are recorded in ``info["merge"]``. The bank differs from the one-process bank by design.
    Calibration is shared out too: each rank scores its own val (or leave-image-out train) images
    against the final bank, broadcast from rank 0, and rank 0 calibrates on all the scores."""
    comm = comm or Comm()
    if merge not in MERGES:
        raise ValueError(f"merge {merge!r} is not one of {MERGES}")
    t0 = time.time()
    size = teacher.feature_spec.image_size
    rank, world = comm.rank, comm.world
    allv, hw = embed_flat(teacher, train_images, batch_size)
    n_img = comm.all_gather(len(train_images))
    if world > 1:  # a rank with no images (more ranks than images) has no grid of its own
        hw = max(comm.all_gather(hw))
    n_per = hw[0] * hw[1]
    n_vectors = sum(n_img) * n_per
    budget = default_budget(n_vectors) if budget is None else int(budget)
    bank_v, owner, merge_info = _select_bank(allv, n_per, n_vectors, budget, seed, comm, merge, teacher.device)
    bank = MemoryBank(bank=bank_v.astype(np.float32), threshold=0.0, band=(0.0, 0.0), k=k,
                      blur_sigma_px=blur_sigma_px, min_region_px=min_region_px)
    if log and rank == 0:
        log(f"bank: {n_vectors} patch vectors from {sum(n_img)} images -> coreset {len(bank_v)} "
            f"({time.time() - t0:.1f}s{f', {world} ranks, merged {merge}' if world > 1 else ''})")

    n_good, n_defect = (np.sum(c, axis=0) for c in zip(*comm.all_gather((len(val_good or ()),
                                                                         len(val_defect or ())))))
    if n_good:
        good = _bank_scores(teacher, bank, val_good, batch_size)
        defect = _bank_scores(teacher, bank, val_defect, batch_size) if n_defect else None
        source = "val"
    else:
        good = _leave_image_out_scores(bank, allv, hw, owner, len(train_images), comm, size)
        defect, source = None, "train (leave-image-out)"
    del allv
    good_all = comm.gather(good)
    defect_all = comm.gather(defect)
    if rank != 0:
        return None
    good = interleave(good_all)
    defect = interleave(defect_all) if defect is not None else None
    if source != "val":
        good = good[~np.isnan(good)]
        if not len(good):
            e0 = embed_images(teacher, train_images[0:1], batch_size)[0]
            good = np.asarray([bank.score(e0, (size, size)).score])
    thr, band, method = calibrate_threshold(good, defect)
    bank.threshold, bank.band = thr, band
    bank.info = {"calibration": method, "calibration_source": source, "n_train_images": int(sum(n_img)),
                 "n_patch_vectors": int(n_vectors), "budget": int(budget), "seed": int(seed),
                 "good_score_mean": float(np.mean(good)), "good_score_max": float(np.max(good)),
                 "defect_score_mean": float(np.mean(defect)) if defect is not None else None,
                 "n_val_good": int(n_good), "n_val_defect": int(n_defect)}
    if world > 1:
        bank.info["merge"] = merge_info
    return bank


def _select_bank(allv: np.ndarray, n_per: int, n_vectors: int, budget: int, seed: int, comm: Comm, merge: str,
                 device) -> tuple[np.ndarray, np.ndarray, dict]:
    """The coreset of every rank's patch vectors (see fit_bank's ``merge``) -> (bank vectors, the image each came
    from as its index in item order, merge figures), the same on every rank."""
    rank, world = comm.rank, comm.world
    merge_info: dict = {"world_size": world, "merge": merge if world > 1 else "one process"}
    bank_v = owner = None
    if world == 1:
        idx = greedy_coreset(allv, budget, seed, device=device)
        bank_v, owner = allv[idx], idx // n_per  # owner: the image each bank vector came from
    elif merge == "features":
        parts = comm.gather(allv)
        if rank == 0:
            union = np.empty((n_vectors, allv.shape[1]), np.float32)
            u3 = union.reshape(-1, n_per, allv.shape[1])
            for r in range(world):  # image i came from rank i % world (records[rank::world])
                u3[r::world] = parts[r].reshape(-1, n_per, allv.shape[1])
                parts[r] = None
            idx = greedy_coreset(union, budget, seed, device=device)
            bank_v, owner = union[idx], idx // n_per
            del union, u3
    else:
        local = greedy_coreset(allv, budget, seed, device=device)
        r_local = covering_radius(allv, allv[local])
        parts = comm.gather((allv[local], (local // n_per) * world + rank, r_local))
        if rank == 0:
            union = np.concatenate([p[0] for p in parts])
            owners = np.concatenate([p[1] for p in parts])
            idx = greedy_coreset(union, budget, seed, device=device)
            bank_v, owner = union[idx], owners[idx]
            merge_info.update(union_size=int(len(union)), local_radius=[float(p[2]) for p in parts],
                              final_radius_over_union=covering_radius(union, bank_v),
                              bound="every patch vector within local_radius[rank] + final_radius_over_union")
            del union
    bank_v, owner = comm.broadcast((bank_v, owner))
    return bank_v, owner, merge_info


def _bank_scores(teacher, bank: MemoryBank, imgs, batch_size: int) -> np.ndarray:
    """Image scores of ``imgs`` against ``bank``, at the teacher's input size, one batch of embeddings at a time."""
    size = teacher.feature_spec.image_size
    out = []
    for s in range(0, len(imgs or ()), batch_size):
        out += [bank.score(e, (size, size)).score for e in embed_images(teacher, imgs[s:s + batch_size], batch_size)]
    return np.asarray(out, np.float64)


def _leave_image_out_scores(bank: MemoryBank, allv: np.ndarray, hw: tuple[int, int], owner: np.ndarray,
                            n_images: int, comm: Comm, size: int) -> np.ndarray:
    """Each of this rank's train images scored against the bank without its own patches (NaN for an image that
    is the whole bank: it has no leave-image-out score)."""
    good = []
    for j in range(n_images):
        keep = owner != j * comm.world + comm.rank
        if keep.sum() == 0:
            good.append(np.nan)
            continue
        sub = MemoryBank(bank=bank.bank[keep], threshold=0, band=(0, 0), k=bank.k, blur_sigma_px=bank.blur_sigma_px)
        good.append(sub.score(_image_embedding(allv, j, hw), (size, size)).score)
    return np.asarray(good, np.float64)
