"""The TensorRT backend's data path, against stand-ins for ``tensorrt`` and ``pycuda.driver`` that follow
the TensorRT 10 / pycuda APIs the backend uses (no GPU here; the real thing is @pytest.mark.gpu below).
The fake engine "executes" by running the ONNX model with onnxruntime on the bytes at the tensor
addresses, so a wrong address, copy direction, shape or context push/pop shows up as a wrong result."""
import sys
import types

import numpy as np
import pytest

from tests.support.runtime_fixtures import TinyArtifact


class _Dev:
    memory: dict = {}

    def __init__(self, nbytes):
        self.buf = bytearray(nbytes)
        _Dev.memory[id(self)] = self

    def __int__(self):
        return id(self)

    def free(self):
        _Dev.memory.pop(id(self), None)


def _fake_modules(onnx_path, ctx_log):
    import onnxruntime as ort

    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    shapes = {"image": (1, 3, 64, 64), **{o.name: tuple(o.shape) for o in sess.get_outputs()}}
    names = ["image"] + [o.name for o in sess.get_outputs()]

    trt = types.ModuleType("tensorrt")
    trt.__version__ = "10.0-fake"

    class Logger:
        WARNING = 2

        def __init__(self, level):
            pass

    class TensorIOMode:
        INPUT, OUTPUT = "in", "out"

    class DataType:
        FLOAT = "float"

    trt.Logger, trt.TensorIOMode, trt.DataType = Logger, TensorIOMode, DataType
    trt.nptype = lambda dt: {"float": np.float32}[dt]

    class Context:
        def __init__(self):
            self.addr = {}

        def set_input_shape(self, name, shape):
            raise AssertionError("static engine: no input shape to set")

        def get_tensor_shape(self, name):
            return shapes[name]

        def set_tensor_address(self, name, ptr):
            self.addr[name] = ptr

        def execute_async_v3(self, stream_handle):
            assert ctx_log and ctx_log[-1] == "push", "engine run outside the CUDA context"
            assert isinstance(stream_handle, int)
            x = np.frombuffer(_Dev.memory[self.addr["image"]].buf, np.float32).reshape(shapes["image"])
            for name, out in zip(names[1:], sess.run(None, {"image": x})):
                _Dev.memory[self.addr[name]].buf[:] = np.ascontiguousarray(out, np.float32).tobytes()
            return True

    class Engine:
        num_io_tensors = len(names)

        def get_tensor_name(self, i):
            return names[i]

        def get_tensor_mode(self, name):
            return TensorIOMode.INPUT if name == "image" else TensorIOMode.OUTPUT

        def get_tensor_shape(self, name):
            return shapes[name]

        def get_tensor_dtype(self, name):
            return DataType.FLOAT

        def create_execution_context(self):
            return Context()

    class Runtime:
        def __init__(self, logger):
            pass

        def deserialize_cuda_engine(self, plan):
            return Engine() if plan.startswith(b"PLAN") else None

    trt.Runtime = Runtime

    cuda = types.ModuleType("pycuda.driver")
    cuda.init = lambda: None

    class Ctx:
        def push(self):
            ctx_log.append("push")

        def pop(self):
            ctx_log.append("pop")

        def detach(self):
            ctx_log.append("detach")

    class Device:
        def __init__(self, i):
            pass

        def retain_primary_context(self):
            return Ctx()

        def name(self):
            return "Fake Orin"

    class Stream:
        handle = 1234

        def synchronize(self):
            pass

    cuda.Device, cuda.Stream = Device, Stream
    cuda.pagelocked_empty = lambda n, dtype: np.empty(n, dtype)
    cuda.mem_alloc = _Dev

    def htod(dev, host, stream):
        dev.buf[:] = np.ascontiguousarray(host).tobytes()

    def dtoh(host, dev, stream):
        host[...] = np.frombuffer(dev.buf, host.dtype).reshape(host.shape)

    cuda.memcpy_htod_async, cuda.memcpy_dtoh_async = htod, dtoh
    pycuda = types.ModuleType("pycuda")
    pycuda.driver = cuda
    return {"tensorrt": trt, "pycuda": pycuda, "pycuda.driver": cuda}


def test_tensorrt_backend_data_path_matches_onnxruntime(art, tmp_path, monkeypatch):
    from runtime.backends.tensorrt_backend import TensorRTBackend
    from runtime.engine import Engine

    log: list = []
    for name, mod in _fake_modules(art.dir / "model.onnx", log).items():
        monkeypatch.setitem(sys.modules, name, mod)
    plan = tmp_path / "model.plan"
    plan.write_bytes(b"PLAN fake")
    b = TensorRTBackend(plan, ["embedding", "s8", "s16"])
    assert b.name == "tensorrt[Fake Orin]" and log == ["push", "pop"]
    ref = Engine(art.dir, backend="onnxruntime")
    for img in (TinyArtifact.good(1), TinyArtifact.defect(1)):
        from kernels.dispatch import preprocess

        x = preprocess(img, 64, ref.manifest.preprocess.mean, ref.manifest.preprocess.std)
        got, want = b.run(x), ref.backend.run(x)
        for k in want:
            np.testing.assert_allclose(got[k], want[k], rtol=1e-6, atol=1e-6)
    assert log[-2:] == ["push", "pop"]
    with pytest.raises(Exception, match="input shape"):
        b.run(np.zeros((1, 3, 32, 32), np.float32))
    b.close()
    assert log[-1] == "detach"
    bad = tmp_path / "other.plan"
    bad.write_bytes(b"not a plan")
    with pytest.raises(Exception, match="does not deserialize"):
        TensorRTBackend(bad, ["embedding"])


def test_tensorrt_missing_is_named():
    from runtime.backends import BackendError, available_backends

    if available_backends()["tensorrt"] == "ok":
        pytest.skip("tensorrt is installed here")
    from runtime.backends.tensorrt_backend import TensorRTBackend

    with pytest.raises(BackendError, match="tensorrt and pycuda are needed"):
        TensorRTBackend("model.plan", ["embedding"])


@pytest.mark.gpu
def test_tensorrt_engine_on_gpu(art, tmp_path):  # pragma: no cover - needs CUDA + TensorRT + trtexec
    import shutil
    import subprocess

    from runtime.engine import Engine
    from runtime.contracts.manifest import load_manifest, write_manifest

    if not shutil.which("trtexec"):
        pytest.skip("trtexec not on PATH")
    d = tmp_path / "a"
    shutil.copytree(art.dir, d)
    subprocess.run(["trtexec", f"--onnx={d / 'model.onnx'}", f"--saveEngine={d / 'model.plan'}"], check=True)
    m = load_manifest(d, verify=False)
    write_manifest(d, m.model_copy(update={"models": {**m.models, "tensorrt_plan": "model.plan"}}))
    trt_e, ort_e = Engine(d, backend="tensorrt"), Engine(d, backend="onnxruntime")
    for img in (TinyArtifact.good(1), TinyArtifact.in_band(1), TinyArtifact.defect(1)):
        a, b = trt_e.judge(img), ort_e.judge(img)
        assert abs(a.score - b.score) < 1e-2 and a.decision == b.decision
