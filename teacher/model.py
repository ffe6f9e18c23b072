"""TeacherModel: the stage-1 diffusion model and everything around it needed to turn an image into
its t=50 features (paper Eq. 1, 2, 6, 9, 10) and a text into its embedding (Eq. 3).

Built by teacher.checkpoint (``build_random_teacher``, ``load_teacher``) and trained by teacher.train_loop
(`teacher train`). ``to_teacher_batch`` makes its input from uint8 RGB images of any size.
"""
from __future__ import annotations

import contextlib
from typing import Iterator

import numpy as np
import torch
from torch import nn

from runtime.contracts.featurespec import FeatureSpec
from runtime.contracts.formats import ContractError
from teacher.encoders import ImageEncoder, TextEncoder
from teacher.latent import downsample_factor
from teacher.modules import ImplicitCaptioner
from teacher.presets import SCHEDULER_CONFIG, Preset


def to_teacher_batch(images: list[np.ndarray], size: int) -> torch.Tensor:
    """uint8 RGB (H, W, 3) images of any size -> (B, 3, size, size) float32 in [0, 1] (bilinear, the
    edge's preprocessing with mean 0, std 1)."""
    from kernels import dispatch

    out = []
    for i, im in enumerate(images):
        if not isinstance(im, np.ndarray) or im.dtype != np.uint8 or im.ndim != 3 or im.shape[2] != 3:
            raise ValueError(f"image {i}: expected uint8 RGB (H, W, 3), got "
                             f"{getattr(im, 'dtype', type(im))} {getattr(im, 'shape', '')}")
        out.append(dispatch.preprocess(im, size, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)))
    return torch.from_numpy(np.concatenate(out, 0))


@contextlib.contextmanager
def feature_hooks(unet: nn.Module, names: list[str]) -> Iterator[dict[str, torch.Tensor]]:
    """Capture the four decoder maps named in FeatureSpec.source, finest first.

    up_blocks[3] has no upsampler: its output is the stride-8 map. up_blocks[2,1,0] end in an
    upsampler whose *input* is the stage's map at stride 16/32/64 (before the resolution doubles).
    """
    out: dict[str, torch.Tensor] = {}
    ups = list(unet.up_blocks)
    if len(ups) != len(names):
        raise ContractError(f"U-Net has {len(ups)} up-blocks but the FeatureSpec has {len(names)} levels")
    handles = []
    finest = ups[-1]
    handles.append(finest.register_forward_hook(lambda m, a, o: out.__setitem__(names[0], o)))
    for level, block in zip(names[1:], reversed(ups[:-1])):  # s16 <- up_blocks[2], ..., s64 <- up_blocks[0]
        if not block.upsamplers:
            raise ContractError(f"up-block for level {level} has no upsampler to hook")
        handles.append(block.upsamplers[0].register_forward_pre_hook(
            lambda m, a, level=level: out.__setitem__(level, a[0])))
    try:
        yield out
    finally:
        for h in handles:
            h.remove()


