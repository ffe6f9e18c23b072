"""The pictures lineside's reports show: matplotlib curves, histograms and bars (imported lazily, headless),
and overlays of anomaly maps and regions on frames (OpenCV only). Each writes or returns an image that
runtime/report.py's ``Report`` places on a page."""
from __future__ import annotations

from pathlib import Path
from typing import Iterable, Mapping, Sequence

import numpy as np

FIG_SIZE_IN = (4.2, 3.6)
FIG_DPI = 100
GT_COLOR_RGB = (0, 255, 0)
PRED_COLOR_RGB = (255, 255, 0)
BOX_COLOR_RGB = (255, 0, 255)


# ---------------------------------------------------------------- matplotlib figures (lazy import)

def _plt():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: str | Path) -> Path:
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(p, dpi=FIG_DPI)
    _plt().close(fig)
    return p


def plot_curves(path: str | Path, curves: Mapping[str, tuple[Iterable[float], Iterable[float]]], *,
                xlabel: str, ylabel: str, title: str = "", xlim: tuple[float, float] | None = None,
                ylim: tuple[float, float] | None = (0.0, 1.02), diagonal: bool = False) -> Path:
    """One line per ``name -> (x, y)``; writes a PNG and returns its path."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=FIG_SIZE_IN)
    for name, (x, y) in curves.items():
        ax.plot(np.asarray(x, float), np.asarray(y, float), label=name, lw=1.6)
    if diagonal:
        ax.plot([0, 1], [0, 1], ls="--", lw=0.8, color="grey")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if xlim:
        ax.set_xlim(*xlim)
    if ylim:
        ax.set_ylim(*ylim)
    if title:
        ax.set_title(title, fontsize=10)
    if curves:
        ax.legend(fontsize=8, loc="lower right")
    ax.grid(alpha=0.3)
    return _save(fig, path)


def plot_roc(path: str | Path, fpr, tpr, auc: float | None = None, name: str = "ROC", title: str = "") -> Path:
    label = f"{name} (AUROC {auc:.3f})" if auc is not None and np.isfinite(auc) else name
    return plot_curves(path, {label: (fpr, tpr)}, xlabel="false positive rate", ylabel="true positive rate",
                       title=title, xlim=(0, 1), diagonal=True)


def plot_pro(path: str | Path, fpr, pro, au_pro: float | None = None, fpr_limit: float = 0.3,
             title: str = "") -> Path:
    """Per-region overlap against pixel FPR, shown up to ``fpr_limit`` (AU-PRO's integration limit)."""
    label = f"PRO (AU-PRO {au_pro:.3f})" if au_pro is not None and np.isfinite(au_pro) else "PRO"
    return plot_curves(path, {label: (fpr, pro)}, xlabel="pixel false positive rate", ylabel="per-region overlap",
                       title=title, xlim=(0, fpr_limit))


LOG_SPAN = 20.0  # max/min of positive values beyond which a histogram's x axis is logarithmic


def _wants_log(values: np.ndarray) -> bool:
    return values.size > 1 and bool((values > 0).all()) and float(values.max() / values.min()) > LOG_SPAN


def plot_histogram(path: str | Path, series: Mapping[str, Iterable[float]], *, xlabel: str = "latency (ms)",
                   title: str = "", bins: int = 30, vlines: Mapping[str, float] | None = None,
                   log: bool | None = None) -> Path:
    """Overlaid histograms (e.g. good vs defect scores); ``vlines`` marks values such as a threshold.
    ``log``: a logarithmic x axis with log-spaced bins (None: when positive values span more than
    :data:`LOG_SPAN`x, as stage latencies of ~1 ms and ~900 ms do)."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=FIG_SIZE_IN)
    clean = {n: np.asarray(list(v), float) for n, v in series.items()}
    clean = {n: v[np.isfinite(v)] for n, v in clean.items()}
    every = np.concatenate([v for v in clean.values()] + [np.zeros(0)])
    log = _wants_log(every) if log is None else log
    edges = np.geomspace(every.min(), every.max() * 1.0001, bins + 1) if log and every.size > 1 else bins
    for name, v in clean.items():
        if v.size:
            ax.hist(v, bins=edges, alpha=0.55, label=f"{name} (n={v.size})")
    if log:
        ax.set_xscale("log")
    for name, x in (vlines or {}).items():
        ax.axvline(x, ls="--", color="k", lw=1)
        ax.text(x, ax.get_ylim()[1] * 0.95, f" {name}", fontsize=8, va="top")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("count")
    if title:
        ax.set_title(title, fontsize=10)
    if series:
        ax.legend(fontsize=8)
    return _save(fig, path)


def plot_stage_panels(path: str | Path, series: Mapping[str, Iterable[float]], *, xlabel: str = "ms",
                      title: str = "", bins: int = 20) -> Path:
    """One small panel per series (e.g. per latency stage), each on its own x range (logarithmic where it
    spans decades) with its p50 and p99 marked; a series of fewer than 5 values is drawn as labelled
    points, since a histogram of one value says nothing."""
    plt = _plt()
    names = [n for n, v in series.items() if np.isfinite(np.asarray(list(v), float)).any()] or ["(no samples)"]
    cols = min(3, len(names))
    rows = -(-len(names) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.2 * rows + (0.4 if title else 0)), squeeze=False)
    for ax in axes.ravel()[len(names):]:
        ax.axis("off")
    for ax, name in zip(axes.ravel(), names):
        v = np.asarray(list(series.get(name, [])), float)
        v = v[np.isfinite(v)]
        ax.set_title(f"{name} (n={v.size})", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.set_xlabel(xlabel, fontsize=7)
        if v.size == 0:
            continue
        log = v.size >= 5 and _wants_log(v)
        if v.size < 5:
            ax.plot(v, np.zeros_like(v), "o", color="#4c72b0")
            for x in v:
                ax.annotate(f"{x:.3g}", (x, 0), textcoords="offset points", xytext=(0, 6), fontsize=7, ha="center")
            ax.set_yticks([])
            lo, hi = float(v.min()), float(v.max())
            pad = 0.3 * (hi - lo) if hi > lo else 0.3 * abs(hi) + 1e-3
            ax.set_xlim(lo - pad, hi + pad)
        else:
            edges = np.geomspace(v.min(), v.max() * 1.0001, bins + 1) if log else bins
            ax.hist(v, bins=edges, color="#4c72b0", alpha=0.8)
            for q, ls in ((50, "--"), (99, ":")):
                ax.axvline(np.percentile(v, q), color="k", ls=ls, lw=0.9, label=f"p{q} {np.percentile(v, q):.3g}")
            ax.legend(fontsize=6)
        if log:
            ax.set_xscale("log")
    if title:
        fig.suptitle(title, fontsize=10)
    return _save(fig, path)


def plot_bars(path: str | Path, values: Mapping[str, float], *, ylabel: str = "", title: str = "",
              ylim: tuple[float, float] | None = None) -> Path:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(max(FIG_SIZE_IN[0], 0.6 * len(values) + 1.5), FIG_SIZE_IN[1]))
    names = list(values)
    ax.bar(range(len(names)), [float(values[n]) for n in names], color="#4c72b0")
    ax.set_xticks(range(len(names)))
    ax.set_xticklabels(names, rotation=30, ha="right", fontsize=8)
    ax.set_ylabel(ylabel)
    if ylim:
        ax.set_ylim(*ylim)
    if title:
        ax.set_title(title, fontsize=10)
    return _save(fig, path)


# ---------------------------------------------------------------- overlays (OpenCV only)

def overlay(image: np.ndarray, anomaly_map: np.ndarray | None = None, regions: Sequence | None = None,
            gt_mask: np.ndarray | None = None, pred_mask: np.ndarray | None = None, *, alpha: float = 0.45,
            map_range: tuple[float, float] | None = None, text: str = "", min_side: int = 256) -> np.ndarray:
    """RGB uint8 (H, W, 3) with the anomaly map as a jet heat map (scaled to ``map_range`` or its own
    min..max), region boxes with ``label conf`` (objects with .bbox/.label/.confidence, e.g.
    runtime.contracts.verdict.Region), predicted-mask contour in yellow, ground-truth contour in green, and an
    optional caption line at the top. Images whose longer side is under ``min_side`` are enlarged by
    an integer factor first (boxes scaled with them), so labels stay legible."""
    import cv2

    img = np.asarray(image)
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, axis=2)
    if img.dtype != np.uint8:
        raise ValueError(f"overlay: image must be uint8 RGB, got {img.dtype}")
    f = max(1, -(-int(min_side) // max(img.shape[:2]))) if min_side else 1
    if f > 1:
        img = cv2.resize(img, (img.shape[1] * f, img.shape[0] * f), interpolation=cv2.INTER_NEAREST)
    h, w = img.shape[:2]
    out = img.copy()
    if anomaly_map is not None:
        m = np.asarray(anomaly_map, np.float32)
        if m.shape != (h, w):
            m = cv2.resize(m, (w, h), interpolation=cv2.INTER_LINEAR)
        lo, hi = map_range if map_range is not None else (float(np.nanmin(m)), float(np.nanmax(m)))
        norm = np.clip((m - lo) / (hi - lo + 1e-12), 0, 1)
        heat = cv2.applyColorMap((norm * 255).astype(np.uint8), cv2.COLORMAP_JET)
        heat = cv2.cvtColor(heat, cv2.COLOR_BGR2RGB)
        out = cv2.addWeighted(out, 1 - alpha, heat, alpha, 0)
    thick = max(1, round(max(h, w) / 256))
    for mask, color in ((pred_mask, PRED_COLOR_RGB), (gt_mask, GT_COLOR_RGB)):
        if mask is None:
            continue
        mk = np.asarray(mask).astype(np.uint8)
        if mk.shape != (h, w):
            mk = cv2.resize(mk, (w, h), interpolation=cv2.INTER_NEAREST)
        contours, _ = cv2.findContours(mk, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        cv2.drawContours(out, contours, -1, color, thick)
    for r in regions or []:
        x0, y0, x1, y1 = (int(v) * f for v in r.bbox)
        cv2.rectangle(out, (x0, y0), (max(x0, x1 - 1), max(y0, y1 - 1)), BOX_COLOR_RGB, thick)
        cv2.putText(out, f"{r.label} {r.confidence:.2f}", (x0, max(10, y0 - 3)), cv2.FONT_HERSHEY_SIMPLEX,
                    0.35 * thick, BOX_COLOR_RGB, 1, cv2.LINE_AA)
    if text:
        cv2.putText(out, text, (3, 12), cv2.FONT_HERSHEY_SIMPLEX, 0.35 * thick, (255, 255, 255), 1, cv2.LINE_AA)
    return out
