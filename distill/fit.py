"""`distill fit`: distil the teacher's t=50 features into a student; bank, threshold, band, OOD limit.
The options (and every default) are distill/fit_options.py's FitOptions; the command distill/commands/fit.py.

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

import time
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import torch

from distill.bank import ScoringParams, build_bank, fit_head_norms, score_outputs
from distill.calibrate import calibrate
from distill.data import concat, load_images, load_records, pseudo_defect_set
from distill.embedding import fit_pca, reference_embedding, teacher_recipe
from distill.fit_options import FitOptions
from distill.head_targets import KINDS as HEAD_KINDS
from distill.head_targets import head_targets, load_teacher_head
from distill.run import save_run
from distill.students import create_student
from distill.targets import (STREAM_ABOVE_BYTES, batches, cache_key, cached_targets, cat_levels, channel_mean,
                             compute_targets, pca_streamed, read_shards, stream_computed, stream_shards,
                             target_bytes, take)
from distill.trainer import fit_student, level_cosine, plot_curves
from runtime.contracts.manifest import Preprocess
from runtime.progress import command_log


def known_masks(images, stride: int) -> torch.Tensor:
    """(N, 1, S/stride, S/stride) share of each map cell inside the image's defect mask: what the defect map
    should say where the truth is known (good images, masked defects); NaN for a defect without a mask."""
    m = torch.from_numpy(images.masks.astype(np.float32))[:, None]
    cells = torch.nn.functional.avg_pool2d(m, stride) if stride > 1 else m
    unknown = torch.from_numpy((images.labels == 1) & ~images.masks.any(axis=(1, 2)))
    cells[unknown] = float("nan")
    return cells


log = command_log("distill fit")


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


def fit(options: FitOptions, *, teacher=None, progress: bool = True, reference: str = "auto") -> dict:
    """The whole fit; returns the summary printed by --json. ``teacher``: the loaded teacher (default: loaded
    from ``options.teacher``). ``reference``: "auto" (teacher pipeline if the checkpoint has a head or bank) or
    "labels". ``options.stream_targets``: targets memory-mapped from disk instead of RAM (distill/targets.py;
    None: when they exceed STREAM_ABOVE_BYTES); the same results up to float rounding of the batched statistics
    (PCA, channel means)."""
    from runtime.contracts.dataset import load_dataset

    o = options
    if teacher is None:
        from teacher.checkpoint import load_teacher

        teacher = load_teacher(o.teacher)
    t0 = time.time()
    out = Path(o.out)
    out.mkdir(parents=True, exist_ok=True)
    spec = teacher.feature_spec
    pre = Preprocess(size=spec.image_size)
    ds = load_dataset(o.data)
    rank, world = _dist_rank_world()
    train, val, train_all = load_splits(ds, o.data, spec.image_size, rank, world)
    log(f"{len(train)} train ({int(train.labels.sum())} defect), {len(val)} val images at {spec.image_size}px; "
        f"teacher {teacher.checkpoint_hash[:16]}")
    tr_t, va_t, stream = teacher_targets(teacher, o, train, val, out, progress, t0)
    batched = stream or world > 1  # statistics batch by batch (and summed over ranks): never the whole set
    reduce = _sum_over_ranks if world > 1 else None
    recipe, basis, mean, share, full_dim = embedding_basis(tr_t, o.embed_dim, batched, reduce)
    if o.pseudo_defects:  # after the PCA: the embedding basis describes the line's own images
        train, tr_t = add_pseudo_defects(teacher, o, train, tr_t, out, stream, progress)
    head_specs, tr_h, labels = distilled_head(o.teacher, tr_t, spec.image_size, ds.labels())
    mask_t = mask_targets(train, head_specs, o.mask_weight)
    mode = o.scoring or ("both" if head_specs else "bank")
    if mode != "bank" and not head_specs:  # refused before any training
        raise SystemExit(f"--scoring {mode} needs the teacher's mask head ({o.teacher}/head: `teacher finetune`)")
    model, init, ranks, rank_share = build_student(o, spec, recipe, head_specs, basis, mean, tr_t, batched, reduce)
    n_params = sum(p.numel() for p in model.parameters())
    log(f"student {o.student}: {n_params / 1e6:.2f}M parameters; embedding {full_dim} -> {recipe.dim} "
        f"(PCA keeps {share:.3f} of the variance)")
    rows = train_student(model, o, train, val, tr_t, va_t, tr_h, mask_t, pre, init, out, rank, world, progress)
    ddp_info, tr_mean_all = {}, None
    if world > 1:
        ddp_info, tr_mean_all = ddp_agree(model, tr_t, rank, world, reduce)
        if rank != 0:  # rank 0 alone builds the bank, calibrates and writes the run
            return {"run": None, "rank": rank, **ddp_info, "steps": o.steps,
                    "final_loss": rows[-1]["loss"] if rows else None, "seconds": round(time.time() - t0, 2)}
    best_step = rows[-1].get("best_step", o.steps - 1) if rows else None
    if o.early_stop:
        log(f"kept the weights of step {best_step} (best mean val cosine)")
    plot_curves(rows, out / "curves.png")

    model.eval()
    x_val = val.student_inputs(pre.mean, pre.std)
    fidelity, baseline, centred = val_fidelity(model, x_val, tr_t, va_t, batched, tr_mean_all)
    banked = train if train_all is None else train_all  # under DDP every rank's good images
    bank, bank_info, scoring, val_scores = bank_and_scoring(model, o, banked, x_val, val, pre, mode)
    ref, ref_name = (None, "labels") if reference == "labels" or not o.teacher else \
        reference_decisions(o.teacher, val.images)
    cal = calibrate(val_scores.scores, val_scores.mean_nn, val.labels, reference=ref, reference_name=ref_name,
                    target_agreement=o.target_agreement, max_fallback=o.max_fallback)
    log(f"threshold {cal['threshold']:.4g}, band [{cal['band'][0]:.4g}, {cal['band'][1]:.4g}], OOD limit "
        f"{cal['ood_limit']:.4g}; reference {cal['reference']}; val fallback rate {cal['val_fallback_rate']:.3f}")
    val_metrics = detection_metrics(val, val_scores, cal["threshold"])
    fid = {"val_cosine": fidelity, "val_cosine_mean_predictor": baseline, "val_cosine_centred": centred}
    config = run_config(o, teacher, ds, spec, pre, recipe, share, head_specs, ranks, rank_share, labels,
                        train={"targets_streamed": stream, "ddp": ddp_info, "best_step": best_step, "init": init,
                               "mask_on": mask_t is not None},
                        scoring=scoring, bank_info=bank_info, cal=cal, fidelity=fid, val_metrics=val_metrics,
                        n_params=n_params)
    save_run(out, config, model, bank)
    summary = {"run": str(out), "student": o.student, "n_params": n_params, "steps": o.steps, "best_step": best_step,
               "ranks": ranks,
               "rank_variance": rank_share,
               "final_loss": rows[-1]["loss"] if rows else None, "val_cosine": fidelity,
               "val_cosine_mean_predictor": baseline, "val_cosine_centred": centred,
               "calibration": cal, "bank": bank_info, "val_metrics": val_metrics, **ddp_info,
               "seconds": round(time.time() - t0, 2)}
    log(f"wrote {out} in {summary['seconds']}s")
    return summary


def load_splits(ds, data: str, size: int, rank: int, world: int):
    """-> (this rank's train images, the val images, rank 0's every train image under DDP for the bank, else
    None). Every rank holds the val split (early stopping decides alike)."""
    train_all = None
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
    return train, val, train_all


def teacher_targets(teacher, o: FitOptions, train, val, out: Path, progress: bool, t0: float):
    """The teacher's t=50 features of the train and val images (read from shards, cached or computed; in RAM or
    memory-mapped) -> (train targets, val targets, whether they stream from disk)."""
    spec = teacher.feature_spec
    both = concat(train, val)
    n_targets = len(both) + o.pseudo_defects * len(train.good)
    stream = target_bytes(spec, n_targets) > STREAM_ABOVE_BYTES if o.stream_targets is None else bool(o.stream_targets)
    if stream:
        log(f"targets stream from memory-mapped files ({target_bytes(spec, n_targets) / 2 ** 30:.2f} GiB as float32)")
    if o.features and stream:
        targets = stream_shards(o.features, both.records, spec.names, teacher.checkpoint_hash)
        log(f"targets memory-mapped from {o.features}")
    elif o.features:
        targets = read_shards(o.features, both.records, spec.names, teacher.checkpoint_hash)
        log(f"targets read from {o.features}")
    else:
        targets, hit = _computed_targets(teacher, both, o, out, stream, progress)
        log(f"targets {'from cache' if hit else 'computed'} ({o.noise_draws} noise draws, {time.time() - t0:.1f}s)")
    targets = {n: targets[n] for n in spec.names}  # FeatureSpec order (the cache file sorts keys)
    for lv in spec.levels:
        want = (len(both), lv.channels, spec.grid(lv), spec.grid(lv))
        if tuple(targets[lv.name].shape) != want:
            raise ValueError(f"teacher targets {lv.name}: {tuple(targets[lv.name].shape)} != FeatureSpec {want}")
    ntr = len(train)
    tr_t = {k: take(v, slice(None, ntr)) for k, v in targets.items()}
    va_t = {k: take(v, slice(ntr, None)) for k, v in targets.items()}
    return tr_t, va_t, stream


def _computed_targets(teacher, images, o: FitOptions, out: Path, stream: bool, progress: bool):
    """The teacher's targets of ``images``, from RUN/cache when it holds them -> (targets, cache hit)."""
    key = cache_key(teacher.checkpoint_hash, images.images, o.noise_draws, o.seed)
    if stream:
        return stream_computed(teacher, images.images, out / "cache", key, noise_draws=o.noise_draws, seed=o.seed,
                               progress=progress)
    return cached_targets(out / "cache", key, lambda: compute_targets(
        teacher, images.teacher_inputs(), noise_draws=o.noise_draws, seed=o.seed, progress=progress))


