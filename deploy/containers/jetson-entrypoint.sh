#!/usr/bin/env bash
# Jetson container entry: on first start (or when the artifact changed) copy the artifact into the
# state volume, build its TensorRT plan from the FP32 ONNX on this device with
# deploy/tensorrt/build_engine.py, record the plan in the copy's manifest (models.tensorrt_plan,
# re-hashed by runtime.contracts.manifest), then exec the daemon on the TensorRT backend.
#
# Signed artifacts (--trusted-signers DIR among the arguments, or LINESIDE_TRUSTED_SIGNERS): the plan is
# built here, after signing, so the copy's manifest cannot carry the release signature. The entrypoint
# checks the signature itself instead, with deploy/tensorrt/signed_plan.py (runtime.contracts.signing, the
# daemon's own check): on the copy before the build, and on every start the signed manifest kept in the
# copy (signed/), that the copy's manifest is the signed one plus only the plan, and that derived.json
# binds the plan to the signed model's sha256. Any failure stops the start (exit 2). The daemon then runs
# on the derived copy without --trusted-signers; reloads reach only $LINESIDE_STATE/artifacts-signed,
# which holds only copies built after this check (deploy/OPERATIONS.md, "Signed artifacts on the Jetson").
# Other extra arguments go to `lineside run` (e.g. --teacher tcp://HOST:5560 --insecure).
#
#   LINESIDE_ARTIFACT         mounted artifact (read-only is fine)       default /artifact
#   LINESIDE_STATE            state volume (plans, journal)              default /var/lib/lineside
#   LINESIDE_CONTROL          control endpoint                           default ipc://$LINESIDE_STATE/control.sock
#   LINESIDE_TRT_PRECISION    fp16 | int8                                default fp16
#   LINESIDE_TRT_CALIB_DIR    calibration images, required for int8
#   LINESIDE_TRUSTED_SIGNERS  directory of *.ed25519.pub: serve only artifacts they signed   default unset
set -euo pipefail

artifact="${LINESIDE_ARTIFACT:-/artifact}"
state="${LINESIDE_STATE:-/var/lib/lineside}"
precision="${LINESIDE_TRT_PRECISION:-fp16}"
trusted="${LINESIDE_TRUSTED_SIGNERS:-}"
builder=/opt/lineside/deploy/tensorrt/build_engine.py
signed_plan=/opt/lineside/deploy/tensorrt/signed_plan.py

# --trusted-signers is this script's to check (see above), not the daemon's: take it out of the arguments
args=()
while (($#)); do
    case "$1" in
        --trusted-signers)
            trusted="${2:?lineside-jetson: --trusted-signers needs a directory}"
            shift 2 ;;
        --trusted-signers=*)
            trusted="${1#*=}"
            shift ;;
        *)
            args+=("$1")
            shift ;;
    esac
done

if [[ ! -f "$artifact/manifest.json" ]]; then
    echo "lineside-jetson: no artifact at $artifact (mount one: -v /path/to/artifact:$artifact:ro)" >&2
    exit 2
fi

# The copy is named after the manifest's digest (which covers every file's sha256), so a new
# artifact gets a new copy and a new plan; an unchanged one starts at once.
digest="$(sha256sum "$artifact/manifest.json" | cut -c1-16)"
root="$state/artifacts"
if [[ -n "$trusted" ]]; then
    root="$state/artifacts-signed"  # only copies whose signature was checked: the daemon's reload root
fi
work="$root/$digest-$precision"
mkdir -p "$root" "$state/tensorrt"

if [[ ! -f "$work/.plan-ready" ]]; then
    echo "lineside-jetson: building the TensorRT $precision plan for $artifact (first start; takes minutes)" >&2
    rm -rf "$work.tmp"
    cp -r "$artifact" "$work.tmp"
    if [[ -n "$trusted" ]]; then  # the copy, not the mount: what is checked is what the plan is built from
        python3 "$signed_plan" verify "$work.tmp" --trusted-signers "$trusted" >&2 || exit 2
    fi
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
    python3 "$signed_plan" record "$work.tmp" model.plan --precision "$precision" \
        ${trusted:+--trusted-signers "$trusted"} || exit 2
    touch "$work.tmp/.plan-ready"
    rm -rf "$work"
    mv "$work.tmp" "$work"
fi

if [[ -n "$trusted" ]]; then  # every start: a copy edited since its build is refused here
    checked="$(python3 "$signed_plan" check "$work" --trusted-signers "$trusted")" || exit 2
    echo "lineside-jetson: $checked" >&2
fi

set -- ${args[@]+"${args[@]}"}  # the arguments left for the daemon
exec lineside run \
    --artifact "$work" \
    --artifacts-dir "$root" \
    --backend tensorrt \
    --ingress "${LINESIDE_INGRESS:-tcp://0.0.0.0:5555}" \
    --verdicts "${LINESIDE_VERDICTS:-tcp://0.0.0.0:5556}" \
    --control "${LINESIDE_CONTROL:-ipc://$state/control.sock}" \
    --journal "$state/journal.sqlite" \
    "$@"
