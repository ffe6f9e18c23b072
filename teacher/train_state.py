"""What `teacher train` keeps between runs: the LR schedule, the training state file, the config it
records, and the checks that refuse a resume whose preset, dataset or encoders differ."""
from __future__ import annotations

import json
import math
import random
from pathlib import Path

import torch

from runtime.contracts.formats import ContractError

STATE_FILE = "training_state.pt"


def lr_lambda(base_lr: float, min_lr: float, warmup: int, total: int):
    """Multiplier of base_lr: linear warm-up from min_lr to base_lr, then cosine decay to min_lr
    (paper §11.3: 'Warmup: 5000 steps from 1e-6 to 1e-4. Cosine decay to 1e-6')."""
    lo = min_lr / base_lr

    def f(step: int) -> float:
        if step < warmup:
            return lo + (1 - lo) * step / max(1, warmup)
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return lo + (1 - lo) * 0.5 * (1 + math.cos(math.pi * progress))

    return f


def save_state(out: Path, *, optimizer, scheduler, scaler, step: int, epoch: int, batch: int,
               ema_updates: int, world_size: int, batch_size: int, total_steps: int) -> None:
    state = {
        "world_size": world_size, "batch_size": batch_size, "total_steps": total_steps,
        "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
        "scaler": scaler.state_dict() if scaler is not None else None,
        "step": step, "sampler": {"epoch": epoch, "batch": batch}, "ema_updates": ema_updates,
        "rng": {"torch": torch.get_rng_state(), "python": random.getstate(),
                "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None},
    }
    tmp = out / (STATE_FILE + ".tmp")
    torch.save(state, tmp)
    tmp.replace(out / STATE_FILE)


def load_state(ckpt: Path) -> dict:
    p = ckpt / STATE_FILE
    if not p.is_file():
        raise ContractError(f"{ckpt}: cannot resume, {STATE_FILE} is missing (an inference-only checkpoint?)")
    return torch.load(p, map_location="cpu", weights_only=False)


def restore_rng(state: dict) -> None:
    rng = state["rng"]
    torch.set_rng_state(rng["torch"])
    random.setstate(rng["python"])
    if rng.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])


def resume_mismatches(cfg: dict, expect: dict) -> list[str]:
    """Differences between a checkpoint's recorded run and the run asked for, one line each."""
    out = []
    checks = [("preset", cfg.get("preset"), expect["preset"]),
              ("dataset hash", cfg.get("dataset", {}).get("hash"), expect["dataset_hash"]),
              ("image_size", cfg.get("image_size"), expect["image_size"])]
    for part in ("vae", "text_encoder", "image_encoder"):
        if expect["sources"].get(part) is not None:
            checks.append((f"{part} source", cfg.get("sources", {}).get(part), expect["sources"][part]))
    for what, have, want in checks:
        if have != want:
            out.append(f"{what}: checkpoint has {have!r}, this run asks for {want!r}")
    return out


def check_resume(ckpt: Path, expect: dict) -> dict:
    cfg_path = ckpt / "config.json"
    if not cfg_path.is_file():
        raise ContractError(f"--resume: {ckpt} holds no checkpoint (no config.json)")
    cfg = json.loads(cfg_path.read_text())
    diffs = resume_mismatches(cfg, expect)
    if diffs:
        raise ContractError(f"--resume: {ckpt} does not match this run:\n  " + "\n  ".join(diffs))
    return cfg