class TeacherModel(nn.Module):
    def __init__(self, preset: Preset, unet: nn.Module, vae: nn.Module, text_encoder: TextEncoder,
                 image_encoder: ImageEncoder, captioner: ImplicitCaptioner, image_size: int | None = None,
                 checkpoint_hash: str = "", info: dict | None = None):
        super().__init__()
        from diffusers import DDPMScheduler

        self.preset_config = preset
        self.unet, self.vae, self.text_encoder, self.image_encoder, self.captioner = (
            unet, vae, text_encoder, image_encoder, captioner)
        self.vae.requires_grad_(False)
        self.scheduler = DDPMScheduler(**SCHEDULER_CONFIG)
        self.feature_spec: FeatureSpec = preset.feature_spec(image_size)
        self.checkpoint_hash = checkpoint_hash
        self.info = dict(info or {})
        self.check_parts()

    @property
    def preset(self) -> str:
        return self.preset_config.name

    @property
    def device(self) -> torch.device:
        return next(self.unet.parameters()).device

    def check_parts(self) -> None:
        """Raise ContractError naming the first pair of parts that do not fit together."""
        u, v = self.unet.config, self.vae.config
        if u.in_channels != v.latent_channels:
            raise ContractError(f"U-Net in_channels {u.in_channels} != VAE latent_channels {v.latent_channels}")
        if self.text_encoder.embed_dim != u.cross_attention_dim:
            raise ContractError(f"text encoder embedding dim {self.text_encoder.embed_dim} != U-Net "
                                f"cross_attention_dim {u.cross_attention_dim}")
        c = self.captioner.config
        if c.in_dim != self.image_encoder.embed_dim:
            raise ContractError(f"captioner in_dim {c.in_dim} != image encoder embedding dim "
                                f"{self.image_encoder.embed_dim}")
        if c.out_dim != u.cross_attention_dim:
            raise ContractError(f"captioner out_dim {c.out_dim} != U-Net cross_attention_dim {u.cross_attention_dim}")
        chans = [lv.channels for lv in self.feature_spec.levels]
        if chans != list(u.block_out_channels):
            raise ContractError(f"FeatureSpec channels {chans} != U-Net block_out_channels "
                                f"{list(u.block_out_channels)}")
        down = downsample_factor(self.vae)
        if down != self.feature_spec.levels[0].stride:
            raise ContractError(f"VAE downsamples x{down} but FeatureSpec level {self.feature_spec.levels[0].name} "
                                f"has stride {self.feature_spec.levels[0].stride}")

    # -- conditioning -------------------------------------------------------------------------------
    def encode_text(self, texts: list[str]) -> torch.Tensor:
        """Token embeddings (B, L, H) of the text encoder's last layer."""
        return self.text_encoder(list(texts))[0]

    def embed_texts(self, texts: list[str]) -> torch.Tensor:
        """Pooled, projected e_T (B, D) of Eq. (3): the space the implicit captioner maps images into."""
        return self.text_encoder(list(texts))[1]

    def image_condition(self, images01: torch.Tensor) -> torch.Tensor:
        """t_imp (B, D) of Eq. (6) from images (B, 3, S, S) in [0, 1]."""
        return self.captioner(self.image_encoder(images01))

    # -- latents ------------------------------------------------------------------------------------
    def encode_latents(self, images01: torch.Tensor, generator: torch.Generator | None = None,
                       sample: bool = False) -> torch.Tensor:
        """Eq. (1): z0 = E_VAE(I) * scaling_factor, (B, 4, S/8, S/8). ``sample`` draws from the
        posterior (training, as train_text_to_image.py does); otherwise its mean (features)."""
        vdt = self.vae.dtype
        dist = self.vae.encode((images01 * 2 - 1).to(vdt)).latent_dist
        z = dist.sample(generator) if sample else dist.mean
        return z.float() * self.vae.config.scaling_factor

    # -- features -----------------------------------------------------------------------------------
    @torch.no_grad()
    def extract_features(self, images: torch.Tensor, noise_draws: int = 1, seed: int = 0,
                         pixel_noise: bool = False) -> dict[str, torch.Tensor]:
        """Paper Eq. (9)-(10): the four U-Net decoder maps at t=50, conditioned on the implicit caption.

        images: (B, 3, S, S) float RGB in [0, 1], S = feature_spec.image_size. Returns level name ->
        (B, C, S/stride, S/stride) float32, the mean over ``noise_draws`` noise draws. Draw k uses the
        noise of seed (seed, k), the same for every image of the batch, so an image's features do not
        depend on its batch or position. Default: noise added to the latent (Eq. 2 at t=50);
        ``pixel_noise=True`` is the paper's literal Eq. (9), noise added to the image before the VAE.
        """
        spec = self.feature_spec
        if images.ndim != 4 or images.shape[1] != 3 or images.shape[-2:] != (spec.image_size, spec.image_size):
            raise ContractError(f"extract_features expects (B, 3, {spec.image_size}, {spec.image_size}) images in "
                                f"[0, 1], got {tuple(images.shape)}")
        if noise_draws < 1:
            raise ValueError(f"noise_draws must be >= 1, got {noise_draws}")
        was_training = self.training
        self.eval()
        dev, dtype = self.device, next(self.unet.parameters()).dtype
        x = images.to(dev, torch.float32)
        b = x.shape[0]
        t = spec.timestep
        abar = self.scheduler.alphas_cumprod[t].item()
        cond = self.image_condition(x).to(dtype)[:, None, :]  # Eq. (10): t_imp, (B, 1, D)
        z0 = None if pixel_noise else self.encode_latents(x)
        timesteps = torch.full((b,), t, device=dev, dtype=torch.long)
        acc: dict[str, torch.Tensor] = {}
        for k in range(noise_draws):
            g = torch.Generator().manual_seed(int(seed) * 1_000_003 + k)
            if pixel_noise:
                eps = torch.randn((1, 3) + tuple(x.shape[-2:]), generator=g).to(dev)
                x_t = abar ** 0.5 * (x * 2 - 1) + (1 - abar) ** 0.5 * eps  # Eq. (9), on the [-1, 1] image
                z_t = self.encode_latents((x_t + 1) / 2)
            else:
                eps = torch.randn((1,) + tuple(z0.shape[1:]), generator=g).to(dev)
                z_t = self.scheduler.add_noise(z0, eps.expand_as(z0), timesteps)  # Eq. (2) at t=50
            with feature_hooks(self.unet, spec.names) as maps:
                self.unet(z_t.to(dtype), timesteps, encoder_hidden_states=cond)  # Eq. (10)
            for name in spec.names:
                f = maps[name].float()
                acc[name] = f if name not in acc else acc[name] + f
        self.train(was_training)
        return {n: acc[n] / noise_draws for n in spec.names}

    def trainable_modules(self) -> dict[str, nn.Module]:
        """The parts stage 1 trains: the U-Net, the captioner, and the own encoders if any."""
        mods: dict[str, nn.Module] = {"unet": self.unet, "captioner": self.captioner}
        if self.text_encoder.trainable:
            mods["text_encoder"] = self.text_encoder.model
        if self.image_encoder.trainable:
            mods["image_encoder"] = self.image_encoder.model
        return mods
