"""The teacher's latent space: SD's AutoencoderKL, or a lossless pixel-unshuffle latent for small presets.

The paper's teacher diffuses in SD's x8 VAE latent (Eq. 1). That VAE was trained on billions of images; a
tiny one trained on a line's few hundred plateaus near 19-23 dB PSNR and erases exactly what inspection
looks for (pinholes, faint smudges) before the U-Net sees it. ``PixelUnshuffleAutoencoder`` keeps SD's
geometry (x8 downsampling, so FeatureSpec strides stay 8/16/32/64) without the loss: each 8x8x3 pixel
block becomes one 192-channel latent vector (``torch.nn.functional.pixel_unshuffle``), and decoding is the
exact inverse. It has the AutoencoderKL interface the rest of the teacher uses (``encode(x).latent_dist``
with ``mean``/``std``/``sample``, ``decode(z).sample``, ``config.latent_channels``/``scaling_factor``) and
saves and loads as a diffusers model directory, so checkpoints, ``--vae DIR`` and generation are unchanged.
Its only fitted value is ``scaling_factor`` (1/std of the line's pixels, as SD's 0.18215 is for its
latents), which `teacher train-vae` sets.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.autoencoders.vae import DecoderOutput, DiagonalGaussianDistribution
from diffusers.models.modeling_outputs import AutoencoderKLOutput
from diffusers.models.modeling_utils import ModelMixin

KL = "AutoencoderKL"
PIXEL_UNSHUFFLE = "PixelUnshuffleAutoencoder"


class PixelUnshuffleAutoencoder(ModelMixin, ConfigMixin):
    """Lossless x``factor`` latent: (B, C, H, W) in [-1, 1] <-> (B, C*factor², H/factor, W/factor)."""

    @register_to_config
    def __init__(self, in_channels: int = 3, factor: int = 8, latent_channels: int = 192,
                 scaling_factor: float = 1.0):
        super().__init__()
        if latent_channels != in_channels * factor * factor:
            raise ValueError(f"latent_channels must be in_channels*factor**2 = {in_channels * factor * factor}, "
                             f"got {latent_channels}")
        # No weights. A saved buffer gives the module a device and dtype like any other part, and a weight
        # file, so it saves and loads (and is hashed in a checkpoint) like any diffusers model.
        self.register_buffer("anchor", torch.zeros(1))

    def encode(self, x: torch.Tensor, return_dict: bool = True):
        f = self.config.factor
        if x.shape[-1] % f or x.shape[-2] % f:
            raise ValueError(f"image side must be a multiple of {f}, got {tuple(x.shape[-2:])}")
        z = F.pixel_unshuffle(x, f)
        dist = DiagonalGaussianDistribution(torch.cat([z, torch.zeros_like(z)], dim=1), deterministic=True)
        return AutoencoderKLOutput(latent_dist=dist) if return_dict else (dist,)

    def decode(self, z: torch.Tensor, return_dict: bool = True, generator=None):
        x = F.pixel_shuffle(z, self.config.factor)
        return DecoderOutput(sample=x) if return_dict else (x,)


def build_autoencoder(config: dict) -> torch.nn.Module:
    """A fresh autoencoder from a preset's ``vae`` dict (``kind`` picks the class; AutoencoderKL by default)."""
    from diffusers import AutoencoderKL

    cfg = dict(config)
    kind = cfg.pop("kind", KL)
    if kind == PIXEL_UNSHUFFLE:
        return PixelUnshuffleAutoencoder(**cfg)
    if kind != KL:
        raise ValueError(f"unknown autoencoder kind {kind!r}; kinds are {[KL, PIXEL_UNSHUFFLE]}")
    return AutoencoderKL(**cfg)


def load_autoencoder(directory: str | Path) -> torch.nn.Module:
    """Load a saved autoencoder of either class (read from its config.json's ``_class_name``)."""
    from diffusers import AutoencoderKL

    name = json.loads((Path(directory) / "config.json").read_text()).get("_class_name", KL)
    cls = PixelUnshuffleAutoencoder if name == PIXEL_UNSHUFFLE else AutoencoderKL
    return cls.from_pretrained(directory, low_cpu_mem_usage=False)


def downsample_factor(vae) -> int:
    """Image side / latent side."""
    c = vae.config
    return int(c.factor) if "factor" in c else 2 ** (len(c.block_out_channels) - 1)


def is_lossless(vae) -> bool:
    return isinstance(vae, PixelUnshuffleAutoencoder)
