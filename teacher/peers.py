"""Per-frame latency of the detectors a line would run instead of a lineside student (`teacher peers`,
teacher/commands/peers.py).

    teacher peers --size 256 --threads 1 --json

* ``efficientad_s``: anomalib's EfficientAD-S torch model (random init: latency does not depend on the
  weights) exported to ONNX and run in ONNX Runtime, as anomalib deploys it; ``unavailable`` with the
  import error when anomalib (and a torchvision built for this torch) cannot be imported here.
* ``patchcore_lite0``: teacher/reference.py's ``effnet`` detector, PatchCore over ImageNet EfficientNet-Lite0:
  the backbone in torch, ``teacher.bank.patch_embedding``, and the same ``runtime.scoring.score_embedding``
  the edge uses, against a seeded bank of PatchCore's default size for one image's patches
  (``teacher.bank.default_budget``, at least its minimum).

One frame at a time, ``--threads`` intra-op threads, median of ``--runs`` after a warm-up.
`lineside bench edge` runs this as a subprocess and sets the edge path beside it.
"""
from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

from runtime.timing import time_calls

# torch is imported in the timing functions: `teacher peers --help` must not pay for it

PEERS = ("efficientad_s", "patchcore_lite0")
WARMUP = 2


def efficientad_s(size: int, threads: int, runs: int) -> dict:
    import torch

    try:
        from anomalib.models.image.efficient_ad.torch_model import EfficientAdModel
    except Exception as e:  # noqa: BLE001 - any import failure makes the row unavailable, with its reason
        return {"status": "unavailable", "reason": f"anomalib's EfficientAD cannot be imported here ({type(e).__name__}: "
                f"{str(e)[:200]}); it needs `anomalib` and a torchvision whose compiled ops load with this torch"}
    import onnxruntime as ort

    model = EfficientAdModel(teacher_out_channels=384, model_size="small").eval()
    x = torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(0))
    with tempfile.TemporaryDirectory() as td, torch.no_grad():
        path = Path(td) / "efficientad_s.onnx"
        torch.onnx.export(model, (x,), str(path), input_names=["image"], opset_version=17, dynamo=False)
        so = ort.SessionOptions()
        so.intra_op_num_threads, so.inter_op_num_threads = threads, 1
        sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        xn = x.numpy()
        ms = time_calls(lambda: sess.run(None, {"image": xn}), runs, WARMUP)
    return {"status": "ok", "median_ms": float(np.median(ms)), "runtime": "onnxruntime FP32",
            "what": "anomalib EfficientAD-S (random init), ONNX Runtime FP32"}


def patchcore_lite0(size: int, threads: int, runs: int) -> dict:
    import torch

    from teacher.bank import BUDGET_MIN, default_budget, patch_embedding
    from teacher.imagenet import EfficientNetLite0Levels
    from runtime.scoring import embedding_to_queries, score_embedding

    torch.set_num_threads(threads)
    net = EfficientNetLite0Levels(pretrained=True)
    x = torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        q, _ = embedding_to_queries(patch_embedding(net(x)).numpy())
    n = max(BUDGET_MIN, default_budget(len(q)))
    bank = np.random.default_rng(0).standard_normal((n, q.shape[1])).astype(np.float32)

    def frame():
        with torch.no_grad():
            emb = patch_embedding(net(x)).numpy()
        return score_embedding(emb, bank, (size, size))

    backbone = time_calls(lambda: net(x), runs, WARMUP)
    ms = time_calls(frame, runs, WARMUP)
    return {"status": "ok", "median_ms": float(np.median(ms)), "backbone_median_ms": float(np.median(backbone)),
            "bank_rows": n, "bank_dim": int(q.shape[1]), "runtime": "torch FP32",
            "what": "PatchCore over ImageNet EfficientNet-Lite0 (teacher baselines' effnet), torch"}
