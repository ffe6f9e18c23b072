"""A small static HTML report: sections of text, tables and figures, written as ``index.html`` with
its PNGs beside it. ``teacher eval``, ``distill eval`` and ``lineside demo`` build theirs with it.

Builder::

    rep = Report("teacher eval", out_dir)           # out_dir is created; PNGs go next to index.html
    rep.section("Metrics", "test split, 40 images")
    rep.metrics({"image_auroc": 0.97, "pixel_auroc": 0.93})       # a two-column table
    rep.table([{"image": "a.png", "score": 0.3}], caption="worst")  # list of dicts -> table
    rep.figure(plot_roc(rep.path("roc.png"), fpr, tpr, auc=0.97), caption="ROC")  # a written PNG
    rep.image(overlay(img, anomaly_map=amap, regions=v.regions, gt_mask=gt), "worst 1", name="w1.png")
    rep.decisions(quality_row(...), "student INT8")   # confusion matrix, rates, per-type recall, warnings
    rep.warning("I-AUROC 0.30: at or below chance")   # a visible warning box
    rep.write()                                       # -> out_dir / "index.html"

Figure helpers: ``plot_roc``, ``plot_pro``, ``plot_curves`` (any x/y lines), ``plot_histogram``
(scores; latencies spanning decades get log bins), ``plot_stage_panels`` (one latency panel per stage, so
an n=1 stage is a labelled point, not a bar on a shared 0-900 ms axis), ``plot_bars`` write a PNG and return
its path; matplotlib (Agg) is imported inside
them only, so importing this module costs numpy + OpenCV. ``overlay`` draws an anomaly map (jet
heat map), predicted regions (boxes + labels), the predicted mask contour (yellow) and the ground
truth contour (green) on an RGB image with OpenCV and returns an RGB uint8 array.
"""
from __future__ import annotations

import html
import math
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import numpy as np

FIG_SIZE_IN = (4.2, 3.6)
FIG_DPI = 100
GT_COLOR_RGB = (0, 255, 0)
PRED_COLOR_RGB = (255, 255, 0)
BOX_COLOR_RGB = (255, 0, 255)

_CSS = """body{font-family:system-ui,sans-serif;margin:24px;max-width:1200px;color:#222}
h1{font-size:1.5em}h2{font-size:1.2em;border-bottom:1px solid #ccc;padding-bottom:4px;margin-top:28px}
table{border-collapse:collapse;margin:8px 0}td,th{border:1px solid #ccc;padding:3px 8px;text-align:left;font-size:.9em}
th{background:#f2f2f2}figure{display:inline-block;margin:6px;vertical-align:top}
figcaption{font-size:.8em;color:#555;max-width:320px}img{max-width:360px;border:1px solid #ddd}
p.note{color:#555;font-size:.9em}
p.warning{background:#fff3cd;border:1px solid #e0a800;padding:6px 10px;font-weight:600;color:#5c4300}
table.confusion td.hit{background:#e6f4ea}table.confusion td.miss{background:#fde8e8}"""
CHANCE_AUROC = 0.5  # an AUROC at or below this ranks no better than a coin: a report says so in words


def _fmt(v) -> str:
    if isinstance(v, float):
        if math.isnan(v):
            return "n/a"
        return f"{v:.4g}"
    return str(v)


