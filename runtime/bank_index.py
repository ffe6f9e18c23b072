"""Nearest-neighbour search of the memory bank: exact (kernels.dispatch.knn_score, chunked BLAS) or an
approximate faiss index built at export (``distill export --index ivf|hnsw``), the library PatchCore's own
code searches its bank with.

    ivf   IndexIVFFlat: k-means lists over the bank; a query scans its ``nprobe`` nearest lists
    hnsw  IndexHNSWFlat: a navigable small-world graph of ``m`` links per vector; ``ef_search`` candidates

Both store the bank's float32 vectors, so each distance they return is exact for the row it found; what
is approximate is which row. An approximate search can only miss the nearest row, never find a nearer
one: distances are >= exact ones. ``distill export`` raises the search parameter until the image scores
on its check images agree with exact search within a stated tolerance, and records what it measured.

faiss is an optional extra (``lineside[ann]``), never needed by the edge install: an artifact with an
index opened where faiss is missing is searched exactly, with a WARNING that says so.
"""
from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np

log = logging.getLogger("lineside.bank_index")

INDEX_KINDS = ("exact", "ivf", "hnsw")
DEFAULT_INDEX = "exact"
INDEX_FILE = "bank.index"  # in the artifact, beside bank.npy
IVF_POINTS_PER_LIST = 39  # faiss's k-means wants at least this many training points per centroid
IVF_LISTS_PER_SQRT_N = 2  # nlist ≈ 2·√N: about 2·√N vectors per list, the usual IVF balance
IVF_NPROBE = 4  # lists a query scans at first; export raises it until scores match exact search
HNSW_M = 32  # graph links per vector
HNSW_EF_CONSTRUCTION = 200  # candidates while building: a better graph, paid once at export
HNSW_EF_SEARCH = 32  # candidates per query at first; export raises it until scores match exact search
SEARCH_PARAM = {"ivf": "nprobe", "hnsw": "ef_search"}  # what export tunes, per kind


def default_params(kind: str, n: int) -> dict[str, int]:
    """Build and first search parameters for a bank of ``n`` rows."""
    if kind == "ivf":
        nlist = max(1, min(int(IVF_LISTS_PER_SQRT_N * math.sqrt(n)), n // IVF_POINTS_PER_LIST))
        return {"nlist": nlist, "nprobe": min(IVF_NPROBE, nlist)}
    if kind == "hnsw":
        return {"m": HNSW_M, "ef_search": HNSW_EF_SEARCH}
    if kind == "exact":
        return {}
    raise ValueError(f"index kind must be one of {INDEX_KINDS}, got {kind!r}")


def require_faiss():
    try:
        import faiss
    except ImportError as e:
        raise ImportError(f"faiss is not installed ({e}); pip install 'lineside[ann]' (faiss-cpu)") from None
    return faiss


def build_index(bank: np.ndarray, kind: str, params: dict[str, int], seed: int = 0):
    """A faiss index of the (N, D) bank (the float16-rounded vectors the edge holds, as float32)."""
    faiss = require_faiss()
    b = np.ascontiguousarray(bank, np.float32)
    d = b.shape[1]
    if kind == "ivf":
        index = faiss.IndexIVFFlat(faiss.IndexFlatL2(d), d, int(params["nlist"]))
        index.cp.seed = seed  # k-means initialisation: the same bank gives the same index
        index.train(b)
    elif kind == "hnsw":
        index = faiss.IndexHNSWFlat(d, int(params["m"]))
        index.hnsw.efConstruction = HNSW_EF_CONSTRUCTION
    else:
        raise ValueError(f"no index to build for {kind!r} (one of {INDEX_KINDS[1:]})")
    index.add(b)
    return index


class BankIndex:
    """A faiss index with the search parameters the manifest names: ``knn(queries, k)`` is
    ``kernels.dispatch.knn_score``'s contract, (M, D) -> (M,) float32 mean distance to the k nearest."""

    def __init__(self, index, kind: str, params: dict[str, int], threads: int | None = None):
        self.faiss = require_faiss()
        self.index, self.kind = index, kind
        self.params = dict(params)
        self.threads = threads
        self.set_search(self.params[SEARCH_PARAM[kind]])

    def set_search(self, value: int) -> None:
        self.params[SEARCH_PARAM[self.kind]] = int(value)
        if self.kind == "ivf":
            self.index.nprobe = int(value)
        else:
            self.index.hnsw.efSearch = int(value)

    def knn(self, queries: np.ndarray, k: int = 1) -> np.ndarray:
        if self.threads is not None:  # faiss's OpenMP pool is per process: held to the engine's threads
            self.faiss.omp_set_num_threads(int(self.threads))
        d2, _ = self.index.search(np.ascontiguousarray(queries, np.float32), int(k))
        # rows it could not fill (fewer than k candidates found) come back as +inf-like sentinels: refuse them
        if not np.isfinite(d2).all() or (d2 > np.finfo(np.float32).max / 2).any():
            raise RuntimeError(f"{self.kind} index found fewer than k={k} neighbours for some queries; "
                               f"raise {SEARCH_PARAM[self.kind]} (now {self.params[SEARCH_PARAM[self.kind]]})")
        d = np.sqrt(np.maximum(d2, 0.0))
        return (d[:, 0] if k == 1 else d.mean(1)).astype(np.float32)


def save_index(bank_index: BankIndex, path: str | Path) -> Path:
    require_faiss().write_index(bank_index.index, str(path))
    return Path(path)


def open_index(artifact_dir: str | Path, spec, threads: int | None = None) -> BankIndex | None:
    """The manifest's ``scoring.index`` (runtime.contracts.manifest.IndexSpec) opened, or None for exact search
    (also, with a WARNING, where faiss is not installed: exact search gives the scores calibration saw)."""
    if spec.kind == "exact":
        return None
    from runtime.contracts.formats import ContractError

    if spec.kind not in SEARCH_PARAM or not spec.file:
        raise ContractError(f"{artifact_dir}: scoring.index {spec.kind!r} names no index file")
    path = Path(artifact_dir) / spec.file
    if not path.is_file():
        raise ContractError(f"{artifact_dir}: index file {spec.file} is missing")
    try:
        faiss = require_faiss()
    except ImportError as e:
        log.warning("artifact has a %s index but %s: searching the bank exactly instead", spec.kind, e)
        return None
    return BankIndex(faiss.read_index(str(path)), spec.kind, spec.params, threads)
