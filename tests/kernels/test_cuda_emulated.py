"""The CUDA kernels' logic and their pycuda launchers, checked on the CPU.

No GPU here, so the .cu sources are compiled with the host C++ compiler against a small emulation of
the CUDA execution model (one std::thread per CUDA thread, __syncthreads as a std::barrier, blocks in
sequence, __shared__ as static storage, __half as _Float16), and kernels.cuda_runtime and each op's
launcher (kernels.<op>.<op>_cuda) run unchanged against a fake ``pycuda.driver`` whose allocations are host buffers and whose functions launch the
emulated kernels with cuLaunchKernel-style parameter arrays (so a launcher passing an int32 where the
kernel takes a 64-bit value reads garbage and fails here). What this cannot check: coalescing, bank
conflicts, warp-level timing, occupancy: those need a GPU (tests marked gpu in a later session).
"""
import ctypes
import os
import shutil
import subprocess
import sys
import types

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from kernels import anomaly_map as am  # noqa: E402
from kernels import build  # noqa: E402
from kernels import knn_score as ks  # noqa: E402
from kernels import preprocess as pp  # noqa: E402

CXX = shutil.which("g++") or shutil.which("c++")
pytestmark = pytest.mark.skipif(CXX is None, reason="no host C++ compiler to emulate the CUDA kernels")

EMU_H = r"""
#pragma once
#include <math.h>
#include <cmath>
#include <algorithm>
#include <barrier>
#include <cstdlib>
struct dim3 { unsigned x = 1, y = 1, z = 1; };
extern thread_local dim3 threadIdx, blockIdx;
extern dim3 blockDim, gridDim;
extern std::barrier<>* emu_barrier;
inline void __syncthreads() { emu_barrier->arrive_and_wait(); }
#define __global__
#define __device__
#define __forceinline__ inline
#define __shared__ static
#define __launch_bounds__(x)
using std::min;
using std::max;
"""
FP16_H = r"""
#pragma once
typedef _Float16 __half;
inline float __half2float(__half h) { return (float)h; }
inline __half __float2half_rn(float f) { return (__half)f; }
"""
MATH_CONSTANTS_H = "#pragma once\n#define CUDART_INF_F INFINITY\n"
EMU_CPP = r"""
#include <thread>
#include <vector>
#include <utility>
#include <type_traits>
thread_local dim3 threadIdx, blockIdx;
dim3 blockDim, gridDim;
std::barrier<>* emu_barrier;
#include "preprocess.cu"
#include "knn_score.cu"
#include "anomaly_map.cu"

template <class... A, std::size_t... I>
static void call_with(void (*k)(A...), void** p, std::index_sequence<I...>)
{
    k(*static_cast<std::remove_reference_t<A>*>(p[I])...);
}

template <class... A>
static void launch(void (*k)(A...), const unsigned* d, void** p)
{
    gridDim = dim3{d[0], d[1], d[2]};
    blockDim = dim3{d[3], d[4], d[5]};
    const unsigned nt = d[3] * d[4] * d[5];
    for (unsigned bz = 0; bz < d[2]; ++bz)
        for (unsigned by = 0; by < d[1]; ++by)
            for (unsigned bx = 0; bx < d[0]; ++bx) {
                std::barrier<> bar(nt);
                emu_barrier = &bar;
                std::vector<std::thread> ts;
                for (unsigned tz = 0; tz < d[5]; ++tz)
                    for (unsigned ty = 0; ty < d[4]; ++ty)
                        for (unsigned tx = 0; tx < d[3]; ++tx)
                            ts.emplace_back([=] {
                                threadIdx = dim3{tx, ty, tz};
                                blockIdx = dim3{bx, by, bz};
                                call_with(k, p, std::index_sequence_for<A...>{});
                            });
                for (auto& t : ts) t.join();
            }
}
#define EXPORT(name) extern "C" void emu_##name(const unsigned* d, void** p) { launch(name, d, p); }
EXPORT(lineside_preprocess_f32)
EXPORT(lineside_preprocess_f16)
EXPORT(lineside_knn_k1)
EXPORT(lineside_knn_k16)
EXPORT(lineside_knn_merge)
EXPORT(lineside_upsample_hblur)
EXPORT(lineside_vblur_topk)
"""


