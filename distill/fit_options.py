"""The options of `distill fit`, each default written once: ``FitOptions``' fields carry the defaults and, in
their metadata, the help line and how the flag parses (distill/commands/fit.py generates the flags from them);
``distill.fit.fit`` takes the object and the run saves it (RUN/config.json ``options``).

Field metadata: ``help`` (None: the dispatcher's shared line, runtime.cli.dispatch.COMMON_HELP), the argparse
keywords ``type``, ``choices``, ``metavar``, ``action``, and ``negate``: a True-by-default switch turned off by
``--no-<name>``. A field without a default is a required flag.
"""
from __future__ import annotations

import argparse
from dataclasses import MISSING, asdict, dataclass, field
from pathlib import Path

from distill.bank import DEFAULT_BANK_BUDGET
from distill.calibrate import DEFAULT_MAX_FALLBACK, DEFAULT_TARGET_AGREEMENT
from distill.students import list_students
from distill.targets import STREAM_ABOVE_BYTES
from runtime.cli.dispatch import fraction, non_negative_float, non_negative_int, positive_int
from runtime.scoring import DEFAULT_BLUR_SIGMA_PX, DEFAULT_K, SCORING_MODES

DEFAULT_EMBED_DIM = 128
# Three pseudo-defects per good train image (distill.data.pseudo_defect_set), as many as the teacher's head is
# trained on (teacher finetune --pseudo-defects 3 in the recipe): a student trained on good images only never
# sees the teacher respond to a defect. On the public evaluation set (128 px, lite0, 800 steps): one plant
# against none lifted student FP32 I-AUROC 0.580 -> 0.647 and AU-PRO 0.470 -> 0.501 (2026-12-03); on the
# 2026-12-04 recipe teacher, mean of seeds 0 and 1, FP32 I-AUROC / AU-PRO 0.694 / 0.534 with one plant,
# 0.710 / 0.514 with two, 0.722 / 0.535 with three (INT8 ORT 0.677 / 0.521 -> 0.702 / 0.523); seed to seed
# the same setting moves I-AUROC by up to 5 pt, so the case is the trend over K and both seeds, not one run.
# Five gave 0.716 / 0.535 (INT8 0.701 / 0.534), no better, with more good parts rejected: three stays.
DEFAULT_PSEUDO_DEFECTS = 3
# The distilled defect map also learns where the defects are known to be (known_masks: none on good images, the
# planted region on pseudo-defects), as the teacher's head itself was trained: the teacher's map is a blurred,
# weaker copy of those masks. On the public evaluation set (128 px, same teacher, lite0, 800 steps, 2026-12-03)
# weight 1 against 0 lifted AU-PRO 0.504 -> 0.543 (FP32), 0.509 -> 0.540 (INT8 ORT), 0.509 -> 0.542 (OpenVINO),
# and escapes 0.78 -> 0.70 (FP32); I-AUROC moved inside its noise (0.671 -> 0.678 FP32, 0.650 -> 0.636 ORT).
DEFAULT_MASK_WEIGHT = 1.0
# Off: a moving average of the student's weights (distill/trainer.py _ema) at 0.99 was measured with no gain
# (2026-12-04 recipe teacher, seeds 0 / 1, FP32 I-AUROC / AU-PRO 0.700 / 0.530 and 0.730 / 0.534 against
# 0.711 / 0.531 and 0.732 / 0.538 without it; INT8 ORT 0.701 / 0.533 and 0.674 / 0.481).
DEFAULT_EMA_DECAY = 0.0


def _opt(default=MISSING, help: str | None = None, **flag):
    return field(default=default, metadata={"help": help, **flag})


