"""The fitting loop's weight average (distill/trainer.py, `distill fit --ema-decay`)."""
import torch

from distill.embedding import EmbeddingRecipe
from distill.students import create_student
from distill.trainer import fit_student
from runtime.contracts.featurespec import FeatureSpec, LevelSpec

SPEC = FeatureSpec(image_size=64, levels=(LevelSpec("s8", 8, 6), LevelSpec("s16", 16, 6),
                                          LevelSpec("s32", 32, 8), LevelSpec("s64", 64, 8)))
STEPS = 6


def _fit(ema_decay: float, snapshots: list | None = None) -> torch.nn.Module:
    torch.manual_seed(0)
    m = create_student("tiny", spec=SPEC, embedding=EmbeddingRecipe(dim=4))
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (4, 3, SPEC.image_size, SPEC.image_size), dtype=torch.uint8, generator=g)
    targets = {lv.name: torch.randn(4, lv.channels, SPEC.grid(lv), SPEC.grid(lv), generator=g) for lv in SPEC.levels}
    if snapshots is not None:  # the raw weights after every step, read through the optimiser's step hook
        m.register_forward_pre_hook(lambda mod, _: snapshots.append(
            {k: v.detach().clone() for k, v in mod.state_dict().items()}) if mod.training else None)
    fit_student(m, images, targets, mean=(0.5,) * 3, std=(0.25,) * 3, steps=STEPS, batch_size=2, lr=1e-2,
                ema_decay=ema_decay, progress=False)
    return m


def test_the_average_is_the_exponential_average_of_the_steps():
    decay = 0.5
    seen: list[dict] = []
    m = _fit(decay, seen)
    # seen[i] is the state before step i; the state after the last step is the raw student's, not kept
    raw_last = _fit(0.0)
    after = seen[1:] + [raw_last.state_dict()]
    name = next(k for k, v in after[0].items() if v.is_floating_point() and "weight" in k)
    want = after[0][name].clone()
    for s in after[1:]:
        want = decay * want + (1 - decay) * s[name]
    assert torch.allclose(m.state_dict()[name], want, atol=1e-6)
    assert not torch.allclose(m.state_dict()[name], raw_last.state_dict()[name], atol=1e-4)
