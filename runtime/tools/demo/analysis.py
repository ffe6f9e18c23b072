"""The demo's figures, computed from what the run produced: the daemon's verdicts, the artifact,
the checkpoints on disk and the JSON the eval commands printed. Nothing here is written in: a
figure that cannot be computed from this run is reported as missing, with the reason.

Pure functions over plain data (numpy + runtime), so tests can feed them synthetic verdicts.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Iterable, Mapping

import numpy as np

from runtime import metrics
from runtime.contracts.verdict import Verdict

LEVELS = ("s8", "s16", "s32", "s64")
SD15_SIZE = 256  # px: the production teacher's comparison size (the distill issue's 300x target)
TABLE_METRICS = ("image_auroc", "pixel_auroc", "au_pro", "f1")  # the table's columns
_ALIASES = {
    "image_auroc": ("image_auroc", "i_auroc", "img_auroc", "auroc_image", "I-AUROC"),
    "pixel_auroc": ("pixel_auroc", "p_auroc", "px_auroc", "auroc_pixel", "P-AUROC"),
    "au_pro": ("au_pro", "aupro", "AU-PRO"),
    "f1": ("image_f1_max", "f1_max", "f1", "image_f1", "F1"),
}


# ------------------------------------------------------------------------- reading other commands' JSON

def _num(v) -> float | None:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    v = float(v)
    return v if math.isfinite(v) else None


def find_metric(obj: Mapping | None, name: str) -> float | None:
    """A table metric from a flat-or-nested metrics dict (first alias found at the shallowest depth)."""
    if not isinstance(obj, Mapping):
        return None
    for alias in _ALIASES.get(name, (name,)):
        if alias in obj and _num(obj[alias]) is not None:
            return _num(obj[alias])
    for key in ("metrics", "detection", "image", "pixel", "test"):
        if isinstance(obj.get(key), Mapping):
            v = find_metric(obj[key], name)
            if v is not None:
                return v
    return None


def metric_row(obj: Mapping | None) -> dict[str, float | None]:
    """The table's metrics, plus F1 at the deployed threshold from the precision/recall there if given."""
    row: dict[str, float | None] = {m: find_metric(obj, m) for m in TABLE_METRICS}
    src = obj.get("metrics", obj) if isinstance(obj, Mapping) else {}
    p, r = _num(src.get("precision")), _num(src.get("recall"))
    if p is not None and r is not None:
        row["f1_at_threshold"] = 2 * p * r / (p + r) if p + r > 0 else 0.0
    return row


def _find_key(obj, pred, depth: int = 0, max_depth: int = 4):
    """Depth-first: first (key, value) whose key satisfies ``pred``."""
    if depth > max_depth or not isinstance(obj, Mapping):
        return None
    for k, v in obj.items():
        if pred(str(k)):
            return k, v
    for v in obj.values():
        r = _find_key(v, pred, depth + 1, max_depth)
        if r is not None:
            return r
    return None


def student_variants(distill_eval: Mapping | None) -> dict[str, Mapping]:
    """distill eval's per-model results: {"fp32": {...}, "int8": {...}} (whatever keys it used)."""
    if not isinstance(distill_eval, Mapping):
        return {}
    for key in ("student", "variants", "models", "students", "results"):
        v = distill_eval.get(key)
        if isinstance(v, Mapping) and v and all(isinstance(x, Mapping) for x in v.values()):
            return dict(v)
        if isinstance(v, list) and v and all(isinstance(x, Mapping) for x in v):
            return {str(x.get("name") or x.get("model") or x.get("variant") or i): x for i, x in enumerate(v)}
    out = {k: v for k, v in distill_eval.items() if isinstance(v, Mapping) and
           any(t in str(k).lower() for t in ("fp32", "int8", "fp16"))}
    return out


def pick_variant(variants: Mapping[str, Mapping], want: str) -> Mapping | None:
    """The variant named exactly ``want`` (e.g. "int8"), else the first whose name contains it."""
    if want in variants:
        return variants[want]
    for k, v in variants.items():
        if want in str(k).lower():
            return v
    return None


def student_latency(distill_eval: Mapping | None, role: str) -> tuple[float | None, str | None]:
    """Fastest median per-image latency (ms) of the student ``role`` (fp32/int8) over the backends
    distill eval timed: ``latency.backends["<backend>-<role>"].median_ms``."""
    backends = ((distill_eval or {}).get("latency") or {}).get("backends") or {}
    best, where = None, None
    for name, r in backends.items():
        if not isinstance(r, Mapping) or not str(name).endswith(f"-{role}"):
            continue
        v = _num(r.get("median_ms"))
        if v is not None and (best is None or v < best):
            best, where = v, str(name)
    return best, where


