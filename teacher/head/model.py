"""MaskHead: Mask2Former-style mask generator on the frozen t=50 features (§4.6, Table 9), open-vocabulary.

Saved with ``save_pretrained(CKPT/head)`` (config.json + diffusion_pytorch_model.safetensors) plus
``vocab.json`` (category names, the text embeddings they were classified against, the calibrated
decision threshold): see ``save_head`` / ``load_head``. At test time any vocabulary can be set: class
scores are cosine similarities of query embeddings with text embeddings of the names over τ (Eq. 12).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import ConfigMixin, ModelMixin
from diffusers.configuration_utils import register_to_config
from safetensors.torch import load_file, save_file
from torch import nn

from teacher.head.pixel_decoder import FPNPixelDecoder
from teacher.head.query_decoder import QueryDecoder

VOCAB_FILE = "vocab.json"
TEXT_EMB_FILE = "text_embeddings.safetensors"

# Table 9 sizes for the full model; "tiny" keeps the structure at CPU-test scale.
HEAD_PRESETS = {
    "sd15": dict(hidden_dim=256, mask_dim=256, num_queries=100, num_layers=9, nheads=8, ffn_dim=2048),
    "tiny": dict(hidden_dim=64, mask_dim=64, num_queries=16, num_layers=3, nheads=4, ffn_dim=128),
}


def head_preset(name: str) -> dict:
    return dict(HEAD_PRESETS.get(name, HEAD_PRESETS["sd15"]))


class MaskHead(ModelMixin, ConfigMixin):
    config_name = "config.json"

    @register_to_config
    def __init__(self, level_names: tuple = ("s8", "s16", "s32", "s64"), in_channels: tuple = (320, 640, 1280, 1280),
                 embed_dim: int = 768, hidden_dim: int = 256, mask_dim: int = 256, num_queries: int = 100,
                 num_layers: int = 9, nheads: int = 8, ffn_dim: int = 2048, temperature: float = 0.07,
                 image_size: int = 512, feature_spec: dict | None = None):
        super().__init__()
        self.level_names = list(level_names)
        self.pixel_decoder = FPNPixelDecoder(list(in_channels), hidden_dim, mask_dim)
        self.query_decoder = QueryDecoder(hidden_dim, mask_dim, embed_dim, num_queries, num_layers, nheads, ffn_dim,
                                          num_levels=max(1, len(in_channels) - 1))
        # Learnable "no object" embedding, scored like one more category (Mask2Former's ∅ class).
        self.no_object = nn.Parameter(torch.randn(embed_dim) * 0.02)
        self.tau = temperature

    def forward(self, features: dict[str, torch.Tensor], text_emb: torch.Tensor | None = None) -> list[dict]:
        """features level -> (B, C, h, w) -> list of {"masks": (B, N, h0, w0) logits, "embeds": (B, N, D)}
        (+ "logits" (B, N, K+1) when ``text_emb`` (K, D) is given); the last entry is the output, the
        others auxiliary (deep supervision)."""
        feats = [features[n].to(self.dtype) for n in self.level_names]
        mask_features, multi = self.pixel_decoder(feats)
        outs = self.query_decoder(multi, mask_features)
        if text_emb is not None:  # inside forward, so DDP sees the no-object embedding used
            for o in outs:
                o["logits"] = self.class_logits(o["embeds"], text_emb)
        return outs

    def class_logits(self, embeds: torch.Tensor, text_emb: torch.Tensor) -> torch.Tensor:
        """Eq. (12): z_i·Tᵀ/τ with L2-normalised z and T, plus the no-object column -> (B, N, K+1)."""
        z = F.normalize(embeds.float(), dim=-1)
        t = F.normalize(torch.cat([text_emb.float().to(z.device), self.no_object.float()[None]], 0), dim=-1)
        return z @ t.T / self.tau


@dataclass
class HeadState:
    """A loaded head with its vocabulary."""
    head: MaskHead
    vocabulary: list[str]
    text_emb: torch.Tensor  # (K, D) embeddings of the vocabulary
    threshold: float = 0.5  # head anomaly-map level for defect decisions and regions (calibrated on val)
    min_region_px: int = 16
    info: dict | None = None


def save_head(out_dir: str | Path, state: HeadState) -> Path:
    out = Path(out_dir)
    state.head.save_pretrained(out)
    save_file({"text_emb": state.text_emb.detach().float().cpu().contiguous()}, str(out / TEXT_EMB_FILE))
    (out / VOCAB_FILE).write_text(json.dumps({
        "vocabulary": state.vocabulary, "threshold": state.threshold,
        "min_region_px": state.min_region_px, "info": state.info or {}}, indent=2))
    return out


def load_head(head_dir: str | Path, device: str | torch.device = "cpu") -> HeadState:
    d = Path(head_dir)
    for f in ("config.json", VOCAB_FILE, TEXT_EMB_FILE):
        if not (d / f).is_file():
            raise FileNotFoundError(f"{d}: mask head is incomplete, {f} is missing (run `teacher finetune`)")
    head = MaskHead.from_pretrained(str(d), low_cpu_mem_usage=False).to(device).eval()
    meta = json.loads((d / VOCAB_FILE).read_text())
    text_emb = load_file(str(d / TEXT_EMB_FILE))["text_emb"].to(device)
    return HeadState(head=head, vocabulary=list(meta["vocabulary"]), text_emb=text_emb,
                     threshold=float(meta.get("threshold", 0.5)),
                     min_region_px=int(meta.get("min_region_px", 16)), info=meta.get("info", {}))


@torch.no_grad()
def head_outputs(state: HeadState, features: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """-> (class probabilities (B, N, K+1), mask probabilities (B, N, h0, w0)) from the final layer."""
    out = state.head(features)[-1]
    probs = state.head.class_logits(out["embeds"], state.text_emb).softmax(-1)
    return probs, out["masks"].float().sigmoid()


def defect_probability_map(probs: torch.Tensor, mask_probs: torch.Tensor) -> torch.Tensor:
    """Per-pixel defect probability max_i (1 − p_i(∅)) · σ(m_i) -> (B, h0, w0): the head's anomaly map."""
    s = 1.0 - probs[..., -1]  # (B, N)
    return (s[..., None, None] * mask_probs).amax(1)


