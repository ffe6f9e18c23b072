"""deploy/tensorrt: what runs without a GPU — argument parsing, calibration batching, preprocessing parity,
the shell script's syntax, and a clear message where TensorRT is missing."""
import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2] / "deploy" / "tensorrt"


@pytest.fixture(scope="module")
def be():
    spec = importlib.util.spec_from_file_location("build_engine", ROOT / "build_engine.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules["build_engine"] = mod
    spec.loader.exec_module(mod)
    return mod


def test_arguments(be, tmp_path):
    a = be.parse_args(["m.onnx", "--out", "m.plan", "--fp16", "--int8", "--calib-dir", str(tmp_path),
                       "--calib-batch", "4", "--timing-cache", "t.cache"])
    assert a.fp16 and a.int8 and a.calib_batch == 4 and a.timing_cache == Path("t.cache")
    with pytest.raises(SystemExit):
        be.parse_args(["m.onnx", "--out", "m.plan", "--int8"])  # INT8 needs calibration data or a cache
    with pytest.raises(SystemExit):
        be.parse_args(["m.onnx"])  # --out is required
    with pytest.raises(SystemExit):
        be.parse_args(["m.onnx", "--out", "p", "--calib-batch", "0"])


def test_calibration_batches_are_full_and_cover_every_image(be):
    seen = []

    def loader(i):
        seen.append(i)
        return np.full((3, 4, 4), i, np.float32)

    b = be.CalibrationBatches(loader, n_images=10, batch=4)
    assert len(b) == 3
    batches = []
    while (x := b.next_batch()) is not None:
        batches.append(x)
    assert [x.shape for x in batches] == [(4, 3, 4, 4)] * 3
    assert sorted(set(seen)) == list(range(10))
    assert set(batches[-1][:, 0, 0, 0].tolist()) <= {8.0, 9.0}  # short batch padded with its own images
    b.reset()
    assert b.next_batch() is not None
    capped = be.CalibrationBatches(loader, n_images=10, batch=4, max_images=5)
    assert len(capped) == 2


def test_calibrator_preprocessing_equals_the_edge(be):
    from kernels import dispatch

    pre = {"size": 32, "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}
    img = np.random.default_rng(0).integers(0, 256, (50, 70, 3), dtype=np.uint8)
    np.testing.assert_allclose(be.preprocess(img, pre)[None], dispatch.preprocess(img, 32, pre["mean"], pre["std"]),
                               rtol=0, atol=1e-6)


def test_image_batches_from_a_folder(be, tmp_path):
    import cv2

    for i in range(3):
        cv2.imwrite(str(tmp_path / f"{i}.png"), np.full((20, 30, 3), 40 * i, np.uint8))
    pre = {"size": 16, "mean": [0, 0, 0], "std": [1, 1, 1]}
    b = be.image_batches(tmp_path, pre, batch=2, max_images=10)
    x = b.next_batch()
    assert x.shape == (2, 3, 16, 16) and x.dtype == np.float32
    assert np.allclose(x[1], 40 / 255)
    with pytest.raises(SystemExit, match="no calibration images"):
        be.image_batches(tmp_path / "empty", pre, 2, 10)


@pytest.mark.skipif(importlib.util.find_spec("tensorrt") is not None, reason="TensorRT installed")
def test_build_without_tensorrt_says_so(be, tmp_path):
    with pytest.raises(SystemExit, match="TensorRT is not installed"):
        be.build_engine(tmp_path / "m.onnx", tmp_path / "m.plan", fp16=True)


def test_shell_script_syntax_and_usage(tmp_path):
    sh = ROOT / "build_engine.sh"
    subprocess.run(["bash", "-n", str(sh)], check=True)
    r = subprocess.run(["bash", str(sh)], capture_output=True, text=True, timeout=10)
    assert r.returncode == 2 and "usage" in r.stderr
    r = subprocess.run(["bash", str(sh), str(tmp_path)], capture_output=True, text=True, timeout=10)
    assert r.returncode == 1 and "model.onnx not found" in r.stderr
    if shutil.which("shellcheck"):
        subprocess.run(["shellcheck", str(sh)], check=True)
