"""`distill export --index ivf|hnsw|int8`: the bank's approximate nearest-neighbour index, checked against exact
search.

The index is built on the bank exactly as the edge holds it (float16 rounded, widened to float32), with
runtime.bank_index's parameters for that bank size. Its search parameter (IVF ``nprobe``, HNSW
``ef_search``, int8 ``rerank``) then starts low (never below k) and doubles until the image scores of the check images, scored through the
index by the same runtime.scoring function the edge uses, are within ``INDEX_SCORE_RTOL`` × threshold of
exact search (calibration's threshold and band were set with exact search). What was measured goes into
the manifest's ``scoring.index.check``.
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from distill.bank import ScoringParams, score_outputs
from runtime.bank_index import SEARCH_PARAM, default_params, index_file, new_index, save_index

INDEX_SCORE_RTOL = 0.01  # max |image score through the index − exact| / threshold on the check images


class IndexCheckError(ValueError):
    pass


def build_checked_index(bank: np.ndarray, outputs: list[dict], size: int, scoring: ScoringParams, kind: str,
                        threshold: float, out_dir: Path, threads: int = 1) -> dict:
    """Build, tune and write ``out_dir/index_file(kind)``; returns runtime.contracts.manifest.IndexSpec's fields."""
    from kernels import dispatch
    from runtime.scoring import embedding_to_queries

    params = default_params(kind, len(bank))
    key = SEARCH_PARAM[kind]
    # every list / every vector: exact again; int8: every group (its best row each)
    limit = {"ivf": params.get("nlist"), "int8": -(-len(bank) // params.get("group", 1))}.get(kind, len(bank))
    params[key] = min(limit, max(params[key], scoring.k))  # at least k candidates per query
    index = new_index(bank, kind, params, threads)
    exact = score_outputs(outputs, bank, size, scoring)
    queries = np.concatenate([embedding_to_queries(o["embedding"])[0] for o in outputs])
    t0 = time.perf_counter()
    d_exact = dispatch.knn_score(queries, bank, k=scoring.k)
    exact_ms = (time.perf_counter() - t0) * 1e3 / len(outputs)
    tol = INDEX_SCORE_RTOL * abs(threshold)
    tried = []
    while True:
        approx = score_outputs(outputs, bank, size, scoring, index=index)
        diff = float(np.abs(approx.scores - exact.scores).max())
        tried.append({key: index.params[key], "score_max_abs_diff": diff})
        if diff <= tol:
            break
        if index.params[key] >= limit:
            raise IndexCheckError(f"{kind} index: image scores differ from exact search by {diff:.3g} > {tol:.3g} "
                                  f"({INDEX_SCORE_RTOL} x threshold) even at {key}={limit}; use --index exact")
        index.set_search(min(limit, 2 * index.params[key]))
    t0 = time.perf_counter()
    d_index = index.knn(queries, scoring.k)
    index_ms = (time.perf_counter() - t0) * 1e3 / len(outputs)
    save_index(index, out_dir / index_file(kind))
    check = {"images": len(outputs), "score_max_abs_diff": diff, "score_tolerance": tol,
             "tolerance_basis": f"{INDEX_SCORE_RTOL} x threshold",
             "distance_max_rel_error": float(np.max((d_index - d_exact) / np.maximum(d_exact, 1e-12))),
             "decision_agreement": float(((approx.scores >= threshold) == (exact.scores >= threshold)).mean()),
             "knn_ms_per_image": {"exact": round(exact_ms, 3), kind: round(index_ms, 3), "threads": threads},
             "tried": tried}
    return {"kind": kind, "file": index_file(kind), "params": index.params, "check": check}
