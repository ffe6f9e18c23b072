"""Text and image encoders of the teacher: pretrained CLIP from a local directory (frozen), or the
teacher's own small ones (trained jointly with the U-Net). Nothing is fetched from a hub.

TextEncoder(texts) -> (tokens (B, L, H), e_T (B, D)), e_T the pooled, projected embedding of Eq. (3).
ImageEncoder(images in [0, 1]) -> V(I) (B, E), the input of the implicit captioner, Eq. (6).
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from runtime.contracts.formats import ContractError
from teacher.modules import SmallImageEncoder, WordTokenizer


def _quiet_transformers() -> None:
    """No per-file progress bars from transformers' save/load: our own tqdm is the one on stderr."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def _architectures(directory: Path) -> list[str]:
    cfg = directory / "config.json"
    if not cfg.is_file():
        raise ContractError(f"{directory}: no config.json; expected a directory written by transformers "
                            "save_pretrained")
    return list(json.loads(cfg.read_text()).get("architectures") or [])


class TextEncoder(nn.Module):
    def __init__(self, model: nn.Module, tokenizer, source: str, trainable: bool):
        super().__init__()
        self.model, self.tokenizer, self.source, self.trainable = model, tokenizer, source, trainable
        self.model.requires_grad_(trainable)

    @property
    def embed_dim(self) -> int:
        cfg = self.model.config
        return int(getattr(cfg, "projection_dim", None) if hasattr(self.model, "text_projection") else cfg.hidden_size)

    def tokenize(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        if isinstance(self.tokenizer, WordTokenizer):
            ids, mask = self.tokenizer(texts)
        else:
            enc = self.tokenizer(texts, padding="max_length", truncation=True,
                                 max_length=self.tokenizer.model_max_length, return_tensors="pt")
            ids, mask = enc["input_ids"], enc["attention_mask"]
        dev = next(self.model.parameters()).device
        return ids.to(dev), mask.to(dev)

    def forward(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        ids, mask = self.tokenize(texts)
        out = self.model(input_ids=ids, attention_mask=mask)
        pooled = out.text_embeds if hasattr(out, "text_embeds") else out.pooler_output
        return out.last_hidden_state, pooled  # (B, L, H), Eq. (3) e_T: (B, D)

    def save(self, directory: str | Path) -> None:
        _quiet_transformers()
        self.model.save_pretrained(directory)
        if isinstance(self.tokenizer, WordTokenizer):
            self.tokenizer.save(directory)
        else:
            self.tokenizer.save_pretrained(directory)


def own_text_encoder(cfg: dict, tokenizer: WordTokenizer, meta: bool = False) -> TextEncoder:
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection

    config = CLIPTextConfig(vocab_size=tokenizer.vocab_size, max_position_embeddings=tokenizer.max_length,
                            pad_token_id=WordTokenizer.PAD, bos_token_id=WordTokenizer.BOS,
                            eos_token_id=WordTokenizer.EOS, **cfg)
    with torch.device("meta" if meta else "cpu"):
        model = CLIPTextModelWithProjection(config)
    return TextEncoder(model, tokenizer, source="own", trainable=True)


def load_text_encoder(directory: str | Path, trainable: bool | None = None,
                      tokenizer_dir: str | Path | None = None) -> TextEncoder:
    """A transformers CLIP text model (with projection, or plain: pooled output) and its tokenizer (from
    ``tokenizer_dir``, else the same directory, as a diffusers pipeline keeps them apart).
    A directory holding the teacher's own tokenizer file is the teacher's own (trainable) encoder."""
    from transformers import AutoTokenizer, CLIPTextModel, CLIPTextModelWithProjection

    d = Path(directory)
    arch = _architectures(d)
    cls = CLIPTextModel if arch == ["CLIPTextModel"] else CLIPTextModelWithProjection
    _quiet_transformers()
    model = cls.from_pretrained(d)
    if (d / WordTokenizer.FILE).is_file():
        own_trainable = True if trainable is None else trainable
        return TextEncoder(model, WordTokenizer.load(d), source="own", trainable=own_trainable)
    tok = AutoTokenizer.from_pretrained(Path(tokenizer_dir) if tokenizer_dir else d)
    return TextEncoder(model, tok, source=str(d.resolve()), trainable=bool(trainable))


class ImageEncoder(nn.Module):
    def __init__(self, model: nn.Module, source: str, trainable: bool, size: int | None = None,
                 mean=CLIP_MEAN, std=CLIP_STD):
        super().__init__()
        self.model, self.source, self.trainable, self.size = model, source, trainable, size
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)
        self.model.requires_grad_(trainable)

    @property
    def is_clip(self) -> bool:
        return not isinstance(self.model, SmallImageEncoder)

    @property
    def embed_dim(self) -> int:
        cfg = self.model.config
        return int(cfg.projection_dim if self.is_clip else cfg.embed_dim)

    def forward(self, images01: torch.Tensor) -> torch.Tensor:
        """images01 (B, 3, S, S) RGB in [0, 1] -> V(I) (B, E)."""
        if not self.is_clip:
            return self.model(images01 * 2 - 1)
        # CLIP's own preprocessing, done with torch ops so it runs batched on the device
        x = F.interpolate(images01, size=(self.size, self.size), mode="bicubic", align_corners=False).clamp(0, 1)
        x = (x - self.mean.to(x.dtype)) / self.std.to(x.dtype)
        return self.model(pixel_values=x).image_embeds

    def save(self, directory: str | Path) -> None:
        _quiet_transformers()
        self.model.save_pretrained(directory)
        if self.is_clip:  # keep CLIP's preprocessing beside the weights
            Path(directory, "preprocessor_config.json").write_text(json.dumps(
                {"image_mean": self.mean.flatten().tolist(), "image_std": self.std.flatten().tolist(),
                 "crop_size": {"height": self.size, "width": self.size}}, indent=1))


def own_image_encoder(cfg: dict, meta: bool = False) -> ImageEncoder:
    with torch.device("meta" if meta else "cpu"):
        model = SmallImageEncoder(widths=tuple(cfg["widths"]), embed_dim=int(cfg["embed_dim"]))
    return ImageEncoder(model, source="own", trainable=True)


def load_image_encoder(directory: str | Path, trainable: bool | None = None) -> ImageEncoder:
    """A transformers CLIPVisionModelWithProjection (frozen), or the teacher's own SmallImageEncoder."""
    d = Path(directory)
    cfg = json.loads((d / "config.json").read_text()) if (d / "config.json").is_file() else {}
    if cfg.get("_class_name") == "SmallImageEncoder":
        return ImageEncoder(SmallImageEncoder.from_pretrained(d, low_cpu_mem_usage=False), source="own",
                            trainable=True if trainable is None else trainable)
    from transformers import CLIPVisionModelWithProjection

    arch = _architectures(d)
    if arch and "CLIPVisionModelWithProjection" not in arch:
        raise ContractError(f"{d}: image encoder must be a CLIPVisionModelWithProjection, found {arch}")
    _quiet_transformers()
    model = CLIPVisionModelWithProjection.from_pretrained(d)
    mean, std = CLIP_MEAN, CLIP_STD
    pp = d / "preprocessor_config.json"
    if pp.is_file():
        p = json.loads(pp.read_text())
        mean, std = tuple(p.get("image_mean", mean)), tuple(p.get("image_std", std))
    return ImageEncoder(model, source=str(d.resolve()), trainable=bool(trainable),
                        size=int(model.config.image_size), mean=mean, std=std)