def feature_cosine(distill_eval: Mapping | None) -> dict[str, float]:
    """Per-level cosine similarity between student and teacher features, from distill eval's JSON."""
    hit = _find_key(distill_eval, lambda k: "cos" in k.lower())
    if hit is None:
        return {}
    _, v = hit
    if isinstance(v, Mapping):
        # {"s8": 0.9, ...} or {"s8": {"mean": 0.9}} or {"fp32": {"s8": ...}}
        flat = {}
        for k, x in v.items():
            if _num(x) is not None:
                flat[str(k)] = _num(x)
            elif isinstance(x, Mapping):
                m = _num(x.get("mean")) if "mean" in x else None
                if m is not None:
                    flat[str(k)] = m
                elif str(k).lower() in ("fp32", "student", "torch") or not flat:
                    inner = {str(a): _num(b) for a, b in x.items() if _num(b) is not None}
                    if inner and set(inner) & set(LEVELS):
                        return inner
        return flat
    return {}


# ------------------------------------------------------------------------- verdicts → figures

def cascade_score(edge: Verdict, resolution: Verdict | None, band: tuple[float, float]) -> float:
    """One score per frame for the cascade's ROC: the edge score, except that a frame the teacher
    decided is placed beyond the band on the teacher's side (ordered by the teacher's confidence),
    so the curve ranks frames the way the cascade decides them."""
    lo, hi = band
    if resolution is not None and resolution.decided_by == "teacher" and resolution.status == "ok":
        margin = max(hi - lo, 1e-6)
        c = float(resolution.confidence) if math.isfinite(resolution.confidence) else 0.0
        if resolution.decision == "defect":
            return hi + margin * (1.0 + c)
        if resolution.decision == "good":
            return lo - margin * (1.0 + c)
    return float(edge.score)


def percentiles(values: Iterable[float]) -> dict[str, float]:
    v = np.asarray([x for x in values if x is not None and math.isfinite(x)], float)
    if v.size == 0:
        return {"n": 0}
    return {"n": int(v.size), "mean": float(v.mean()), "p50": float(np.percentile(v, 50)),
            "p90": float(np.percentile(v, 90)), "p99": float(np.percentile(v, 99)), "max": float(v.max())}


def verdict_figures(frame_ids: list[str], labels: Mapping[str, int], store, band: tuple[float, float],
                    threshold: float, types: Mapping[str, str] | None = None) -> dict:
    """Everything the daemon's verdicts tell: counts, fallback rate, edge and cascade detection
    metrics (with the confusion counts, false-reject and escape rates and, given each frame's defect
    type in ``types``, recall per type), latency per stage. ``store`` is a stream.Collected
    (edge/resolution/final per frame)."""
    n = len(frame_ids)
    edge = {f: store.edge(f) for f in frame_ids}
    res = {f: store.resolution(f) for f in frame_ids}
    have_edge = [f for f in frame_ids if edge[f] is not None]
    pending = [f for f in have_edge if edge[f].pending]
    teacher = [f for f in frame_ids if res[f] is not None and res[f].decided_by == "teacher" and res[f].status == "ok"]
    unreachable = [f for f in frame_ids if res[f] is not None and res[f].status == "teacher_unreachable"]
    errors = [f for f in have_edge if edge[f].status != "ok"]
    out: dict = {
        "frames_sent": n,
        "edge_verdicts": len(have_edge),
        "missing_edge_verdicts": [f for f in frame_ids if edge[f] is None],
        "edge_errors": len(errors),
        "in_band": sum(1 for f in have_edge if edge[f].in_band),
        "ood": sum(1 for f in have_edge if edge[f].ood),
        "pending": len(pending),
        "teacher_verdicts": len(teacher),
        "teacher_unreachable": len(unreachable),
        "unresolved_pending": [f for f in pending if res[f] is None],
        "fallback_rate": (len(pending) / len(have_edge)) if have_edge else None,
        "decisions_changed_by_teacher": sum(1 for f in teacher if edge[f] is not None
                                            and res[f].decision != edge[f].decision),
    }
    # detection metrics over the labelled frames only (not the foreign test-pattern frame)
    ok = [f for f in have_edge if f in labels and edge[f].status == "ok" and math.isfinite(edge[f].score)]
    y = np.array([labels[f] for f in ok], int)
    if ok:
        s_edge = np.array([edge[f].score for f in ok], float)
        s_casc = np.array([cascade_score(edge[f], res[f], band) for f in ok], float)
        d_edge = np.array([edge[f].decision == "defect" for f in ok])
        d_casc = np.array([(store.final(f).decision == "defect") for f in ok])
        for name, s, d in (("edge", s_edge, d_edge), ("cascade", s_casc, d_casc)):
            m: dict = {"n": len(ok), "f1_at_threshold": _f1(y, d), "accuracy": float((d == y.astype(bool)).mean()),
                       **decision_counts(y, d, [(types or {}).get(f, "defect") for f in ok])}
            if 0 < y.sum() < y.size:
                m["image_auroc"] = metrics.image_auroc(y, s)
                m["f1"] = metrics.f1_max(y, s)[0]
                fpr, tpr, _ = metrics.roc_curve(y, s)
                m["roc"] = (fpr.tolist(), tpr.tolist())
            out[name] = m
        out["confusion"] = {f: _outcome(labels[f], store.final(f).decision == "defect") for f in ok}
    stages: dict[str, list[float]] = {}
    for f in have_edge:
        for k, v in edge[f].latencies_ms.items():
            stages.setdefault(f"edge.{k}", []).append(float(v))
    for f in teacher:
        for k, v in res[f].latencies_ms.items():
            stages.setdefault(f"teacher.{k}", []).append(float(v))
    e2e_edge = [1000 * (edge[f].ts_verdict - edge[f].ts_frame) for f in have_edge
                if edge[f].ts_verdict and edge[f].ts_frame]
    e2e_teacher = [1000 * (res[f].ts_verdict - res[f].ts_frame) for f in teacher
                   if res[f].ts_verdict and res[f].ts_frame]
    out["latency_ms"] = {k: percentiles(v) for k, v in sorted(stages.items())}
    out["latency_samples_ms"] = stages
    out["end_to_end_ms"] = {"edge": percentiles(e2e_edge), "teacher": percentiles(e2e_teacher)}
    out["end_to_end_samples_ms"] = {"edge": e2e_edge, "teacher": e2e_teacher}
    return out


