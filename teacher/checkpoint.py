"""Teacher checkpoints: build a random teacher, save one, load one (and check that its parts agree).

Layout of a checkpoint directory::

    config.json            preset + its full configs, hyperparameters, dataset hash, step, encoder sources,
                           FeatureSpec, sha256 of every weight file, checkpoint_hash
    unet/ vae/ captioner/  diffusers save_pretrained (config.json + diffusion_pytorch_model.safetensors)
    text_encoder/          transformers save_pretrained + tokenizer (own word tokenizer or CLIP's)
    image_encoder/         transformers CLIPVisionModelWithProjection or own SmallImageEncoder
    ema/<part>/            EMA weights of every trained part, same layouts (used for features)
    training_state.pt      optimiser, LR schedule, RNG states, sampler position (resume only)
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

import torch

from runtime.contracts.featurespec import FeatureSpec
from runtime.contracts.formats import ContractError, check_format
from teacher.encoders import load_image_encoder, load_text_encoder, own_image_encoder, own_text_encoder
from teacher.latent import build_autoencoder, load_autoencoder
from teacher.model import TeacherModel
from teacher.modules import ImplicitCaptioner, WordTokenizer, paper_init_
from teacher.presets import Preset, TrainDefaults, get_preset

FORMAT = "lineside-teacher"
FORMAT_VERSION = 1
PARTS = ("unet", "vae", "text_encoder", "image_encoder", "captioner")


def build_random_teacher(preset: str | Preset, image_size: int | None = None, seed: int = 0,
                         vae_dir: str | None = None, text_encoder_dir: str | None = None,
                         image_encoder_dir: str | None = None, tokenizer: WordTokenizer | None = None,
                         meta: bool = False, init: str = "default") -> TeacherModel:
    """An untrained teacher (random init, seeded). Pretrained parts come from local directories when
    given; otherwise the own encoders are built. ``meta=True`` allocates no weights (``teacher info``).
    ``init="paper"``: He init for the U-Net's convolutions, Xavier for its linear layers (§11.3);
    "default": the PyTorch/diffusers default init."""
    from diffusers import UNet2DConditionModel

    p = get_preset(preset) if isinstance(preset, str) else preset
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        with torch.device("meta" if meta else "cpu"):
            unet = UNet2DConditionModel(**p.unet)
        if init == "paper" and not meta:
            paper_init_(unet)
        elif init not in ("paper", "default"):
            raise ValueError(f"init must be 'paper' or 'default', got {init!r}")
        if vae_dir:
            vae = load_autoencoder(vae_dir)
        else:
            with torch.device("meta" if meta else "cpu"):
                vae = build_autoencoder(p.vae)
        if text_encoder_dir:
            text = load_text_encoder(text_encoder_dir, trainable=False)
        else:
            text = own_text_encoder(p.text_encoder, tokenizer or WordTokenizer([], max_length=p.text_max_length),
                                    meta=meta)
        image = load_image_encoder(image_encoder_dir, trainable=False) if image_encoder_dir else \
            own_image_encoder(p.image_encoder, meta=meta)
        with torch.device("meta" if meta else "cpu"):
            captioner = ImplicitCaptioner(in_dim=image.embed_dim, hidden_dim=p.captioner_hidden,
                                          out_dim=p.cross_attention_dim)
    sources = {"vae": str(Path(vae_dir).resolve()) if vae_dir else "random-init",
               "text_encoder": text.source, "image_encoder": image.source}
    return TeacherModel(p, unet, vae, text, image, captioner, image_size=image_size,
                        checkpoint_hash=f"random:{p.name}:{seed}", info={"sources": sources, "step": 0, "init": init})


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _weight_files(root: Path) -> dict[str, str]:
    return {str(f.relative_to(root)): file_sha256(f) for f in sorted(root.rglob("*.safetensors"))}


def _combined_hash(files: dict[str, str]) -> str:
    return hashlib.sha256("".join(f"{k}:{v}\n" for k, v in sorted(files.items())).encode()).hexdigest()


def save_teacher(model: TeacherModel, out: str | Path, config: dict, ema=None) -> str:
    """Write every part (and the EMA weights of the trained parts) plus config.json. Returns the
    checkpoint hash: sha256 over the weight files' hashes."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    writers = {"unet": model.unet.save_pretrained, "vae": model.vae.save_pretrained,
               "captioner": model.captioner.save_pretrained,
               "text_encoder": model.text_encoder.save, "image_encoder": model.image_encoder.save}
    for part, write in writers.items():
        write(out / part)
    mods = model.trainable_modules()
    if ema is not None:
        with ema.swapped(mods):
            for part in mods:
                writers[part](out / "ema" / part)
    files = _weight_files(out)
    h = _combined_hash(files)
    cfg = dict(config)
    cfg.update(format=FORMAT, format_version=FORMAT_VERSION, preset=model.preset,
               preset_config=model.preset_config.to_dict(), image_size=model.feature_spec.image_size,
               feature_spec=model.feature_spec.to_dict(), sources=model.info.get("sources", {}),
               ema_parts=sorted(mods) if ema is not None else [], files=files, checkpoint_hash=h)
    tmp = out / "config.json.tmp"
    tmp.write_text(json.dumps(cfg, indent=1, sort_keys=True))
    tmp.replace(out / "config.json")
    return h