class Report:
    """Accumulates HTML blocks; ``write()`` renders ``out_dir/index.html``. Figures are files in
    ``out_dir`` (referenced relatively, so the folder can be zipped or served as is)."""

    def __init__(self, title: str, out_dir: str | Path, provenance: Mapping[str, object] | None = None):
        """``provenance``: what the figures were computed from (dataset hash, model hash, ...); the
        header always also names the lineside version, the source commit when known, and the time."""
        self.title = title
        self.provenance = {**build_info(), **dict(provenance or {})}
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self._blocks: list[str] = []
        self._n_images = 0

    def path(self, name: str) -> Path:
        """Where a figure called ``name`` lives (inside out_dir)."""
        return self.out_dir / name

    def section(self, title: str, text: str = "") -> "Report":
        self._blocks.append(f"<h2>{html.escape(title)}</h2>")
        if text:
            self.text(text)
        return self

    def text(self, text: str, note: bool = False) -> "Report":
        cls = ' class="note"' if note else ""
        self._blocks.append(f"<p{cls}>{html.escape(text)}</p>")
        return self

    def table(self, rows: Sequence[Mapping] | Sequence[Sequence], header: Sequence[str] | None = None,
              caption: str = "") -> "Report":
        """Rows as dicts (columns = union of keys, in first-seen order) or as sequences with ``header``."""
        rows = list(rows)
        if rows and isinstance(rows[0], Mapping):
            cols: list[str] = []
            for r in rows:
                cols += [k for k in r if k not in cols]
            body = [[r.get(c, "") for c in cols] for r in rows]
        else:
            cols = list(header or [])
            body = [list(r) for r in rows]
        out = ["<table>"]
        if caption:
            out.append(f"<caption>{html.escape(caption)}</caption>")
        if cols:
            out.append("<tr>" + "".join(f"<th>{html.escape(str(c))}</th>" for c in cols) + "</tr>")
        for r in body:
            out.append("<tr>" + "".join(f"<td>{html.escape(_fmt(v))}</td>" for v in r) + "</tr>")
        out.append("</table>")
        self._blocks.append("".join(out))
        return self

    def metrics(self, values: Mapping[str, object], caption: str = "") -> "Report":
        """A name/value table; nested dicts are flattened as ``outer.inner``."""
        flat: list[tuple[str, object]] = []

        def walk(prefix: str, d: Mapping):
            for k, v in d.items():
                key = f"{prefix}.{k}" if prefix else str(k)
                if isinstance(v, Mapping):
                    walk(key, v)
                else:
                    flat.append((key, v))

        walk("", values)
        return self.table(flat, header=["metric", "value"], caption=caption)

    def figure(self, path: str | Path, caption: str = "") -> "Report":
        """Reference an image file already written (copied into out_dir if it lives elsewhere)."""
        p = Path(path)
        if p.resolve().parent != self.out_dir.resolve():
            import shutil

            dst = self.out_dir / p.name
            shutil.copyfile(p, dst)
            p = dst
        self._blocks.append(_figure_html(p.name, caption))
        return self

    def image(self, rgb: np.ndarray, caption: str = "", name: str | None = None) -> "Report":
        """Write an RGB uint8 array (H, W, 3) or grey (H, W) as PNG next to index.html and show it."""
        import cv2

        self._n_images += 1
        name = name or f"img_{self._n_images:03d}.png"
        arr = np.asarray(rgb)
        if arr.dtype != np.uint8:
            raise ValueError(f"Report.image: expected uint8 pixels, got {arr.dtype}")
        bgr = cv2.cvtColor(arr, cv2.COLOR_RGB2BGR) if arr.ndim == 3 else arr
        if not cv2.imwrite(str(self.out_dir / name), bgr):
            raise OSError(f"Report.image: could not write {self.out_dir / name}")
        self._blocks.append(_figure_html(name, caption))
        return self

    def warning(self, text: str) -> "Report":
        """A warning a reader cannot miss (a figure at or below chance, a model forced past its guard)."""
        self._blocks.append(f"<p class='warning'>\u26a0 {html.escape(text)}</p>")
        return self

    def confusion(self, counts: Mapping[str, int], caption: str = "") -> "Report":
        """The confusion matrix at the deployed threshold ({"tp", "fp", "fn", "tn"}; "defect" is positive),
        with the false-reject rate (good parts rejected) and the escape rate (defective parts passed)."""
        tp, fp, fn, tn = (int(counts.get(k, 0)) for k in ("tp", "fp", "fn", "tn"))
        cap = f"<caption>{html.escape(caption)}</caption>" if caption else ""
        self._blocks.append(
            f"<table class='confusion'>{cap}<tr><th></th><th>judged defect</th><th>judged good</th></tr>"
            f"<tr><th>defective part</th><td class='hit'>{tp} (TP)</td><td class='miss'>{fn} (FN, escape)</td></tr>"
            f"<tr><th>good part</th><td class='miss'>{fp} (FP, false reject)</td><td class='hit'>{tn} (TN)</td></tr>"
            "</table>")
        return self.table([["false-reject rate (good parts rejected)", _rate(fp, fp + tn)],
                           ["escape rate (defective parts passed)", _rate(fn, fn + tp)]], header=["", "value"])

    def decisions(self, row: Mapping, name: str) -> "Report":
        """What one detector did at its deployed threshold, from a runtime.quality row (``quality_row``): the
        warnings of runtime.quality.warnings_for, the confusion matrix and rates, and recall per defect type."""
        from runtime.quality import warnings_for

        m = row["mean"]
        for w in warnings_for(row):  # I-AUROC near chance, escapes, false rejects
            self.warning(f"{name}: {w}")
        for w in chance_warnings(name, m, keys=("pixel_auroc",)):
            self.warning(w)
        self.confusion(m.get("confusion") or {}, caption=f"{name} at its deployed threshold")
        types = m.get("recall_per_type") or {}
        if types:
            self.table([[t, _fmt(r), _fmt(1 - r)] for t, r in types.items()],
                       header=["defect type", "recall", "escape rate"], caption=f"{name}, per defect type")
        return self

    def html(self, raw: str) -> "Report":
        """Append raw HTML (trusted callers only)."""
        self._blocks.append(raw)
        return self

    def write(self) -> Path:
        prov = " · ".join(f"{html.escape(str(k))} {html.escape(str(v))}" for k, v in self.provenance.items()
                          if v not in (None, ""))
        page = (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(self.title)}</title>"
                f"<style>{_CSS}</style></head><body><h1>{html.escape(self.title)}</h1>"
                f"<p class='note provenance'>{prov}</p>"
                + "\n".join(self._blocks) + "</body></html>\n")
        out = self.out_dir / "index.html"
        out.write_text(page)
        return out


