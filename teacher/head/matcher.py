"""Hungarian matching of queries to ground-truth regions (Mask2Former's HungarianMatcher):
cost = w_cls·(−p(y_j | z_i)) + w_bce·BCE(m_i, M_j) + w_dice·Dice(m_i, M_j), solved per image with
scipy.optimize.linear_sum_assignment."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment


def pairwise_bce_cost(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """(N, P) mask logits, (M, P) soft targets -> (N, M) mean per-pixel BCE, Eq. (11) per pair."""
    p = logits.shape[1]
    pos = F.softplus(-logits)  # −log σ(x)
    neg = F.softplus(logits)  # −log(1 − σ(x))
    return (pos @ targets.T + neg @ (1 - targets).T) / p


def pairwise_dice_cost(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """(N, P), (M, P) -> (N, M) 1 − (2|m∩M| + 1) / (|m| + |M| + 1)."""
    m = logits.sigmoid()
    num = 2 * m @ targets.T
    den = m.sum(-1)[:, None] + targets.sum(-1)[None, :]
    return 1 - (num + 1) / (den + 1)


def assign(cost: np.ndarray | torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Minimum-cost assignment of rows (queries) to columns (targets): (row_idx, col_idx), sorted by column."""
    c = cost.detach().cpu().float().numpy() if isinstance(cost, torch.Tensor) else np.asarray(cost, float)
    c = np.nan_to_num(c, nan=1e6, posinf=1e6, neginf=-1e6)
    rows, cols = linear_sum_assignment(c)
    order = np.argsort(cols)
    return rows[order].astype(np.int64), cols[order].astype(np.int64)


class HungarianMatcher:
    def __init__(self, w_cls: float = 2.0, w_bce: float = 5.0, w_dice: float = 5.0):
        self.w_cls, self.w_bce, self.w_dice = w_cls, w_bce, w_dice

    @torch.no_grad()
    def __call__(self, class_logits: torch.Tensor, mask_logits: torch.Tensor, labels: torch.Tensor,
                 masks: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        """One image: class_logits (N, K+1), mask_logits (N, P), labels (M,) long, masks (M, P) soft.
        Returns (query_idx, target_idx), both (min(N, M),)."""
        if labels.numel() == 0:
            return np.zeros(0, np.int64), np.zeros(0, np.int64)
        prob = class_logits.float().softmax(-1)[:, labels]  # (N, M)
        ml, tg = mask_logits.float(), masks.float()
        cost = -self.w_cls * prob + self.w_bce * pairwise_bce_cost(ml, tg) + self.w_dice * pairwise_dice_cost(ml, tg)
        return assign(cost)
