"""`distill retarget ARTIFACT --size S --out DIR`: a timing-only copy of an artifact at another input size.

    distill retarget ART --size 256 --out /tmp/art256 --json

The edge graph is re-exported from the artifact's torch weights at ``S`` px (FP32, and ONNX Runtime INT8
and its OpenVINO IR with random calibration data: distill.bench's timing models); bank, index and scoring
are the artifact's. Right for speed, not for decisions: the manifest says so (``metrics.timing_only``), and
its threshold was calibrated at the artifact's own size. `lineside bench edge` times the whole edge path on
it at 256 px, the size lines run, when the artifact was made for a smaller image.
"""
from __future__ import annotations

import shutil
import tempfile
from pathlib import Path


def retarget(artifact: str | Path, size: int, out: str | Path) -> dict:
    from distill.bench import _timing_models
    from runtime.contracts.manifest import load_manifest, write_manifest

    art, out = Path(artifact), Path(out)
    man = load_manifest(art)
    if "torch" not in man.models:
        raise ValueError(f"{art}: no torch weights (models.torch) to re-export at {size} px")
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    models = {}
    with tempfile.TemporaryDirectory() as td:
        files = _timing_models(art, size, Path(td), man.outputs)
        for role, key, rel in (("fp32", "onnxruntime-fp32", "model.onnx"), ("int8", "onnxruntime-int8", "model.int8.onnx"),
                               ("openvino_xml", "openvino-int8", "openvino/model.int8.xml")):
            src = files[key]
            (out / rel).parent.mkdir(parents=True, exist_ok=True)
            for suf in (".xml", ".bin") if src.suffix == ".xml" else (src.suffix,):
                shutil.copyfile(src.with_suffix(suf), (out / rel).with_suffix(suf))
            models[role] = rel
    shutil.copyfile(art / man.scoring.bank_file, out / man.scoring.bank_file)
    if man.scoring.index.file:
        shutil.copyfile(art / man.scoring.index.file, out / man.scoring.index.file)
    spec = dict(man.feature_spec, image_size=size)
    timing = {"from": str(art.resolve()), "from_size": man.preprocess.size,
              "note": "INT8 calibrated on random inputs; threshold calibrated at from_size: timing only"}
    m = man.model_copy(update={"preprocess": man.preprocess.model_copy(update={"size": size}), "feature_spec": spec,
                               "models": models, "forced": [], "full_outputs": [], "tolerance": {},
                               "metrics": {"timing_only": timing}})
    write_manifest(out, m)
    load_manifest(out)
    return {"artifact": str(out), "size": size, "models": models, "timing_only": timing}
