"""Two-process DDP training on the CPU (gloo) through torchrun, as a cluster runs it: both ranks
train, rank 0 alone logs and saves, and the saved checkpoint loads."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.support.teacher_fixtures import make_noise_dataset


def test_two_process_gloo_ddp_trains_and_saves_once(tmp_path):
    data = make_noise_dataset(tmp_path / "d", 8, seed=0, grid=16, product="tile")
    out = tmp_path / "ck"
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    env.pop("CUDA_VISIBLE_DEVICES", None)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "-m", "teacher", "train", "--preset", "tiny", "--data", str(data), "--out", str(out),
           "--steps", "3", "--batch-size", "2", "--device", "cpu", "--json"]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=240, env=env, cwd=tmp_path)
    assert p.returncode == 0, p.stderr[-3000:]
    summaries = [json.loads(s) for s in p.stdout.splitlines() if s.startswith("{")]
    assert len(summaries) == 1  # only rank 0 reports
    assert summaries[0]["step"] == 3
    rows = (out / "metrics.jsonl").read_text().splitlines()
    assert len(rows) == 3  # only rank 0 logs
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["world_size"] == 2 and cfg["global_batch_size"] == 4 and cfg["step"] == 3
    from teacher.checkpoint import load_teacher

    assert load_teacher(out).checkpoint_hash == cfg["checkpoint_hash"]


def test_slurm_script_launches_torchrun_across_nodes():
    script = Path(__file__).resolve().parents[2] / "deploy" / "slurm" / "teacher_train.sbatch"
    text = script.read_text()
    assert subprocess.run(["bash", "-n", str(script)], capture_output=True).returncode == 0
    for needle in ("#SBATCH --gpus-per-node=8", "srun", "torchrun", "--rdzv-backend c10d",
                   "--nnodes \"$SLURM_JOB_NUM_NODES\"", "-m teacher train", "--resume"):
        assert needle in text, needle
