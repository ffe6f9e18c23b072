"""`distill fit`: distil the teacher's t=50 features into a student; bank, threshold, band, OOD limit.

    distill fit --teacher CKPT --data D/manifest.jsonl --student s --out RUN --steps 2000 [--features FEATS] [--json]

Targets: the teacher's features averaged over ``--noise-draws`` draws, computed once for the train and val
images and cached in RUN/cache (or read from ``teacher extract`` shards with ``--features``). The student
sees exactly the edge's preprocessing (kernels.dispatch.preprocess). Train split: good and defect images,
plus ``--pseudo-defects`` planted variants of each good one (their targets cached beside the others; the
bank holds the good images' patches only). Val split: held-out cosine, bank-score calibration against the
teacher's decisions.

Several processes (DDP over shards of the train split; gloo, the student trains on the CPU):

    torchrun --nproc-per-node 4 -m distill fit --teacher CKPT --data D/manifest.jsonl --student s --out RUN

Under torchrun (RANK set) rank r trains on train records[r::world] (their targets only: computed, cached
or read from shards per rank) in DistributedDataParallel; the embedding PCA and the projections' starting
means are summed over ranks, so they are the whole split's. Every rank holds the val split (early stopping
decides alike). Rank 0 alone then builds the bank from every good train image, calibrates and writes
the run; the run's config records the world size and each rank's weights digest (DDP keeps them equal).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import torch

from distill.bank import DEFAULT_BANK_BUDGET, ScoringParams, build_bank, fit_head_norms, score_outputs
from distill.calibrate import DEFAULT_MAX_FALLBACK, DEFAULT_TARGET_AGREEMENT, calibrate
from distill.data import concat, load_images, load_records, pseudo_defect_set
from distill.embedding import fit_pca, reference_embedding, teacher_recipe
from distill.head_targets import KINDS as HEAD_KINDS
from distill.head_targets import head_targets, load_teacher_head
from distill.run import save_run
from distill.students import create_student, list_students
from distill.targets import (STREAM_ABOVE_BYTES, batches, cache_key, cached_targets, cat_levels, channel_mean,
                             compute_targets, pca_streamed, read_shards, stream_computed, stream_shards,
                             target_bytes, take)
from distill.trainer import fit_student, level_cosine, plot_curves
from runtime.cli.dispatch import fraction, non_negative_float, non_negative_int, positive_int
from runtime.contracts.manifest import Preprocess
from runtime.scoring import DEFAULT_BLUR_SIGMA_PX, SCORING_MODES

DEFAULT_EMBED_DIM = 128
# One pseudo-defect per good train image (distill.data.pseudo_defect_set): a student trained on good images only
# never sees the teacher respond to a defect. On the public evaluation set (128 px, same teacher, lite0, 800
# steps, 2026-12-03) it lifted student FP32 I-AUROC 0.580 -> 0.647 and AU-PRO 0.470 -> 0.501.
DEFAULT_PSEUDO_DEFECTS = 1
# The distilled defect map also learns where the defects are known to be (known_masks: none on good images, the
# planted region on pseudo-defects), as the teacher's head itself was trained: the teacher's map is a blurred,
# weaker copy of those masks. On the public evaluation set (128 px, same teacher, lite0, 800 steps, 2026-12-03)
# weight 1 against 0 lifted AU-PRO 0.504 -> 0.543 (FP32), 0.509 -> 0.540 (INT8 ORT), 0.509 -> 0.542 (OpenVINO),
# and escapes 0.78 -> 0.70 (FP32); I-AUROC moved inside its noise (0.671 -> 0.678 FP32, 0.650 -> 0.636 ORT).
DEFAULT_MASK_WEIGHT = 1.0


def known_masks(images, stride: int) -> torch.Tensor:
    """(N, 1, S/stride, S/stride) share of each map cell inside the image's defect mask: what the defect map
    should say where the truth is known (good images, masked defects); NaN for a defect without a mask."""
    m = torch.from_numpy(images.masks.astype(np.float32))[:, None]
    cells = torch.nn.functional.avg_pool2d(m, stride) if stride > 1 else m
    unknown = torch.from_numpy((images.labels == 1) & ~images.masks.any(axis=(1, 2)))
    cells[unknown] = float("nan")
    return cells


def configure(p) -> None:
    p.add_argument("--teacher", required=True, help="teacher checkpoint directory")
    p.add_argument("--data", required=True, help="dataset manifest.jsonl")
    p.add_argument("--student", default="s", help=f"registry name ({', '.join(list_students())})")
    p.add_argument("--out", required=True, help="run directory to write")
    p.add_argument("--steps", type=positive_int, default=2000)
    p.add_argument("--features", default=None, help="read targets from `teacher extract` shards in this directory")
    p.add_argument("--stream-targets", action=argparse.BooleanOptionalAction, default=None,
                   help="stream the teacher targets from memory-mapped files instead of holding them in RAM "
                        f"(default: when they exceed {STREAM_ABOVE_BYTES >> 30} GiB as float32)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--noise-draws", type=int, default=4, help="teacher noise draws averaged per target")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--embed-dim", type=int, default=DEFAULT_EMBED_DIM, help="PCA components of the embedding")
    p.add_argument("--proj-rank", type=int, default=None,
                   help="project each level through a frozen rank-R PCA basis of the teacher's features")
    p.add_argument("--bank-budget", type=int, default=DEFAULT_BANK_BUDGET, help="memory-bank coreset size")
    p.add_argument("--scoring", choices=SCORING_MODES, default=None,
                   help="what the edge scores with: the bank, the distilled head's map, or both averaged in units "
                        "of their good-image levels (default: both when the teacher has a head, else bank). On the "
                        "public evaluation set head alone localised better (AU-PRO +5 pt) and ranked parts "
                        "slightly worse (I-AUROC -2 to -4 pt) than both")
    p.add_argument("--k", type=int, default=1, help="nearest bank neighbours averaged per location")
    p.add_argument("--blur-sigma", type=float, default=DEFAULT_BLUR_SIGMA_PX, help="Gaussian blur of the map, px")
    p.add_argument("--target-agreement", type=float, default=DEFAULT_TARGET_AGREEMENT, help="agreement with the "
                   "teacher outside the uncertainty band that sets the band's width")
    p.add_argument("--max-fallback", type=fraction, default=DEFAULT_MAX_FALLBACK, metavar="F",
                   help="the most of the val frames the band (with the out-of-distribution ones) may send to the "
                        "teacher; the band stops there even when the target agreement is not met, so the teacher "
                        "servers are sized by it")
    p.add_argument("--mse-weight", type=float, default=1.0, help="weight of the MSE term beside the cosine loss")
    p.add_argument("--jitter", type=float, default=0.0, help="brightness/contrast jitter on the student input")
    p.add_argument("--no-augment", action="store_true")
    p.add_argument("--pseudo-defects", type=non_negative_int, default=DEFAULT_PSEUDO_DEFECTS, metavar="K",
                   help="train also on K pseudo-defects planted on every good train image (as `teacher finetune "
                        "--pseudo-defects`), so the student sees the teacher's response to defects, not only to "
                        "good surfaces")
    p.add_argument("--mask-weight", type=non_negative_float, default=DEFAULT_MASK_WEIGHT, metavar="W",
                   help="weight of a BCE that teaches the distilled defect map the masks known on the train images "
                        "(0 on good images, the planted region on pseudo-defects, labelled masks), beside the "
                        "teacher's map; 0 distils the teacher's map alone")
    p.add_argument("--no-pretrained", action="store_true",
                   help="start the backbone from random weights even where it has ImageNet ones (lite0)")
    p.add_argument("--pretrained-lr-scale", type=non_negative_float, default=1.0, metavar="F",
                   help="learning rate of the backbone's pretrained (ImageNet) weights relative to --lr")
    p.add_argument("--no-early-stop", action="store_true",
                   help="keep the last weights instead of those with the best held-out (val) cosine")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    p.add_argument("--json", action="store_true")


def log(msg: str) -> None:
    print(f"[distill fit] {msg}", file=sys.stderr, flush=True)


def _dist_rank_world() -> tuple[int, int]:
    """(rank, world) of the process group `run` set up under torchrun; (0, 1) in one process."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _sum_over_ranks(t: torch.Tensor) -> torch.Tensor:
    import torch.distributed as dist

    t = t.clone()
    dist.all_reduce(t)
    return t