def preset_from_config(d: dict) -> Preset:
    """The preset a checkpoint was built from, as recorded (presets may change after it was written)."""
    known = {f.name for f in dataclasses.fields(TrainDefaults)}
    train = {k: (tuple(v) if isinstance(v, list) else v) for k, v in d.get("train", {}).items() if k in known}
    fields = {f.name for f in dataclasses.fields(Preset)}
    return Preset(**{k: v for k, v in d.items() if k in fields and k != "train"}, train=TrainDefaults(**train))


def read_config(ckpt: str | Path) -> dict:
    p = Path(ckpt) / "config.json"
    if not p.is_file():
        raise ContractError(f"{ckpt}: not a teacher checkpoint (no config.json)")
    cfg = json.loads(p.read_text())
    check_format(cfg, str(p), versions=(FORMAT_VERSION,), fmt=FORMAT)
    return cfg


def load_teacher(ckpt_dir: str | Path, device: str | torch.device = "cpu", use_ema: bool = True,
                 verify: bool = True, for_training: bool = False) -> TeacherModel:
    """Load a checkpoint: EMA weights of the trained parts (``use_ema``), every weight file checked
    against the sha256 recorded at save time (``verify``), parts checked to agree. For inference
    (default) every parameter is frozen and the model is in eval mode."""
    from diffusers import UNet2DConditionModel

    root = Path(ckpt_dir)
    cfg = read_config(root)
    if verify:
        files = _weight_files(root)
        for rel, sha in cfg["files"].items():
            if rel not in files:
                raise ContractError(f"{root}: weight file {rel} listed in config.json is missing")
            if files[rel] != sha:
                raise ContractError(f"{root}: weight file {rel} does not match its recorded sha256 (modified?)")
    preset = preset_from_config(cfg["preset_config"])

    def part(name: str) -> Path:
        ema = root / "ema" / name
        return ema if use_ema and name in cfg.get("ema_parts", []) and ema.is_dir() else root / name

    unet = UNet2DConditionModel.from_pretrained(part("unet"), low_cpu_mem_usage=False)
    for k, v in preset.unet.items():
        got = unet.config.get(k)
        if (list(got) if isinstance(got, (list, tuple)) else got) != (list(v) if isinstance(v, (list, tuple)) else v):
            raise ContractError(f"{root}: unet config {k}={got!r} disagrees with preset {preset.name} ({v!r})")
    vae = load_autoencoder(part("vae"))
    text = load_text_encoder(part("text_encoder"))
    image = load_image_encoder(part("image_encoder"))
    captioner = ImplicitCaptioner.from_pretrained(part("captioner"), low_cpu_mem_usage=False)
    model = TeacherModel(preset, unet, vae, text, image, captioner, image_size=cfg["image_size"],
                         checkpoint_hash=cfg["checkpoint_hash"],
                         info={"sources": cfg.get("sources", {}), "step": cfg.get("step", 0), "config": cfg})
    spec = FeatureSpec.from_dict(cfg["feature_spec"])
    model.feature_spec.check_compatible(spec, what="checkpoint config.json")
    if not for_training:
        model.requires_grad_(False)
    return model.to(device).eval()
