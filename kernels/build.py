"""Build the CUDA sources (kernels/*.cu) into one fatbin that pycuda loads with module_from_buffer.

    python -m kernels.build --out kernels/cuda            # sm_80, sm_87, sm_90 SASS + compute_90 PTX
    python -m kernels.build --out DIR --arch sm_87 --json

Targets: A100 = sm_80, Jetson AGX/NX Orin = sm_87, H100 = sm_90 (an sm_80 cubin also runs on sm_86
and sm_89 GPUs); PTX for compute_90 rides along so newer GPUs can JIT it.

Toolkits. SASS built by CUDA 13 needs an R580+ driver; a JetPack 6 image (L4T r36, CUDA 12.2-12.6
driver, sm_87) cannot load it. The loader (``load_fatbin``) therefore tries the shipped fatbin and,
when the driver refuses it or the sources changed since it was built, compiles the sources once with
the device's own nvcc for the device's arch (``-arch=sm_XY``; JetPack 6 ships nvcc 12.2+ which knows
sm_87) into a user cache dir (``$LINESIDE_CACHE_DIR`` or ``$XDG_CACHE_HOME/lineside`` or
``~/.cache/lineside``; never the working directory). CUDA 13's nvcc dropped everything below
compute_75 (``nvcc --list-gpu-arch``): Maxwell/Pascal/Volta and Jetson Xavier (sm_72) need a 12.x
toolkit. The CUDA sources use nothing newer than CUDA 11 (cuda_fp16.h, shared memory, fminf).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
SOURCES = ("preprocess.cu", "knn_score.cu", "anomaly_map.cu")
ARCHS = ("sm_80", "sm_87", "sm_90")
PTX_ARCH = "compute_90"
FATBIN_NAME = "lineside_kernels.fatbin"
SHIPPED_FATBIN = HERE / "cuda" / FATBIN_NAME
KERNEL_NAMES = {  # extern "C" entry points each source must export (cuda_runtime launches these)
    "preprocess.cu": ("lineside_preprocess_f32", "lineside_preprocess_f16"),
    "knn_score.cu": ("lineside_knn_k1", "lineside_knn_k16", "lineside_knn_merge"),
    "anomaly_map.cu": ("lineside_upsample_hblur", "lineside_vblur_topk"),
}
NVCC_TIMEOUT_S = 300


class BuildError(RuntimeError):
    pass


def find_nvcc() -> str | None:
    """nvcc on PATH, else under $CUDA_HOME / $CUDA_PATH, else /usr/local/cuda."""
    found = shutil.which("nvcc")
    if found:
        return found
    for root in (os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"):
        if root and (Path(root) / "bin" / "nvcc").is_file():
            return str(Path(root) / "bin" / "nvcc")
    return None


def nvcc_version(nvcc: str) -> str:
    out = subprocess.run([nvcc, "--version"], capture_output=True, text=True, timeout=60).stdout
    m = re.search(r"release (\d+\.\d+)", out)
    return m.group(1) if m else "unknown"


def supported_archs(nvcc: str) -> list[str]:
    """Real architectures this nvcc can target, e.g. ['sm_75', 'sm_80', ...]."""
    out = subprocess.run([nvcc, "--list-gpu-arch"], capture_output=True, text=True, timeout=60).stdout
    return sorted({"sm_" + a for a in re.findall(r"compute_(\d+)", out)}, key=lambda s: int(s[3:]))


def sources_sha256() -> str:
    h = hashlib.sha256()
    for name in SOURCES:
        h.update(name.encode() + b"\0" + (HERE / name).read_bytes())
    return h.hexdigest()


def _gencode(archs, ptx: str | None) -> list[str]:
    flags = []
    for a in archs:
        n = a.split("_")[1]
        flags += ["-gencode", f"arch=compute_{n},code=sm_{n}"]
    if ptx:
        n = ptx.split("_")[1]
        flags += ["-gencode", f"arch=compute_{n},code=compute_{n}"]
    return flags


def _run_nvcc(cmd: list[str]) -> None:
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=NVCC_TIMEOUT_S)
    except subprocess.TimeoutExpired as e:
        raise BuildError(f"nvcc timed out after {NVCC_TIMEOUT_S} s: {' '.join(cmd)}") from e
    if res.returncode != 0:
        raise BuildError(f"nvcc failed ({res.returncode}): {' '.join(cmd)}\n{res.stderr.strip()}")


def compile_source(source: str | Path, arch: str, out: str | Path, nvcc: str | None = None) -> Path:
    """One .cu -> one cubin for one arch (what the tests use to check every source compiles)."""
    nvcc = nvcc or find_nvcc()
    if nvcc is None:
        raise BuildError("nvcc not found (PATH, $CUDA_HOME, /usr/local/cuda)")
    _run_nvcc([nvcc, "-cubin", "-O3", f"-arch={arch}", "-o", str(out), str(source)])
    return Path(out)


def build_fatbin(out_dir: str | Path, archs=ARCHS, ptx: str | None = PTX_ARCH, nvcc: str | None = None) -> Path:
    """All sources -> ``out_dir/lineside_kernels.fatbin`` plus ``.json`` beside it recording the
    sources' sha256, archs and nvcc version (the loader refuses a fatbin whose sources changed)."""
    nvcc = nvcc or find_nvcc()
    if nvcc is None:
        raise BuildError("nvcc not found (PATH, $CUDA_HOME, /usr/local/cuda)")
    have = supported_archs(nvcc)
    missing = [a for a in archs if a not in have]
    if missing:
        raise BuildError(f"nvcc {nvcc_version(nvcc)} cannot target {missing}; it supports {have}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    out = out_dir / FATBIN_NAME
    with tempfile.TemporaryDirectory(prefix="lineside-nvcc-") as tmp:
        unit = Path(tmp) / "lineside_kernels.cu"  # one translation unit -> one module
        unit.write_text("".join(f'#include "{HERE / s}"\n' for s in SOURCES))
        part = Path(tmp) / FATBIN_NAME
        _run_nvcc([nvcc, "-fatbin", "-O3", *_gencode(archs, ptx), "-o", str(part), str(unit)])
        shutil.move(str(part), out)  # complete file or none
    meta = {"sources_sha256": sources_sha256(), "archs": list(archs), "ptx": ptx,
            "nvcc": nvcc_version(nvcc), "bytes": out.stat().st_size}
    out.with_suffix(".json").write_text(json.dumps(meta, indent=1) + "\n")
    return out


def cache_dir() -> Path:
    root = os.environ.get("LINESIDE_CACHE_DIR")
    if root:
        return Path(root) / "kernels"
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "lineside" / "kernels"


def shipped_fatbin() -> Path | None:
    """The packaged fatbin if it was built from the current sources, else None."""
    meta = SHIPPED_FATBIN.with_suffix(".json")
    if not SHIPPED_FATBIN.is_file() or not meta.is_file():
        return None
    try:
        if json.loads(meta.read_text()).get("sources_sha256") != sources_sha256():
            return None
    except (OSError, ValueError):
        return None
    return SHIPPED_FATBIN


def cached_fatbin(arch: str, nvcc: str | None = None) -> Path:
    """Compile (once) for ``arch`` into the user cache dir, keyed by sources and nvcc version."""
    nvcc = nvcc or find_nvcc()
    if nvcc is None:
        raise BuildError(f"no usable shipped fatbin for {arch} and nvcc not found to compile one")
    key = hashlib.sha256(f"{sources_sha256()}|{arch}|{nvcc_version(nvcc)}".encode()).hexdigest()[:16]
    out_dir = cache_dir() / f"{arch}-{key}"
    out = out_dir / FATBIN_NAME
    if not out.is_file():
        build_fatbin(out_dir, archs=(arch,), ptx=None, nvcc=nvcc)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m kernels.build", description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=str(HERE / "cuda"), help="output directory (default: kernels/cuda)")
    ap.add_argument("--arch", nargs="+", default=list(ARCHS), help="real archs, e.g. sm_80 sm_87 sm_90")
    ap.add_argument("--ptx", default=PTX_ARCH, help="virtual arch embedded as PTX ('none' to skip)")
    ap.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    args = ap.parse_args(argv)
    try:
        out = build_fatbin(args.out, archs=tuple(args.arch), ptx=None if args.ptx == "none" else args.ptx)
    except BuildError as e:
        print(f"kernels.build: {e}", file=sys.stderr)
        return 1
    meta = json.loads(out.with_suffix(".json").read_text())
    meta["fatbin"] = str(out)
    print(json.dumps(meta) if args.json else f"wrote {out} ({meta['bytes']} bytes; {', '.join(meta['archs'])}"
          f"{' + ' + meta['ptx'] if meta['ptx'] else ''}; nvcc {meta['nvcc']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
