"""Every .cu compiles with nvcc for sm_80, sm_87 and sm_90 and exports what cuda_runtime launches;
the fatbin build and its loader's cache rules. Skipped where nvcc is absent (CPU-only CI images,
the edge install): the CUDA sources are then compiled on the device at first use."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from kernels import build

NVCC = build.find_nvcc()
needs_nvcc = pytest.mark.skipif(NVCC is None, reason="nvcc not found (PATH, $CUDA_HOME, /usr/local/cuda): "
                                "CUDA sources cannot be compiled on this machine")


@needs_nvcc
def test_nvcc_supports_lineside_targets():
    have = build.supported_archs(NVCC)
    assert set(build.ARCHS) <= set(have), f"nvcc {build.nvcc_version(NVCC)} supports {have}"


@needs_nvcc
@pytest.mark.parametrize("source", build.SOURCES)
@pytest.mark.parametrize("arch", build.ARCHS)
def test_cu_compiles_for_arch(source, arch, tmp_path):
    cubin = build.compile_source(build.HERE / source, arch, tmp_path / f"{arch}.cubin", nvcc=NVCC)
    data = cubin.read_bytes()
    assert data[:4] == b"\x7fELF"
    for name in build.KERNEL_NAMES[source]:
        assert name.encode() in data, f"{source} for {arch} does not export {name}"


@needs_nvcc
def test_build_fatbin_cli_writes_fatbin_and_metadata(tmp_path):
    res = subprocess.run([sys.executable, "-m", "kernels.build", "--out", str(tmp_path), "--json"],
                         capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    meta = json.loads(res.stdout.strip().splitlines()[-1])
    fat = Path(meta["fatbin"])
    assert fat.parent == tmp_path and fat.stat().st_size == meta["bytes"] > 0
    assert meta["archs"] == list(build.ARCHS) and meta["ptx"] == build.PTX_ARCH
    assert meta["sources_sha256"] == build.sources_sha256()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["lineside_kernels.fatbin", "lineside_kernels.json"]


def test_build_refuses_unknown_arch(tmp_path):
    if NVCC is None:
        pytest.skip("nvcc not found")
    with pytest.raises(build.BuildError, match="cannot target"):
        build.build_fatbin(tmp_path, archs=("sm_10",), nvcc=NVCC)


def test_shipped_fatbin_is_current_when_present():
    """A .cu edited without `python -m kernels.build` would ship stale SASS: the loader ignores it (and
    compiles at first use), and this test says to rebuild."""
    meta_path = build.SHIPPED_FATBIN.with_suffix(".json")
    if not build.SHIPPED_FATBIN.is_file():
        pytest.skip("no shipped fatbin (kernels/cuda/); the loader compiles at first use")
    meta = json.loads(meta_path.read_text())
    assert meta["sources_sha256"] == build.sources_sha256(), "run: python -m kernels.build --out kernels/cuda"
    assert set(build.ARCHS) <= set(meta["archs"])
    assert build.shipped_fatbin() == build.SHIPPED_FATBIN


def test_cache_dir_is_per_user_never_cwd(monkeypatch, tmp_path):
    monkeypatch.setenv("LINESIDE_CACHE_DIR", str(tmp_path / "c"))
    assert build.cache_dir() == tmp_path / "c" / "kernels"
    monkeypatch.delenv("LINESIDE_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "x"))
    assert build.cache_dir() == tmp_path / "x" / "lineside" / "kernels"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert build.cache_dir() == Path.home() / ".cache" / "lineside" / "kernels"
    assert Path(os.getcwd()) not in build.cache_dir().parents


@needs_nvcc
def test_cached_fatbin_compiles_once_for_device_arch(monkeypatch, tmp_path):
    monkeypatch.setenv("LINESIDE_CACHE_DIR", str(tmp_path))
    first = build.cached_fatbin("sm_87", nvcc=NVCC)
    assert first.is_file() and tmp_path in first.parents
    stamp = first.stat().st_mtime_ns
    assert build.cached_fatbin("sm_87", nvcc=NVCC) == first and first.stat().st_mtime_ns == stamp


def test_cached_fatbin_without_nvcc_says_so(monkeypatch, tmp_path):
    monkeypatch.setenv("LINESIDE_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(build, "find_nvcc", lambda: None)
    with pytest.raises(build.BuildError, match="nvcc not found"):
        build.cached_fatbin("sm_87")