def embedding_basis(tr_t: dict, embed_dim: int | None, batched: bool, reduce):
    """PCA of the teacher's bank embedding of the training images -> (recipe, basis, mean, variance share kept,
    the embedding's full dimension)."""
    recipe = teacher_recipe()
    if batched:  # the embedding batch by batch, twice (mean, then covariance): never the whole set
        def embeddings():
            n_tr = len(next(iter(tr_t.values())))
            for s in range(0, n_tr, 64):
                with torch.no_grad():
                    yield reference_embedding({k: v[s:s + 64] for k, v in tr_t.items()}, recipe)

        full_dim = next(embeddings()).shape[1]
        dim = min(embed_dim or full_dim, full_dim)
        basis, mean, share = pca_streamed(embeddings, dim, reduce=reduce)
        return teacher_recipe(dim=dim), basis, mean, share, full_dim
    with torch.no_grad():
        temb = reference_embedding(tr_t, recipe)
    full_dim = temb.shape[1]
    dim = min(embed_dim or full_dim, full_dim)
    basis, mean, share = fit_pca(temb, dim)
    return teacher_recipe(dim=dim), basis, mean, share, full_dim


def add_pseudo_defects(teacher, o: FitOptions, train, tr_t: dict, out: Path, stream: bool, progress: bool):
    """``o.pseudo_defects`` planted variants of every good train image, with their teacher targets -> (train,
    train targets) with them appended."""
    planted = pseudo_defect_set(train, o.pseudo_defects, o.seed)
    pt, hit = _computed_targets(teacher, planted, o, out, stream, progress)
    tr_t = {k: cat_levels(v, pt[k]) for k, v in tr_t.items()}
    log(f"{len(planted)} pseudo-defect images ({o.pseudo_defects} per good train image), targets "
        f"{'from cache' if hit else 'computed'}")
    return concat(train, planted), tr_t