@dataclass(kw_only=True)
class FitOptions:
    """Everything `distill fit` is told (the teacher itself is loaded from ``teacher``)."""
    teacher: str = _opt(help="teacher checkpoint directory")
    data: str = _opt(help="dataset manifest.jsonl")
    student: str = _opt("s", f"registry name ({', '.join(list_students())})")
    out: str | Path = _opt(help="run directory to write")
    steps: int = _opt(2000, type=positive_int)
    features: str | None = _opt(None, "read targets from `teacher extract` shards in this directory")
    stream_targets: bool | None = _opt(
        None, "stream the teacher targets from memory-mapped files instead of holding them in RAM "
              f"(default: when they exceed {STREAM_ABOVE_BYTES >> 30} GiB as float32)",
        action=argparse.BooleanOptionalAction)
    batch_size: int = _opt(8, type=int)
    lr: float = _opt(2e-3, type=float)
    noise_draws: int = _opt(4, "teacher noise draws averaged per target", type=int)
    seed: int = _opt(0, type=int)
    embed_dim: int | None = _opt(DEFAULT_EMBED_DIM, "PCA components of the embedding", type=int)
    proj_rank: int | None = _opt(None, "project each level through a frozen rank-R PCA basis of the teacher's "
                                       "features", type=int)
    bank_budget: int = _opt(DEFAULT_BANK_BUDGET, "memory-bank coreset size", type=int)
    scoring: str | None = _opt(
        None, "what the edge scores with: the bank, the distilled head's map, or both averaged in units of their "
              "good-image levels (default: both when the teacher has a head, else bank). On the public evaluation "
              "set head alone localised better (AU-PRO +5 pt) and ranked parts slightly worse (I-AUROC -2 to -4 pt) "
              "than both", choices=SCORING_MODES)
    k: int = _opt(DEFAULT_K, "nearest bank neighbours averaged per location", type=int)
    blur_sigma: float = _opt(DEFAULT_BLUR_SIGMA_PX, "Gaussian blur of the map, px", type=float)
    target_agreement: float = _opt(DEFAULT_TARGET_AGREEMENT, "agreement with the teacher outside the uncertainty "
                                                             "band that sets the band's width", type=float)
    max_fallback: float = _opt(
        DEFAULT_MAX_FALLBACK, "the most of the val frames the band (with the out-of-distribution ones) may send to "
                              "the teacher; the band stops there even when the target agreement is not met, so the "
                              "teacher servers are sized by it", type=fraction, metavar="F")
    mse_weight: float = _opt(1.0, "weight of the MSE term beside the cosine loss", type=float)
    jitter: float = _opt(0.0, "brightness/contrast jitter on the student input", type=float)
    augment: bool = _opt(True, negate=True)
    pseudo_defects: int = _opt(
        DEFAULT_PSEUDO_DEFECTS, "train also on K pseudo-defects planted on every good train image (as `teacher "
                                "finetune --pseudo-defects`), so the student sees the teacher's response to defects, "
                                "not only to good surfaces", type=non_negative_int, metavar="K")
    mask_weight: float = _opt(
        DEFAULT_MASK_WEIGHT, "weight of a BCE that teaches the distilled defect map the masks known on the train "
                             "images (0 on good images, the planted region on pseudo-defects, labelled masks), beside "
                             "the teacher's map; 0 distils the teacher's map alone",
        type=non_negative_float, metavar="W")
    pretrained: bool = _opt(True, "start the backbone from random weights even where it has ImageNet ones (lite0)",
                            negate=True)
    pretrained_lr_scale: float = _opt(1.0, "learning rate of the backbone's pretrained (ImageNet) weights "
                                           "relative to --lr", type=non_negative_float, metavar="F")
    ema_decay: float = _opt(
        DEFAULT_EMA_DECAY, "validate, keep and export an exponential moving average of the weights with this decay "
                           "(0: the weights of the step itself)", type=fraction, metavar="D")
    early_stop: bool = _opt(True, "keep the last weights instead of those with the best held-out (val) cosine",
                            negate=True)

    def to_dict(self) -> dict:
        """As the run's config.json records it (paths as text)."""
        return {k: str(v) if isinstance(v, Path) else v for k, v in asdict(self).items()}
