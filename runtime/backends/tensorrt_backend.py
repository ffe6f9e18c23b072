"""Native TensorRT 10 backend with pycuda buffers, for a Jetson or a GPU industrial PC.

The plan (serialized engine) is built on the target from the artifact's ONNX model (deploy/tensorrt)
because plans are specific to the GPU and the TensorRT version. This module imports tensorrt and
pycuda lazily (only when this backend is opened): neither installs on a machine without CUDA.

API (TensorRT 10): Runtime.deserialize_cuda_engine -> ICudaEngine; tensors by name
(num_io_tensors, get_tensor_name, get_tensor_mode, get_tensor_dtype, get_tensor_shape);
IExecutionContext.set_input_shape / set_tensor_address / execute_async_v3(stream_handle).
The CUDA context is the device's primary context, pushed around every call so that the engine can be
created in one thread (a reload from the control thread) and run in another (a judge worker). One
execution context and one set of pinned buffers serve every worker, one frame at a time (``_run_lock``);
the workers still overlap their decoding and scoring with the GPU's work.
"""
from __future__ import annotations

import threading
from pathlib import Path

import numpy as np

from runtime.backends import INPUT_NAME, BackendError, check_outputs


class TensorRTBackend:
    def __init__(self, plan_path: Path, outputs: list[str], device_index: int = 0):
        try:
            import pycuda.driver as cuda
            import tensorrt as trt
        except ImportError as e:
            raise BackendError(f"tensorrt: tensorrt and pycuda are needed (pip install 'lineside[tensorrt]' on the "
                               f"target): {e}") from None
        if not Path(plan_path).is_file():
            raise BackendError(f"tensorrt: plan file {plan_path} does not exist")
        self._cuda, self._trt = cuda, trt
        self._run_lock = threading.Lock()
        cuda.init()
        self._ctx = cuda.Device(device_index).retain_primary_context()
        self._ctx.push()
        try:
            self._logger = trt.Logger(trt.Logger.WARNING)
            self._runtime = trt.Runtime(self._logger)
            self._engine = self._runtime.deserialize_cuda_engine(Path(plan_path).read_bytes())
            if self._engine is None:
                raise BackendError(f"tensorrt: {plan_path} does not deserialize (built for another GPU or "
                                   f"TensorRT version than {trt.__version__}?)")
            self._context = self._engine.create_execution_context()
            self._stream = cuda.Stream()
            self._inputs: dict[str, tuple] = {}
            self._outputs: dict[str, tuple] = {}
            names = [self._engine.get_tensor_name(i) for i in range(self._engine.num_io_tensors)]
            for name in names:
                if self._engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT:
                    self._inputs[name] = None
            if list(self._inputs) != [INPUT_NAME]:
                raise BackendError(f"tensorrt: engine inputs are {list(self._inputs)}; need one input {INPUT_NAME!r}")
            shape = tuple(self._engine.get_tensor_shape(INPUT_NAME))
            if any(s < 0 for s in shape):  # dynamic batch/size: fix batch 1 at the profile's opt shape
                _, opt, _ = self._engine.get_tensor_profile_shape(INPUT_NAME, 0)
                shape = tuple(opt)
                self._context.set_input_shape(INPUT_NAME, shape)
            for name in names:
                dtype = np.dtype(trt.nptype(self._engine.get_tensor_dtype(name)))
                shp = tuple(self._context.get_tensor_shape(name))
                if any(s < 0 for s in shp):
                    raise BackendError(f"tensorrt: tensor {name} has unresolved shape {shp}")
                host = cuda.pagelocked_empty(int(np.prod(shp)), dtype).reshape(shp)
                dev = cuda.mem_alloc(host.nbytes)
                self._context.set_tensor_address(name, int(dev))
                entry = (host, dev, shp)
                if name in self._inputs:
                    self._inputs[name] = entry
                else:
                    self._outputs[name] = entry
            check_outputs(self._outputs, outputs, "tensorrt")
            self.input_shape = shape
        finally:
            self._ctx.pop()
        self.name = f"tensorrt[{cuda.Device(device_index).name()}]"

    def run(self, x: np.ndarray) -> dict[str, np.ndarray]:
        host, dev, shape = self._inputs[INPUT_NAME]
        if tuple(x.shape) != shape:
            raise BackendError(f"tensorrt: input shape {tuple(x.shape)} != engine input {shape}")
        cuda = self._cuda
        with self._run_lock:
            self._ctx.push()
            try:
                np.copyto(host, x, casting="same_kind")
                cuda.memcpy_htod_async(dev, host, self._stream)
                if not self._context.execute_async_v3(stream_handle=self._stream.handle):
                    raise BackendError("tensorrt: execute_async_v3 failed (see the TensorRT log)")
                for h, d, _ in self._outputs.values():
                    cuda.memcpy_dtoh_async(h, d, self._stream)
                self._stream.synchronize()
            finally:
                self._ctx.pop()
            return {name: h.copy() for name, (h, _, _) in self._outputs.items()}  # host buffers are reused

    def close(self) -> None:
        if getattr(self, "_ctx", None) is None:
            return
        self._ctx.push()
        try:
            for _, d, _ in list(self._inputs.values()) + list(self._outputs.values()):
                d.free()
            self._context = None
            self._engine = None
        finally:
            self._ctx.pop()
            self._ctx.detach()
            self._ctx = None
