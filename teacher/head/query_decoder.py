"""Mask2Former transformer decoder (§4.6): N learnable queries, L layers of masked cross-attention to
the pixel decoder's multi-scale maps (round-robin), self-attention and FFN; after every layer the
queries predict a mask (dot product with the per-pixel embeddings) and an embedding z_i in the text
space (classified in ``model.py``, Eq. 12)."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def sine_position_embedding(h: int, w: int, dim: int, device, dtype) -> torch.Tensor:
    """DETR's 2-D sine embedding, (h*w, dim)."""
    npf = dim // 2
    y = torch.arange(h, device=device, dtype=torch.float32)[:, None].expand(h, w) / max(h, 1) * 2 * math.pi
    x = torch.arange(w, device=device, dtype=torch.float32)[None, :].expand(h, w) / max(w, 1) * 2 * math.pi
    dim_t = 10000 ** (2 * (torch.arange(npf, device=device) // 2) / npf)
    px, py = x.reshape(-1, 1) / dim_t, y.reshape(-1, 1) / dim_t
    px = torch.stack((px[:, 0::2].sin(), px[:, 1::2].cos()), dim=2).flatten(1)
    py = torch.stack((py[:, 0::2].sin(), py[:, 1::2].cos()), dim=2).flatten(1)
    pos = torch.cat((py, px), dim=1)
    if pos.shape[1] < dim:
        pos = F.pad(pos, (0, dim - pos.shape[1]))
    return pos.to(dtype)


class DecoderLayer(nn.Module):
    """Masked cross-attention -> self-attention -> FFN, post-norm as Mask2Former."""

    def __init__(self, dim: int, nheads: int, ffn_dim: int, dropout: float = 0.0):
        super().__init__()
        self.cross = nn.MultiheadAttention(dim, nheads, dropout=dropout, batch_first=True)
        self.self_attn = nn.MultiheadAttention(dim, nheads, dropout=dropout, batch_first=True)
        self.ffn = nn.Sequential(nn.Linear(dim, ffn_dim), nn.ReLU(), nn.Linear(ffn_dim, dim))
        self.n1, self.n2, self.n3 = nn.LayerNorm(dim), nn.LayerNorm(dim), nn.LayerNorm(dim)

    def forward(self, q, qpos, mem, mpos, attn_mask):
        q = self.n1(q + self.cross(q + qpos, mem + mpos, mem, attn_mask=attn_mask, need_weights=False)[0])
        qk = q + qpos
        q = self.n2(q + self.self_attn(qk, qk, q, need_weights=False)[0])
        return self.n3(q + self.ffn(q))


class QueryDecoder(nn.Module):
    def __init__(self, hidden_dim: int, mask_dim: int, embed_dim: int, num_queries: int = 100,
                 num_layers: int = 9, nheads: int = 8, ffn_dim: int = 2048, num_levels: int = 3):
        super().__init__()
        self.nheads = nheads
        self.num_levels = num_levels
        self.query_feat = nn.Embedding(num_queries, hidden_dim)
        self.query_pos = nn.Embedding(num_queries, hidden_dim)
        self.level_embed = nn.Embedding(num_levels, hidden_dim)
        self.layers = nn.ModuleList(DecoderLayer(hidden_dim, nheads, ffn_dim) for _ in range(num_layers))
        self.norm = nn.LayerNorm(hidden_dim)
        self.mask_embed = nn.Sequential(nn.Linear(hidden_dim, hidden_dim), nn.ReLU(),
                                        nn.Linear(hidden_dim, hidden_dim), nn.ReLU(), nn.Linear(hidden_dim, mask_dim))
        self.class_embed = nn.Linear(hidden_dim, embed_dim)  # z_i, compared with text embeddings (Eq. 12)

    def _predict(self, q, mask_features, target_hw):
        qn = self.norm(q)
        masks = torch.einsum("bqc,bchw->bqhw", self.mask_embed(qn), mask_features)  # (B, N, h0, w0) logits
        z = self.class_embed(qn)  # (B, N, D)
        attn = None
        if target_hw is not None:
            # Masked attention: a query attends only where its current mask is foreground (sigmoid >= 0.5).
            m = F.interpolate(masks.detach().float(), size=target_hw, mode="bilinear", align_corners=False)
            attn = (m.sigmoid().flatten(2) < 0.5)  # (B, N, hw) True = blocked
            attn[attn.all(-1)] = False  # a query with an empty mask sees everything
            attn = attn.repeat_interleave(self.nheads, dim=0)  # (B*heads, N, hw)
        return masks, z, attn

    def forward(self, multi: list[torch.Tensor], mask_features: torch.Tensor) -> list[dict]:
        """multi: coarse-to-fine maps (B, C, h, w). Returns one {"masks", "embeds"} per prediction:
        before the first layer and after each layer (the last is the final output; the others are
        the auxiliary deep-supervision outputs)."""
        b = mask_features.shape[0]
        mem, pos, sizes = [], [], []
        for i, x in enumerate(multi[: self.num_levels]):
            h, w = x.shape[-2:]
            sizes.append((h, w))
            pos.append(sine_position_embedding(h, w, x.shape[1], x.device, x.dtype)[None].expand(b, -1, -1))
            mem.append(x.flatten(2).transpose(1, 2) + self.level_embed.weight[i][None, None])
        n_lv = len(mem)
        q = self.query_feat.weight[None].expand(b, -1, -1)
        qpos = self.query_pos.weight[None].expand(b, -1, -1)
        outs = []
        masks, z, attn = self._predict(q, mask_features, sizes[0])
        outs.append({"masks": masks, "embeds": z})
        for i, layer in enumerate(self.layers):
            lv = i % n_lv
            q = layer(q, qpos, mem[lv], pos[lv], attn)
            masks, z, attn = self._predict(q, mask_features, sizes[(i + 1) % n_lv])
            outs.append({"masks": masks, "embeds": z})
        return outs