@pytest.fixture(scope="module")
def emulator(tmp_path_factory):
    d = tmp_path_factory.mktemp("cuda_emu")
    (d / "emu.h").write_text(EMU_H)
    (d / "cuda_fp16.h").write_text(FP16_H)
    (d / "math_constants.h").write_text(MATH_CONSTANTS_H)
    (d / "emu.cpp").write_text(EMU_CPP)
    lib = d / "libemu.so"
    cmd = [CXX, "-std=c++20", "-O1", "-shared", "-fPIC", "-pthread", "-Wno-unknown-pragmas", "-I", str(d),
           "-I", str(build.HERE), "-include", str(d / "emu.h"), "-o", str(lib), str(d / "emu.cpp")]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    if res.returncode != 0 and ("_Float16" in res.stderr or "barrier" in res.stderr):
        pytest.skip(f"host compiler lacks _Float16 or <barrier>: {res.stderr[:300]}")
    assert res.returncode == 0, res.stderr
    return ctypes.CDLL(str(lib))


_CTYPE = {np.dtype(np.uintp): ctypes.c_uint64, np.dtype(np.int32): ctypes.c_int32,
          np.dtype(np.int64): ctypes.c_int64, np.dtype(np.float32): ctypes.c_float}


def _fake_pycuda(lib):
    """A pycuda.driver stand-in: host buffers as device memory, emulated kernels as functions."""
    drv = types.ModuleType("pycuda.driver")

    class Error(Exception):
        pass

    class Alloc:
        def __init__(self, n):
            self.buf = np.zeros(n, np.uint8)

        def __int__(self):
            return self.buf.ctypes.data

    class Ctx:
        depth = 0

        def push(self):
            Ctx.depth += 1

        def pop(self):
            assert Ctx.depth > 0, "pop without push"
            Ctx.depth -= 1

    class Device:
        def __init__(self, i):
            assert i == 0

        @staticmethod
        def count():
            return 1

        def retain_primary_context(self):
            return Ctx()

        def compute_capability(self):
            return (8, 7)

        def name(self):
            return "emulated sm_87"

        def get_attribute(self, attr):
            assert attr == "MULTIPROCESSOR_COUNT"
            return 2

    class Function:
        def __init__(self, name):
            self.fn = getattr(lib, "emu_" + name)

        def __call__(self, *args, block, grid):
            assert Ctx.depth > 0, "kernel launched without a current context"
            objs = []
            for a in args:
                assert isinstance(a, np.generic) and a.dtype in _CTYPE, f"unsupported kernel argument {a!r}"
                objs.append(_CTYPE[a.dtype](a.item()))
            params = (ctypes.c_void_p * len(objs))(*[ctypes.addressof(o) for o in objs])
            dims = (ctypes.c_uint * 6)(*grid, *block)
            self.fn(dims, params)

    class Module:
        def get_function(self, name):
            return Function(name)

    def memcpy_htod(alloc, host):
        flat = np.ascontiguousarray(host).view(np.uint8).ravel()
        alloc.buf[:flat.size] = flat

    def memcpy_dtoh(host, alloc):
        host.view(np.uint8).ravel()[:] = alloc.buf[:host.nbytes]

    drv.Error, drv.Device = Error, Device
    drv.device_attribute = types.SimpleNamespace(MULTIPROCESSOR_COUNT="MULTIPROCESSOR_COUNT")
    drv.init = lambda: None
    drv.mem_alloc = Alloc
    drv.memcpy_htod, drv.memcpy_dtoh = memcpy_htod, memcpy_dtoh
    drv.module_from_buffer = lambda data: Module()
    pkg = types.ModuleType("pycuda")
    pkg.driver = drv
    return pkg, drv


@pytest.fixture
def cuda_rt(emulator, monkeypatch, tmp_path):
    from kernels import cuda_runtime

    pkg, drv = _fake_pycuda(emulator)
    monkeypatch.setitem(sys.modules, "pycuda", pkg)
    monkeypatch.setitem(sys.modules, "pycuda.driver", drv)
    monkeypatch.setattr(build, "shipped_fatbin", lambda: tmp_path / "fake.fatbin")
    (tmp_path / "fake.fatbin").write_bytes(b"\0")
    cuda_runtime._state.clear()
    assert cuda_runtime.probe() is None
    yield cuda_runtime
    cuda_runtime._state.clear()


MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


@pytest.mark.parametrize("shape,size,order,dtype", [
    ((37, 53, 3), 16, "BGR", np.float32),
    ((5, 3), 17, "RGB", np.float16),
    ((1, 1, 3), 7, "RGB", np.float32),
    ((100, 30, 1), 33, "GRAY", np.float32),
    ((31, 97, 3), (19, 41), "RGB", np.float16),
])
def test_cuda_preprocess_matches_opencv(cuda_rt, shape, size, order, dtype):
    rng = np.random.default_rng(sum(shape))
    frame = rng.integers(0, 256, shape, dtype=np.uint8)
    ref = pp.preprocess_reference(frame, size, MEAN, STD, order)
    got = pp.preprocess_cuda(frame, size, MEAN, STD, order, dtype)
    assert got.dtype == dtype and got.shape == ref.shape
    atol = pp.ATOL_UINT8_LEVELS / 255.0 / np.asarray(STD, np.float32).reshape(1, 3, 1, 1) + 1e-5
    if dtype == np.float16:
        atol = atol + np.abs(ref) * 2.0 ** -11
    assert np.all(np.abs(got.astype(np.float32) - ref) <= atol)


