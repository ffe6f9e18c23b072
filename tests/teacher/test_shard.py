"""`teacher extract` and `teacher bank` sharded over two gloo processes through torchrun, as a cluster
runs them, against one process on the same tiny checkpoint and data: the same features image for image,
the same bank with ``--merge features``, and with ``--merge coresets`` (a different bank by design) the
covering bound it promises over every patch vector the one-process run sees."""
from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from tests.support.teacher_fixtures import tiny_line

pytestmark = pytest.mark.timeout(600)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("shard")
    data, ckpt = tiny_line(root)
    return root, data, ckpt


def _torchrun(args: list, cwd, nproc: int = 2) -> list[dict]:
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    env.pop("CUDA_VISIBLE_DEVICES", None)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(nproc),
           "-m", "teacher"] + [str(a) for a in args] + ["--device", "cpu", "--json"]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=400, env=env, cwd=cwd)
    assert p.returncode == 0, p.stderr[-3000:]
    return [json.loads(s) for s in p.stdout.splitlines() if s.startswith("{")]


def _teacher(*argv) -> int:
    from teacher.cli import main

    with contextlib.redirect_stdout(io.StringIO()):
        return main([str(a) for a in argv] + ["--device", "cpu"])


def test_sharded_extract_gives_the_one_process_features(tiny):
    from teacher.features_io import load_features, open_features, read_index

    root, data, ckpt = tiny
    one, two = root / "feats-1", root / "feats-2"
    assert _teacher("extract", "--checkpoint", ckpt, "--data", data, "--out", one, "--batch-size", "3",
                    "--shard-size", "4") == 0
    (summary,) = _torchrun(["extract", "--checkpoint", ckpt, "--data", data, "--out", two, "--batch-size", "3",
                            "--shard-size", "4"], root)  # only rank 0 reports
    assert summary["world_size"] == 2 and summary["n"] == len(read_index(one)["records"])
    i1, i2 = read_index(one), read_index(two)
    assert [r["image"] for r in i1["records"]] == [r["image"] for r in i2["records"]]  # manifest order
    files = {sh["file"] for sh in i2["shards"]}
    assert any(f.startswith("features-r000-") for f in files) and any(f.startswith("features-r001-") for f in files)
    _, f1 = load_features(one)
    _, f2 = load_features(two)
    assert list(f1) == list(f2) == ["s8", "s16", "s32", "s64"]
    for k in f1:  # float16 shards: equal up to rounding of batch-size-dependent kernels
        torch.testing.assert_close(f2[k], f1[k], atol=2e-3, rtol=2e-3)
    # the memory-mapped reader reads the same rows, in the same order, without loading the shards
    _, m2 = open_features(two)
    for k in f2:
        assert m2[k].shape == tuple(f2[k].shape)
        assert torch.equal(m2[k][np.arange(len(f2[k]))], f2[k])
        assert torch.equal(m2[k][[5, 0, 3]], f2[k][[5, 0, 3]])
        assert torch.equal(m2[k].select(slice(2, 7))[1:3], f2[k][3:5])


def _bank(d):
    from teacher.bank import MemoryBank

    return MemoryBank.load(d)


def _one_process_vectors(ckpt, data) -> np.ndarray:
    from runtime.contracts.dataset import load_dataset
    from teacher.bank import LazyImages, embed_flat
    from teacher.checkpoint import load_teacher

    ds = load_dataset(data)
    allv, _ = embed_flat(load_teacher(ckpt, device="cpu"), LazyImages(ds, [r for r in ds.split("train")
                                                                         if not r.is_defect]))
    return allv


def test_sharded_bank_with_merged_features_is_the_one_process_bank(tiny):
    root, data, ckpt = tiny
    assert _teacher("bank", "--checkpoint", ckpt, "--data", data, "--budget", "150", "--out", root / "bank-1") == 0
    (summary,) = _torchrun(["bank", "--checkpoint", ckpt, "--data", data, "--budget", "150", "--out",
                            root / "bank-2", "--merge", "features"], root)
    assert summary["world_size"] == 2
    b1, b2 = _bank(root / "bank-1"), _bank(root / "bank-2")
    assert b1.bank.shape == b2.bank.shape == (150, 96)
    np.testing.assert_allclose(b2.bank, b1.bank, atol=2e-3)  # float16 on disk, same vectors in the same order
    assert b2.threshold == pytest.approx(b1.threshold, rel=1e-4)
    assert b2.band == pytest.approx(b1.band, rel=1e-4)
    for key in ("calibration", "n_train_images", "n_patch_vectors", "n_val_good", "n_val_defect"):
        assert b2.info[key] == b1.info[key], key
    assert b2.info["good_score_mean"] == pytest.approx(b1.info["good_score_mean"], rel=1e-4)
    assert b2.info["merge"]["merge"] == "features" and "merge" not in b1.info


def test_sharded_bank_with_merged_coresets_covers_every_patch(tiny):
    root, data, ckpt = tiny
    _torchrun(["bank", "--checkpoint", ckpt, "--data", data, "--budget", "150", "--out", root / "bank-c",
               "--merge", "coresets"], root)
    b = _bank(root / "bank-c")
    m = b.info["merge"]
    assert b.bank.shape == (150, 96) and m["merge"] == "coresets" and m["union_size"] == 300
    allv = _one_process_vectors(ckpt, data)
    d = torch.cdist(torch.from_numpy(b.bank), torch.from_numpy(allv))
    assert float(d.min(1).values.max()) < 5e-3  # every bank vector is one of the line's patch vectors
    # the composable-coreset bound: each patch within its shard's radius plus the final radius
    radius = float(torch.cdist(torch.from_numpy(allv), torch.from_numpy(b.bank)).min(1).values.max())
    assert radius <= max(m["local_radius"]) + m["final_radius_over_union"] + 5e-3
    assert b.info["n_patch_vectors"] == len(allv) and np.isfinite(b.threshold)


def test_slurm_extraction_job_runs_extract_then_bank_under_torchrun():
    from pathlib import Path

    script = Path(__file__).resolve().parents[2] / "deploy" / "slurm" / "teacher_extract.sbatch"
    text = script.read_text()
    assert subprocess.run(["bash", "-n", str(script)], capture_output=True).returncode == 0
    for needle in ("#SBATCH --gpus-per-node=8", "srun", "torchrun", "--rdzv-backend c10d",
                   "--nnodes \"$SLURM_JOB_NUM_NODES\"", "launch extract", "launch bank", "--merge \"$MERGE\""):
        assert needle in text, needle
