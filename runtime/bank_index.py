"""Nearest-neighbour search of the memory bank: exact (kernels.dispatch.knn_score, chunked BLAS), an
approximate faiss index built at export (``distill export --index ivf|hnsw``), the library PatchCore's own
code searches its bank with, or an int8 distance GEMM with an exact re-rank (``--index int8``).

    ivf   IndexIVFFlat: k-means lists over the bank; a query scans its ``nprobe`` nearest lists
    hnsw  IndexHNSWFlat: a navigable small-world graph of ``m`` links per vector; ``ef_search`` candidates
    int8  a small ONNX graph (``build_int8_graph``) run by ONNX Runtime, already on the edge: the queries
          quantized per call (DynamicQuantizeLinear, uint8), the bank per row at export (symmetric int8), one
          uint8 x int8 GEMM (MatMulInteger, VNNI on x86; ORT fuses it with the scales and the bias into
          DynamicQuantizeMatMul) gives q.b - |b|^2/2 approximately; the bank's rows in groups of ``group``,
          the ``rerank`` best groups per query by their best row, that row of each re-ranked exactly in
          float32 inside the same graph

All store the bank's float32 vectors, so each distance they return is exact for the row it found; what
is approximate is which row. An approximate search can only miss the nearest row, never find a nearer
one: distances are >= exact ones. ``distill export`` raises the search parameter until the image scores
on its check images agree with exact search within a stated tolerance, and records what it measured.

faiss is an optional extra (``lineside[ann]``), never needed by the edge install: an artifact with an
index opened where faiss is missing is searched exactly, with a WARNING that says so. The int8 graph needs
only onnxruntime to run; building it needs ``onnx`` (distill's extra: export, and bench at other bank sizes).
"""
from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np

log = logging.getLogger("lineside.bank_index")

INDEX_KINDS = ("exact", "ivf", "hnsw", "int8")
FAISS_KINDS = ("ivf", "hnsw")
DEFAULT_INDEX = "exact"
INDEX_FILE = "bank.index"  # in the artifact, beside bank.npy: faiss.write_index
INT8_FILE = "bank.int8.onnx"  # in the artifact, beside bank.npy: the int8 search graph
IVF_POINTS_PER_LIST = 39  # faiss's k-means wants at least this many training points per centroid
IVF_LISTS_PER_SQRT_N = 2  # nlist ≈ 2·√N: about 2·√N vectors per list, the usual IVF balance
IVF_NPROBE = 4  # lists a query scans at first; export raises it until scores match exact search
HNSW_M = 32  # graph links per vector
HNSW_EF_CONSTRUCTION = 200  # candidates while building: a better graph, paid once at export
HNSW_EF_SEARCH = 32  # candidates per query at first; export raises it until scores match exact search
INT8_GROUP_ROWS = 16  # bank rows per group: each group offers its best row; fewer groups, cheaper selection
INT8_RERANK = 4  # groups re-ranked exactly per query at first; export raises it until scores match exact search
INT8_OPSET = 17
SEARCH_PARAM = {"ivf": "nprobe", "hnsw": "ef_search", "int8": "rerank"}  # what export tunes, per kind


def index_file(kind: str) -> str:
    """The artifact file an index kind is stored in ("" for exact search)."""
    return {"exact": ""}.get(kind, INT8_FILE if kind == "int8" else INDEX_FILE)


