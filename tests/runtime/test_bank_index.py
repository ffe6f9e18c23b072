"""runtime/bank_index.py: faiss IVF / HNSW search of the bank against exact search, and the Engine using an
artifact's index (faiss is an optional extra: these skip without it, except the no-faiss fallback)."""
import logging

import numpy as np
import pytest

from tests.support.runtime_fixtures import build_tiny_artifact


def _seeded_bank(n=2048, d=32, queries=512, seed=0):
    """Clustered vectors, like patch embeddings of one product, and queries near them, a few far off."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((64, d)).astype(np.float32)
    bank = centres[rng.integers(0, 64, n)] + 0.3 * rng.standard_normal((n, d)).astype(np.float32)
    q = centres[rng.integers(0, 64, queries)] + 0.3 * rng.standard_normal((queries, d)).astype(np.float32)
    q[:16] += 2.0 * rng.standard_normal((16, d)).astype(np.float32)  # anomalous patches
    return bank.astype(np.float32), q.astype(np.float32)


@pytest.mark.parametrize("kind,search", [("ivf", {"nprobe": 16}), ("hnsw", {"ef_search": 128})])
@pytest.mark.parametrize("k", [1, 3])
def test_index_distances_match_exact_within_tolerance(kind, search, k):
    pytest.importorskip("faiss")
    from kernels.knn_score import knn_score_reference
    from runtime.bank_index import BankIndex, build_index, default_params

    bank, q = _seeded_bank()
    params = {**default_params(kind, len(bank)), **search}
    ix = BankIndex(build_index(bank, kind, params), kind, params, threads=1)
    exact = knn_score_reference(q, bank, k)
    got = ix.knn(q, k)
    assert got.shape == exact.shape and got.dtype == np.float32
    # an approximate search can only miss the nearest row: never nearer than exact (float rounding aside)
    assert (got >= exact - 1e-4 * (1 + exact)).all()
    np.testing.assert_allclose(got, exact, rtol=1e-2, atol=1e-4)


def test_default_params_follow_the_bank_size():
    from runtime.bank_index import IVF_POINTS_PER_LIST, default_params

    small, big = default_params("ivf", 1000), default_params("ivf", 64000)
    assert small["nlist"] <= 1000 // IVF_POINTS_PER_LIST and big["nlist"] > small["nlist"]
    assert default_params("exact", 10) == {} and default_params("hnsw", 10)["m"] > 0
    with pytest.raises(ValueError, match="index kind"):
        default_params("lsh", 10)


def _with_index(tmp_path, kind="hnsw"):
    from runtime.bank_index import INDEX_FILE, BankIndex, build_index, default_params, save_index
    from runtime.contracts.manifest import IndexSpec, load_manifest, write_manifest

    art = build_tiny_artifact(tmp_path / "tiny")
    m = load_manifest(art.dir)
    bank = np.load(art.dir / "bank.npy").astype(np.float32)
    params = {**default_params(kind, len(bank)), "ef_search": 64} if kind == "hnsw" else default_params(kind, len(bank))
    save_index(BankIndex(build_index(bank, kind, params), kind, params), art.dir / INDEX_FILE)
    scoring = m.scoring.model_copy(update={"index": IndexSpec(kind=kind, file=INDEX_FILE, params=params)})
    write_manifest(art.dir, m.model_copy(update={"format_version": 2, "scoring": scoring}))
    return art


def test_engine_searches_through_the_artifacts_index(tmp_path):
    pytest.importorskip("faiss")
    from runtime.engine import Engine
    from runtime.contracts.manifest import load_manifest

    art = _with_index(tmp_path)
    assert "bank.index" in load_manifest(art.dir).files  # covered by the checksums like every file
    eng = Engine(art.dir, backend="onnxruntime")
    assert eng.index is not None and eng.index.kind == "hnsw"
    v = eng.judge(art.defect())
    eng.index = None  # the same engine, exact search
    exact = eng.judge(art.defect())
    assert v.decision == exact.decision == "defect" and v.score == pytest.approx(exact.score, rel=1e-3)
    assert v.regions  # a defect verdict carries its regions
    assert not eng.judge(art.good()).regions  # a good one does not: regions are computed only for defects


def test_index_without_faiss_searches_exactly_and_says_so(tmp_path, monkeypatch, caplog):
    pytest.importorskip("faiss")  # to write the index; then faiss is "missing" where the edge opens it
    from runtime import bank_index
    from runtime.engine import Engine

    art = _with_index(tmp_path)

    def missing():
        raise ImportError("faiss is not installed (simulated); pip install 'lineside[ann]' (faiss-cpu)")

    monkeypatch.setattr(bank_index, "require_faiss", missing)
    with caplog.at_level(logging.WARNING, logger="lineside.bank_index"):
        eng = Engine(art.dir, backend="onnxruntime")
    assert eng.index is None and "searching the bank exactly" in caplog.text


def test_missing_index_file_is_refused(tmp_path):
    pytest.importorskip("faiss")
    from runtime.contracts.formats import ContractError
    from runtime.contracts.manifest import load_manifest

    art = _with_index(tmp_path)
    (art.dir / "bank.index").unlink()
    with pytest.raises(ContractError, match="bank.index"):
        load_manifest(art.dir)
