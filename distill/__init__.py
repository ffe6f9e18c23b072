"""distill: the teacher's t=50 features in a small INT8 student, and the artifact the edge runs.

    students/      registry (tiny, s, m) — plain conv nets, per-level channels/strides, projection heads
    embedding.py   the bank embedding (teacher.bank's recipe, PCA-reduced), merged into the network
    preprocess.py  torch twin of kernels.dispatch.preprocess;  data.py  images as the edge sees them
    targets.py     teacher targets (on the fly, cached; or `teacher extract` shards); head_targets.py
    losses.py      1 − cos + normalised MSE per level, KL for head outputs;  trainer.py  the loop
    bank.py        coreset bank, edge-identical scoring;  calibrate.py  threshold, band, OOD limit
    fit.py / quantize.py / export.py / evaluate.py   the `distill` commands;  run.py  the run directory
    export_targets.py  ONNX / OpenVINO / TensorRT;  runners.py  one interface per runtime
    bench.py       student_latency() for `lineside bench` and `distill eval`
"""
