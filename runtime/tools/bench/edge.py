"""`lineside bench edge`: the whole edge path, stage by stage, as the daemon runs it for one frame.

    lineside bench edge --artifact ART --json

    decode      a JPEG frame (network size, a smooth seeded texture) -> uint8 RGB: runtime.contracts.protocol.decode_image
    preprocess  Engine.judge's own stage figures (Verdict.latencies_ms) ...
    backend     ... the edge graph on the backend the daemon would pick
    scoring     ... kNN + map + (on a defect verdict) regions
    knn, map, regions   the scoring stage's parts, each timed alone on the same frame with the functions
                judge calls (runtime.scoring, kernels.dispatch): where the scoring time goes

Rows: at the artifact's input size and at ``EDGE_SIZE_PX`` (a timing-only copy, `distill retarget`, when the
artifact was made for another size: the INT8 model calibrated on random inputs, right for speed only);
with 1 thread and with every core (backend intra-op, BLAS, OpenCV and faiss held to it, as the daemon
holds them); with the shipped bank and a bank ``BANK_FACTORS`` times larger (the bank's rows resampled
with a little seeded jitter: the search's cost depends on the bank's size, not its values); for each
search, the artifact's own and ``SEARCHES`` (exact, int8 GEMM + re-rank, faiss IVF), each built on that
bank (runtime.bank_index.new_index, the tuned search parameter where it is the artifact's kind). Peers: `teacher peers --json` (a subprocess: torch stays out of this
process) times EfficientAD-S and a PatchCore over ImageNet EfficientNet-Lite0 at ``EDGE_SIZE_PX``, 1 thread,
in the same run, so the ratio is read from one run on one machine. Medians of ``runs`` frames.
"""
from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np

log = logging.getLogger("lineside.bench")

EDGE_SIZE_PX = 256  # what lines run
BANK_FACTORS = (1, 4)
EDGE_WARMUP = 5
QUICK_RUNS = 5
JPEG_QUALITY = 95  # runtime.contracts.protocol.image_frames' default: what `lineside send` sends
STAGES = ("decode", "preprocess", "backend", "scoring", "knn", "map", "regions")
BANK_JITTER = 0.05  # of each column's spread: resampled rows stay distinct vectors
SCORING_SHARE_TARGET = 0.25  # issue 16: scoring <= 25 % of the backend at 256 px, 1 thread
PEER_SPEEDUP_TARGET = 100.0  # issue 16: the whole edge path >= 100x faster than EfficientAD-S
SEARCHES = ("exact", "int8", "ivf")  # timed beside the artifact's own search (runtime.bank_index.INDEX_KINDS)


def edge_frame(size: int, seed: int = 0) -> np.ndarray:
    """A smooth seeded texture, uint8 RGB (size, size, 3): JPEG-decodes like a camera frame, unlike noise."""
    import cv2

    base = np.random.default_rng(seed).standard_normal((size, size, 3)).astype(np.float32)
    tex = cv2.GaussianBlur(base, (0, 0), 3.0)
    return np.clip(128 + 50 * tex / (tex.std() + 1e-6), 0, 255).astype(np.uint8)


def larger_bank(bank: np.ndarray, factor: int, seed: int = 0) -> np.ndarray:
    """``factor`` × the rows: the bank, then its rows resampled with seeded jitter, float16-rounded as shipped."""
    if factor == 1:
        return bank
    rng = np.random.default_rng(seed)
    extra = bank[rng.integers(0, len(bank), (factor - 1) * len(bank))]
    extra = extra + BANK_JITTER * bank.std(0) * rng.standard_normal(extra.shape).astype(np.float32)
    return np.concatenate([bank, extra]).astype(np.float16).astype(np.float32)


