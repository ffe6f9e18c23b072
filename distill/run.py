"""A distillation run directory (``distill fit --out RUN``), read by quantize, export and eval.

    RUN/config.json       student name, FeatureSpec, preprocessing, embedding recipe, heads, teacher,
                          dataset, training arguments, scoring, calibration, fidelity
    RUN/student.pt        state_dict (BN unfused; ``model.fused()`` is what is exported)
    RUN/bank.npy          float16 (N, D) coreset of good-image embeddings
    RUN/metrics.jsonl     training log; RUN/curves.png
    RUN/cache/            teacher targets (safetensors), reused by a rerun
    RUN/quantize/         written by ``distill quantize``
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from distill.embedding import EmbeddingRecipe
from distill.students import HeadSpec, create_student
from runtime.contracts.featurespec import FeatureSpec
from runtime.contracts.formats import check_format

RUN_FORMAT = "lineside-distill-run"
RUN_VERSION = 1
CONFIG = "config.json"
WEIGHTS = "student.pt"
BANK = "bank.npy"


@dataclass
class Run:
    dir: Path
    config: dict
    model: torch.nn.Module  # eval mode, unfused
    bank: np.ndarray | None

    @property
    def spec(self) -> FeatureSpec:
        return FeatureSpec.from_dict(self.config["feature_spec"])

    @property
    def size(self) -> int:
        return int(self.config["preprocess"]["size"])

    @property
    def mean(self):
        return tuple(self.config["preprocess"]["mean"])

    @property
    def std(self):
        return tuple(self.config["preprocess"]["std"])


def build_model(config: dict) -> torch.nn.Module:
    spec = FeatureSpec.from_dict(config["feature_spec"])
    heads = tuple(HeadSpec(**h) for h in config.get("heads", []))
    return create_student(config["student"], spec=spec, head_outputs=heads,
                          embedding=EmbeddingRecipe.from_dict(config["embedding"]), ranks=config.get("ranks") or None)


def save_run(run_dir: Path, config: dict, model: torch.nn.Module, bank: np.ndarray | None) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), run_dir / WEIGHTS)
    if bank is not None:
        np.save(run_dir / BANK, bank.astype(np.float16))
    (run_dir / CONFIG).write_text(json.dumps({"format": RUN_FORMAT, "version": RUN_VERSION, **config}, indent=2))


def update_config(run_dir: Path, **fields) -> dict:
    p = Path(run_dir) / CONFIG
    cfg = json.loads(p.read_text())
    cfg.update(fields)
    p.write_text(json.dumps(cfg, indent=2))
    return cfg


def load_run(run_dir: str | Path) -> Run:
    d = Path(run_dir)
    p = d / CONFIG
    if not p.is_file():
        raise FileNotFoundError(f"{d}: not a distill run ({CONFIG} missing; run `distill fit --out {d}`)")
    cfg = json.loads(p.read_text())
    check_format(cfg, str(p), versions=(RUN_VERSION,), fmt=RUN_FORMAT, version_key="version", what="distill run")
    model = build_model(cfg)
    model.load_state_dict(torch.load(d / WEIGHTS, map_location="cpu", weights_only=True))
    bank = np.load(d / BANK).astype(np.float32) if (d / BANK).is_file() else None
    return Run(d, cfg, model.eval(), bank)
