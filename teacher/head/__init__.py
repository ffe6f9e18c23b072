"""The stage-2 mask head (§4.6): FPN pixel decoder, masked-attention query decoder, Hungarian matcher,
losses of Eq. (11)–(14), (16)."""
from teacher.head.model import HEAD_PRESETS, HeadState, MaskHead, head_preset, load_head, save_head

__all__ = ["HEAD_PRESETS", "HeadState", "MaskHead", "head_preset", "load_head", "save_head"]
