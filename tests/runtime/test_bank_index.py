"""runtime/bank_index.py: faiss IVF / HNSW and int8 GEMM + re-rank search of the bank against exact search, and
the Engine using an artifact's index (faiss is an optional extra: its tests skip without it, except the no-faiss
fallback; int8 needs onnx to build and onnxruntime to run, both here)."""
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
    from runtime.bank_index import default_params, index_file, new_index, save_index
    from runtime.contracts.manifest import IndexSpec, load_manifest, write_manifest

    art = build_tiny_artifact(tmp_path / "tiny")
    m = load_manifest(art.dir)
    bank = np.load(art.dir / "bank.npy").astype(np.float32)
    search = {"hnsw": {"ef_search": 64}, "int8": {"rerank": 16}}.get(kind, {})
    params = {**default_params(kind, len(bank)), **search}
    save_index(new_index(bank, kind, params), art.dir / index_file(kind))
    scoring = m.scoring.model_copy(update={"index": IndexSpec(kind=kind, file=index_file(kind), params=params)})
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


# ---- int8: a uint8 x int8 distance GEMM (ONNX Runtime) picks candidates, re-ranked exactly in float32 ----

def _int8(bank, rerank=8, threads=1, **params):
    from runtime.bank_index import default_params, new_index

    return new_index(bank, "int8", {**default_params("int8", len(bank)), "rerank": rerank, **params}, threads)


@pytest.mark.parametrize("k", [1, 3])
def test_int8_distances_are_exact_for_their_rows_and_never_nearer(k):
    from kernels.knn_score import knn_score_reference

    bank, q = _seeded_bank(n=2000)  # not a multiple of the group: the padded last group never wins
    ix = _int8(bank, rerank=8 * k)  # one candidate per group: k nearest rows want a few more groups
    rows, d2 = ix.session.run(None, {"queries": q, "rerank": np.array([8 * k], np.int64)})
    assert rows.shape == d2.shape == (len(q), 8 * k) and rows.max() < len(bank)
    # each returned distance is the float32 distance to the row it names
    np.testing.assert_allclose(d2, ((bank[rows] - q[:, None]) ** 2).sum(-1), rtol=1e-5, atol=1e-5)
    exact = knn_score_reference(q, bank, k)
    got = ix.knn(q, k)
    assert got.shape == exact.shape and got.dtype == np.float32
    assert (got >= exact - 1e-4 * (1 + exact)).all()  # candidates are a subset: never nearer than exact
    # easy (clustered) data: the int8 ranking keeps the nearest rows among its candidates (k > 1: a group offers
    # one row, so two of a query's k nearest in one group cost it one; export's check sees that)
    same = np.isclose(got, exact, rtol=1e-4, atol=1e-5).mean()
    assert same == 1.0 if k == 1 else same >= 0.98
    np.testing.assert_allclose(got, exact, rtol=5e-2)


def test_int8_rerank_bounds():
    bank, q = _seeded_bank(n=256)
    ix = _int8(bank, rerank=2)
    with pytest.raises(ValueError, match="fewer than k=3"):
        ix.knn(q, 3)
    with pytest.raises(ValueError, match="rerank="):
        ix.set_search(ix.groups + 1)
    ix.set_search(ix.groups)  # every group: each one's best row re-ranked
    assert ix.knn(q, 1).shape == (len(q),)


def test_int8_save_and_open_round_trip(tmp_path):
    from runtime.bank_index import INT8_FILE, Int8Index, open_index, save_index
    from runtime.contracts.manifest import IndexSpec

    bank, q = _seeded_bank(n=1024)
    ix = _int8(bank, rerank=4)
    save_index(ix, tmp_path / INT8_FILE)
    back = open_index(tmp_path, IndexSpec(kind="int8", file=INT8_FILE, params=ix.params), threads=1)
    assert isinstance(back, Int8Index) and back.params == ix.params and back.rows == len(bank)
    np.testing.assert_array_equal(back.knn(q, 1), ix.knn(q, 1))
    with pytest.raises(ValueError, match="groups of"):  # a graph built for other parameters is refused
        Int8Index((tmp_path / INT8_FILE).read_bytes(), {**ix.params, "group": ix.params["group"] + 1})


def test_engine_searches_through_an_int8_index_and_a_tampered_one_is_refused(tmp_path):
    from runtime.bank_index import INT8_FILE
    from runtime.contracts.formats import ContractError
    from runtime.contracts.manifest import load_manifest
    from runtime.engine import Engine

    art = _with_index(tmp_path, "int8")
    assert INT8_FILE in load_manifest(art.dir).files
    eng = Engine(art.dir, backend="onnxruntime")
    assert eng.index is not None and eng.index.kind == "int8"
    v = eng.judge(art.defect())
    eng.index = None
    exact = eng.judge(art.defect())
    assert v.decision == exact.decision == "defect" and v.score == pytest.approx(exact.score, rel=1e-3)
    eng.close()
    f = art.dir / INT8_FILE
    f.write_bytes(f.read_bytes()[:-1] + bytes([f.read_bytes()[-1] ^ 1]))  # one bit of the graph
    with pytest.raises(ContractError, match=f"{INT8_FILE} fails its checksum"):
        load_manifest(art.dir)


def test_export_raises_rerank_until_scores_match_exact(tmp_path):
    """Rows closer together than int8 resolves: the first rerank misses nearest rows, export doubles it
    until the image scores match exact search (here to within 1e-4 of it: 0.01 x a threshold of 0.01)."""
    from distill.bank import ScoringParams
    from distill.export_index import build_checked_index
    from runtime.bank_index import INT8_FILE, INT8_RERANK, open_index
    from runtime.contracts.manifest import IndexSpec

    rng = np.random.default_rng(1)
    d = 16
    centre = rng.standard_normal(d).astype(np.float32)
    bank = centre + 0.02 * rng.standard_normal((24, d)).astype(np.float32)  # 24 rows: groups of 1
    outputs = [{"embedding": (centre[:, None, None] + 0.02 * rng.standard_normal((d, 8, 8))).astype(np.float32)[None]}
               for _ in range(3)]
    spec = build_checked_index(bank, outputs, 32, ScoringParams(), "int8", threshold=1e-2, out_dir=tmp_path)
    tried = spec["check"]["tried"]
    assert spec["file"] == INT8_FILE and (tmp_path / INT8_FILE).is_file()
    assert tried[0]["rerank"] == INT8_RERANK and tried[0]["score_max_abs_diff"] > spec["check"]["score_tolerance"]
    assert [t["rerank"] for t in tried] == sorted(t["rerank"] for t in tried) and len(tried) > 1
    assert spec["check"]["score_max_abs_diff"] <= spec["check"]["score_tolerance"]
    assert spec["params"]["rerank"] == tried[-1]["rerank"]
    ix = open_index(tmp_path, IndexSpec(**spec), threads=1)
    assert ix.params == spec["params"]