def decision_counts(y: np.ndarray, d: np.ndarray, types: list[str]) -> dict:
    """Confusion counts ("defect" positive), false-reject and escape rates, recall per defect type: the
    figures runtime.quality keeps per row, from decisions alone."""
    y, d, t = np.asarray(y).astype(bool), np.asarray(d).astype(bool), np.asarray(types)
    out: dict = {"confusion": {"tp": int((y & d).sum()), "fp": int((~y & d).sum()), "fn": int((y & ~d).sum()),
                               "tn": int((~y & ~d).sum())},
                 "false_reject_rate": float(d[~y].mean()) if (~y).any() else None,
                 "escape_rate": float(1 - d[y].mean()) if y.any() else None}
    out["recall_per_type"] = {k: float(d[y & (t == k)].mean()) for k in sorted(set(t[y].tolist()))}
    return out


def _f1(y: np.ndarray, d: np.ndarray) -> float:
    y = y.astype(bool)
    tp = int((y & d).sum())
    fp = int((~y & d).sum())
    fn = int((y & ~d).sum())
    return 2 * tp / (2 * tp + fp + fn) if (2 * tp + fp + fn) else 1.0


def _outcome(label: int, predicted_defect: bool) -> str:
    if label:
        return "TP" if predicted_defect else "FN"
    return "FP" if predicted_defect else "TN"


def sample_by_outcome(confusion: Mapping[str, str], per_kind: int) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {"TP": [], "FP": [], "FN": [], "TN": []}
    for f, k in confusion.items():
        if len(out[k]) < per_kind:
            out[k].append(f)
    return out


# Whether a verdict's regions and its map's peak fall on the ground truth (the overlays' captions). A box over
# more than WIDE_BOX_SHARE of the frame "overlaps" any defect by its size alone, so it does not count as on it;
# the peak may sit PEAK_TOLERANCE_PX off a thin mask (half a stride-8 feature cell at image size).
WIDE_BOX_SHARE = 0.5
PEAK_TOLERANCE_PX = 4


