"""The dispatcher's choice with and without a GPU (simulated with monkeypatch), its fallbacks, and that
the CPU path never imports torch (the edge install has none)."""
import importlib.util
import os
import subprocess
import sys
import weakref

_TRITON_PRELOADED = "triton" in sys.modules and os.environ.get("TRITON_INTERPRET") != "1"
os.environ["TRITON_INTERPRET"] = "1"  # before triton is imported (the simulated-GPU test runs its kernels)
os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from kernels import anomaly_map as am  # noqa: E402
from kernels import bank_cache, dispatch  # noqa: E402
from kernels import knn_score as ks  # noqa: E402
from kernels import preprocess as pp  # noqa: E402

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


@pytest.fixture
def machine(monkeypatch):
    """Simulate a machine: machine(gpus=0|1, triton=None|reason, cuda=None|reason)."""
    monkeypatch.delenv(dispatch.ENV_FORCE, raising=False)

    def make(gpus=0, triton="torch.cuda.is_available() is False", cuda="pycuda not installed"):
        monkeypatch.setattr(dispatch, "_cuda_devices", lambda: (gpus, "" if gpus else "no NVIDIA driver (simulated)"))
        monkeypatch.setattr(dispatch, "_probe_triton", lambda: triton)
        monkeypatch.setattr(dispatch, "_probe_cuda", lambda: cuda)
        dispatch.reset()

    yield make
    dispatch.reset()


def test_no_gpu_uses_cpu_and_says_why(machine):
    machine(gpus=0)
    assert dispatch.implementations() == {"preprocess": "cpu-opencv", "knn_score": "cpu-blas",
                                          "anomaly_map": "cpu-fused"}
    assert all("no NVIDIA driver" in why for why in dispatch.implementation_notes().values())


def test_gpu_with_triton_and_cuda(machine):
    machine(gpus=1, triton=None, cuda=None)
    assert dispatch.implementations() == {"preprocess": "cuda", "knn_score": "triton", "anomaly_map": "cuda"}


def test_gpu_with_triton_only(machine):
    machine(gpus=1, triton=None, cuda="pycuda not installed")
    assert set(dispatch.implementations().values()) == {"triton"}


def test_gpu_with_cuda_only(machine):
    machine(gpus=1, triton="torch not installed", cuda=None)
    assert set(dispatch.implementations().values()) == {"cuda"}


def test_gpu_without_either_falls_back_to_cpu_with_reasons(machine):
    machine(gpus=1, triton="triton not installed", cuda="pycuda not installed")
    assert dispatch.implementations()["knn_score"] == "cpu-blas"
    assert "triton not installed" in dispatch.implementation_notes()["knn_score"]


def test_forced_choices(machine, monkeypatch, caplog):
    monkeypatch.setenv(dispatch.ENV_FORCE, "cpu")
    machine(gpus=1, triton=None, cuda=None)
    assert dispatch.implementations()["knn_score"] == "cpu-blas"
    monkeypatch.setenv(dispatch.ENV_FORCE, "cuda")
    dispatch.reset()
    assert set(dispatch.implementations().values()) == {"cuda"}
    monkeypatch.setenv(dispatch.ENV_FORCE, "triton")
    monkeypatch.setattr(dispatch, "_probe_triton", lambda: "triton not installed")
    dispatch.reset()
    with caplog.at_level("WARNING", logger="lineside.kernels"):
        assert set(dispatch.implementations().values()) == {"cuda"}
    assert "triton not installed" in caplog.text


def test_cpu_path_matches_references(machine):
    machine(gpus=0)
    rng = np.random.default_rng(0)
    frame = rng.integers(0, 256, (33, 47, 3), dtype=np.uint8)
    x = dispatch.preprocess(frame, 24, MEAN, STD, "BGR")
    assert x.shape == (1, 3, 24, 24) and x.dtype == np.float32
    q = rng.standard_normal((40, 16)).astype(np.float32)
    bank = rng.standard_normal((90, 16)).astype(np.float32)
    d = dispatch.knn_score(q, bank, k=2)
    brute = np.sort(np.sqrt(((q[:, None] - bank[None]) ** 2).sum(-1)), 1)[:, :2].mean(1)
    np.testing.assert_allclose(d, brute, rtol=1e-4, atol=1e-4)
    amap, score = dispatch.anomaly_map(d.reshape(5, 8), (40, 64), 2.0, 3)
    assert amap.shape == (40, 64) and isinstance(score, float)


