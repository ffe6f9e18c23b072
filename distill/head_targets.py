"""Targets for the distilled copy of the teacher's mask head (``teacher finetune`` -> CKPT/head).

The head's final-layer outputs on the cached teacher features: class probabilities (B, N, K+1), mask
probabilities (B, N, h0, w0) and the defect-probability map they make (B, 1, h0, w0), turned back into
logits (log p; logit σ) for KL at a temperature. The student gets three outputs, "class_logits",
"mask_logits" and "defect_map"; the edge scores with the last (runtime.scoring.head_probability_map).
"""
from __future__ import annotations

from pathlib import Path

import torch

from distill.students import HeadSpec

KINDS = {"class_logits": "softmax", "mask_logits": "sigmoid", "defect_map": "sigmoid"}


def load_teacher_head(ckpt: str | Path | None):
    if not ckpt or not (Path(ckpt) / "head").is_dir():
        return None
    from teacher.head.model import load_head

    return load_head(Path(ckpt) / "head")


@torch.no_grad()
def head_targets(state, feats: dict[str, torch.Tensor], image_size: int, batch_size: int = 8
                 ) -> tuple[dict[str, torch.Tensor], tuple[HeadSpec, ...]]:
    from teacher.head.model import defect_probability_map, head_outputs

    cls, masks, maps = [], [], []
    n = next(iter(feats.values())).shape[0]
    for s in range(0, n, batch_size):
        p, m = head_outputs(state, {k: v[s:s + batch_size] for k, v in feats.items()})
        cls.append(p.float().clamp_min(1e-8).log())
        masks.append(torch.logit(m.float().clamp(1e-6, 1 - 1e-6)))
        maps.append(torch.logit(defect_probability_map(p.float(), m.float())[:, None].clamp(1e-6, 1 - 1e-6)))
    cls_t, mask_t, map_t = torch.cat(cls), torch.cat(masks), torch.cat(maps)
    q, k1 = cls_t.shape[1:]
    stride = image_size // mask_t.shape[-1]
    # The head's anomaly map itself is a target too: the edge scores with it (runtime.scoring), and one map
    # is far easier for a small student to reproduce than the max over N query masks it comes from.
    specs = (HeadSpec("mask_logits", channels=int(mask_t.shape[1]), stride=int(stride)),
             HeadSpec("class_logits", channels=int(k1), stride=0, queries=int(q)),
             HeadSpec("defect_map", channels=1, stride=int(stride)))
    return {"mask_logits": mask_t, "class_logits": cls_t, "defect_map": map_t}, specs
