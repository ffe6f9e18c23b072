#!/usr/bin/env python3
"""Build a TensorRT plan for a lineside student on the target device (Jetson / GPU PC), from model.onnx.

    python3 build_engine.py ARTIFACT/model.onnx --out ARTIFACT/model.plan --fp16 \
        [--int8 --calib-dir IMAGES --calib-cache calib.cache] [--timing-cache timing.cache] [--workspace-mb 1024]

Plans are tied to the GPU, TensorRT version and JetPack they were built with: build them on the device,
never ship them. INT8 uses TensorRT's own entropy calibration (IInt8EntropyCalibrator2) fed with the
calibration images preprocessed exactly as the edge does (bilinear resize, /255, (x−mean)/std, RGB, from
the artifact's manifest.json); the calibration cache makes a rebuild skip calibration. The timing cache
makes rebuilds fast. Record the plan in the manifest by re-running `distill export` on the device or
copying the file and listing it as models["tensorrt_plan"].

TensorRT and pycuda are imported only when a build runs, so this file parses arguments and batches
calibration data anywhere (tests/distill/test_tensorrt.py).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="build_engine.py", description="ONNX -> TensorRT plan (on the device)")
    p.add_argument("onnx", type=Path)
    p.add_argument("--out", type=Path, required=True, help="plan file to write")
    p.add_argument("--fp16", action="store_true")
    p.add_argument("--int8", action="store_true")
    p.add_argument("--calib-dir", type=Path, default=None, help="images for INT8 calibration")
    p.add_argument("--calib-cache", type=Path, default=None)
    p.add_argument("--calib-batch", type=int, default=8)
    p.add_argument("--calib-max", type=int, default=256, help="calibration images used at most")
    p.add_argument("--timing-cache", type=Path, default=None)
    p.add_argument("--workspace-mb", type=int, default=1024)
    p.add_argument("--manifest", type=Path, default=None, help="manifest.json (default: next to the ONNX file)")
    a = p.parse_args(argv)
    if a.int8 and a.calib_dir is None and (a.calib_cache is None or not a.calib_cache.is_file()):
        p.error("--int8 needs --calib-dir (or an existing --calib-cache)")
    if a.calib_batch < 1:
        p.error("--calib-batch must be >= 1")
    return a


def load_preprocess(manifest: Path) -> dict:
    m = json.loads(Path(manifest).read_text())
    return m["preprocess"]


def preprocess(image_rgb: np.ndarray, pre: dict) -> np.ndarray:
    """The edge's preprocessing (kernels.dispatch.preprocess): (H, W, 3) uint8 RGB -> (3, S, S) float32."""
    import cv2

    s = int(pre["size"])
    x = cv2.resize(image_rgb, (s, s), interpolation=cv2.INTER_LINEAR).astype(np.float32) * np.float32(1 / 255)
    x = (x - np.asarray(pre["mean"], np.float32)) / np.asarray(pre["std"], np.float32)
    return np.ascontiguousarray(x.transpose(2, 0, 1))


class CalibrationBatches:
    """Yields (batch, 3, S, S) float32 arrays of preprocessed images; the last short batch is padded by
    repeating its images (TensorRT wants full batches), and the iterator ends after ``max_images``."""

    def __init__(self, loader, n_images: int, batch: int, max_images: int | None = None):
        self.loader = loader  # index -> (3, S, S) float32
        self.n = n_images if max_images is None else min(n_images, max_images)
        self.batch = batch
        self.pos = 0

    def __len__(self) -> int:
        return (self.n + self.batch - 1) // self.batch

    def next_batch(self) -> np.ndarray | None:
        if self.pos >= self.n:
            return None
        idx = list(range(self.pos, min(self.pos + self.batch, self.n)))
        self.pos += self.batch
        while len(idx) < self.batch:
            idx.append(idx[len(idx) % max(1, len(idx))])
        return np.ascontiguousarray(np.stack([self.loader(i) for i in idx]), np.float32)

    def reset(self) -> None:
        self.pos = 0


