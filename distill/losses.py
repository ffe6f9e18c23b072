"""Distillation losses on ``dict[level, Tensor]`` (anomalib's stfpm/loss.py shape)."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def cosine_distance(s: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """1 − cosine over channels, mean over batch and locations. (B, C, h, w) -> scalar."""
    return (1.0 - F.cosine_similarity(s, t, dim=1, eps=1e-6)).mean()


def normalized_mse(s: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """‖s − t‖² / ‖t‖² per sample, mean over the batch: scale-free, so levels of any magnitude weigh alike."""
    b = s.shape[0]
    num = (s - t).pow(2).reshape(b, -1).sum(1)
    den = t.pow(2).reshape(b, -1).sum(1).clamp_min(1e-8)
    return (num / den).mean()


def feature_loss(student: dict[str, torch.Tensor], teacher: dict[str, torch.Tensor], *,
                 mse_weight: float = 1.0, level_weights: dict[str, float] | None = None
                 ) -> tuple[torch.Tensor, dict[str, float]]:
    """Σ_level w·[(1 − cos) + mse_weight · nMSE]; returns (loss, per-level float terms for logging)."""
    if set(student) != set(teacher):
        raise KeyError(f"feature_loss: student levels {sorted(student)} != teacher levels {sorted(teacher)}")
    total = student[next(iter(student))].new_zeros(())
    logs: dict[str, float] = {}
    for name, t in teacher.items():
        s = student[name]
        if s.shape != t.shape:
            raise ValueError(f"feature_loss: level {name}: student {tuple(s.shape)} != teacher {tuple(t.shape)}")
        cos = cosine_distance(s, t)
        mse = normalized_mse(s, t)
        w = 1.0 if level_weights is None else level_weights.get(name, 1.0)
        total = total + w * (cos + mse_weight * mse)
        logs[f"cos_{name}"] = float(1.0 - cos.detach())
        logs[f"nmse_{name}"] = float(mse.detach())
    return total, logs


def kl_distill(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 2.0,
               dim: int = 1) -> torch.Tensor:
    """Hinton's KD: T² · KL(softmax(t/T) ‖ softmax(s/T)) over ``dim``, mean over everything else."""
    t = temperature
    log_p_s = F.log_softmax(student_logits / t, dim=dim)
    log_p_t = F.log_softmax(teacher_logits / t, dim=dim)
    kl = (log_p_t.exp() * (log_p_t - log_p_s)).sum(dim)
    return kl.mean() * (t * t)


def binary_kl_distill(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 2.0) -> torch.Tensor:
    """KD for independent sigmoid logits (mask logits): per-element Bernoulli KL at temperature T."""
    t = temperature
    p_t = torch.sigmoid(teacher_logits / t)
    return F.binary_cross_entropy_with_logits(student_logits / t, p_t) * (t * t) - \
        F.binary_cross_entropy_with_logits(teacher_logits / t, p_t) * (t * t)