def distilled_head(teacher_ckpt: str, tr_t: dict, size: int, labels: list):
    """The teacher's head (CKPT/head), whose outputs are distilled too -> (head specs, their train targets, the
    label vocabulary: the head's, else the dataset's)."""
    head_state = load_teacher_head(teacher_ckpt)
    if head_state is None:
        return (), {}, labels
    tr_h, head_specs = head_targets(head_state, tr_t, size)
    log(f"teacher head: distilling {', '.join(f'{h.name} {tuple(tr_h[h.name].shape[1:])}' for h in head_specs)}")
    return head_specs, tr_h, list(head_state.vocabulary)


def mask_targets(train, head_specs: tuple, mask_weight: float) -> torch.Tensor | None:
    """known_masks at the defect map's stride, when the map also learns them (mask weight above 0)."""
    if not (mask_weight > 0 and head_specs):
        return None
    mask_t = known_masks(train, next(h for h in head_specs if h.name == "defect_map").stride)
    log(f"defect map also learns the known masks of {int((~torch.isnan(mask_t[:, 0, 0, 0])).sum())} train "
        f"images (weight {mask_weight})")
    return mask_t


def build_student(o: FitOptions, spec, recipe, head_specs: tuple, basis, mean, tr_t: dict, batched: bool, reduce):
    """The student from the registry, its embedding basis, optional reduced bases per level and projections
    starting at the teacher's channel means -> (model, where its backbone started or None, ranks, rank shares)."""
    # optional reduced basis per level: the projection emits ``proj_rank`` PCA coefficients of the
    # teacher's features, a frozen 1×1 conv maps them back to the teacher's channels
    ranks, rank_share = {}, {}
    if o.proj_rank:
        for lv in spec.levels:
            if lv.channels > o.proj_rank:
                ranks[lv.name] = int(o.proj_rank)
    torch.manual_seed(o.seed)
    model = create_student(o.student, spec=spec, embedding=recipe, head_outputs=head_specs, ranks=ranks)
    init = model.load_pretrained() if o.pretrained else None
    log(f"student backbone starts from {init or 'random weights'}")
    model.set_embedding_basis(basis, mean)
    for name, r in ranks.items():
        comps, mu, rank_share[name] = pca_streamed(lambda: batches(tr_t[name]), r, reduce=reduce) \
            if batched else fit_pca(tr_t[name], r)
        model.set_basis(name, comps, mu)
    with torch.no_grad():  # full projections start at the teacher's channel means (its features are far from 0)
        for lv in spec.levels:
            if lv.name not in ranks:
                model.proj[lv.name].proj.bias.copy_(channel_mean(tr_t[lv.name], reduce) if batched
                                                    else tr_t[lv.name].mean(dim=(0, 2, 3)))
    if ranks:
        log("reduced bases: " + ", ".join(f"{k} rank {ranks[k]} keeps {v:.3f}" for k, v in rank_share.items()))
    return model, init, ranks, rank_share


