#!/usr/bin/env bash
# Jetson container entry: on first start (or when the artifact changed) copy the artifact into the
# state volume, build its TensorRT plan from the FP32 ONNX on this device with
# deploy/tensorrt/build_engine.py, record the plan in the copy's manifest (models.tensorrt_plan,
# re-hashed by runtime.contracts.manifest), then exec the daemon on the TensorRT backend. The re-written manifest
# carries no signature (the plan is built here, after signing), so `--trusted-signers` would refuse the
# copy: signed artifacts are not yet supported on the Jetson path.
# Extra arguments go to `lineside run` (e.g. --teacher tcp://HOST:5560 --insecure).
#
#   LINESIDE_ARTIFACT       mounted artifact (read-only is fine)       default /artifact
#   LINESIDE_STATE          state volume (plans, journal)              default /var/lib/lineside
#   LINESIDE_CONTROL        control endpoint                           default ipc://$LINESIDE_STATE/control.sock
#   LINESIDE_TRT_PRECISION  fp16 | int8                                default fp16
#   LINESIDE_TRT_CALIB_DIR  calibration images, required for int8
set -euo pipefail

artifact="${LINESIDE_ARTIFACT:-/artifact}"
state="${LINESIDE_STATE:-/var/lib/lineside}"
precision="${LINESIDE_TRT_PRECISION:-fp16}"
builder=/opt/lineside/deploy/tensorrt/build_engine.py

if [[ ! -f "$artifact/manifest.json" ]]; then
    echo "lineside-jetson: no artifact at $artifact (mount one: -v /path/to/artifact:$artifact:ro)" >&2
    exit 2
fi

# The copy is named after the manifest's digest (which covers every file's sha256), so a new
# artifact gets a new copy and a new plan; an unchanged one starts at once.
digest="$(sha256sum "$artifact/manifest.json" | cut -c1-16)"
work="$state/artifacts/$digest-$precision"
mkdir -p "$state/artifacts" "$state/tensorrt"

if [[ ! -f "$work/.plan-ready" ]]; then
    echo "lineside-jetson: building the TensorRT $precision plan for $artifact (first start; takes minutes)" >&2
    rm -rf "$work.tmp"
    cp -r "$artifact" "$work.tmp"
    onnx="$(python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))["models"]["fp32"])' "$work.tmp/manifest.json")"
    flags=(--fp16 --timing-cache "$state/tensorrt/timing.cache")
    if [[ "$precision" == int8 ]]; then
        if [[ -z "${LINESIDE_TRT_CALIB_DIR:-}" ]]; then
            echo "lineside-jetson: LINESIDE_TRT_PRECISION=int8 needs LINESIDE_TRT_CALIB_DIR (good images)" >&2
            exit 2
        fi
        flags+=(--int8 --calib-dir "$LINESIDE_TRT_CALIB_DIR" --calib-cache "$state/tensorrt/$digest.calib")
    fi
    python3 "$builder" "$work.tmp/$onnx" --out "$work.tmp/model.plan" "${flags[@]}"
    python3 - "$work.tmp" <<'PY'
import sys
from runtime.contracts.manifest import load_manifest, write_manifest

d = sys.argv[1]
m = load_manifest(d)
write_manifest(d, m.model_copy(update={"models": {**m.models, "tensorrt_plan": "model.plan"}}))
PY
    touch "$work.tmp/.plan-ready"
    rm -rf "$work"
    mv "$work.tmp" "$work"
fi

exec lineside run \
    --artifact "$work" \
    --artifacts-dir "$state/artifacts" \
    --backend tensorrt \
    --ingress "${LINESIDE_INGRESS:-tcp://0.0.0.0:5555}" \
    --verdicts "${LINESIDE_VERDICTS:-tcp://0.0.0.0:5556}" \
    --control "${LINESIDE_CONTROL:-ipc://$state/control.sock}" \
    --journal "$state/journal.sqlite" \
    "$@"