def regions_from_queries(probs: np.ndarray, mask_probs: np.ndarray, vocabulary: list[str], image_hw: tuple[int, int],
                         threshold: float, min_region_px: int = 16):
    """One image: probs (N, K+1), mask_probs (N, h0, w0) -> list of (mask bool (H, W), label, confidence, peak).

    Regions are defined as the ground truth is: the 8-connected components of the head's anomaly map
    (``defect_probability_map``, upsampled bilinearly to the image) at ``threshold``. Each pixel is owned
    by the query with the largest (1 − p_i(∅))·σ(m_i) there; a component takes the category that owns
    most of its map mass (each owner voting for its best non-∅ category). Confidence = mean map value
    over the component, peak = its maximum. Components under ``min_region_px`` pixels are dropped."""
    import cv2

    h, w = image_hw
    if not vocabulary:
        return []
    obj = 1.0 - probs[:, -1]  # (N,)
    per = obj[:, None, None] * mask_probs  # (N, h0, w0)
    amap = cv2.resize(per.max(0).astype(np.float32), (w, h), interpolation=cv2.INTER_LINEAR)
    owner = cv2.resize(per.argmax(0).astype(np.uint16), (w, h), interpolation=cv2.INTER_NEAREST)
    cat = probs[:, :-1].argmax(1)[owner]  # (H, W) category of each pixel's owner
    n, lab = cv2.connectedComponents((amap >= threshold).astype(np.uint8), connectivity=8)
    out = []
    for c in range(1, n):
        m = lab == c
        if m.sum() < min_region_px:
            continue
        votes = np.bincount(cat[m], weights=amap[m], minlength=len(vocabulary))
        out.append((m, vocabulary[int(votes.argmax())], float(amap[m].mean()), float(amap[m].max())))
    out.sort(key=lambda r: -r[2])
    return out
