"""Stage-2 losses (§4.6–4.7): L = L_mask + 0.5·L_cls/ground (Eq. 16), L_mask = BCE (Eq. 11) + Dice.

Normalisation: Eq. (11) sums over pixels; here it is the mean over pixels and over matched masks, as
Mask2Former does, so the weight 0.5 of Eq. (16) keeps its meaning across image sizes."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def mask_bce_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """(M, P) logits, (M, P) targets in [0, 1] -> scalar. Eq. (11): −Σ[M log m + (1−M) log(1−m)],
    averaged over pixels and masks."""
    if logits.numel() == 0:
        return logits.sum() * 0.0
    return F.binary_cross_entropy_with_logits(logits.float(), targets.float(), reduction="none").mean(1).mean()


def dice_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """(M, P), (M, P) -> mean over masks of 1 − (2Σ m·M + 1) / (Σ m + Σ M + 1)."""
    if logits.numel() == 0:
        return logits.sum() * 0.0
    m = logits.float().sigmoid()
    t = targets.float()
    num = 2 * (m * t).sum(1)
    den = m.sum(1) + t.sum(1)
    return (1 - (num + 1) / (den + 1)).mean()


def classification_loss(logits: torch.Tensor, target_classes: torch.Tensor, no_object_weight: float = 0.1
                        ) -> torch.Tensor:
    """Eq. (12): (1/N) Σ_i CE(softmax(z_i·Tᵀ/τ), y_i) over all queries. logits (B, N, K+1) with the last
    column the no-object class; target_classes (B, N) long, unmatched queries = K. No-object is
    down-weighted (DETR's eos_coef) since most of the N queries match nothing."""
    k1 = logits.shape[-1]
    w = torch.ones(k1, device=logits.device, dtype=torch.float32)
    w[-1] = no_object_weight
    return F.cross_entropy(logits.float().reshape(-1, k1), target_classes.reshape(-1), weight=w)


def grounding_similarity(z: torch.Tensor, words: torch.Tensor, tau: float) -> torch.Tensor:
    """Eq. (13): g(I, s) = (1/K_w) Σ_k Σ_i p(z_i)_k ⟨z_i, T(w_k)⟩ for one image's query embeddings
    z (N, D) and one caption's noun embeddings words (K_w, D), both L2-normalised; p(z_i) is the
    softmax over the caption's words of ⟨z_i, T(w_k)⟩/τ. The sum over queries is taken as a mean
    (1/N) so that g/τ stays in a range where Eq. (14)'s softmax does not saturate."""
    sim = z @ words.T  # (N, K_w)
    p = (sim / tau).softmax(-1)
    return (p * sim).sum(-1).mean() if sim.numel() else sim.sum() * 0.0


def grounding_loss(z: torch.Tensor, words: list[torch.Tensor], tau: float) -> torch.Tensor:
    """Eq. (14): bidirectional contrastive loss over a batch of B (image, caption) pairs.
    z (B, N, D) normalised query embeddings; words[m] (K_m, D) normalised noun embeddings of caption m."""
    b = z.shape[0]
    g = torch.stack([torch.stack([grounding_similarity(z[m], words[n], tau) for n in range(b)])
                     for m in range(b)])  # (B, B): g[m, n] = g(I_m, s_n)
    target = torch.arange(b, device=z.device)
    return F.cross_entropy(g / tau, target) + F.cross_entropy(g.T / tau, target)
