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

``fmt_number`` and ``fmt_mb`` write a figure the same way in every report's tables and terminal summaries.

The figures and overlays it places are drawn by runtime/plots.py (matplotlib imported lazily, OpenCV).
"""
from __future__ import annotations

import html
import math
import numbers
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

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


MISSING = "—"  # a figure the run did not produce, in a report's tables and on the terminal


def fmt_number(v, digits: int = 3) -> str:
    """A figure for a report table or a summary line: ``v`` at ``digits`` decimals, or "—" where there is
    none (None, NaN, an infinity, or no number at all: a string, a boolean)."""
    if isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v):
        return f"{v:.{digits}f}"
    return MISSING


def fmt_mb(n_bytes: int | None) -> str:
    """A size in MB (10^6 bytes) at two decimals; "—" for none."""
    return MISSING if not n_bytes else f"{n_bytes / 1e6:.2f} MB"


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
