"""The fitting loop: student(preprocessed image) ≈ teacher t=50 features (+ head outputs), on cached targets.

Kept apart from the model (anomalib's lightning_model.py vs torch_model.py). Augmentation is what the
cached targets allow exactly: horizontal/vertical flips applied to the input and to every target map
(features of a flipped image ≈ flipped features), plus optional mild photometric jitter on the input only.
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from distill.losses import binary_kl_distill, feature_loss, kl_distill
from distill.preprocess import normalize


def _flip(t: torch.Tensor, h: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Flip the samples selected by bool masks h (last dim) and v (second-last) of a (B, ..., H, W) tensor."""
    if t.ndim != 4:
        return t  # global logits (B, K) / (B, Q, K): flips do not change them
    t = torch.where(h.view(-1, *[1] * (t.ndim - 1)), t.flip(-1), t)
    return torch.where(v.view(-1, *[1] * (t.ndim - 1)), t.flip(-2), t)


def fit_student(student: torch.nn.Module, images_u8: torch.Tensor, targets: dict[str, torch.Tensor], *,
                mean, std, steps: int, batch_size: int = 8, lr: float = 2e-3, weight_decay: float = 1e-4,
                seed: int = 0, augment: bool = True, jitter: float = 0.0, mse_weight: float = 1.0,
                head_targets: dict[str, torch.Tensor] | None = None, head_kinds: dict[str, str] | None = None,
                kd_temperature: float = 2.0, kd_weight: float = 1.0,
                mask_targets: torch.Tensor | None = None, mask_weight: float = 0.0, mask_output: str = "defect_map",
                pretrained_lr_scale: float = 1.0, ema_decay: float = 0.0, ddp: bool = False,
                log_every: int = 10,
                metrics_path: Path | None = None, progress: bool = True,
                val: tuple[torch.Tensor, dict[str, torch.Tensor]] | None = None, eval_every: int = 50) -> list[dict]:
    """images_u8 (N, 3, S, S) uint8 resized frames; targets level -> (N, C, h, w). Returns the log rows.

    val: (preprocessed inputs, targets) of held-out images: every ``eval_every`` steps the mean per-level
    cosine is logged (``val_cos_<level>``) and the best state is kept (early stopping: with a few dozen
    training images the coarse levels, 2×2 to 4×4 maps, overfit long before the fine ones converge).

    head_kinds: output name -> "softmax" (class logits over the last dim) or "sigmoid" (mask logits).

    mask_targets: (N, 1, h, w) where each image's defect is known (the share of each map cell inside the
    defect mask: 0 on good images, the planted region on pseudo-defects), NaN where it is not (a defect
    image without a mask). With ``mask_weight`` > 0 the ``mask_output`` map also learns it (BCE), beside
    the teacher's map it distils.

    pretrained_lr_scale: the learning rate of the backbone's pretrained weights (``pretrained_parameters``)
    relative to ``lr``; below 1 they move less from what ImageNet taught them.

    ema_decay: above 0, an exponential moving average of the weights and BatchNorm statistics
    (torch.optim.swa_utils.AveragedModel) is what is validated, kept and returned: with a few dozen images and
    batches of 8, the last step's weights carry that batch's noise; their average over the last ~1/(1-decay)
    steps does not.

    ddp: the process group is up (distill fit under torchrun): the student trains wrapped in
    DistributedDataParallel, each rank drawing its batches from the images it was given (its shard) with
    its own generator (seed + rank); gradients are averaged, so every rank takes the same steps. The best
    val step is rank 0's choice, broadcast; BatchNorm statistics are rank 0's, broadcast at the end (DDP
    broadcasts them before each forward, and each rank's last forward moves its own)."""
    net, rank = _wrap(student, ddp)
    g = torch.Generator().manual_seed(seed + rank)  # rank 0 (and one process): the generator as before
    torch.manual_seed(seed)
    params = [p for p in student.parameters() if p.requires_grad]
    opt, sched = _optimizer(student, params, lr, pretrained_lr_scale, weight_decay, steps)
    levels = list(targets)
    head_targets = head_targets or {}
    objective = _Objective(levels, mse_weight, head_kinds, kd_temperature, kd_weight, mask_output, mask_weight)
    log = _StepLog(steps, metrics_path, progress)
    ema = _ema(student, ema_decay)
    judged = student if ema is None else ema.module  # what is validated and kept
    student.train()
    best = (-2.0, None, -1)  # (mean val cosine, state, step)
    try:
        for step in range(steps):
            batch = _batch(images_u8, targets, levels, head_targets, mask_targets if mask_weight > 0 else None,
                           batch_size, g, augment, jitter, mean, std)
            loss, logs = _step(net, objective, batch, params, opt, sched)
            if ema is not None:
                ema.update_parameters(student)
            log.tick(loss)
            if step % log_every == 0 or step == steps - 1:
                row = log.row(step, loss, sched.get_last_lr()[0], logs)
                if val is not None and (step % eval_every == 0 or step == steps - 1) and step > 0:
                    best = _validate(judged, val, row, best, step, ddp)
                log.keep(row)
    finally:
        log.close()
    _finish(student, best, log.rows, ddp, ema)
    return log.rows