def train_student(model, o: FitOptions, train, val, tr_t, va_t, tr_h, mask_t, pre, init, out: Path, rank: int,
                  world: int, progress: bool) -> list[dict]:
    """The training loop (distill/trainer.py) with the fit's options -> its metrics rows (RUN/metrics.jsonl)."""
    metrics_path = out / "metrics.jsonl" if rank == 0 else None
    if metrics_path is not None:
        metrics_path.write_text("")
    return fit_student(model, torch.from_numpy(train.images).permute(0, 3, 1, 2).contiguous(), tr_t,
                       mean=pre.mean, std=pre.std, steps=o.steps, batch_size=o.batch_size, lr=o.lr, seed=o.seed,
                       augment=o.augment, jitter=o.jitter, mse_weight=o.mse_weight, metrics_path=metrics_path,
                       head_targets=tr_h, head_kinds=HEAD_KINDS, progress=progress and rank == 0,
                       mask_targets=mask_t, mask_weight=o.mask_weight,
                       pretrained_lr_scale=o.pretrained_lr_scale if init else 1.0, ema_decay=o.ema_decay,
                       val=(val.student_inputs(pre.mean, pre.std), va_t) if o.early_stop else None,
                       ddp=world > 1)


def ddp_agree(model, tr_t: dict, rank: int, world: int, reduce) -> tuple[dict, dict]:
    """Under DDP: every rank's weights digest (they must be equal) and the train channel means over every rank
    (the last collective) -> (ddp info for the config, those means)."""
    import torch.distributed as dist

    digests: list = [None] * world
    dist.all_gather_object(digests, weights_digest(model))
    tr_mean_all = {k: channel_mean(v, reduce).view(1, -1, 1, 1) for k, v in tr_t.items()}  # the last collective
    ddp_info = {"world_size": world, "weights_sha256": digests}
    if rank != 0:
        log(f"rank {rank}: trained ({digests[rank][:12]}); rank 0 writes the run")
    elif len(set(digests)) != 1:
        raise RuntimeError(f"DDP ranks ended with different weights: {digests}")
    return ddp_info, tr_mean_all


