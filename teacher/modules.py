"""The teacher's own small modules: the implicit captioner (paper Eq. 6), the image encoder used when
no pretrained CLIP vision model is given, and a hub-free word tokenizer for the own text transformer.

The nn.Modules subclass diffusers' ModelMixin/ConfigMixin with @register_to_config, so their
config.json travels with the safetensors weights and ``from_pretrained`` round-trips.
"""
from __future__ import annotations

import json
import re
import zlib
from pathlib import Path

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn


@torch.no_grad()
def paper_init_(module: nn.Module) -> nn.Module:
    """Paper §11.3: 'U-Net trained from random initialization (He for conv, Xavier for linear)'.
    Norm layers keep their (1, 0) init; biases start at zero."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
        elif isinstance(m, nn.Linear):
            nn.init.xavier_uniform_(m.weight)
        else:
            continue
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    return module


class ImplicitCaptioner(ModelMixin, ConfigMixin):
    """t_imp = W2 · GELU(W1 · V(I) + b1) + b2 (paper Eq. 6), plus the learned null embedding that
    classifier-free guidance conditions on when the condition is dropped."""

    @register_to_config
    def __init__(self, in_dim: int = 512, hidden_dim: int = 256, out_dim: int = 768):
        super().__init__()
        self.fc1 = nn.Linear(in_dim, hidden_dim)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_dim, out_dim)
        self.null_embedding = nn.Parameter(torch.zeros(out_dim))

    def forward(self, image_embeds: torch.Tensor) -> torch.Tensor:
        # Eq. (6): (B, in_dim) -> (B, out_dim), lands in the text-embedding space of e_T
        return self.fc2(self.act(self.fc1(image_embeds)))

    def null(self, batch: int) -> torch.Tensor:
        return self.null_embedding[None].expand(batch, -1)


class SmallImageEncoder(ModelMixin, ConfigMixin):
    """V(I) when no pretrained CLIP vision encoder is given: strided conv stages, global average and
    max pooling, a linear projection to ``embed_dim``. Input (B, 3, S, S) in [-1, 1]; trained jointly."""

    @register_to_config
    def __init__(self, widths: tuple[int, ...] = (64, 128, 256, 512), embed_dim: int = 512, groups: int = 8):
        super().__init__()
        layers, c_in = [], 3
        for w in widths:
            layers += [nn.Conv2d(c_in, w, 3, stride=2, padding=1), nn.GroupNorm(min(groups, w), w), nn.SiLU()]
            c_in = w
        self.body = nn.Sequential(*layers)
        self.proj = nn.Linear(2 * c_in, embed_dim)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        h = self.body(images)  # (B, widths[-1], S/16, S/16)
        pooled = torch.cat([h.mean(dim=(2, 3)), h.amax(dim=(2, 3))], dim=1)
        return self.proj(pooled)  # (B, embed_dim)


class WordTokenizer:
    """Deterministic, hub-free word tokenizer for the own text transformer.

    ids: 0 pad, 1 bos, 2 unused (CLIP's legacy argmax-pooling id), 3 eos, then ``n_hash`` buckets for
    words outside the vocabulary (crc32, so an unseen category name still maps to the same ids
    everywhere), then the vocabulary built from the training captions. Saved as JSON beside the
    text encoder's weights.
    """

    FILE = "lineside_tokenizer.json"
    PAD, BOS, EOS = 0, 1, 3
    N_SPECIAL = 4

    def __init__(self, words: list[str], max_length: int = 77, n_hash: int = 64):
        self.words = list(words)
        self.max_length = int(max_length)
        self.n_hash = int(n_hash)
        self._index = {w: self.N_SPECIAL + self.n_hash + i for i, w in enumerate(self.words)}

    @staticmethod
    def split(text: str) -> list[str]:
        return re.findall(r"[a-z0-9]+", text.lower())

    @classmethod
    def from_texts(cls, texts: list[str], max_length: int = 77, n_hash: int = 64) -> "WordTokenizer":
        vocab = sorted({w for t in texts for w in cls.split(t)})
        return cls(vocab, max_length=max_length, n_hash=n_hash)

    @property
    def vocab_size(self) -> int:
        return self.N_SPECIAL + self.n_hash + len(self.words)

    def token_id(self, word: str) -> int:
        i = self._index.get(word)
        if i is None:
            i = self.N_SPECIAL + zlib.crc32(word.encode()) % self.n_hash
        return i

    def __call__(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """(input_ids, attention_mask), both (B, max_length) long; bos … eos, padded with 0."""
        ids = torch.full((len(texts), self.max_length), self.PAD, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for b, t in enumerate(texts):
            toks = [self.BOS] + [self.token_id(w) for w in self.split(t)][: self.max_length - 2] + [self.EOS]
            ids[b, : len(toks)] = torch.tensor(toks)
            mask[b, : len(toks)] = 1
        return ids, mask

    def save(self, directory: str | Path) -> None:
        Path(directory, self.FILE).write_text(json.dumps(
            {"kind": "word", "words": self.words, "max_length": self.max_length, "n_hash": self.n_hash}, indent=1))

    @classmethod
    def load(cls, directory: str | Path) -> "WordTokenizer":
        d = json.loads(Path(directory, cls.FILE).read_text())
        return cls(d["words"], max_length=d["max_length"], n_hash=d["n_hash"])
