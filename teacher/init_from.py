"""`teacher train --init-from SRC`: start stage 1 from trained weights instead of a random U-Net.

SRC is either

* a lineside teacher checkpoint (``config.json`` of format lineside-teacher), e.g. the shipped foundation
  (teacher/foundation/): every part comes from its EMA weights, tokenizer and autoencoder included, and
  training adapts it to the line, as the paper's lightweight finetuning starts from its pretrained model;
* a diffusers pipeline directory (``model_index.json`` with unet/, vae/, text_encoder/, tokenizer/), e.g.
  a Stable Diffusion 1.5 download: the U-Net, VAE and CLIP text encoder (frozen) come from it, the image
  encoder and the implicit captioner are new. The preset's U-Net and VAE configs are replaced by the
  pipeline's, so the checkpoint records the architecture it really holds.

Either way the result is a TeacherModel at the requested image size; parts that do not fit each other are
refused by TeacherModel.check_parts with the pair named.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from runtime.contracts.formats import ContractError
from teacher.presets import Preset

PIPELINE_INDEX = "model_index.json"


def source_kind(src: str | Path) -> str:
    """"pipeline", "checkpoint", or ContractError naming what SRC lacks."""
    d = Path(src)
    if (d / PIPELINE_INDEX).is_file():
        return "pipeline"
    if (d / "config.json").is_file():
        cfg = json.loads((d / "config.json").read_text())
        if cfg.get("format") == "lineside-teacher":
            return "checkpoint"
    raise ContractError(f"--init-from {src}: neither a lineside teacher checkpoint (config.json of format "
                        f"lineside-teacher) nor a diffusers pipeline directory ({PIPELINE_INDEX})")


def from_checkpoint(src: str | Path, preset: Preset, image_size: int | None):
    from teacher.checkpoint import load_teacher
    from teacher.model import TeacherModel

    m = load_teacher(src, use_ema=True, for_training=True)
    if m.preset_config.name != preset.name:
        raise ContractError(f"--init-from {src}: it is a {m.preset_config.name!r} teacher, this run asks for "
                            f"--preset {preset.name!r}")
    info = {"sources": dict(m.info.get("sources", {})), "step": 0, "init": f"from {Path(src).resolve()}"}
    return TeacherModel(m.preset_config, m.unet, m.vae, m.text_encoder, m.image_encoder, m.captioner,
                        image_size=image_size, checkpoint_hash=f"init:{m.checkpoint_hash}", info=info)


def from_pipeline(src: str | Path, preset: Preset, image_size: int | None, seed: int = 0):
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel

    from teacher.encoders import load_text_encoder, own_image_encoder
    from teacher.model import TeacherModel
    from teacher.modules import ImplicitCaptioner

    d = Path(src)
    for part in ("unet", "vae", "text_encoder", "tokenizer"):
        if not (d / part).is_dir():
            raise ContractError(f"--init-from {src}: the pipeline has no {part}/ directory")
    unet = UNet2DConditionModel.from_pretrained(d / "unet", low_cpu_mem_usage=False)
    vae = AutoencoderKL.from_pretrained(d / "vae", low_cpu_mem_usage=False)
    text = load_text_encoder(d / "text_encoder", trainable=False, tokenizer_dir=d / "tokenizer")
    # The architecture is the pipeline's: the preset keeps its training defaults and encoders, and takes the
    # U-Net's and VAE's configs (only the keys the preset names, as it would build them).
    unet_cfg = {k: (list(v) if isinstance(v, tuple) else v) for k, v in unet.config.items() if k in preset.unet}
    vae_cfg = {k: (list(v) if isinstance(v, tuple) else v) for k, v in vae.config.items()
               if not k.startswith("_")} | {"kind": "AutoencoderKL"}
    p = dataclasses.replace(preset, unet=unet_cfg, vae=vae_cfg)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        image = own_image_encoder(p.image_encoder)
        captioner = ImplicitCaptioner(in_dim=image.embed_dim, hidden_dim=p.captioner_hidden,
                                      out_dim=int(unet.config.cross_attention_dim))
    sources = {"vae": str((d / "vae").resolve()), "text_encoder": text.source, "image_encoder": image.source}
    return TeacherModel(p, unet, vae, text, image, captioner, image_size=image_size,
                        checkpoint_hash=f"init:pipeline:{d.resolve()}",
                        info={"sources": sources, "step": 0, "init": f"from pipeline {d.resolve()}"})


def init_teacher(src: str | Path, preset: Preset, image_size: int | None, seed: int = 0):
    """The model a `teacher train --init-from SRC` run starts from."""
    kind = source_kind(src)
    return from_pipeline(src, preset, image_size, seed) if kind == "pipeline" else \
        from_checkpoint(src, preset, image_size)
