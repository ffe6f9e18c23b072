"""Pretrained parts from local directories in their libraries' formats (diffusers AutoencoderKL,
transformers CLIP text / vision with projection + tokenizer): loaded frozen, recorded in the
checkpoint, carried into it unchanged; a resume with other parts is refused. Small random configs."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from teacher.checkpoint import build_random_teacher, load_teacher
from teacher.cli import main
from teacher.modules import paper_init_
from tests.support.teacher_fixtures import make_noise_dataset


@pytest.fixture(scope="module")
def parts(tmp_path_factory) -> dict[str, Path]:
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import (CLIPTextConfig, CLIPTextModelWithProjection, CLIPVisionConfig,
                              CLIPVisionModelWithProjection, PreTrainedTokenizerFast)

    from teacher.latent import build_autoencoder
    from teacher.presets import get_preset

    root = tmp_path_factory.mktemp("pretrained")
    torch.manual_seed(0)
    vocab = {"[PAD]": 0, "[UNK]": 1, "<s>": 2, "</s>": 3, "a": 4, "plate": 5, "with": 6, "scratch": 7}
    tk = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    text = CLIPTextModelWithProjection(CLIPTextConfig(
        vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
        max_position_embeddings=16, projection_dim=64, pad_token_id=0, bos_token_id=2, eos_token_id=3))
    text.save_pretrained(root / "text")
    PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="[PAD]", unk_token="[UNK]",
                            model_max_length=16).save_pretrained(root / "text")
    vision = CLIPVisionModelWithProjection(CLIPVisionConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, image_size=32,
        patch_size=8, projection_dim=48))
    vision.save_pretrained(root / "vision")
    # The tiny preset's own autoencoder, saved as a diffusers directory (an AutoencoderKL one is loaded by
    # test_teacher_train.py::test_train_vae_then_train_with_it).
    build_autoencoder(get_preset("tiny").vae).save_pretrained(root / "vae")
    return {"text": root / "text", "vision": root / "vision", "vae": root / "vae"}


def test_pretrained_parts_are_frozen_recorded_and_carried(parts, tmp_path, capsys):
    data = make_noise_dataset(tmp_path / "d", 6, seed=1, grid=8, product="plate", caption="a plate with a scratch")
    out = tmp_path / "ck"
    args = ["train", "--preset", "tiny", "--data", str(data), "--out", str(out), "--steps", "2", "--batch-size", "2",
            "--vae", str(parts["vae"]), "--text-encoder", str(parts["text"]), "--image-encoder", str(parts["vision"])]
    assert main(args) == 0
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["sources"] == {"vae": str(parts["vae"].resolve()), "text_encoder": str(parts["text"].resolve()),
                              "image_encoder": str(parts["vision"].resolve())}
    assert cfg["ema_parts"] == ["captioner", "unet"]  # frozen encoders are not trained, so not averaged
    for part, src in (("text_encoder", parts["text"] / "model.safetensors"),
                      ("image_encoder", parts["vision"] / "model.safetensors")):
        a, b = load_file(str(src)), load_file(str(out / part / "model.safetensors"))
        assert all(torch.equal(a[k], b[k]) for k in a), f"{part} changed during training"
    m = load_teacher(out)
    assert m.captioner.config.in_dim == 48 and m.image_encoder.is_clip
    assert m.embed_texts(["a plate with scratch"]).shape == (1, 64)
    f = m.extract_features(torch.rand(1, 3, 128, 128))
    assert f["s8"].shape == (1, 32, 16, 16)
    # a resume that names another text encoder is refused, naming the part
    other = tmp_path / "other_text"
    shutil.copytree(parts["text"], other)
    bad = [a if a != str(parts["text"]) else str(other) for a in args]
    assert main(bad + ["--resume", "--steps", "3"]) == 2
    assert "text_encoder source" in capsys.readouterr().err


def test_mismatched_pretrained_dims_are_refused(parts, tmp_path):
    from runtime.contracts.formats import ContractError

    # a CLIP text projection of 64 fits tiny (cross_attention_dim 64) but not sd15 (768)
    with pytest.raises(ContractError, match="cross_attention_dim"):
        build_random_teacher("sd15", meta=True, text_encoder_dir=str(parts["text"]))


def test_paper_init_is_he_for_conv_and_xavier_for_linear():
    m = paper_init_(torch.nn.Sequential(torch.nn.Conv2d(64, 64, 3), torch.nn.Linear(256, 128)))
    conv, lin = m[0], m[1]
    assert conv.weight.std().item() == pytest.approx((2 / (64 * 9)) ** 0.5, rel=0.05)
    assert lin.weight.abs().max().item() <= (6 / (256 + 128)) ** 0.5
    assert lin.weight.std().item() == pytest.approx((2 / (256 + 128)) ** 0.5, rel=0.05)
    assert conv.bias.abs().max() == 0
    t = build_random_teacher("tiny", init="paper")
    assert t.info["init"] == "paper"