def localisation(gt: np.ndarray, regions, anomaly_map: np.ndarray | None = None) -> dict:
    """Where one frame's regions and map put the defect against its ground-truth mask (H, W) bool, regions with
    .bbox (x0, y0, x1, y1, exclusive, image pixels), the map at the mask's size. -> {"regions", "on_defect" (a box
    under WIDE_BOX_SHARE of the frame holds a ground-truth pixel), "wide_only" (only a wider box does),
    "box_share" (the widest box's share of the frame), "peak_xy", "peak_on_defect"}; the last two None without a
    map, and "on_defect" None on a frame without a defect."""
    gt = np.asarray(gt, bool)
    h, w = gt.shape
    has_defect = bool(gt.any())
    on, wide, share = False, False, 0.0
    for r in regions or []:
        x0, y0, x1, y1 = (int(v) for v in r.bbox)
        x0, y0, x1, y1 = max(x0, 0), max(y0, 0), min(x1, w), min(y1, h)
        a = max(0, x1 - x0) * max(0, y1 - y0) / float(h * w)
        share = max(share, a)
        if has_defect and a > 0 and gt[y0:y1, x0:x1].any():
            if a > WIDE_BOX_SHARE:
                wide = True
            else:
                on = True
    out = {"regions": len(regions or []), "on_defect": on if has_defect else None,
           "wide_only": wide and not on, "box_share": share, "peak_xy": None, "peak_on_defect": None}
    if anomaly_map is not None:
        m = np.asarray(anomaly_map, np.float32)
        py, px = (int(v) for v in np.unravel_index(int(np.nanargmax(m)), m.shape))
        out["peak_xy"] = (px, py)
        if has_defect:
            ys, xs = np.nonzero(gt)
            t = PEAK_TOLERANCE_PX
            near = (np.abs(ys - py) <= t) & (np.abs(xs - px) <= t)
            out["peak_on_defect"] = bool(near.any())
    return out


def localisation_words(loc: Mapping, who: str) -> str:
    """One caption phrase for ``localisation``'s result: "<who> regions on the defect", "... miss the defect", ...,
    and where the map peaks."""
    n = loc["regions"]
    if loc["on_defect"] is None:
        words = f"{who}: {n} region{'s' if n != 1 else ''}"
    elif not n:
        words = f"{who}: no region"
    elif loc["on_defect"]:
        words = f"{who} region on the defect"
    elif loc["wide_only"]:
        words = (f"{who} regions miss the defect: only a box over {loc['box_share']:.0%} of the frame covers it")
    else:
        words = f"{who} regions miss the defect"
    if loc["peak_xy"] is not None and loc["peak_on_defect"] is not None:
        x, y = loc["peak_xy"]
        words += f"; map peak at ({x}, {y}) {'on' if loc['peak_on_defect'] else 'off'} the defect"
    return words


def localisation_summary(records: Mapping[str, tuple], store, maps: Mapping) -> str:
    """One sentence over every frame with a defect the edge called defect (a TP by score): on how many its
    regions and its map's peak fall on the ground truth. records: frame id -> (image, gt_mask)."""
    hits = [(f, localisation(gt, store.edge(f).regions, maps.get(f))) for f, (_, gt) in records.items()
            if gt.any() and store.edge(f) is not None and store.edge(f).decision == "defect"]
    if not hits:
        return ""
    n = len(hits)
    on = sum(bool(loc["on_defect"]) for _, loc in hits)
    text = f"Of the {n} defect frame{'s' if n != 1 else ''} the edge called defect, its regions fall on the defect in {on}"
    peaks = [loc["peak_on_defect"] for _, loc in hits if loc["peak_on_defect"] is not None]
    if peaks:
        text += f", the student map's peak in {sum(peaks)} of {len(peaks)}"
    return text + (" (a box over half the frame does not count: it overlaps any defect by its size alone)." if
                   any(loc["wide_only"] for _, loc in hits) else ".")


# ------------------------------------------------------------------------- sizes and speed

def dir_bytes(path: Path, suffixes: tuple[str, ...] = (".safetensors", ".bin", ".pt", ".onnx", ".npy")) -> int:
    p = Path(path)
    if p.is_file():
        return p.stat().st_size
    return sum(f.stat().st_size for f in p.rglob("*") if f.is_file() and f.suffix in suffixes)


def safetensors_params(path: Path) -> int:
    """Parameter count of a .safetensors file from its JSON header (no torch needed)."""
    import json
    import struct

    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
    return int(sum(int(np.prod(t["shape"])) for k, t in header.items() if k != "__metadata__"))