def image_batches(calib_dir: Path, pre: dict, batch: int, max_images: int) -> CalibrationBatches:
    import cv2

    files = sorted(p for p in Path(calib_dir).rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise SystemExit(f"{calib_dir}: no calibration images ({', '.join(IMAGE_SUFFIXES)})")

    def load(i: int) -> np.ndarray:
        bgr = cv2.imread(str(files[i]), cv2.IMREAD_COLOR)
        if bgr is None:
            raise SystemExit(f"{files[i]}: cannot decode")
        return preprocess(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), pre)

    return CalibrationBatches(load, len(files), batch, max_images)


def make_calibrator(trt, batches: CalibrationBatches | None, cache: Path | None):
    """IInt8EntropyCalibrator2 fed from ``batches`` (device buffer via pycuda), reading/writing ``cache``."""
    class EntropyCalibrator(trt.IInt8EntropyCalibrator2):
        def __init__(self):
            super().__init__()
            self.batches = batches
            self.cache = cache
            self.device_input = None

        def get_batch_size(self):
            return self.batches.batch if self.batches else 1

        def get_batch(self, names):
            if self.batches is None:
                return None
            b = self.batches.next_batch()
            if b is None:
                return None
            import pycuda.autoinit  # noqa: F401  (creates the CUDA context)
            import pycuda.driver as cuda

            if self.device_input is None:
                self.device_input = cuda.mem_alloc(b.nbytes)
            cuda.memcpy_htod(self.device_input, b)
            return [int(self.device_input)]

        def read_calibration_cache(self):
            if self.cache is not None and self.cache.is_file():
                return self.cache.read_bytes()
            return None

        def write_calibration_cache(self, data):
            if self.cache is not None:
                self.cache.write_bytes(bytes(data))

    return EntropyCalibrator()


def build_engine(onnx_path, plan_path, *, fp16: bool = False, int8: bool = False, calib_dir=None, calib_cache=None,
                 calib_batch: int = 8, calib_max: int = 256, timing_cache=None, workspace_mb: int = 1024,
                 manifest=None) -> Path:
    try:
        import tensorrt as trt
    except ImportError as e:
        raise SystemExit(f"TensorRT is not installed here ({e}); build the plan on the target device "
                         "(JetPack ships it), or use build_engine.sh with trtexec") from None
    onnx_path, plan_path = Path(onnx_path), Path(plan_path)
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)) \
        if hasattr(trt.NetworkDefinitionCreationFlag, "EXPLICIT_BATCH") else builder.create_network(0)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(onnx_path.read_bytes()):
        errs = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise SystemExit(f"{onnx_path}: TensorRT cannot parse it: {errs}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_mb << 20)
    if fp16:
        if not builder.platform_has_fast_fp16:
            print("build_engine: this GPU has no fast FP16; building anyway", file=sys.stderr)
        config.set_flag(trt.BuilderFlag.FP16)
    batches = None
    if int8:
        config.set_flag(trt.BuilderFlag.INT8)
        if calib_dir is not None:
            pre = load_preprocess(manifest or onnx_path.parent / "manifest.json")
            batches = image_batches(Path(calib_dir), pre, calib_batch, calib_max)
        config.int8_calibrator = make_calibrator(trt, batches, Path(calib_cache) if calib_cache else None)
    cache = None
    if timing_cache is not None:
        blob = Path(timing_cache).read_bytes() if Path(timing_cache).is_file() else b""
        cache = config.create_timing_cache(blob)
        config.set_timing_cache(cache, ignore_mismatch=False)
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise SystemExit(f"{onnx_path}: TensorRT build failed (see the log above)")
    plan_path.parent.mkdir(parents=True, exist_ok=True)
    plan_path.write_bytes(bytes(plan))
    if cache is not None:
        Path(timing_cache).write_bytes(bytes(config.get_timing_cache().serialize()))
    print(f"build_engine: wrote {plan_path} ({plan_path.stat().st_size / 1e6:.1f} MB; fp16={fp16}, int8={int8})",
          file=sys.stderr)
    return plan_path


def main(argv=None) -> int:
    a = parse_args(argv)
    build_engine(a.onnx, a.out, fp16=a.fp16, int8=a.int8, calib_dir=a.calib_dir, calib_cache=a.calib_cache,
                 calib_batch=a.calib_batch, calib_max=a.calib_max, timing_cache=a.timing_cache,
                 workspace_mb=a.workspace_mb, manifest=a.manifest)
    return 0


if __name__ == "__main__":
    sys.exit(main())
