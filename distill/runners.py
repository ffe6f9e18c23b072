"""Run a student in each runtime with one interface: ``runner.run(x (1,3,S,S) float32) -> {output: array}``.

Heavy backends are imported lazily. OpenVINO is compiled with INFERENCE_PRECISION_HINT f32: without it
the CPU plugin silently runs bf16 on AMX/AVX512-BF16 machines, and FP32 parity with torch is lost.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np


class TorchRunner:
    name = "torch"

    def __init__(self, model):
        import torch

        self.torch = torch
        self.model = model.eval()
        self.output_names = list(model.output_names)

    def run(self, x: np.ndarray) -> dict[str, np.ndarray]:
        with self.torch.no_grad():
            out = self.model(self.torch.from_numpy(np.ascontiguousarray(x, np.float32)))
        return {k: v.numpy() for k, v in out._asdict().items()}


class OrtRunner:
    def __init__(self, path: str | Path, threads: int = 1):
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.session = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name
        self.output_names = [o.name for o in self.session.get_outputs()]
        self.name = f"onnxruntime:{Path(path).name}"

    def run(self, x: np.ndarray) -> dict[str, np.ndarray]:
        outs = self.session.run(None, {self.input_name: np.ascontiguousarray(x, np.float32)})
        return dict(zip(self.output_names, outs))


class OvRunner:
    def __init__(self, path: str | Path, threads: int = 1, precision: str = "f32"):
        import openvino as ov

        core = ov.Core()
        model = core.read_model(str(path))
        cfg = {"INFERENCE_PRECISION_HINT": precision, "INFERENCE_NUM_THREADS": int(threads),
               "NUM_STREAMS": 1, "PERFORMANCE_HINT": "LATENCY"}
        self.compiled = core.compile_model(model, "CPU", cfg)
        self.request = self.compiled.create_infer_request()
        self.output_names = [o.get_any_name() for o in self.compiled.outputs]
        self.name = f"openvino:{Path(path).name}"

    def run(self, x: np.ndarray) -> dict[str, np.ndarray]:
        res = self.request.infer({0: np.ascontiguousarray(x, np.float32)})
        return {name: np.asarray(res[out]) for name, out in zip(self.output_names, self.compiled.outputs)}


def open_runner(kind: str, path: str | Path, threads: int = 1):
    if kind == "onnxruntime":
        return OrtRunner(path, threads)
    if kind == "openvino":
        return OvRunner(path, threads)
    raise ValueError(f"unknown runtime {kind!r}; use onnxruntime or openvino")


def run_all(runner, inputs) -> list[dict[str, np.ndarray]]:
    """inputs: (N, 3, S, S) array/tensor -> one output dict per image, batch 1 as on the edge."""
    return [runner.run(np.asarray(inputs[i:i + 1], np.float32)) for i in range(len(inputs))]
