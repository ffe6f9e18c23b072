"""What a serve worker runs: anything with ``predict(list of uint8 RGB images) -> list[Verdict]`` and
``model_hash``. The real one is ``teacher.pipeline.TeacherPipeline``; ``FakeModel`` stands in for it in
tests and benchmarks, with slow / fail / crash flags like zguide's ``ppworker.py``.

A model is named by a spec string so that a spawned worker process can build its own copy:
a checkpoint directory, or ``fake`` / ``fake:delay_ms=20,per_image_ms=2,fail_marker=7,crash_marker=9``.
"""
from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path
from typing import Protocol

import numpy as np

from runtime.contracts.verdict import Region, Verdict

FAKE_PREFIX = "fake"


class ServeModel(Protocol):
    model_hash: str

    def predict(self, images: list[np.ndarray]) -> list[Verdict]: ...


class ModelSpecError(ValueError):
    pass


class FakeModel:
    """A deterministic stand-in for the teacher pipeline.

    score = mean pixel / 255, defect above 0.5, mask = pixels brighter than mid-grey. A batch costs
    ``delay_ms + per_image_ms * len(batch)`` (a GPU batch is cheaper than the same images one by one).
    An image whose first pixel value equals ``fail_marker`` makes the whole batch raise (a model error);
    one equal to ``crash_marker`` kills the process (``os._exit``), as ppworker.py's simulated crash.
    """

    def __init__(self, delay_ms: float = 0.0, per_image_ms: float = 0.0, fail_marker: int = -1,
                 crash_marker: int = -1, hash: str = "fake-v1"):
        self.delay_ms = float(delay_ms)
        self.per_image_ms = float(per_image_ms)
        self.fail_marker = int(fail_marker)
        self.crash_marker = int(crash_marker)
        self.model_hash = hashlib.sha256(f"{hash}".encode()).hexdigest()[:16]
        self.images_seen = 0
        self.batches_seen = 0

    def predict(self, images: list[np.ndarray]) -> list[Verdict]:
        t0 = time.perf_counter()
        for img in images:
            first = int(img.reshape(-1)[0])
            if first == self.crash_marker:
                os._exit(3)  # simulated worker crash: no cleanup, no reply
            if first == self.fail_marker:
                raise RuntimeError(f"fake model failure (fail_marker {self.fail_marker} in the first pixel)")
        delay_s = (self.delay_ms + self.per_image_ms * len(images)) / 1e3
        if delay_s > 0:
            time.sleep(delay_s)
        self.images_seen += len(images)
        self.batches_seen += 1
        out = []
        for img in images:
            grey = img.astype(np.float32).mean(axis=-1) if img.ndim == 3 else img.astype(np.float32)
            amap = grey / 255.0
            score = float(amap.mean())
            mask = amap > 0.5
            regions = []
            if mask.any():
                ys, xs = np.nonzero(mask)
                regions.append(Region(bbox=(int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1),
                                      area=int(mask.sum()), label="anomaly", confidence=1.0,
                                      score=float(amap[mask].max())))
            out.append(Verdict(frame_id="", status="ok", decision="defect" if score > 0.5 else "good",
                               score=score, confidence=min(1.0, abs(score - 0.5) * 2), decided_by="teacher",
                               regions=regions, model_hash=self.model_hash, anomaly_map=amap, mask=mask,
                               latencies_ms={"model_ms": (time.perf_counter() - t0) * 1e3}))
        return out


def parse_fake_spec(spec: str) -> dict:
    _, _, opts = spec.partition(":")
    kw: dict = {}
    for part in filter(None, opts.split(",")):
        key, sep, val = part.partition("=")
        if not sep:
            raise ModelSpecError(f"model spec {spec!r}: {part!r} is not key=value")
        if key in ("delay_ms", "per_image_ms"):
            kw[key] = float(val)
        elif key in ("fail_marker", "crash_marker"):
            kw[key] = int(val)
        elif key == "hash":
            kw[key] = val
        else:
            raise ModelSpecError(f"model spec {spec!r}: unknown option {key!r} "
                                 "(delay_ms, per_image_ms, fail_marker, crash_marker, hash)")
    return kw


def is_fake(spec: str) -> bool:
    return spec == FAKE_PREFIX or spec.startswith(FAKE_PREFIX + ":")


def load_model(spec: str, device: str = "cpu", max_batch: int = 8) -> ServeModel:
    """Build the model a spec names: ``fake[:opts]`` or a teacher checkpoint directory."""
    if is_fake(spec):
        return FakeModel(**parse_fake_spec(spec))
    ckpt = Path(spec)
    if not ckpt.is_dir():
        raise ModelSpecError(f"--checkpoint {spec}: not a directory (or use 'fake[:delay_ms=...]' for a fake model)")
    from teacher.pipeline import TeacherPipeline  # torch: only in the worker that runs the real model

    return TeacherPipeline.load(ckpt, device=device, max_batch=max_batch)
