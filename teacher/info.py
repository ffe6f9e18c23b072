"""Parameter counts per part and the FeatureSpec of a preset (`teacher info`, teacher/commands/info.py),
built on the meta device (no weights allocated, well under a second even for sd15)."""
from __future__ import annotations

from teacher.presets import SCHEDULER_CONFIG, get_preset


def count(module) -> int:
    return sum(p.numel() for p in module.parameters())


def describe(preset: str, image_size: int | None = None) -> dict:
    from teacher.checkpoint import build_random_teacher
    from teacher.latent import is_lossless

    p = get_preset(preset)
    m = build_random_teacher(p, image_size=image_size, meta=True)
    params = {
        "unet": count(m.unet),
        "vae": count(m.vae),
        # A lossless pixel-unshuffle latent has no encoder or decoder weights.
        "vae_encoder": 0 if is_lossless(m.vae) else count(m.vae.encoder) + count(m.vae.quant_conv),
        "vae_decoder": 0 if is_lossless(m.vae) else count(m.vae.decoder) + count(m.vae.post_quant_conv),
        "text_encoder": count(m.text_encoder.model),
        "image_encoder": count(m.image_encoder.model),
        "captioner": count(m.captioner),
    }
    params["total"] = sum(params[k] for k in ("unet", "vae", "text_encoder", "image_encoder", "captioner"))
    return {
        "preset": p.name, "image_size": m.feature_spec.image_size, "params": params,
        "notes": {"text_encoder": "own CLIP-style text transformer, counted with an empty word vocabulary "
                                  "(grows by hidden_size per training-caption word); --text-encoder DIR replaces it",
                  "image_encoder": "own conv encoder; --image-encoder DIR (CLIP vision) replaces it"},
        "unet_config": {k: (list(v) if isinstance(v, tuple) else v) for k, v in p.unet.items()},
        "vae_config": {k: (list(v) if isinstance(v, tuple) else v) for k, v in p.vae.items()},
        "scheduler": SCHEDULER_CONFIG, "train_defaults": p.to_dict()["train"],
        "feature_spec": m.feature_spec.to_dict(),
    }