def test_bank_cache_follows_the_bank_object(machine):
    machine(gpus=0)
    rng = np.random.default_rng(1)
    q = rng.standard_normal((5, 6)).astype(np.float32)
    bank = rng.standard_normal((20, 6)).astype(np.float32)
    first = dispatch.knn_score(q, bank)
    assert bank_cache.size() == 1
    np.testing.assert_array_equal(dispatch.knn_score(q, bank), first)
    assert bank_cache.size() == 1  # reused, not rebuilt
    other = bank + 5.0  # a different bank object gets its own entry and its own answer
    assert not np.allclose(dispatch.knn_score(q, other), first)
    ref = weakref.ref(other)
    del other
    assert ref() is None
    bank[:] += 5.0  # in-place mutation is documented: clear_cache() makes it visible
    dispatch.clear_cache()
    assert not np.allclose(dispatch.knn_score(q, bank), first)


def test_simulated_gpu_routes_through_triton_kernels(machine, monkeypatch):
    """A GPU with Triton: the dispatcher's numpy-in/numpy-out round trip through the real Triton
    kernels (interpreted on the CPU)."""
    if _TRITON_PRELOADED:
        pytest.skip("triton was imported before TRITON_INTERPRET=1 was set; run with TRITON_INTERPRET=1")
    pytest.importorskip("torch")
    pytest.importorskip("triton")
    machine(gpus=1, triton=None, cuda="pycuda not installed")
    import torch

    from kernels import _arrays

    monkeypatch.setattr(_arrays, "to_torch", lambda x, device="cuda": x if isinstance(x, torch.Tensor)
                        else torch.from_numpy(np.ascontiguousarray(x)))
    rng = np.random.default_rng(2)
    frame = rng.integers(0, 256, (21, 18, 3), dtype=np.uint8)
    x = dispatch.preprocess(frame, 16, MEAN, STD, "RGB")
    ref = pp.preprocess_reference(frame, 16, MEAN, STD, "RGB")
    assert isinstance(x, np.ndarray) and x.dtype == np.float32
    assert np.abs(x - ref).max() <= 1.0 / 255 / min(STD) + 1e-5
    q = rng.standard_normal((30, 20)).astype(np.float32)
    bank = rng.standard_normal((45, 20)).astype(np.float32)
    d = dispatch.knn_score(q, bank, k=1)
    assert isinstance(d, np.ndarray) and d.shape == (30,)
    np.testing.assert_allclose(d, ks.knn_score_reference(q, bank, 1), rtol=2e-3, atol=2e-3)  # float16 inputs
    amap, score = dispatch.anomaly_map(d.reshape(5, 6), (12, 10), 1.0, 2)
    ref_map, ref_score = am.anomaly_map_reference(d.reshape(5, 6), (12, 10), 1.0, 2)
    np.testing.assert_allclose(amap, ref_map, rtol=1e-5, atol=1e-5)
    assert score == pytest.approx(ref_score, rel=1e-5)