def weights_digest(model: torch.nn.Module) -> str:
    """sha256 of every parameter and buffer, in state-dict order: equal digests, equal weights."""
    import hashlib

    h = hashlib.sha256()
    for k, v in model.state_dict().items():
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def reference_decisions(ckpt: str, images: np.ndarray) -> tuple[np.ndarray | None, str]:
    """The teacher pipeline's decisions on the val images (bool defect), or (None, why) without head/bank."""
    try:
        from teacher.pipeline import TeacherPipeline

        pipe = TeacherPipeline.load(ckpt)
    except (FileNotFoundError, ImportError) as e:
        log(f"teacher has neither head nor bank ({e}); calibrating against ground-truth labels")
        return None, "labels"
    verdicts = pipe.predict(list(images))
    return np.asarray([v.decision == "defect" for v in verdicts]), f"teacher ({pipe.mode})"


def fit(*, teacher, teacher_ckpt: str, data: str, student: str, out: str | Path, steps: int,
        features: str | None = None, batch_size: int = 8, lr: float = 2e-3, noise_draws: int = 4, seed: int = 0,
        embed_dim: int | None = DEFAULT_EMBED_DIM, bank_budget: int = DEFAULT_BANK_BUDGET,
        scoring: ScoringParams | None = None, target_agreement: float = DEFAULT_TARGET_AGREEMENT,
        max_fallback: float = DEFAULT_MAX_FALLBACK, mse_weight: float = 1.0,
        jitter: float = 0.0, augment: bool = True, progress: bool = True, reference: str = "auto",
        proj_rank: int | None = None, early_stop: bool = True, pretrained: bool = True,
        pseudo_defects: int = DEFAULT_PSEUDO_DEFECTS, scoring_mode: str | None = None,
        mask_weight: float = DEFAULT_MASK_WEIGHT, pretrained_lr_scale: float = 1.0,
        stream_targets: bool | None = None) -> dict:
    """The whole fit; returns the summary printed by --json. ``reference``: "auto" (teacher pipeline if
    the checkpoint has a head or bank) or "labels". ``stream_targets``: targets memory-mapped from disk
    instead of RAM (distill/targets.py; None: when they exceed STREAM_ABOVE_BYTES); the same results up
    to float rounding of the batched statistics (PCA, channel means)."""
    from runtime.contracts.dataset import load_dataset

    t0 = time.time()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    scoring = scoring or ScoringParams()
    spec = teacher.feature_spec
    size = spec.image_size
    pre = Preprocess(size=size)
    ds = load_dataset(data)
    rank, world = _dist_rank_world()
    reduce = _sum_over_ranks if world > 1 else None
    train_all = None  # under DDP: rank 0's every train image, for the bank
    if world > 1:
        recs = ds.split("train")
        if len(recs) < world:
            raise SystemExit(f"{data}: {len(recs)} train images for {world} ranks; each rank needs at least one")
        train = load_records(ds, recs[rank::world], size)  # this rank's shard
        train_all = load_images(ds, ("train",), size) if rank == 0 else None
        log(f"rank {rank}/{world}: trains on {len(train)} of {len(recs)} train images")
    else:
        train = load_images(ds, ("train",), size)
    try:
        val = load_images(ds, ("val",), size)
    except ValueError:
        raise SystemExit(f"{data}: no val split; distill fit needs one to calibrate the threshold and band")
    log(f"{len(train)} train ({int(train.labels.sum())} defect), {len(val)} val images at {size}px; "
        f"teacher {teacher.checkpoint_hash[:16]}")

    both = concat(train, val)
    n_targets = len(both) + pseudo_defects * len(train.good)
    stream = target_bytes(spec, n_targets) > STREAM_ABOVE_BYTES if stream_targets is None else bool(stream_targets)
    if stream:
        log(f"targets stream from memory-mapped files ({target_bytes(spec, n_targets) / 2 ** 30:.2f} GiB as float32)")
    if features and stream:
        targets = stream_shards(features, both.records, spec.names, teacher.checkpoint_hash)
        log(f"targets memory-mapped from {features}")
    elif features:
        targets = read_shards(features, both.records, spec.names, teacher.checkpoint_hash)
        log(f"targets read from {features}")
    elif stream:
        key = cache_key(teacher.checkpoint_hash, both.images, noise_draws, seed)
        targets, hit = stream_computed(teacher, both.images, out / "cache", key, noise_draws=noise_draws, seed=seed,
                                       progress=progress)
        log(f"targets {'from cache' if hit else 'computed'} ({noise_draws} noise draws, {time.time() - t0:.1f}s)")
    else:
        key = cache_key(teacher.checkpoint_hash, both.images, noise_draws, seed)
        targets, hit = cached_targets(out / "cache", key, lambda: compute_targets(
            teacher, both.teacher_inputs(), noise_draws=noise_draws, seed=seed, progress=progress))
        log(f"targets {'from cache' if hit else 'computed'} ({noise_draws} noise draws, {time.time() - t0:.1f}s)")
    targets = {n: targets[n] for n in spec.names}  # FeatureSpec order (the cache file sorts keys)
    for lv in spec.levels:
        want = (len(both), lv.channels, spec.grid(lv), spec.grid(lv))
        if tuple(targets[lv.name].shape) != want:
            raise ValueError(f"teacher targets {lv.name}: {tuple(targets[lv.name].shape)} != FeatureSpec {want}")
    ntr = len(train)
    tr_t = {k: take(v, slice(None, ntr)) for k, v in targets.items()}
    va_t = {k: take(v, slice(ntr, None)) for k, v in targets.items()}
    del targets

    # embedding basis: PCA of the teacher's bank embedding of the training images
    recipe = teacher_recipe()
    if stream or world > 1:  # the embedding batch by batch, twice (mean, then covariance): never the whole set
        def embeddings():
            n_tr = len(next(iter(tr_t.values())))
            for s in range(0, n_tr, 64):
                with torch.no_grad():
                    yield reference_embedding({k: v[s:s + 64] for k, v in tr_t.items()}, recipe)

        full_dim = next(embeddings()).shape[1]
        dim = min(embed_dim or full_dim, full_dim)
        basis, mean, share = pca_streamed(embeddings, dim, reduce=reduce)
        recipe = teacher_recipe(dim=dim)
    else:
        with torch.no_grad():
            temb = reference_embedding(tr_t, recipe)
        full_dim = temb.shape[1]
        dim = min(embed_dim or full_dim, full_dim)
        recipe = teacher_recipe(dim=dim)
        basis, mean, share = fit_pca(temb, dim)
        del temb
    if pseudo_defects:  # after the PCA: the embedding basis describes the line's own images
        planted = pseudo_defect_set(train, pseudo_defects, seed)
        key = cache_key(teacher.checkpoint_hash, planted.images, noise_draws, seed)
        if stream:
            pt, hit = stream_computed(teacher, planted.images, out / "cache", key, noise_draws=noise_draws, seed=seed,
                                      progress=progress)
        else:
            pt, hit = cached_targets(out / "cache", key, lambda: compute_targets(
                teacher, planted.teacher_inputs(), noise_draws=noise_draws, seed=seed, progress=progress))
        tr_t = {k: cat_levels(v, pt[k]) for k, v in tr_t.items()}
        train = concat(train, planted)
        log(f"{len(planted)} pseudo-defect images ({pseudo_defects} per good train image), targets "
            f"{'from cache' if hit else 'computed'}")

    # teacher head (CKPT/head): distil its outputs too
    head_state = load_teacher_head(teacher_ckpt)
    head_specs: tuple = ()
    tr_h: dict = {}
    labels = ds.labels()
    if head_state is not None:
        tr_h, head_specs = head_targets(head_state, tr_t, size)
        labels = list(head_state.vocabulary)
        log(f"teacher head: distilling {', '.join(f'{h.name} {tuple(tr_h[h.name].shape[1:])}' for h in head_specs)}")

    mask_t = None
    if mask_weight > 0 and head_specs:
        mask_t = known_masks(train, next(h for h in head_specs if h.name == "defect_map").stride)
        log(f"defect map also learns the known masks of {int((~torch.isnan(mask_t[:, 0, 0, 0])).sum())} train "
            f"images (weight {mask_weight})")
    mode = scoring_mode or ("both" if head_specs else "bank")
    if mode != "bank" and not head_specs:  # refused before any training
        raise SystemExit(f"--scoring {mode} needs the teacher's mask head ({teacher_ckpt}/head: `teacher finetune`)")

    # optional reduced basis per level: the projection emits ``proj_rank`` PCA coefficients of the
    # teacher's features, a frozen 1×1 conv maps them back to the teacher's channels
    ranks, rank_share = {}, {}
    if proj_rank:
        for lv in spec.levels:
            if lv.channels > proj_rank:
                ranks[lv.name] = int(proj_rank)
    torch.manual_seed(seed)
    model = create_student(student, spec=spec, embedding=recipe, head_outputs=head_specs, ranks=ranks)
    init = model.load_pretrained() if pretrained else None
    log(f"student backbone starts from {init or 'random weights'}")
    model.set_embedding_basis(basis, mean)
    for name, r in ranks.items():
        comps, mu, rank_share[name] = pca_streamed(lambda: batches(tr_t[name]), r, reduce=reduce) \
            if stream or world > 1 else fit_pca(tr_t[name], r)
        model.set_basis(name, comps, mu)
    with torch.no_grad():  # full projections start at the teacher's channel means (its features are far from 0)
        for lv in spec.levels:
            if lv.name not in ranks:
                model.proj[lv.name].proj.bias.copy_(channel_mean(tr_t[lv.name], reduce) if stream or world > 1
                                                    else tr_t[lv.name].mean(dim=(0, 2, 3)))
    if ranks:
        log("reduced bases: " + ", ".join(f"{k} rank {ranks[k]} keeps {v:.3f}" for k, v in rank_share.items()))
    n_params = sum(p.numel() for p in model.parameters())
    log(f"student {student}: {n_params / 1e6:.2f}M parameters; embedding {full_dim} -> {dim} "
        f"(PCA keeps {share:.3f} of the variance)")
    metrics_path = out / "metrics.jsonl" if rank == 0 else None
    if metrics_path is not None:
        metrics_path.write_text("")
    rows = fit_student(model, torch.from_numpy(train.images).permute(0, 3, 1, 2).contiguous(), tr_t,
                       mean=pre.mean, std=pre.std, steps=steps, batch_size=batch_size, lr=lr, seed=seed,
                       augment=augment, jitter=jitter, mse_weight=mse_weight, metrics_path=metrics_path,
                       head_targets=tr_h, head_kinds=HEAD_KINDS, progress=progress and rank == 0,
                       mask_targets=mask_t, mask_weight=mask_weight,
                       pretrained_lr_scale=pretrained_lr_scale if init else 1.0,
                       val=(val.student_inputs(pre.mean, pre.std), va_t) if early_stop else None,
                       ddp=world > 1)
    ddp_info: dict = {}
    if world > 1:
        import torch.distributed as dist

        digests: list = [None] * world
        dist.all_gather_object(digests, weights_digest(model))
        tr_mean_all = {k: channel_mean(v, reduce).view(1, -1, 1, 1) for k, v in tr_t.items()}  # the last collective
        ddp_info = {"world_size": world, "weights_sha256": digests}
        if rank != 0:  # rank 0 alone builds the bank, calibrates and writes the run
            log(f"rank {rank}: trained ({digests[rank][:12]}); rank 0 writes the run")
            return {"run": None, "rank": rank, **ddp_info, "steps": steps,
                    "final_loss": rows[-1]["loss"] if rows else None, "seconds": round(time.time() - t0, 2)}
        if len(set(digests)) != 1:
            raise RuntimeError(f"DDP ranks ended with different weights: {digests}")
    best_step = rows[-1].get("best_step", steps - 1) if rows else None
    if early_stop:
        log(f"kept the weights of step {best_step} (best mean val cosine)")
    plot_curves(rows, out / "curves.png")

    model.eval()
    x_val = val.student_inputs(pre.mean, pre.std)
    fidelity = level_cosine(model, x_val, va_t)
    # baseline: a constant predictor at the train channel means; the student must beat it. Centred
    # cosine (both sides minus that mean) measures what it predicts beyond the mean
    if stream or world > 1:
        tr_mean = tr_mean_all if world > 1 else {k: channel_mean(v).view(1, -1, 1, 1) for k, v in tr_t.items()}
        baseline = {k: float(sum(float(torch.nn.functional.cosine_similarity(tr_mean[k].expand_as(b), b, dim=1).sum())
                                 for b in batches(v)) / max(1, len(v) * v.shape[2] * v.shape[3]))
                    for k, v in va_t.items()}
    else:
        tr_mean = {k: v.mean(dim=(0, 2, 3)).view(1, -1, 1, 1) for k, v in tr_t.items()}
        baseline = {k: float(torch.nn.functional.cosine_similarity(
            tr_mean[k].expand_as(v), v, dim=1).mean()) for k, v in va_t.items()}
    centred = level_cosine(model, x_val, va_t, center=tr_mean)
    log("val cosine per level: " + ", ".join(f"{k} {v:.3f} (mean predictor {baseline[k]:.3f}, centred "
                                             f"{centred[k]:.3f})" for k, v in fidelity.items()))

    fused = model.fused()
    with torch.no_grad():
        banked = train_all if train_all is not None else train  # under DDP every rank's good images
        emb_train = np.concatenate([fused(x[None]).embedding.numpy()
                                    for x in banked.student_inputs(pre.mean, pre.std)[banked.good]])
        out_val = [{k: v.numpy() for k, v in fused(x[None])._asdict().items()} for x in x_val]
    bank, bank_info = build_bank(emb_train, bank_budget, seed)
    if mode != "bank":  # the student carries the teacher's head: score as the teacher does
        goods = [o for o, y in zip(out_val, val.labels) if y == 0] or out_val
        scoring = replace(fit_head_norms(goods, bank, size, scoring), mode=mode)
        log(f"scoring: {mode} (bank and distilled head norms {scoring.bank_norm:.4g} / {scoring.head_norm:.4g}, "
            f"good val images)")
    val_scores = score_outputs(out_val, bank, size, scoring)
    ref, ref_name = (None, "labels") if reference == "labels" or not teacher_ckpt else \
        reference_decisions(teacher_ckpt, val.images)
    cal = calibrate(val_scores.scores, val_scores.mean_nn, val.labels, reference=ref, reference_name=ref_name,
                    target_agreement=target_agreement, max_fallback=max_fallback)
    log(f"threshold {cal['threshold']:.4g}, band [{cal['band'][0]:.4g}, {cal['band'][1]:.4g}], OOD limit "
        f"{cal['ood_limit']:.4g}; reference {cal['reference']}; val fallback rate {cal['val_fallback_rate']:.3f}")

    val_metrics = {}
    try:
        from runtime.metrics import compute_all

        val_metrics = compute_all(val.labels, val_scores.scores, masks=list(val.masks), maps=list(val_scores.maps),
                                  threshold=cal["threshold"])
    except ImportError:
        pass
    config = {
        "student": student, "feature_spec": spec.to_dict(), "preprocess": pre.model_dump(),
        "embedding": recipe.to_dict(), "embedding_pca_variance": share,
        "heads": [asdict(h) for h in head_specs], "ranks": ranks,
        "rank_variance": rank_share,
        "teacher": {"checkpoint": str(Path(teacher_ckpt).resolve()) if teacher_ckpt else "",
                    "hash": teacher.checkpoint_hash, "preset": getattr(teacher, "preset", "")},
        "dataset": {"manifest": str(Path(ds.manifest).resolve()), "hash": ds.content_hash(),
                    "labels": labels},
        "train": {"steps": steps, "batch_size": batch_size, "lr": lr, "noise_draws": noise_draws, "seed": seed,
                  "mse_weight": mse_weight, "augment": augment, "jitter": jitter,
                  "targets": "shards:" + str(features) if features else "on the fly",
                  **({"targets_streamed": True} if stream else {}), **ddp_info,
                  "early_stop": early_stop, "best_step": best_step, "init": init or "random",
                  "pseudo_defects": pseudo_defects, "mask_weight": mask_weight if mask_t is not None else 0.0,
                  "pretrained_lr_scale": pretrained_lr_scale if init else 1.0},
        "scoring": scoring.to_dict(), "bank": bank_info, "calibration": cal,
        "fidelity": {"val_cosine": fidelity, "val_cosine_mean_predictor": baseline,
                                                       "val_cosine_centred": centred}, "val_metrics": val_metrics, "n_params": n_params,
    }
    save_run(out, config, model, bank)
    summary = {"run": str(out), "student": student, "n_params": n_params, "steps": steps, "best_step": best_step,
               "ranks": ranks,
               "rank_variance": rank_share,
               "final_loss": rows[-1]["loss"] if rows else None, "val_cosine": fidelity,
               "val_cosine_mean_predictor": baseline, "val_cosine_centred": centred,
               "calibration": cal, "bank": bank_info, "val_metrics": val_metrics, **ddp_info,
               "seconds": round(time.time() - t0, 2)}
    log(f"wrote {out} in {summary['seconds']}s")
    return summary


