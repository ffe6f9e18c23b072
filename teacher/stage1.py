"""The stage-1 objective as one nn.Module, so DDP wraps a single forward: L = L_diff + 0.3 L_imp (Eq. 15),
plus λ·L_align when the run aligns its bank levels to an ImageNet encoder (teacher/align.py).

All randomness (posterior sample, noise, timesteps, condition choices) comes in as tensors drawn by
the caller from a per-step generator, which makes a resumed run bit-identical to an unbroken one.

The U-Net cross-attends to a single token, c (B, 1, D): the paper's e_T is one vector (Eq. 3,
e_T in R^768) and so is t_imp (Eq. 6), which is what lets Eq. (7) swap one for the other per sample
and Eq. (8) compare them by cosine. e_T is detached in Eq. (8): the paper's text encoder is frozen,
and with the own (trainable) one the alignment loss should move the captioner, not the text side.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from teacher.align import FeatureAlignment
from teacher.model import TeacherModel, feature_hooks


@dataclass
class StepNoise:
    vae: torch.Tensor  # (B, 4, h, w) standard normal: posterior sample z0 = mean + std * vae
    eps: torch.Tensor  # (B, 4, h, w) epsilon of Eq. (2)
    t: torch.Tensor  # (B,) long, t ~ Uniform{0..T-1}
    use_text: torch.Tensor  # (B,) bool, Eq. (7): e_T with prob. 0.5, else t_imp
    drop: torch.Tensor  # (B,) bool, condition replaced by the learned null embedding (CFG)

    @classmethod
    def draw(cls, g: torch.Generator, batch: int, latent_shape: tuple[int, int, int], T: int,
             text_prob: float, null_prob: float) -> "StepNoise":
        shape = (batch,) + tuple(latent_shape)
        return cls(vae=torch.randn(shape, generator=g), eps=torch.randn(shape, generator=g),
                   t=torch.randint(0, T, (batch,), generator=g),  # t ~ Uniform{0..T-1}, Eq. (5)
                   use_text=torch.rand(batch, generator=g) < text_prob,
                   drop=torch.rand(batch, generator=g) < null_prob)

    def to(self, device) -> "StepNoise":
        return StepNoise(**{k: v.to(device) for k, v in self.__dict__.items()})


class Stage1Loss(nn.Module):
    def __init__(self, teacher: TeacherModel, imp_weight: float = 0.3, align: FeatureAlignment | None = None,
                 align_weight: float = 0.0):
        super().__init__()
        self.teacher = teacher
        self.imp_weight = imp_weight
        self.align, self.align_weight = align, align_weight

    def forward(self, images01: torch.Tensor, captions: list[str], n: StepNoise):
        m = self.teacher
        with torch.no_grad():  # frozen VAE, Eq. (1)
            dist = m.vae.encode(images01 * 2 - 1).latent_dist
            z0 = (dist.mean + dist.std * n.vae) * m.vae.config.scaling_factor
        with torch.set_grad_enabled(m.text_encoder.trainable and torch.is_grad_enabled()):
            _, e_t = m.text_encoder(captions)  # Eq. (3): e_T, (B, D)
        t_imp = m.image_condition(images01)  # Eq. (6): t_imp, (B, D)
        e_t = e_t.to(t_imp.dtype)
        c = torch.where(n.use_text[:, None], e_t, t_imp)  # Eq. (7)
        c = torch.where(n.drop[:, None], m.captioner.null(c.shape[0]).to(c.dtype), c)  # CFG dropout
        z_t = m.scheduler.add_noise(z0, n.eps, n.t)  # Eq. (2)
        pred = m.unet(z_t, n.t, encoder_hidden_states=c[:, None, :]).sample  # Eq. (4), (B, 4, h, w)
        l_diff = F.mse_loss(pred.float(), n.eps.float())  # Eq. (5)
        l_imp = (1 - F.cosine_similarity(t_imp.float(), e_t.detach().float(), dim=-1)).mean()  # Eq. (8)
        loss = l_diff + self.imp_weight * l_imp  # Eq. (15)
        l_align = torch.zeros((), device=loss.device)
        if self.align is not None:
            # a second pass as extract_features sees the image: t=50, implicit caption, no dropout
            t_feat = torch.full_like(n.t, m.feature_spec.timestep)
            with feature_hooks(m.unet, m.feature_spec.names) as maps:
                m.unet(m.scheduler.add_noise(z0, n.eps, t_feat), t_feat, encoder_hidden_states=t_imp[:, None, :])
            l_align = self.align(maps, images01)
            loss = loss + self.align_weight * l_align
        return loss, l_diff.detach(), l_imp.detach(), l_align.detach()