def test_simulated_gpu_routes_to_each_ops_cuda_launcher(machine, monkeypatch):
    machine(gpus=1, triton="torch not installed", cuda=None)
    calls = []
    monkeypatch.setattr(pp, "preprocess_cuda", lambda *a, **k: calls.append("preprocess") or "pre")
    monkeypatch.setattr(ks, "knn_score_cuda", lambda *a, **k: calls.append("knn") or "knn")
    monkeypatch.setattr(am, "anomaly_map_cuda", lambda *a, **k: calls.append("amap") or ("map", 1.0))
    assert dispatch.preprocess(np.zeros((4, 4, 3), np.uint8), 4, 0, 1) == "pre"
    assert dispatch.knn_score(np.zeros((2, 3), np.float32), np.zeros((4, 3), np.float32)) == "knn"
    assert dispatch.anomaly_map(np.zeros((2, 2), np.float32), (4, 4), 1.0) == ("map", 1.0)
    assert calls == ["preprocess", "knn", "amap"]
    rng = np.random.default_rng(4)  # k beyond the CUDA kernel's limit: the CPU answers, with a warning
    q = rng.standard_normal((3, 4)).astype(np.float32)
    bank = rng.standard_normal((40, 4)).astype(np.float32)
    np.testing.assert_allclose(dispatch.knn_score(q, bank, k=ks.CUDA_KMAX + 1),
                               ks.knn_score_reference(q, bank, ks.CUDA_KMAX + 1), rtol=1e-6)
    assert calls == ["preprocess", "knn", "amap"]


def test_implementation_is_picked_once_and_called_directly(machine, monkeypatch):
    """The first call picks (probing only the backends it needs); later calls go straight to the entry
    the op's module declares, without probing again."""
    probes = []
    machine(gpus=1, triton=None, cuda=None)
    monkeypatch.setattr(dispatch, "_probe_triton", lambda: probes.append("triton"))
    monkeypatch.setattr(dispatch, "_probe_cuda", lambda: probes.append("cuda"))
    monkeypatch.setattr(pp, "preprocess_cuda", lambda *a, **k: "pre")
    for _ in range(3):
        assert dispatch.preprocess(np.zeros((4, 4, 3), np.uint8), 4, 0, 1) == "pre"
    assert probes == ["cuda"]  # preprocess prefers cuda: triton (torch) never probed
    assert dispatch._implementation("preprocess") is pp.IMPLEMENTATIONS["cuda"]
    assert dispatch.implementations() == {"preprocess": "cuda", "knn_score": "triton", "anomaly_map": "cuda"}
    assert probes == ["cuda", "triton"]
    for op, cpu in dispatch.CPU_IMPL.items():  # every name dispatch can pick has an entry in the op's module
        mod = {"preprocess": pp, "knn_score": ks, "anomaly_map": am}[op]
        assert set(mod.IMPLEMENTATIONS) == {cpu, "triton", "cuda"}


def test_use_picks_an_explicit_backend(machine, monkeypatch):
    monkeypatch.setenv(dispatch.ENV_FORCE, "cuda")
    machine(gpus=1, triton=None, cuda=None)
    assert dispatch.use("cpu") == dispatch.CPU_IMPL
    assert all("use('cpu')" in why for why in dispatch.implementation_notes().values())
    assert set(dispatch.use().values()) == {"cuda"}  # None: back to LINESIDE_KERNELS
    with pytest.raises(ValueError, match="expected one of"):
        dispatch.use("opencl")


def test_cuda_runtime_probe_without_pycuda_says_so():
    from kernels import cuda_runtime

    if importlib.util.find_spec("pycuda") is not None:  # pragma: no cover
        pytest.skip("pycuda installed here")
    assert cuda_runtime.probe() == "pycuda not installed"


def test_cpu_path_never_imports_torch_triton_or_pycuda():
    code = (
        "import sys, numpy as np\n"
        "from kernels import dispatch\n"
        "dispatch.implementations()\n"
        "d = dispatch.knn_score(np.ones((3, 4), np.float32), np.zeros((5, 4), np.float32))\n"
        "dispatch.anomaly_map(d.reshape(1, 3), (8, 8), 1.0)\n"
        "dispatch.preprocess(np.zeros((6, 6, 3), np.uint8), 4, 0.5, 0.5)\n"
        "bad = [m for m in sys.modules if m.split('.')[0] in ('torch', 'triton', 'pycuda', 'cupy')]\n"
        "assert not bad, bad\n"
    )
    env = {**os.environ, dispatch.ENV_FORCE: "auto"}
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env)
    assert res.returncode == 0, res.stderr