def val_fidelity(model, x_val, tr_t: dict, va_t: dict, batched: bool, tr_mean_all: dict | None):
    """Held-out cosine per level, beside the baseline: a constant predictor at the train channel means, which
    the student must beat; the centred cosine (both sides minus that mean) measures what it predicts beyond
    the mean -> (cosine, baseline, centred cosine)."""
    fidelity = level_cosine(model, x_val, va_t)
    if batched:
        tr_mean = tr_mean_all if tr_mean_all is not None else \
            {k: channel_mean(v).view(1, -1, 1, 1) for k, v in tr_t.items()}
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
    return fidelity, baseline, centred


def bank_and_scoring(model, o: FitOptions, banked, x_val, val, pre, mode: str):
    """The memory bank of the good train images' embeddings (``banked``: under DDP every rank's), the scoring
    (with the distilled head's norms unless bank only) and the val scores -> (bank, bank info, scoring,
    val scores)."""
    scoring = ScoringParams(k=o.k, blur_sigma_px=o.blur_sigma)
    fused = model.fused()
    with torch.no_grad():
        emb_train = np.concatenate([fused(x[None]).embedding.numpy()
                                    for x in banked.student_inputs(pre.mean, pre.std)[banked.good]])
        out_val = [{k: v.numpy() for k, v in fused(x[None])._asdict().items()} for x in x_val]
    bank, bank_info = build_bank(emb_train, o.bank_budget, o.seed)
    if mode != "bank":  # the student carries the teacher's head: score as the teacher does
        goods = [r for r, y in zip(out_val, val.labels) if y == 0] or out_val
        scoring = replace(fit_head_norms(goods, bank, pre.size, scoring), mode=mode)
        log(f"scoring: {mode} (bank and distilled head norms {scoring.bank_norm:.4g} / {scoring.head_norm:.4g}, "
            f"good val images)")
    return bank, bank_info, scoring, score_outputs(out_val, bank, pre.size, scoring)


def detection_metrics(val, val_scores, threshold: float) -> dict:
    """runtime.metrics on the val split ({} without them installed)."""
    try:
        from runtime.metrics import compute_all

        return compute_all(val.labels, val_scores.scores, masks=list(val.masks), maps=list(val_scores.maps),
                           threshold=threshold)
    except ImportError:
        return {}


def run_config(o: FitOptions, teacher, ds, spec, pre, recipe, share, head_specs, ranks, rank_share, labels, *,
               train: dict, scoring: ScoringParams, bank_info: dict, cal: dict, fidelity: dict, val_metrics: dict,
               n_params: int) -> dict:
    """RUN/config.json (distill/run.py): what quantize, export and eval read, and the options it was fitted
    with. ``train``: what the fit found (targets streamed, DDP info, best step, init, whether masks were
    learnt)."""
    return {
        "student": o.student, "feature_spec": spec.to_dict(), "preprocess": pre.model_dump(),
        "embedding": recipe.to_dict(), "embedding_pca_variance": share,
        "heads": [asdict(h) for h in head_specs], "ranks": ranks,
        "rank_variance": rank_share,
        "teacher": {"checkpoint": str(Path(o.teacher).resolve()) if o.teacher else "",
                    "hash": teacher.checkpoint_hash, "preset": getattr(teacher, "preset", "")},
        "dataset": {"manifest": str(Path(ds.manifest).resolve()), "hash": ds.content_hash(),
                    "labels": labels},
        "train": {"steps": o.steps, "batch_size": o.batch_size, "lr": o.lr, "noise_draws": o.noise_draws,
                  "seed": o.seed, "mse_weight": o.mse_weight, "augment": o.augment, "jitter": o.jitter,
                  "targets": "shards:" + str(o.features) if o.features else "on the fly",
                  **({"targets_streamed": True} if train["targets_streamed"] else {}), **train["ddp"],
                  "early_stop": o.early_stop, "best_step": train["best_step"], "init": train["init"] or "random",
                  "pseudo_defects": o.pseudo_defects, "mask_weight": o.mask_weight if train["mask_on"] else 0.0,
                  "pretrained_lr_scale": o.pretrained_lr_scale if train["init"] else 1.0, "ema_decay": o.ema_decay},
        "scoring": scoring.to_dict(), "bank": bank_info, "calibration": cal,
        "fidelity": fidelity, "val_metrics": val_metrics, "n_params": n_params,
        "options": o.to_dict(),
    }
