"""OpenVINO backend: reads the artifact's IR (or its ONNX model) and compiles it for CPU or GPU.

``INFERENCE_PRECISION_HINT f32`` keeps OpenVINO from silently running bf16/f16 on CPUs and GPUs that
support it, so verdicts agree with ONNX Runtime within the manifest's tolerance. An infer request is
not for two threads at once: each judge worker gets its own from the one compiled model.
"""
from __future__ import annotations

import threading
from pathlib import Path

import numpy as np

from runtime.backends import INPUT_NAME, BackendError, check_outputs


class OpenVinoBackend:
    def __init__(self, model_path: Path, outputs: list[str], threads: int = 1, device: str = "CPU",
                 precision: str = "f32"):
        import openvino as ov

        if not Path(model_path).is_file():
            raise BackendError(f"openvino: model file {model_path} does not exist")
        core = ov.Core()
        device = device.upper()
        if device not in core.available_devices and not device.startswith(("AUTO", "MULTI", "HETERO")):
            raise BackendError(f"openvino: device {device} not available (have {core.available_devices})")
        cfg = {"INFERENCE_PRECISION_HINT": precision, "PERFORMANCE_HINT": "LATENCY"}
        if device == "CPU":
            cfg["INFERENCE_NUM_THREADS"] = max(1, int(threads))
        model = core.read_model(str(model_path))
        self._compiled = core.compile_model(model, device, cfg)
        self._local = threading.local()  # one infer request per judge worker
        self._outs = [(o.get_any_name(), o) for o in self._compiled.outputs]
        check_outputs(dict(self._outs), outputs, "openvino")
        names = [i.get_any_name() for i in self._compiled.inputs]
        if names != [INPUT_NAME]:
            raise BackendError(f"openvino: model inputs are {names}; an artifact model takes one input {INPUT_NAME!r}")
        self.name = f"openvino[{device}]"

    def run(self, x: np.ndarray) -> dict[str, np.ndarray]:
        req = getattr(self._local, "req", None)
        if req is None:
            req = self._local.req = self._compiled.create_infer_request()
        res = req.infer({INPUT_NAME: x})  # share_outputs=False: results are copies we may keep
        return {name: res[port] for name, port in self._outs}

    def close(self) -> None:
        self._local = threading.local()
        self._compiled = None
