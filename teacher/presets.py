"""Model presets: `sd15` is the paper's teacher (SD v1.5 U-Net, 859,520,964 parameters, random init),
`tiny` runs the same classes with small widths for tests and the two-core demo.

A preset names every architectural choice (U-Net, VAE, own text/image encoders, implicit captioner)
and the stage-1 training defaults of the paper's Table 8. The checkpoint stores the preset name and the
full configs it was built from, so a resume or a load can say exactly what differs.
"""
from __future__ import annotations

import copy
from dataclasses import asdict, dataclass, field

from runtime.contracts.featurespec import FeatureSpec, LevelSpec, sd15_feature_spec

# Where the four maps come from (see teacher/model.py, FeatureHooks): the output of each up-block's
# resnets/attentions, taken *before* its upsampler, so the maps sit at strides 64/32/16 of the image,
# and the last up-block's output at stride 8.
FEATURE_SOURCE = ("unet.up_blocks[3] output (s8); input of unet.up_blocks[2,1,0].upsamplers[0] "
                  "(s16, s32, s64), i.e. each decoder stage before upsampling; t=50, implicit caption")

# DDPM, paper Eq. (2): linear beta 1e-4..0.02 over T=1000, epsilon prediction (Eq. 5).
SCHEDULER_CONFIG = dict(num_train_timesteps=1000, beta_start=1e-4, beta_end=0.02, beta_schedule="linear",
                        prediction_type="epsilon", clip_sample=False)


@dataclass(frozen=True)
class TrainDefaults:
    """Paper Table 8, and what a preset scales down."""
    lr: float = 1e-4
    min_lr: float = 1e-6
    weight_decay: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.999)
    warmup_steps: int = 5000
    grad_clip: float = 1.0
    ema_decay: float = 0.9999
    batch_size: int = 32  # per GPU; 32 x 8 = 256 in the paper
    imp_loss_weight: float = 0.3  # Eq. (15)
    align_weight: float = 0.0  # λ of L_align (teacher/align.py); the paper's teacher has none
    text_prob: float = 0.5  # Eq. (7)
    null_prob: float = 0.1  # condition dropped to the learned null embedding (classifier-free guidance)
    vae_lr: float = 1e-4
    vae_kl_weight: float = 1e-6
    vae_batch_size: int = 8
    vae_crop_size: int = 256  # train-vae trains on random crops (the VAE is fully convolutional)


@dataclass(frozen=True)
class Preset:
    name: str
    image_size: int
    unet: dict
    vae: dict
    text_encoder: dict  # own text transformer (transformers CLIPTextConfig fields) when none is given
    image_encoder: dict  # own image encoder (teacher.modules.SmallImageEncoder) when none is given
    captioner_hidden: int  # Eq. (6) hidden width of the two-layer MLP
    text_max_length: int
    train: TrainDefaults = field(default_factory=TrainDefaults)

    @property
    def cross_attention_dim(self) -> int:
        return int(self.unet["cross_attention_dim"])

    @property
    def latent_channels(self) -> int:
        return int(self.vae["latent_channels"])

    def feature_spec(self, image_size: int | None = None) -> FeatureSpec:
        s = int(image_size or self.image_size)
        if self.name == "sd15":
            base = sd15_feature_spec(s)
            return FeatureSpec(image_size=s, levels=base.levels, timestep=base.timestep, source=FEATURE_SOURCE)
        ch = list(self.unet["block_out_channels"])
        levels = tuple(LevelSpec(f"s{8 * 2 ** i}", 8 * 2 ** i, int(ch[i])) for i in range(len(ch)))
        return FeatureSpec(image_size=s, levels=levels, timestep=50, source=FEATURE_SOURCE)

    def to_dict(self) -> dict:
        return asdict(self)


_SD15_UNET = dict(
    sample_size=64, in_channels=4, out_channels=4, center_input_sample=False, flip_sin_to_cos=True, freq_shift=0,
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    block_out_channels=(320, 640, 1280, 1280), layers_per_block=2, downsample_padding=1, mid_block_scale_factor=1,
    act_fn="silu", norm_num_groups=32, norm_eps=1e-5, cross_attention_dim=768, attention_head_dim=8,
)
_SD15_VAE = dict(
    in_channels=3, out_channels=3, latent_channels=4, sample_size=512, layers_per_block=2, act_fn="silu",
    norm_num_groups=32, scaling_factor=0.18215,
    down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
    block_out_channels=(128, 256, 512, 512),
)

# Tiny preset latent: lossless (teacher/latent.py). The VAE keeps SD's x8 geometry, so the FeatureSpec strides
# stay 8/16/32/64, but a small AutoencoderKL trained on a line's images is lossy where it matters. Measured
# earlier on the demo data: a 4-channel x8 latent reconstructed at 17.4 dB val PSNR (teacher I-/P-AUROC 0.50 /
# 0.51), a 16-channel one at 18.8 dB (0.58 / 0.76); more steps did not lift it past ~20 dB. The pixel-unshuffle
# latent (8x8x3 = 192 channels) is exact, and only the U-Net's in/out convolutions grow with it.
TINY_VAE = dict(kind="PixelUnshuffleAutoencoder", in_channels=3, factor=8, latent_channels=192, scaling_factor=1.0)
TINY_LATENT_CHANNELS = TINY_VAE["latent_channels"]

PRESETS: dict[str, Preset] = {
    "sd15": Preset(
        name="sd15", image_size=512, unet=_SD15_UNET, vae=_SD15_VAE,
        text_encoder=dict(hidden_size=512, intermediate_size=2048, num_hidden_layers=6, num_attention_heads=8,
                          projection_dim=768),
        image_encoder=dict(widths=(64, 128, 256, 512), embed_dim=512),  # 512-d like the paper's CLIP image embedding
        captioner_hidden=256,  # 512*256 + 256*768 ~ 0.3M, Table 9
        text_max_length=77,
    ),
    "tiny": Preset(
        name="tiny", image_size=128,
        unet=dict(_SD15_UNET, sample_size=16, in_channels=TINY_LATENT_CHANNELS, out_channels=TINY_LATENT_CHANNELS,
                  block_out_channels=(32, 64, 64, 64), layers_per_block=1,
                  norm_num_groups=8, cross_attention_dim=64, attention_head_dim=4),
        vae=TINY_VAE,
        text_encoder=dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2,
                          projection_dim=64),
        image_encoder=dict(widths=(16, 32, 64, 64), embed_dim=64),
        captioner_hidden=64,
        text_max_length=48,  # the IMDD caption template runs to ~35 words
        train=TrainDefaults(lr=1e-3, min_lr=1e-5, warmup_steps=20, ema_decay=0.99, batch_size=8,
                            vae_lr=2e-3, vae_batch_size=16, vae_crop_size=64, align_weight=1.0),
    ),
}


def get_preset(name: str) -> Preset:
    try:
        return copy.deepcopy(PRESETS[name])
    except KeyError:
        raise KeyError(f"unknown teacher preset {name!r}; presets are {sorted(PRESETS)}") from None
