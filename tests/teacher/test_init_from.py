"""`teacher train --init-from`: from a lineside teacher checkpoint (the foundation's route) and from a
diffusers pipeline directory (a Stable Diffusion download's layout), with a tiny pipeline saved by diffusers."""
from __future__ import annotations

import json

import pytest
import torch

from runtime.contracts.formats import ContractError
from teacher.cli import main
from teacher.init_from import init_teacher, source_kind
from teacher.presets import get_preset
from tests.support.teacher_fixtures import make_noise_dataset


def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_noise_dataset(tmp_path_factory.mktemp("d"), 4, seed=3, grid=8, product="plate",
                              caption="a plate with a scratch")


@pytest.fixture(scope="module")
def pipeline_dir(tmp_path_factory):
    """A tiny Stable Diffusion pipeline (x8 AutoencoderKL with 4 latent channels, CLIP text model and
    tokenizer, the tiny preset's U-Net widths) written by diffusers' own save_pretrained."""
    from diffusers import AutoencoderKL, DDPMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    root = tmp_path_factory.mktemp("sd")
    torch.manual_seed(0)
    words = ["a", "plate", "with", "scratch", "good", "surface"]
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1, "!": 2}
    vocab.update({f"{w}</w>": i + 3 for i, w in enumerate(words)})
    (root / "tok").mkdir()
    (root / "tok" / "vocab.json").write_text(json.dumps(vocab))
    (root / "tok" / "merges.txt").write_text("#version: 0.2\n")
    tok = CLIPTokenizer(str(root / "tok" / "vocab.json"), str(root / "tok" / "merges.txt"), model_max_length=16,
                        pad_token="!")
    text = CLIPTextModel(CLIPTextConfig(vocab_size=len(vocab), hidden_size=64, intermediate_size=64,
                                        num_hidden_layers=1, num_attention_heads=2, max_position_embeddings=16,
                                        bos_token_id=0, eos_token_id=1, pad_token_id=2))
    unet_cfg = dict(get_preset("tiny").unet, in_channels=4, out_channels=4)
    unet = UNet2DConditionModel(**unet_cfg)
    vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8, 8, 8, 8),
                        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                        layers_per_block=1, norm_num_groups=4, sample_size=128)
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text, tokenizer=tok, unet=unet, scheduler=DDPMScheduler(clip_sample=False),
                                   safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.save_pretrained(root / "pipe")
    return root / "pipe"


def test_init_from_a_checkpoint_starts_from_its_ema_weights_and_records_it(data, tmp_path):
    base = tmp_path / "foundation"
    assert main(["train", "--preset", "tiny", "--data", str(data), "--out", str(base), "--steps", "3",
                 "--batch-size", "2"]) == 0
    from teacher.checkpoint import load_teacher

    src = load_teacher(base)
    start = init_teacher(base, get_preset("tiny"), 128)
    assert _same_weights(start.unet, src.unet) and _same_weights(start.captioner, src.captioner)
    assert start.text_encoder.tokenizer.words == src.text_encoder.tokenizer.words  # its vocabulary, not the line's
    out = tmp_path / "adapted"
    assert main(["train", "--preset", "tiny", "--data", str(data), "--out", str(out), "--steps", "2",
                 "--batch-size", "2", "--init-from", str(base)]) == 0
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["train"]["init"] == f"from {base.resolve()}"
    assert not _same_weights(load_teacher(out, use_ema=False).unet, src.unet)  # it trained from there


def test_init_from_a_diffusers_pipeline_takes_its_unet_vae_and_text_encoder(data, pipeline_dir, tmp_path):
    from diffusers import AutoencoderKL, UNet2DConditionModel

    from teacher.checkpoint import load_teacher

    assert source_kind(pipeline_dir) == "pipeline"
    start = init_teacher(pipeline_dir, get_preset("tiny"), 128)
    assert _same_weights(start.unet, UNet2DConditionModel.from_pretrained(pipeline_dir / "unet"))
    assert isinstance(start.vae, AutoencoderKL) and start.unet.config.in_channels == 4
    assert not start.text_encoder.trainable and "text_encoder" not in start.trainable_modules()
    out = tmp_path / "ck"
    assert main(["train", "--preset", "tiny", "--data", str(data), "--out", str(out), "--steps", "2",
                 "--batch-size", "2", "--init-from", str(pipeline_dir)]) == 0
    m = load_teacher(out)
    assert isinstance(m.vae, AutoencoderKL) and m.preset_config.vae["latent_channels"] == 4
    assert _same_weights(m.vae, AutoencoderKL.from_pretrained(pipeline_dir / "vae"))  # frozen, carried as is
    assert m.extract_features(torch.rand(1, 3, 128, 128))["s8"].shape == (1, 32, 16, 16)


def test_init_from_refuses_what_it_cannot_use(data, tmp_path, pipeline_dir, capsys):
    with pytest.raises(ContractError, match="neither a lineside teacher checkpoint"):
        source_kind(tmp_path)
    args = ["train", "--preset", "tiny", "--data", str(data), "--out", str(tmp_path / "x"), "--steps", "1"]
    assert main(args + ["--init-from", str(tmp_path)]) == 2
    assert "neither a lineside teacher checkpoint" in capsys.readouterr().err
    assert main(args + ["--init-from", str(pipeline_dir), "--vae", str(pipeline_dir / "vae")]) == 2
    assert "drop --vae" in capsys.readouterr().err
