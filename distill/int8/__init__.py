"""INT8 post-training quantization of a distill run, accuracy-guarded (`distill quantize`).

    quantize.py   quantize_run: the edge graph, calibration split, mixed-precision plans, report
    guard.py      the accuracy guard: INT8 against FP32, scored as the edge scores
    ort.py        ONNX Runtime static quantization (QDQ) and its per-layer error
    nncf.py       NNCF PTQ on OpenVINO, and its accuracy-aware search
"""