def version() -> str:
    """The installed lineside's version (every report's and `--version`'s provenance)."""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as _version

    try:
        return _version("lineside")
    except PackageNotFoundError:  # a source tree that was never installed
        return "unknown"


def build_info() -> dict[str, str]:
    """lineside's version, the source commit (when the package runs from a git checkout) and the time now."""
    import subprocess
    import time

    info = {"lineside": version()}
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=Path(__file__).parent, capture_output=True,
                             text=True, timeout=5)
        if out.returncode == 0 and out.stdout.strip():
            info["commit"] = out.stdout.strip()
    except (OSError, subprocess.SubprocessError):  # no git on this machine
        pass
    info["written"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    return info


def _rate(k: int, n: int) -> str:
    return f"{k / n:.1%} ({k} of {n})" if n else "n/a (none in the split)"


def chance_warnings(name: str, figures: Mapping[str, object], keys: Sequence[str] = ("image_auroc", "pixel_auroc")
                    ) -> list[str]:
    """Plain words for each ranking figure of ``figures`` at or below chance (AUROC <= 0.5)."""
    out = []
    for key, what in (("image_auroc", "I-AUROC"), ("pixel_auroc", "P-AUROC")):
        if key not in keys:
            continue
        v = figures.get(key)
        if isinstance(v, (int, float)) and math.isfinite(v) and v <= CHANCE_AUROC:
            out.append(f"{name}: {what} {v:.3f} is at or below chance (0.5): its scores do not rank defects "
                       "above good parts")
    return out


def calibration_words(cal: Mapping) -> str:
    """How `distill fit` chose an artifact's threshold and band (distill/calibrate.py), in plain words, from its
    calibration figures (manifest ``calibration``)."""
    ref = cal.get("reference", "labels")
    who = "the ground-truth labels" if ref == "labels" else f"the reference decisions ({ref})"
    n = cal.get("n_val")
    on = f"the {n} val images" if n else "the val images"
    lo, hi = cal["band"]
    text = (f"The threshold {cal['threshold']:.4g} is the student score cut that agrees best with {who} on {on}. "
            f"The uncertainty band [{lo:.4g}, {hi:.4g}] is the narrowest range around it outside which the student "
            f"agrees with {who} on at least {cal.get('target_agreement', 0.995):.1%} of {on}")
    if cal.get("max_fallback") is not None:
        text += f", holding at most {cal['max_fallback']:.0%} of them with the out-of-distribution ones"
    if cal.get("val_agreement_outside_band") is not None:
        text += f" (measured {cal['val_agreement_outside_band']:.1%})"
    if cal.get("target_met") is False:
        text += (". That target was out of reach within the fallback budget, so the band is the one within it "
                 "that agrees most: the student decides differently from its reference on more frames than the "
                 "target allows")
    text += "; a frame inside the band, or out of distribution, is sent to the teacher."
    if hi <= lo:
        text += " The band has zero width here: the student's decisions alone met the target on val."
    return text


def _figure_html(src: str, caption: str) -> str:
    cap = f"<figcaption>{html.escape(caption)}</figcaption>" if caption else ""
    return f'<figure><img src="{html.escape(src)}" alt="{html.escape(caption or src)}">{cap}</figure>'


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