def _ema(student: torch.nn.Module, decay: float):
    """The moving average of ``student``'s weights and buffers, or None when ``decay`` is 0. Under DDP every
    rank's student steps alike, so every rank's average is the same."""
    if decay <= 0:
        return None
    from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

    return AveragedModel(student, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)


def _wrap(student: torch.nn.Module, ddp: bool) -> tuple[torch.nn.Module, int]:
    """(the module to run forward through, this process's rank): the student itself, or under DDP the student
    in DistributedDataParallel."""
    if not ddp:
        return student, 0
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(student), dist.get_rank()  # broadcasts rank 0's parameters and buffers now


@dataclass
class _Objective:
    """The fitting loss of one batch: the features (feature_loss: NMSE and cosine per level), the teacher head's
    outputs (KL) and the known defect masks (BCE, with ``mask_weight`` > 0)."""
    levels: list
    mse_weight: float
    head_kinds: dict | None
    kd_temperature: float
    kd_weight: float
    mask_output: str
    mask_weight: float

    def __call__(self, out: dict, tgt: dict, htgt: dict, mtgt) -> tuple[torch.Tensor, dict]:
        loss, logs = feature_loss({k: out[k] for k in self.levels}, tgt, mse_weight=self.mse_weight)
        loss = _head_losses(out, htgt, mtgt, loss, logs, head_kinds=self.head_kinds,
                            kd_temperature=self.kd_temperature, kd_weight=self.kd_weight,
                            mask_output=self.mask_output, mask_weight=self.mask_weight)
        return loss, logs


def _step(net, objective: _Objective, batch: tuple, params: list, opt, sched) -> tuple[torch.Tensor, dict]:
    """One optimiser step on ``batch`` (_batch's tuple), gradients clipped at norm 5 -> (loss, its figures)."""
    xin, tgt, htgt, mtgt = batch
    loss, logs = objective(net(xin)._asdict(), tgt, htgt, mtgt)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, 5.0)
    opt.step()
    sched.step()
    return loss, logs


class _StepLog:
    """The fit's log rows (kept, and appended to ``metrics_path`` as JSON lines) and its progress bar."""

    def __init__(self, steps: int, metrics_path: Path | None, progress: bool):
        self.rows: list[dict] = []
        self.f = open(metrics_path, "a") if metrics_path else None
        self.bar = None
        if progress:
            from runtime.progress import progress as bar

            self.bar = bar(steps, "distill", leave=False)
        self.t0 = time.time()

    def tick(self, loss: torch.Tensor) -> None:
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix(loss=f"{loss.item():.4f}")

    def row(self, step: int, loss: torch.Tensor, lr: float, logs: dict) -> dict:
        return {"step": step, "loss": float(loss.detach()), "lr": lr, "elapsed_s": round(time.time() - self.t0, 3),
                **logs}

    def keep(self, row: dict) -> None:
        self.rows.append(row)
        if self.f:
            self.f.write(json.dumps(row) + "\n")
            self.f.flush()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        if self.f:
            self.f.close()


def _finish(student: torch.nn.Module, best: tuple, rows: list[dict], ddp: bool, ema=None) -> None:
    """The best val step's weights back in the student (named in the last row), else the moving average's where
    there is one; rank 0's BatchNorm statistics on every rank under DDP, and eval mode."""
    if best[1] is None and ema is not None:
        student.load_state_dict(ema.module.state_dict())
    if best[1] is not None:
        student.load_state_dict(best[1])
        if rows:
            rows[-1]["best_step"] = best[2]
    if ddp:
        import torch.distributed as dist

        with torch.no_grad():
            for b in student.buffers():
                dist.broadcast(b, 0)
    student.eval()


def _optimizer(student, params: list, lr: float, pretrained_lr_scale: float, weight_decay: float, steps: int):
    """AdamW (the pretrained backbone's weights at ``lr * pretrained_lr_scale``), linear warm-up over the first
    5% of the steps, then cosine decay -> (optimizer, scheduler)."""
    pre = {id(p) for p in getattr(student, "pretrained_parameters", list)()} if pretrained_lr_scale != 1 else set()
    groups = [{"params": [p for p in params if id(p) not in pre], "lr": lr},
              {"params": [p for p in params if id(p) in pre], "lr": lr * pretrained_lr_scale}]
    opt = torch.optim.AdamW([g for g in groups if g["params"]], lr=lr, weight_decay=weight_decay)
    warm = max(1, steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warm) * 0.5 * (1 + math.cos(math.pi * min(s, steps) / max(1, steps))))
    return opt, sched