def run(args) -> int:
    if args.threads:
        torch.set_num_threads(args.threads)
    from teacher.checkpoint import load_teacher
    from teacher.extract import dist_setup, dist_teardown

    _, world, _ = dist_setup("cpu")  # under torchrun: gloo, the student trains on the CPU; else one process
    teacher = load_teacher(args.teacher)
    summary = fit(teacher=teacher, teacher_ckpt=args.teacher, data=args.data, student=args.student, out=args.out,
                  steps=args.steps, features=args.features, batch_size=args.batch_size, lr=args.lr,
                  noise_draws=args.noise_draws, seed=args.seed, embed_dim=args.embed_dim,
                  bank_budget=args.bank_budget,
                  scoring=ScoringParams(k=args.k, blur_sigma_px=args.blur_sigma),
                  target_agreement=args.target_agreement,
                  max_fallback=args.max_fallback, mse_weight=args.mse_weight, jitter=args.jitter,
                  augment=not args.no_augment, progress=not args.json or sys.stderr.isatty(),
                  proj_rank=args.proj_rank, early_stop=not args.no_early_stop, pretrained=not args.no_pretrained,
                  pseudo_defects=args.pseudo_defects, scoring_mode=args.scoring, mask_weight=args.mask_weight,
                  pretrained_lr_scale=args.pretrained_lr_scale, stream_targets=args.stream_targets)
    dist_teardown(world)
    if args.json and summary.get("run") is not None:  # rank 0 (or the one process) reports
        print(json.dumps(summary, default=float))
    return 0