def default_params(kind: str, n: int) -> dict[str, int]:
    """Build and first search parameters for a bank of ``n`` rows."""
    if kind == "ivf":
        nlist = max(1, min(int(IVF_LISTS_PER_SQRT_N * math.sqrt(n)), n // IVF_POINTS_PER_LIST))
        return {"nlist": nlist, "nprobe": min(IVF_NPROBE, nlist)}
    if kind == "hnsw":
        return {"m": HNSW_M, "ef_search": HNSW_EF_SEARCH}
    if kind == "int8":
        group = max(1, min(INT8_GROUP_ROWS, n // (4 * INT8_RERANK)))  # a tiny bank: at least 4·rerank groups
        return {"group": group, "rerank": min(INT8_RERANK, -(-n // group))}
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
    """A faiss index of the (N, D) bank (the float16-rounded vectors the edge holds, as float32); for
    ``int8``, its ONNX graph (``build_int8_graph``)."""
    if kind == "int8":
        return build_int8_graph(bank, int(params["group"]))
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


def build_int8_graph(bank: np.ndarray, group: int) -> bytes:
    """The serialized ONNX graph of ``int8`` search over the (N, D) bank: inputs ``queries`` (M, D) float32 and
    ``rerank`` (1,) int64; outputs ``rows`` (M, rerank) int64, bank rows, and ``d2`` (M, rerank) float32, their
    exact squared distances. Standard ONNX ops only (opset ``INT8_OPSET``); ORT's optimizer fuses the GEMM."""
    from onnx import TensorProto, helper, numpy_helper

    b = np.asarray(bank, np.float32)
    n, d = b.shape
    groups = -(-n // group)
    pad = np.zeros((groups * group, d), np.float32)  # whole groups; padded rows never win (bias below)
    pad[:n] = b
    amax = np.abs(pad).max(1)
    scale = np.where(amax > 0, amax / 127.0, 1.0).astype(np.float32)  # per row, symmetric: zero point 0
    b8 = np.clip(np.rint(pad / scale[:, None]), -127, 127).astype(np.int8)
    bias = (-0.5 * np.einsum("nd,nd->n", pad, pad)).astype(np.float32)
    bias[n:] = np.finfo(np.float32).min / 2
    const = [numpy_helper.from_array(np.ascontiguousarray(b8.T), "bank_t_s8"),  # (D, Np): weights on the right
             numpy_helper.from_array(scale, "bank_scale"), numpy_helper.from_array(bias, "neg_half_sqnorm"),
             numpy_helper.from_array(pad, "bank_f32"),
             numpy_helper.from_array(np.array([0, groups, group], np.int64), "grouped_shape"),
             numpy_helper.from_array(np.array([group], np.int64), "group_rows"),
             numpy_helper.from_array(np.array([-1], np.int64), "last_axis"),
             numpy_helper.from_array(np.array([1], np.int64), "axis1"),
             numpy_helper.from_array(np.array([2], np.int64), "axis2")]
    node = helper.make_node
    nodes = [
        node("DynamicQuantizeLinear", ["queries"], ["q_u8", "q_scale", "q_zero"]),  # per call, per tensor
        node("MatMulInteger", ["q_u8", "bank_t_s8", "q_zero"], ["dot_i32"]),  # (M, Np) uint8 x int8
        node("Cast", ["dot_i32"], ["dot_f"], to=TensorProto.FLOAT),
        node("Mul", ["q_scale", "bank_scale"], ["dot_scale"]),
        node("Mul", ["dot_f", "dot_scale"], ["dot"]),  # ≈ q·b
        node("Add", ["dot", "neg_half_sqnorm"], ["near"]),  # ≈ (|q|² - d²(q, b)) / 2: larger is nearer
        node("Reshape", ["near", "grouped_shape"], ["near_g"]),  # (M, groups, group)
        node("ReduceMax", ["near_g"], ["group_best"], axes=[2], keepdims=0),  # (M, groups)
        node("TopK", ["group_best", "rerank"], ["_", "best_groups"], axis=1, largest=1, sorted=0),  # (M, r)
        node("Unsqueeze", ["best_groups", "last_axis"], ["best_groups_3"]),
        node("GatherND", ["near_g", "best_groups_3"], ["near_best"], batch_dims=1),  # (M, r, group)
        node("ArgMax", ["near_best"], ["in_group"], axis=2, keepdims=0),  # (M, r)
        node("Mul", ["best_groups", "group_rows"], ["first_row"]),
        node("Add", ["first_row", "in_group"], ["rows"]),  # (M, r) bank rows
        node("Gather", ["bank_f32", "rows"], ["cand"], axis=0),  # (M, r, D): the re-rank, exact, float32
        node("Unsqueeze", ["queries", "axis1"], ["q_3"]),
        node("Sub", ["cand", "q_3"], ["diff"]),
        node("Mul", ["diff", "diff"], ["diff2"]),
        node("ReduceSum", ["diff2", "axis2"], ["d2"], keepdims=0),  # (M, r)
    ]
    graph = helper.make_graph(
        nodes, "lineside_int8_knn",
        [helper.make_tensor_value_info("queries", TensorProto.FLOAT, ["M", d]),
         helper.make_tensor_value_info("rerank", TensorProto.INT64, [1])],
        [helper.make_tensor_value_info("rows", TensorProto.INT64, ["M", "R"]),
         helper.make_tensor_value_info("d2", TensorProto.FLOAT, ["M", "R"])], initializer=const)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", INT8_OPSET)],
                              producer_name="lineside.bank_index")
    helper.set_model_props(model, {"rows": str(n), "group": str(group), "groups": str(groups)})
    return model.SerializeToString()


class Int8Index:
    """``build_int8_graph``'s graph on ONNX Runtime with the manifest's ``rerank``: ``knn(queries, k)`` is
    ``kernels.dispatch.knn_score``'s contract, (M, D) -> (M,) float32 mean distance to the k nearest found."""

    kind = "int8"

    def __init__(self, model: bytes, params: dict[str, int], threads: int | None = None):
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.inter_op_num_threads = 1
        if threads is not None:
            so.intra_op_num_threads = int(threads)
        self.model, self.threads = model, threads
        self.session = ort.InferenceSession(model, so, providers=["CPUExecutionProvider"])
        meta = self.session.get_modelmeta().custom_metadata_map
        self.rows, self.groups = int(meta["rows"]), int(meta["groups"])
        if int(meta["group"]) != int(params["group"]):
            raise ValueError(f"int8 index graph has groups of {meta['group']} rows, the manifest says {params['group']}")
        self.params = dict(params)
        self.set_search(self.params["rerank"])

    def set_search(self, value: int) -> None:
        if not 1 <= int(value) <= self.groups:
            raise ValueError(f"int8 index: rerank={value} must be in [1, {self.groups}] (groups of the bank)")
        self.params["rerank"] = int(value)
        self._rerank = np.array([int(value)], np.int64)

    def knn(self, queries: np.ndarray, k: int = 1) -> np.ndarray:
        if k > self.params["rerank"]:
            raise ValueError(f"int8 index re-ranks {self.params['rerank']} candidates per query, fewer than k={k}; "
                             "raise rerank")
        _, d2 = self.session.run(None, {"queries": np.ascontiguousarray(queries, np.float32), "rerank": self._rerank})
        d = np.sqrt(np.maximum(d2, 0.0))
        d = d.min(1) if k == 1 else np.partition(d, k - 1, axis=1)[:, :k].mean(1)
        return d.astype(np.float32)


def new_index(bank: np.ndarray, kind: str, params: dict[str, int], threads: int | None = None):
    """Build ``kind``'s index of the bank and open it for search with ``params``."""
    if kind == "int8":
        return Int8Index(build_int8_graph(bank, int(params["group"])), params, threads)
    return BankIndex(build_index(bank, kind, params), kind, params, threads)


def save_index(bank_index, path: str | Path) -> Path:
    if bank_index.kind == "int8":
        Path(path).write_bytes(bank_index.model)
    else:
        require_faiss().write_index(bank_index.index, str(path))
    return Path(path)


def open_index(artifact_dir: str | Path, spec, threads: int | None = None) -> BankIndex | Int8Index | None:
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
    if spec.kind == "int8":  # onnxruntime only: the edge has it
        return Int8Index(path.read_bytes(), spec.params, threads)
    try:
        faiss = require_faiss()
    except ImportError as e:
        log.warning("artifact has a %s index but %s: searching the bank exactly instead", spec.kind, e)
        return None
    return BankIndex(faiss.read_index(str(path)), spec.kind, spec.params, threads)