def _batch(images_u8, targets: dict, levels: list, head_targets: dict, mask_targets, batch_size: int,
           g: torch.Generator, augment: bool, jitter: float, mean, std):
    """One random batch (drawn from ``g``), flipped alike with its targets when ``augment``, brightness/contrast
    jittered on the student side -> (student input, level targets, head targets, mask targets or None)."""
    n = images_u8.shape[0]
    idx = torch.randint(n, (min(batch_size, n),), generator=g)
    x = images_u8[idx]
    tgt = {k: targets[k][idx] for k in levels}
    htgt = {k: v[idx] for k, v in head_targets.items()}
    mtgt = mask_targets[idx] if mask_targets is not None else None
    if augment:
        hf = torch.rand(len(idx), generator=g) < 0.5
        vf = torch.rand(len(idx), generator=g) < 0.5
        x = _flip(x, hf, vf)
        tgt = {k: _flip(v, hf, vf) for k, v in tgt.items()}
        htgt = {k: _flip(v, hf, vf) for k, v in htgt.items()}
        mtgt = None if mtgt is None else _flip(mtgt, hf, vf)
    xin = normalize(x, mean, std)
    if jitter > 0:  # brightness/contrast on the [0, 1] scale, student side only
        b = (torch.rand(len(idx), 1, 1, 1, generator=g) * 2 - 1) * jitter
        c = 1 + (torch.rand(len(idx), 1, 1, 1, generator=g) * 2 - 1) * jitter
        std_t = torch.as_tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
        xin = xin * c + b / std_t
    return xin, tgt, htgt, mtgt


def _head_losses(out: dict, htgt: dict, mtgt, loss: torch.Tensor, logs: dict, *, head_kinds, kd_temperature: float,
                 kd_weight: float, mask_output: str, mask_weight: float) -> torch.Tensor:
    """``loss`` plus the distillation of the teacher head's outputs (KL) and the BCE on the known masks; their
    figures go into ``logs``."""
    for name, t in htgt.items():
        kind = (head_kinds or {}).get(name, "softmax")
        kd = binary_kl_distill(out[name], t, kd_temperature) if kind == "sigmoid" else \
            kl_distill(out[name], t, kd_temperature, dim=-1)
        loss = loss + kd_weight * kd
        logs[f"kd_{name}"] = float(kd.detach())
    if mtgt is not None:
        known = ~torch.isnan(mtgt[:, 0, 0, 0])
        if known.any():
            bce = F.binary_cross_entropy_with_logits(out[mask_output][known], mtgt[known])
            loss = loss + mask_weight * bce
            logs["mask_bce"] = float(bce.detach())
    return loss


def _validate(student, val: tuple, row: dict, best: tuple, step: int, ddp: bool) -> tuple:
    """Held-out cosine per level into ``row``; -> ``best`` (mean val cosine, state, step), replaced when this
    step is better (under DDP rank 0's view decides, so every rank keeps the same step)."""
    vc = level_cosine(student, val[0], val[1])
    student.train()
    row.update({f"val_cos_{k}": v for k, v in vc.items()})
    score = float(np.mean(list(vc.values())))
    if ddp:
        import torch.distributed as dist

        sc = torch.tensor([score], dtype=torch.float64)
        dist.broadcast(sc, 0)
        score = float(sc)
    if score > best[0]:
        best = (score, {k: v.detach().clone() for k, v in student.state_dict().items()}, step)
    return best


@torch.no_grad()
def level_cosine(student: torch.nn.Module, inputs: torch.Tensor, targets: dict[str, torch.Tensor],
                 batch_size: int = 16, center: dict[str, torch.Tensor] | None = None) -> dict[str, float]:
    """Mean per-location cosine student vs teacher, per level, on (held-out) inputs; with ``center``
    (level -> (1, C, 1, 1)) both sides are centred first."""
    student.eval()
    sums = {k: 0.0 for k in targets}
    count = 0
    for s in range(0, inputs.shape[0], batch_size):
        out = student(inputs[s:s + batch_size])._asdict()
        for k, t in targets.items():
            a, b = out[k], t[s:s + batch_size]
            if center is not None:
                a, b = a - center[k], b - center[k]
            c = torch.nn.functional.cosine_similarity(a, b, dim=1, eps=1e-6)
            sums[k] += float(c.mean(dim=(1, 2)).sum())
        count += min(batch_size, inputs.shape[0] - s)
    return {k: v / max(count, 1) for k, v in sums.items()}


def plot_curves(rows: list[dict], path: Path) -> Path | None:
    """loss and per-level cosine vs step, one PNG."""
    if not rows:
        return None
    try:
        from runtime.plots import plot_curves as _plot
    except ImportError:
        return None
    steps = np.asarray([r["step"] for r in rows], float)
    series = {"loss": (steps, np.asarray([r["loss"] for r in rows]))}
    keys = sorted({k for r in rows for k in r if k.startswith(("cos_", "val_cos_"))})
    for k in keys:
        have = [r for r in rows if k in r]
        series[k] = (np.asarray([r["step"] for r in have], float), np.asarray([r[k] for r in have]))
    return _plot(path, series, xlabel="step", ylabel="loss / cosine", title="distillation", ylim=None)