@pytest.mark.parametrize("m,n,d,k,splits", [(1, 1, 1, 1, 1), (5, 3, 7, 1, 1), (70, 130, 33, 1, 1), (65, 67, 17, 3, 1),
                                            (3, 20, 5, 16, 1), (70, 300, 9, 1, 3), (5, 200, 3, 5, 4), (9, 129, 4, 2, None)])
def test_cuda_knn_matches_brute_force(cuda_rt, m, n, d, k, splits):
    """splits > 1: the bank sliced over blockIdx.y, partial lists merged by lineside_knn_merge
    (None: the launcher's choice for the emulated 2-SM device, i.e. 3 slices for 129 rows)."""
    rng = np.random.default_rng(m + n + d + k)
    q = rng.standard_normal((m, d)).astype(np.float16)
    b = rng.standard_normal((n, d)).astype(np.float16)
    got = ks.knn_score_cuda(q, b, k, splits=splits)
    exact = np.sort(np.sqrt(((q[:, None].astype(np.float64) - b[None].astype(np.float64)) ** 2).sum(-1)), 1)[:, :k]
    assert got.shape == (m,) and got.dtype == np.float32
    np.testing.assert_allclose(got, exact.mean(1), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(got, ks.knn_score_reference(q, b, k), rtol=1e-4, atol=1e-4)


def test_cuda_knn_refuses_k_beyond_kernel(cuda_rt):
    with pytest.raises(ValueError, match="at most k=16"):
        ks.knn_score_cuda(np.zeros((2, 3), np.float16), np.zeros((20, 3), np.float16), 17)


@pytest.mark.parametrize("grid_hw,out_hw,sigma,topk", [
    ((1, 1), (5, 7), 1.0, 1), ((3, 5), (17, 29), 1.5, 3), ((4, 4), (3, 3), 0.0, 1), ((3, 3), (2, 2), 5.0, 3),
    ((5, 7), (9, 300), 2.0, 4),  # two blocks per row
])
def test_cuda_anomaly_map_matches_reference(cuda_rt, grid_hw, out_hw, sigma, topk):
    rng = np.random.default_rng(grid_hw[1] * 7 + out_hw[1])
    grid = (rng.random(grid_hw, dtype=np.float32) * 4 + 1).astype(np.float32)
    ref_map, ref_score = am.anomaly_map_reference(grid, out_hw, sigma, topk)
    got_map, got_score = am.anomaly_map_cuda(grid, out_hw, sigma, topk)
    span = float(grid.max() - grid.min()) + 1.0
    np.testing.assert_allclose(got_map, ref_map, rtol=am.RTOL, atol=am.ATOL * span)
    assert abs(got_score - ref_score) <= am.ATOL * span + am.RTOL * abs(ref_score)


def test_dispatch_runs_the_cuda_path_end_to_end(cuda_rt, monkeypatch):
    from kernels import bank_cache, dispatch

    monkeypatch.delenv(dispatch.ENV_FORCE, raising=False)
    monkeypatch.setattr(dispatch, "_cuda_devices", lambda: (1, ""))
    monkeypatch.setattr(dispatch, "_probe_triton", lambda: "torch not installed")
    dispatch.reset()
    try:
        assert set(dispatch.implementations().values()) == {"cuda"}
        rng = np.random.default_rng(3)
        q = rng.standard_normal((40, 12)).astype(np.float32)
        bank = rng.standard_normal((50, 12)).astype(np.float32)
        d = dispatch.knn_score(q, bank, k=2)
        assert bank_cache.size() == 1  # the uploaded bank is cached per bank object
        np.testing.assert_allclose(d, ks.knn_score_reference(q, bank, 2), rtol=2e-3, atol=2e-3)  # float16
        np.testing.assert_array_equal(dispatch.knn_score(q, bank, k=2), d)
        amap, score = dispatch.anomaly_map(d.reshape(5, 8), (20, 32), 1.5, 2)
        assert amap.shape == (20, 32) and isinstance(score, float)
    finally:
        dispatch.reset()
