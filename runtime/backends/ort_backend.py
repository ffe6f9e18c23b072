"""ONNX Runtime backend: CPU, or the CUDA / TensorRT execution providers when this build has them."""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from runtime.backends import INPUT_NAME, BackendError, check_outputs

log = logging.getLogger("lineside.backends")

GPU_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider")


class OrtBackend:
    def __init__(self, model_path: Path, outputs: list[str], threads: int = 1, device: str = "auto"):
        import onnxruntime as ort

        if not Path(model_path).is_file():
            raise BackendError(f"onnxruntime: model file {model_path} does not exist")
        so = ort.SessionOptions()
        so.intra_op_num_threads = max(1, int(threads))
        so.inter_op_num_threads = 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        available = ort.get_available_providers()
        if device == "cpu":
            providers = ["CPUExecutionProvider"]
        else:
            providers = [p for p in GPU_PROVIDERS if p in available] + ["CPUExecutionProvider"]
            if device == "cuda" and len(providers) == 1:
                raise BackendError(f"onnxruntime: device cuda asked for, this build has only {available}")
        self._sess = ort.InferenceSession(str(model_path), so, providers=providers)
        used = self._sess.get_providers()
        self.name = f"onnxruntime[{used[0]}]"
        names = [o.name for o in self._sess.get_outputs()]
        check_outputs(dict.fromkeys(names), outputs, "onnxruntime")
        self._outputs = names
        inputs = [i.name for i in self._sess.get_inputs()]
        if inputs != [INPUT_NAME]:
            raise BackendError(f"onnxruntime: model inputs are {inputs}; an artifact model takes one input {INPUT_NAME!r}")
        if used[0] == "CPUExecutionProvider" and len(providers) > 1:
            log.warning("onnxruntime: GPU providers %s present but not used; running on CPU", providers[:-1])

    def run(self, x: np.ndarray) -> dict[str, np.ndarray]:
        return dict(zip(self._outputs, self._sess.run(self._outputs, {INPUT_NAME: x})))

    def close(self) -> None:
        self._sess = None
