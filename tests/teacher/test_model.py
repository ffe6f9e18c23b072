"""Teacher model pieces: presets, the sd15 size, features against the FeatureSpec, determinism,
text/image conditioning, the tokenizer, augmentations, the LR schedule. CPU, tiny preset."""
from __future__ import annotations

import json

import pytest
import torch

from runtime.contracts.featurespec import sd15_feature_spec
from runtime.contracts.formats import ContractError
from teacher.augment import augment
from teacher.checkpoint import build_random_teacher
from teacher.modules import ImplicitCaptioner, WordTokenizer
from teacher.presets import PRESETS, get_preset
from teacher.train_state import lr_lambda


@pytest.fixture(scope="module")
def tiny():
    return build_random_teacher("tiny", seed=0)


def test_sd15_unet_has_the_paper_size_on_meta_device():
    m = build_random_teacher("sd15", meta=True)
    assert sum(p.numel() for p in m.unet.parameters()) == 859_520_964
    assert next(m.unet.parameters()).device.type == "meta"
    assert m.unet.config.cross_attention_dim == 768
    assert m.vae.config.latent_channels == 4
    m.feature_spec.check_compatible(sd15_feature_spec(512))
    # captioner 512 -> 256 -> 768 is the paper's 0.3M (Table 9)
    assert 290_000 < sum(p.numel() for p in m.captioner.parameters()) < 340_000


def test_info_json_reports_param_counts(capsys):
    from teacher.cli import main

    assert main(["info", "--preset", "sd15", "--json"]) == 0
    d = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert d["params"]["unet"] == 859_520_964
    assert [lv["channels"] for lv in d["feature_spec"]["levels"]] == [320, 640, 1280, 1280]


def test_unknown_preset_is_named():
    with pytest.raises(KeyError, match="presets are"):
        get_preset("sd99")
    assert set(PRESETS) >= {"tiny", "sd15"}


def test_tiny_features_match_feature_spec(tiny):
    spec = tiny.feature_spec
    assert spec.image_size == 128 and spec.names == ["s8", "s16", "s32", "s64"] and spec.timestep == 50
    x = torch.rand(3, 3, 128, 128, generator=torch.Generator().manual_seed(1))
    f = tiny.extract_features(x)
    assert list(f) == spec.names
    for lv in spec.levels:
        g = spec.grid(lv)
        assert f[lv.name].shape == (3, lv.channels, g, g)
        assert f[lv.name].dtype == torch.float32
        assert torch.isfinite(f[lv.name]).all()


def test_extraction_is_deterministic_and_seeded(tiny):
    x = torch.rand(2, 3, 128, 128, generator=torch.Generator().manual_seed(2))
    a = tiny.extract_features(x, noise_draws=2, seed=7)
    b = tiny.extract_features(x, noise_draws=2, seed=7)
    c = tiny.extract_features(x, noise_draws=2, seed=8)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.allclose(a["s8"], c["s8"])
    # an image's features do not depend on the rest of its batch
    solo = tiny.extract_features(x[1:], noise_draws=2, seed=7)
    assert torch.allclose(solo["s16"], a["s16"][1:], atol=1e-4, rtol=1e-4)
    # noise_draws=K is the mean of the K single draws (draw k uses seed stream k)
    d0 = tiny.extract_features(x, noise_draws=1, seed=7)
    assert not torch.allclose(d0["s8"], a["s8"])


def test_pixel_noise_option_and_bad_input(tiny):
    x = torch.rand(1, 3, 128, 128)
    f = tiny.extract_features(x, pixel_noise=True)
    assert f["s64"].shape == (1, 64, 2, 2)
    assert not torch.allclose(f["s8"], tiny.extract_features(x)["s8"])
    with pytest.raises(ContractError, match="128"):
        tiny.extract_features(torch.rand(1, 3, 96, 96))


def test_text_and_image_embeddings_share_a_space(tiny):
    e = tiny.embed_texts(["metal plate with scratches", "never seen words"])
    tok = tiny.encode_text(["metal plate"])
    t_imp = tiny.image_condition(torch.rand(2, 3, 128, 128))
    assert e.shape == (2, 64) and t_imp.shape == (2, 64)
    assert tok.shape[0] == 1 and tok.ndim == 3
    assert not torch.allclose(e[0], e[1])


def test_word_tokenizer_is_deterministic_with_hashed_unknowns(tmp_path):
    tok = WordTokenizer.from_texts(["plate with scratch", "good plate"], max_length=8)
    ids, mask = tok(["plate with scratch", "a crack!"])
    assert ids[0, 0] == tok.BOS and ids[0, 4] == tok.EOS and mask[0].sum() == 5
    assert ids[1, 1] == tok.token_id("a") < tok.N_SPECIAL + tok.n_hash  # unknown -> hash bucket
    tok.save(tmp_path)
    ids2, _ = WordTokenizer.load(tmp_path)(["plate with scratch", "a crack!"])
    assert torch.equal(ids, ids2)


def test_captioner_round_trips_through_save_pretrained(tmp_path):
    cap = ImplicitCaptioner(in_dim=8, hidden_dim=4, out_dim=6)
    with torch.no_grad():
        cap.null_embedding.fill_(0.5)
    cap.save_pretrained(tmp_path)
    back = ImplicitCaptioner.from_pretrained(tmp_path, low_cpu_mem_usage=False)
    x = torch.randn(3, 8)
    assert torch.equal(cap(x), back(x)) and torch.equal(back.null(2), torch.full((2, 6), 0.5))


def test_augment_is_seeded_and_in_range():
    x = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    a = augment(x, torch.Generator().manual_seed(3))
    b = augment(x, torch.Generator().manual_seed(3))
    c = augment(x, torch.Generator().manual_seed(4))
    assert a.shape == x.shape and torch.equal(a, b) and not torch.equal(a, c)
    assert a.min() >= 0 and a.max() <= 1


def test_lr_schedule_warmup_then_cosine_to_min():
    f = lr_lambda(1e-4, 1e-6, warmup=10, total=110)
    assert f(0) == pytest.approx(0.01)
    assert f(10) == pytest.approx(1.0)
    assert f(60) == pytest.approx(0.505, rel=1e-3)
    assert f(110) == pytest.approx(0.01) and f(500) == pytest.approx(0.01)


@pytest.mark.slow
def test_sd15_features_match_the_paper_shapes():
    """~30 s and ~5 GB on a CPU: the sd15 hooks give 320/640/1280/1280 channels at strides 8..64."""
    m = build_random_teacher("sd15", image_size=256)
    f = m.extract_features(torch.rand(1, 3, 256, 256))
    assert {k: tuple(v.shape) for k, v in f.items()} == {
        "s8": (1, 320, 32, 32), "s16": (1, 640, 16, 16), "s32": (1, 1280, 8, 8), "s64": (1, 1280, 4, 4)}



def test_step_noise_is_seeded_and_uniform_in_t():
    from teacher.stage1 import StepNoise

    a = StepNoise.draw(torch.Generator().manual_seed(0), 256, (4, 2, 2), 1000, 0.5, 0.1)
    b = StepNoise.draw(torch.Generator().manual_seed(0), 256, (4, 2, 2), 1000, 0.5, 0.1)
    assert torch.equal(a.t, b.t) and torch.equal(a.eps, b.eps) and torch.equal(a.use_text, b.use_text)
    assert a.t.min() >= 0 and a.t.max() < 1000 and a.t.float().std() > 200  # Eq. (5): t ~ U{0..T-1}
    assert 0.35 < a.use_text.float().mean() < 0.65  # Eq. (7)
    assert a.drop.float().mean() < 0.25
