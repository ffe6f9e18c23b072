"""distill: the teacher's t=50 features in a small INT8 student, and the artifact the edge runs.

    students/      registry (tiny, s, m) — plain conv nets, per-level channels/strides, projection heads
    embedding.py   the bank embedding (teacher.bank's recipe, PCA-reduced), merged into the network
    preprocess.py  torch twin of kernels.dispatch.preprocess;  data.py  images as the edge sees them
    targets.py     teacher targets (on the fly, cached; or `teacher extract` shards); head_targets.py
    losses.py      1 − cos + normalised MSE per level, KL for head outputs;  trainer.py  the loop
    bank.py        coreset bank, edge-identical scoring;  calibrate.py  threshold, band, OOD limit
    commands/      one file per `distill <name>` command (flags and the call into the library)
    fit.py         the fit (fit_options.py: its options and defaults);  run.py  the run directory
    int8/          quantization: quantize.py (the run), guard.py, ort.py, nncf.py
    export.py      the artifact (export_check.py: every model against torch);  evaluate.py  eval, report
    export_targets.py  ONNX / OpenVINO / TensorRT;  runners.py  one interface per runtime
    bench.py       student_latency() for `lineside bench` and `distill eval`
"""