def _index_for(kind: str, tuned: dict[str, int], bank: np.ndarray, threads: int, k: int = 1):
    """Search ``kind`` on ``bank``: None (exact), or the index rebuilt for this bank size with the search
    parameter ``tuned`` (export's, where the artifact has this kind; else the kind's default)."""
    from runtime.bank_index import SEARCH_PARAM, default_params, new_index

    if kind == "exact":
        return None
    params = default_params(kind, len(bank))
    key = SEARCH_PARAM[kind]
    if key in tuned:
        params[key] = tuned[key]
    if kind == "int8":  # k candidates at least, at most one per group
        params[key] = min(max(params[key], k), -(-len(bank) // params["group"]))
    return new_index(bank, kind, params, threads)


def _search_kinds(eng, searches) -> tuple[str, ...]:
    """The artifact's own search first, then ``searches`` (each timed on the same frames), the ones whose
    library is missing left out with a note in the log."""
    from runtime.bank_index import require_faiss

    kinds = [eng.manifest.scoring.index.kind] + [k for k in searches if k != eng.manifest.scoring.index.kind]
    out = []
    for k in kinds:
        try:
            if k in ("ivf", "hnsw"):
                require_faiss()
            elif k == "int8" and importlib.util.find_spec("onnx") is None:  # to build the graph (distill's extra)
                raise ImportError("onnx is not installed (pip install 'lineside[distill]')")
        except ImportError as e:
            log.warning("bench edge: no %s search rows: %s", k, e)
            continue
        out.append(k)
    return tuple(out)


def time_path(eng, jpeg_frames: list[bytes], runs: int, warmup: int) -> dict[str, float]:
    """Median ms per stage (``STAGES``) and of the whole path, one frame at a time."""
    from kernels import dispatch
    from runtime.contracts.protocol import decode_header, decode_image
    from runtime.scoring import embedding_to_queries, find_regions

    s = eng.manifest.scoring
    per: dict[str, list[float]] = {k: [] for k in STAGES + ("total",)}
    for i in range(warmup + runs):
        t0 = time.perf_counter()
        img = decode_image(decode_header(jpeg_frames), jpeg_frames)
        t1 = time.perf_counter()
        v = eng.judge(img)
        t2 = time.perf_counter()
        # the scoring stage's parts, alone, on this frame's outputs (what judge called, in its order)
        out = eng.forward(img)
        q, (h, w) = embedding_to_queries(out[s.embedding_output])
        t3 = time.perf_counter()
        dist = dispatch.knn_score(q, eng.bank, k=s.k) if eng.index is None else eng.index.knn(q, s.k)
        t4 = time.perf_counter()
        amap, _ = dispatch.anomaly_map(dist.reshape(h, w), (eng.size, eng.size), s.blur_sigma_px, s.score_topk)
        t5 = time.perf_counter()
        find_regions(amap, eng.region_level, s.min_region_px, "anomaly", threshold=eng.threshold)
        t6 = time.perf_counter()
        if i < warmup:
            continue
        lat = v.latencies_ms
        for k, ms in (("decode", (t1 - t0) * 1e3), ("preprocess", lat["preprocess"]), ("backend", lat["backend"]),
                      ("scoring", lat["scoring"]), ("knn", (t4 - t3) * 1e3), ("map", (t5 - t4) * 1e3),
                      ("regions", (t6 - t5) * 1e3), ("total", (t2 - t0) * 1e3)):
            per[k].append(ms)
    return {k: float(np.median(v)) for k, v in per.items()}


def bench_artifact(art: Path, *, threads_list, bank_factors, runs: int, warmup: int, backend: str = "auto",
                   timing_only: bool = False, searches: tuple[str, ...] = ()) -> list[dict]:
    """A row per threads × bank factor × search: the artifact's own search, then each of ``searches``
    (runtime.bank_index.INDEX_KINDS) on the same bank, with the search parameter export tuned when it is the
    artifact's kind, else the kind's default (its distances are then not checked here: the check is export's)."""
    from runtime.engine import Engine
    from runtime.daemon.threads import MathThreadLimit
    from runtime.contracts.protocol import image_frames

    rows = []
    for threads in threads_list:
        with MathThreadLimit(threads):
            eng = Engine(art, backend, threads, allow_forced=True)  # timing: a forced model runs at the same speed
            try:
                frames = image_frames("frame", edge_frame(eng.size), encoding="jpeg", jpeg_quality=JPEG_QUALITY)
                shipped, own = eng.bank, eng.index
                tuned = dict(eng.manifest.scoring.index.params)
                for factor in bank_factors:
                    eng.bank = larger_bank(shipped, factor)
                    for kind in _search_kinds(eng, searches):
                        own_kind = kind == eng.manifest.scoring.index.kind
                        eng.index = (own if factor == 1 and own_kind else
                                     _index_for(kind, tuned if own_kind else {}, eng.bank, threads,
                                                eng.manifest.scoring.k))
                        st = time_path(eng, frames, runs, warmup)
                        rows.append({"size": eng.size, "threads": threads, "bank_factor": factor,
                                     "bank_rows": int(len(eng.bank)), "bank_dim": int(eng.bank.shape[1]),
                                     "search": kind, "search_params": dict(eng.index.params) if eng.index else {},
                                     "artifact_search": own_kind, "backend": eng.backend_name,
                                     "model": eng.manifest.models.get(eng.model_role, ""), "timing_only": timing_only,
                                     "stages_ms": {k: round(st[k], 4) for k in STAGES}, "total_ms": round(st["total"], 4),
                                     "scoring_over_backend": round(st["scoring"] / st["backend"], 4),
                                     "runs": runs})
            finally:
                eng.close()
    return rows


def _retargeted(art: Path, size: int, work: Path, env: dict) -> tuple[Path | None, str]:
    """``art`` at ``size`` px through `distill retarget` (a subprocess), or (None, why not)."""
    from runtime.tools.bench.common import run_json_command
    from runtime.tools.demo.steps import StepError
    from runtime.contracts.manifest import load_manifest

    if "torch" not in load_manifest(art, verify=False).models:
        return None, f"the artifact has no torch weights to re-export at {size} px (distill retarget needs them)"
    out = work / f"edge-{size}"
    try:
        run_json_command("distill", ["retarget", art, "--size", size, "--out", out, "--json"], env)
    except (StepError, subprocess.TimeoutExpired, OSError) as e:
        return None, f"distill retarget failed: {e}"
    return out, ""


def bench_peers(env: dict, size: int = EDGE_SIZE_PX) -> dict:
    """`teacher peers --size S --threads 1 --json`: EfficientAD-S and PatchCore-Lite0, each with a status."""
    from runtime.tools.bench.common import run_json_command
    from runtime.tools.demo.steps import StepError

    try:
        return {"status": "ok", **run_json_command("teacher", ["peers", "--size", size, "--threads", 1, "--json"], env)}
    except (StepError, subprocess.TimeoutExpired, OSError) as e:
        return {"status": "error", "error": f"{type(e).__name__}: {e}"}


def run_edge_bench(art: str | Path, *, env: dict, runs: int, quick: bool = False, peers: bool = True,
                   backend: str = "auto") -> dict:
    """Every row (size × threads × bank), the peers and the targets of issue 16."""
    from runtime.contracts.manifest import load_manifest

    art = Path(art)
    man = load_manifest(art)
    cores = os.cpu_count() or 1
    threads_list = sorted({1, cores})
    runs = min(runs, QUICK_RUNS) if quick else runs
    warmup = 1 if quick else EDGE_WARMUP
    kw = dict(threads_list=threads_list, bank_factors=BANK_FACTORS, runs=runs, warmup=warmup, backend=backend,
              searches=SEARCHES)
    report: dict = {"status": "ok", "artifact": str(art), "student": man.student, "artifact_size": man.preprocess.size,
                    "sizes": sorted({man.preprocess.size, EDGE_SIZE_PX}), "threads": threads_list,
                    "bank_factors": list(BANK_FACTORS), "search": man.scoring.index.kind, "searches": list(SEARCHES),
                    "frame": f"JPEG q{JPEG_QUALITY} at the network size",
                    "rows": bench_artifact(art, **kw)}
    if man.preprocess.size != EDGE_SIZE_PX:
        work = Path(tempfile.mkdtemp(prefix="lineside-bench-edge-"))
        try:
            at, why = _retargeted(art, EDGE_SIZE_PX, work, env)
            if at is None:
                report[f"at_{EDGE_SIZE_PX}"] = {"status": "skipped", "reason": why}
            else:
                report["rows"] += bench_artifact(at, timing_only=True, **kw)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    report["peers"] = (bench_peers(env) if peers and not quick else
                       {"status": "skipped", "reason": "--quick (torch start-up and two models)" if quick else "not asked"})
    report["targets"] = edge_targets(report)
    return report


def edge_targets(report: dict) -> list[dict]:
    """Issue 16's figures at EDGE_SIZE_PX, 1 thread: scoring / backend per bank size and search (the artifact's
    own search unsuffixed, the others ``_<search>``); edge (the artifact's search) vs EfficientAD-S."""
    at = [r for r in report["rows"] if r["size"] == EDGE_SIZE_PX and r["threads"] == 1]
    out = []
    for r in at:
        v = r["scoring_over_backend"]
        name = f"scoring_over_backend_{EDGE_SIZE_PX}_bank_x{r['bank_factor']}"
        out.append({"target": name if r.get("artifact_search", True) else f"{name}_{r['search']}",
                    "limit": f"<= {SCORING_SHARE_TARGET}", "measured": v, "pass": v <= SCORING_SHARE_TARGET,
                    "search": r["search"], "bank_rows": r["bank_rows"]})
    at = [r for r in at if r.get("artifact_search", True)]
    peers = report.get("peers") or {}
    eff = (peers.get("results") or {}).get("efficientad_s") or {}
    edge = next((r["total_ms"] for r in at if r["bank_factor"] == 1), None)
    ratio = eff["median_ms"] / edge if eff.get("status") == "ok" and edge else None
    out.append({"target": "edge_vs_efficientad_s", "limit": f">= {PEER_SPEEDUP_TARGET:g} x faster", "measured": ratio,
                "pass": None if ratio is None else ratio >= PEER_SPEEDUP_TARGET,
                **({"why": eff.get("reason") or peers.get("reason") or peers.get("error") or "not measured"}
                   if ratio is None else {})})
    return out


def print_edge_table(report: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    c = Console()
    t = Table(title=f"edge path, student {report['student']} ({report['frame']}), median ms")
    for col in ("size", "threads", "bank", "backend") + STAGES + ("total", "scoring/backend"):
        t.add_column(col)
    for r in report["rows"]:
        t.add_row(f"{r['size']}{'*' if r['timing_only'] else ''}", str(r["threads"]), f"{r['bank_rows']} {r['search']}",
                  r["backend"], *(f"{r['stages_ms'][k]:.2f}" for k in STAGES), f"{r['total_ms']:.2f}",
                  f"{r['scoring_over_backend']:.2f}")
    c.print(t)
    if any(r["timing_only"] for r in report["rows"]):
        c.print("* timing-only copy (distill retarget): INT8 calibrated on random inputs")
    for name, p in ((report.get("peers") or {}).get("results") or {}).items():
        c.print(f"peer {name}: " + (f"{p['median_ms']:.1f} ms ({p.get('what', '')})" if p.get("status") == "ok"
                                    else f"{p.get('status')}: {p.get('reason') or p.get('error')}"))
    for tg in report["targets"]:
        c.print(f"target {tg['target']} {tg['limit']}: measured {tg['measured']} -> "
                f"{ {True: 'pass', False: 'FAIL', None: 'n/a ' + tg.get('why', '')}[tg['pass']] }")