def teacher_inference_files(ckpt: Path) -> list[Path]:
    """The weight files `teacher serve` loads: EMA copies where the checkpoint has them (load_teacher's
    default), the VAE, the mask head and the bank; not the training state or the raw (non-EMA) copies."""
    ckpt = Path(ckpt)
    ema = ckpt / "ema"
    files = []
    for f in sorted(ckpt.rglob("*")):
        if not f.is_file() or f.suffix not in (".safetensors", ".npy"):
            continue
        rel = f.relative_to(ckpt)
        top = rel.parts[0]
        if top != "ema" and ema.is_dir() and (ema / top).is_dir():
            continue  # superseded by its EMA copy
        files.append(f)
    return files


def model_sizes(teacher_ckpt: Path, artifact: Path, manifest) -> dict[str, int]:
    """Bytes on disk of what each side runs: the teacher's inference weights (EMA U-Net and encoders,
    VAE, head, bank) and each student model file of the artifact (an OpenVINO IR with its .bin)."""
    out = {"teacher": sum(f.stat().st_size for f in teacher_inference_files(teacher_ckpt))}
    for role, rel in (manifest.models or {}).items():
        f = Path(artifact) / rel
        if f.is_file():
            size = f.stat().st_size
            if f.suffix == ".xml" and f.with_suffix(".bin").is_file():
                size += f.with_suffix(".bin").stat().st_size
            out[f"student_{role}"] = size
    return out


def teacher_params(teacher_ckpt: Path) -> int:
    return sum(safetensors_params(f) for f in teacher_inference_files(teacher_ckpt) if f.suffix == ".safetensors")


def speed_figures(j: dict, vfig: dict, sizes: dict, student_eval=None) -> dict:
    """Teacher vs student per-image latency and size. From distill eval's side-by-side timing (same
    process, same input size: ``teacher_latency.median_ms`` vs the fastest INT8 backend's median);
    else from the verdicts' stage latencies (teacher server's feature stage vs the edge backend)."""
    out: dict = {}
    student_b = sizes.get("student_int8") or sizes.get("student_fp32")
    if student_b and sizes.get("teacher"):
        out["size_ratio"] = sizes["teacher"] / student_b
    de = j.get("distill-eval") or {}
    t_ms = _num((de.get("teacher_latency") or {}).get("median_ms"))
    s_ms, where = student_latency(de, "int8")
    if s_ms is None:
        s_ms, where = student_latency(de, "fp32")
    src = f"distill eval --json (teacher vs student {where}, one image, {(de.get('latency') or {}).get('threads', '?')} thread)"
    if t_ms is None or s_ms is None:
        lat = vfig.get("latency_ms", {})
        t_ms = _stage(lat, "teacher.", ("features", "extract", "model"))
        s_ms = _stage(lat, "edge.", ("backend", "infer", "model"))
        src = "verdict stage latencies (teacher server features vs edge backend)"
    f32, _ = student_latency(de, "fp32")
    i8, _ = student_latency(de, "int8")
    if f32 and i8:
        out["int8_vs_fp32"] = f32 / i8
    if t_ms and s_ms:
        out.update(teacher_ms=t_ms, student_ms=s_ms, speedup=t_ms / s_ms, source=src)
        out["note"] = f"per-image latency from {src}; the teacher here is the tiny preset at the demo's image size"
    else:
        out["note"] = "speedup not computed: no teacher and student per-image latency in this run's outputs"
    return out


def sd15_speed(teacher_bench: dict, student_eval: dict) -> dict:
    """Production teacher vs student at the same input size: `teacher bench --preset sd15 --json`
    (latency_s_per_image) against the fastest INT8 backend of `distill eval --student-only --json`."""
    t = next((r for r in teacher_bench.get("results", []) if r.get("size") == SD15_SIZE), None)
    s_ms, where = student_latency(student_eval, "int8")
    if s_ms is None:
        s_ms, where = student_latency(student_eval, "fp32")
    out: dict = {"size": SD15_SIZE, "teacher_device": teacher_bench.get("device"),
                 "teacher_unet_params": teacher_bench.get("unet_params")}
    if t and s_ms:
        t_ms = float(t["latency_s_per_image"]) * 1e3
        out.update(teacher_ms=t_ms, student_ms=s_ms, student_backend=where, speedup=t_ms / s_ms,
                   note=f"sd15 teacher ({teacher_bench.get('device')}, {teacher_bench.get('dtype')}) vs student "
                        f"{where}, both at {SD15_SIZE} px, one image, this machine")
    else:
        out["note"] = "not measured: no sd15 or no student latency in the outputs"
    return out


def _stage(lat: dict, prefix: str, words: tuple[str, ...]) -> float | None:
    for w in words:
        for k, v in lat.items():
            if k.startswith(prefix) and w in k[len(prefix):] and v.get("p50"):
                return v["p50"]
    return None
