"""`teacher …`: the cluster-side commands, `teacher <name>` in teacher/commands/<name>.py (see runtime/cli/dispatch.py)."""
from __future__ import annotations

import sys

from runtime.cli.dispatch import dispatch

COMMANDS = {
    "data": ("teacher.commands.data", "make or import a line dataset (synth, evalset, import)"),
    "info": ("teacher.commands.info", "parameter counts and FeatureSpec of a preset"),
    "train-vae": ("teacher.commands.train_vae", "train the autoencoder on the dataset when no pretrained VAE is given"),
    "train": ("teacher.commands.train", "stage 1: train the diffusion U-Net (torchrun for several GPUs)"),
    "extract": ("teacher.commands.extract", "t=50 features of a dataset as safetensors shards"),
    "generate": ("teacher.commands.generate", "text-guided defect synthesis (DDIM + classifier-free guidance)"),
    "finetune": ("teacher.commands.finetune", "stage 2: train the mask head on frozen t=50 features"),
    "bank": ("teacher.commands.bank", "memory bank of good-image features (good-images-only lines)"),
    "eval": ("teacher.commands.eval", "detection and segmentation metrics, HTML report"),
    "baselines": ("teacher.commands.baselines", "reference PatchCore detectors (pixels, random CNN, ImageNet EfficientNet-Lite0)"),
    "serve": ("teacher.commands.serve", "GPU fallback server for line-side daemons (ZeroMQ)"),
    "bench": ("teacher.commands.bench", "feature-extraction latency and peak memory per image"),
    "peers": ("teacher.commands.peers", "per-frame latency of EfficientAD-S and PatchCore-Lite0 (lineside bench edge)"),
}


def main(argv: list[str] | None = None) -> int:
    return dispatch("teacher", COMMANDS, argv, config_commands=("train",))


if __name__ == "__main__":
    sys.exit(main())
