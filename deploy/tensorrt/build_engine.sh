#!/usr/bin/env bash
# trtexec equivalent of build_engine.py: build a TensorRT plan for a lineside student on the device.
#
#   deploy/tensorrt/build_engine.sh ARTIFACT [fp16|int8|best] [CALIB_CACHE]
#
# Writes ARTIFACT/model.plan and reuses ARTIFACT/timing.cache. INT8 with trtexec needs a calibration
# cache made by build_engine.py (--int8 --calib-dir ... --calib-cache FILE), or runs uncalibrated (only
# for timing). Plans are specific to the GPU and TensorRT version: build them where they run.
set -euo pipefail

usage() { echo "usage: $0 ARTIFACT [fp16|int8|best] [CALIB_CACHE]" >&2; exit 2; }
[[ $# -ge 1 && $# -le 3 ]] || usage
artifact=$1
mode=${2:-fp16}
calib=${3:-}
onnx="$artifact/model.onnx"
[[ -f "$onnx" ]] || { echo "$0: $onnx not found (run distill export)" >&2; exit 1; }
command -v trtexec >/dev/null 2>&1 || [[ -x /usr/src/tensorrt/bin/trtexec ]] || {
  echo "$0: trtexec not found (JetPack: /usr/src/tensorrt/bin/trtexec); or use build_engine.py" >&2; exit 1; }
trtexec_bin=$(command -v trtexec || echo /usr/src/tensorrt/bin/trtexec)

args=(--onnx="$onnx" --saveEngine="$artifact/model.plan" --timingCacheFile="$artifact/timing.cache"
      --memPoolSize=workspace:1024 --skipInference)
case "$mode" in
  fp16) args+=(--fp16) ;;
  int8) args+=(--int8) ;;
  best) args+=(--fp16 --int8) ;;
  *) usage ;;
esac
if [[ -n "$calib" ]]; then
  [[ -f "$calib" ]] || { echo "$0: calibration cache $calib not found" >&2; exit 1; }
  args+=(--calib="$calib")
elif [[ "$mode" != fp16 ]]; then
  echo "$0: WARNING: INT8 without a calibration cache: the plan is for timing only, not for decisions" >&2
fi
exec "$trtexec_bin" "${args[@]}"
