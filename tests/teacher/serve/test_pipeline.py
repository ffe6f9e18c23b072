"""teacher serve with the real tiny TeacherPipeline (random teacher + memory bank, saved as a checkpoint)."""
from __future__ import annotations

import numpy as np
import pytest
import zmq

pytest.importorskip("torch")

from runtime.contracts.verdict import Verdict  # noqa: E402
from teacher.serve import ServeConfig, TeacherServer  # noqa: E402
from teacher.serve.bench import ServeClient  # noqa: E402

TIMEOUT_MS = 60_000


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    from teacher.bank import fit_bank
    from teacher.checkpoint import build_random_teacher, save_teacher

    ckpt = tmp_path_factory.mktemp("serve") / "ckpt"
    teacher = build_random_teacher("tiny", seed=0)
    save_teacher(teacher, ckpt, config={"note": "random tiny teacher for the serve test"})
    rng = np.random.default_rng(0)
    good = [np.clip(rng.normal(120, 10, (64, 64, 3)), 0, 255).astype(np.uint8) for _ in range(4)]
    fit_bank(teacher, good, budget=64).save(ckpt / "bank")
    return ckpt


def test_real_tiny_pipeline_is_served_batched(tiny_checkpoint):
    from teacher.pipeline import TeacherPipeline

    expected_hash = TeacherPipeline.load(tiny_checkpoint).model_hash
    rng = np.random.default_rng(1)
    frames = [np.clip(rng.normal(120, 10, (64, 80, 3)), 0, 255).astype(np.uint8) for _ in range(3)]
    frames[2][20:40, 30:50] = 255  # a planted bright patch
    ctx = zmq.Context()
    cfg = ServeConfig(model=str(tiny_checkpoint), bind="tcp://127.0.0.1:*", max_batch=4, max_wait_ms=200)
    try:
        with TeacherServer(cfg) as srv:
            clients = [ServeClient(srv.endpoint, ctx, timeout_ms=TIMEOUT_MS) for _ in frames]
            try:
                from runtime.contracts.protocol import image_frames

                for k, (c, f) in enumerate(zip(clients, frames)):
                    c.send(image_frames("infer", f, "png", frame_id=f"real{k}", want_mask=True))
                replies = [c.recv() for c in clients]
                st = clients[0].status(TIMEOUT_MS)
            finally:
                for c in clients:
                    c.close()
    finally:
        ctx.destroy(linger=0)
    for k, r in enumerate(replies):
        assert r is not None, f"frame {k}: no reply"
        h, parts = r
        assert h["kind"] == "verdict", h
        v = Verdict.from_header(h)
        assert v.frame_id == f"real{k}" and v.decided_by == "teacher" and v.status == "ok"
        assert v.model_hash == expected_hash and np.isfinite(v.score)
        assert v.decision in ("good", "defect")
    assert st["model_hash"] == expected_hash
    assert max(int(k) for k in st["batch_size_histogram"]) > 1


def test_a_worker_that_cannot_load_its_model_fails_start_with_the_reason(tmp_path):
    from teacher.serve import ServeError

    (tmp_path / "not-a-checkpoint").mkdir()
    cfg = ServeConfig(model=str(tmp_path / "not-a-checkpoint"), bind="tcp://127.0.0.1:*", start_timeout_s=120)
    with pytest.raises(ServeError, match="worker 0: .*not-a-checkpoint"):
        TeacherServer(cfg).start()


def test_device_plan_one_gpu_per_worker_process(tmp_path, monkeypatch):
    import torch

    from teacher.serve.server import plan_devices

    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    cfg = ServeConfig(model=str(tmp_path), workers=3)
    assert plan_devices(cfg) == [("cuda:0", "0"), ("cuda:0", "1"), ("cuda:0", "0")]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,5")
    assert [cvd for _, cvd in plan_devices(cfg)] == ["4", "5", "4"]
    cfg_threads = ServeConfig(model=str(tmp_path), workers=3, worker_mode="thread")
    assert plan_devices(cfg_threads) == [("cuda:0", None), ("cuda:1", None), ("cuda:0", None)]
    assert plan_devices(ServeConfig(model=str(tmp_path), workers=2, device="cpu")) == [("cpu", None)] * 2
    assert plan_devices(ServeConfig(model="fake", workers=2)) == [("cpu", None)] * 2
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    assert plan_devices(ServeConfig(model=str(tmp_path), workers=1)) == [("cpu", None)]
    from teacher.serve import ServeError

    with pytest.raises(ServeError, match="no CUDA GPU"):
        plan_devices(ServeConfig(model=str(tmp_path), workers=1, device="cuda"))
