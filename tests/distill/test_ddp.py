"""`distill fit` under torchrun: two gloo processes on loopback, DDP over shards of the train split, on the
tiny teacher. It runs, rank 0 writes a run that loads, and the ranks end with the same weights."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.support.teacher_fixtures import make_dataset

pytestmark = pytest.mark.timeout(600)


def test_fit_under_torchrun_trains_ddp_over_shards(tmp_path):
    from distill.fit import weights_digest
    from distill.run import load_run
    from teacher.checkpoint import build_random_teacher, save_teacher

    data = make_dataset(tmp_path / "d")
    ckpt = tmp_path / "ckpt"
    save_teacher(build_random_teacher("tiny"), ckpt, {})
    out = tmp_path / "run"
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    env.pop("CUDA_VISIBLE_DEVICES", None)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "-m", "distill", "fit", "--teacher", str(ckpt), "--data", str(data), "--student", "tiny",
           "--out", str(out), "--steps", "6", "--batch-size", "4", "--noise-draws", "1", "--embed-dim", "16",
           "--bank-budget", "64", "--no-pretrained", "--json"]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=500, env=env, cwd=tmp_path)
    assert p.returncode == 0, p.stderr[-3000:]
    (summary,) = [json.loads(s) for s in p.stdout.splitlines() if s.startswith("{")]  # rank 0 alone reports
    assert summary["run"] == str(out) and summary["world_size"] == 2
    d0, d1 = summary["weights_sha256"]
    assert d0 == d1  # DDP's invariant: the same weights on every rank after training
    assert "rank 0/2: trains on 6 of 12" in p.stderr and "rank 1/2: trains on 6 of 12" in p.stderr

    run = load_run(out)  # a valid run: config, weights and bank, as quantize/export read it
    assert run.bank is not None and len(run.bank) > 0
    assert run.config["train"]["world_size"] == 2
    assert {"threshold", "band", "ood_limit"} <= set(run.config["calibration"])
    assert weights_digest(run.model) == d0  # what rank 0 wrote is what both ranks trained
    assert (out / "metrics.jsonl").read_text().strip()
