"""runtime/report.py: HTML builder, figure helpers, overlays."""
from __future__ import annotations

import subprocess
import sys

import numpy as np

from runtime import plots, report
from runtime.contracts.verdict import Region


def test_report_writes_html_with_tables_and_figures(tmp_path):
    rep = report.Report("eval <x>", tmp_path / "rep")
    rep.section("Metrics", "some text & more")
    rep.metrics({"image_auroc": 0.9, "nested": {"a": 1, "b": float("nan")}})
    rep.table([{"image": "a.png", "score": 0.123456}, {"image": "b.png", "label": "scratch"}], caption="worst")
    fpr = np.linspace(0, 1, 11)
    roc = plots.plot_roc(rep.path("roc.png"), fpr, fpr ** 0.5, auc=0.8)
    pro = plots.plot_pro(rep.path("pro.png"), fpr * 0.3, fpr, au_pro=0.5)
    hist = plots.plot_histogram(rep.path("lat.png"), {"features": [1.0, 2.0, 2.5], "head": [0.5]},
                                vlines={"p99": 2.4})
    bars = plots.plot_bars(rep.path("bars.png"), {"s": 0.9, "m": 0.95}, ylim=(0, 1))
    for p in (roc, pro, hist, bars):
        rep.figure(p, caption=p.stem)
        assert p.stat().st_size > 1000
    img = np.full((40, 60, 3), 128, np.uint8)
    rep.image(img, "grey", name="grey.png")
    index = rep.write()
    page = index.read_text()
    assert "eval &lt;x&gt;" in page and "some text &amp; more" in page
    assert "nested.a" in page and "n/a" in page and "0.1235" in page and "scratch" in page
    for name in ("roc.png", "pro.png", "lat.png", "bars.png", "grey.png"):
        assert f'src="{name}"' in page
        assert (tmp_path / "rep" / name).is_file()


def test_overlay_draws_map_regions_and_contours():
    img = np.zeros((64, 80, 3), np.uint8)
    amap = np.zeros((32, 40), np.float32)
    amap[10:20, 10:20] = 1.0
    gt = np.zeros((64, 80), bool)
    gt[30:50, 30:50] = True
    out = plots.overlay(img, anomaly_map=amap, regions=[Region((5, 5, 30, 30), 100, "scratch", 0.9)],
                        gt_mask=gt, pred_mask=gt, min_side=0)
    assert out.shape == (64, 80, 3) and out.dtype == np.uint8
    assert (out[40, 30] == plots.PRED_COLOR_RGB).all() or (out[40, 30] == plots.GT_COLOR_RGB).all()
    assert (out[5, 15] == plots.BOX_COLOR_RGB).all()  # top edge of the box
    hot = out[25, 25].astype(int)  # map upsampled ×2: hot square at 20..40
    cold = out[60, 5].astype(int)
    assert hot[0] > cold[0]  # jet: hot is red, cold is blue
    big = plots.overlay(img, regions=[Region((5, 5, 30, 30), 100, "scratch", 0.9)])  # min_side 256 -> x4
    assert big.shape == (256, 320, 3) and (big[20, 60] == plots.BOX_COLOR_RGB).all()


def test_report_import_does_not_pull_matplotlib_or_torch():
    code = ("import sys, runtime.report; bad=[m for m in ('matplotlib','torch') if m in sys.modules]; "
            "print(bad); sys.exit(1 if bad else 0)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr


def test_every_report_names_its_provenance(tmp_path):
    from runtime.report import version

    page = report.Report("eval", tmp_path / "r", provenance={"model": "abc123", "empty": ""}).write().read_text()
    head = page.split("provenance'>", 1)[1].split("</p>", 1)[0]
    assert f"lineside {version()}" in head and "model abc123" in head and "written 20" in head
    assert "empty" not in head  # an unknown field is left out, not printed blank


def test_decisions_confusion_and_warnings(tmp_path):
    from runtime.quality import quality_row

    labels = [0, 1] * 4
    masks = [np.zeros((8, 8), bool) if y == 0 else np.pad(np.ones((4, 4), bool), 2) for y in labels]
    maps = [np.random.default_rng(i).random((8, 8)) for i in range(8)]
    row = quality_row(["p"] * 8, labels, ["good", "crack", "good", "dent"] * 2, [0.0] * 8, maps, masks, [1] * 8)
    rep = report.Report("eval", tmp_path / "r")
    rep.decisions(row, "student")
    page = rep.write().read_text()
    assert "class='confusion'" in page and "4 (FP, false reject)" in page and "0 (FN, escape)" in page
    assert "100.0% (4 of 4)" in page  # every good part rejected
    assert "class='warning'" in page and "student: image ranking at chance" in page
    assert "crack" in page and "dent" in page
    assert report.chance_warnings("m", {"image_auroc": 0.5, "pixel_auroc": 0.9}) != []
    assert report.chance_warnings("m", {"image_auroc": 0.51, "pixel_auroc": None}) == []


def test_latency_figures_are_readable(tmp_path):
    # a 1 ms stage beside a 900 ms one, and a stage seen once: log bins, one panel per stage, no exception
    series = {"edge.backend": list(np.random.default_rng(0).lognormal(0, 0.5, 50)), "teacher.model": [880.0]}
    p = plots.plot_stage_panels(tmp_path / "lat.png", series, title="stages")
    assert p.stat().st_size > 1000
    assert plots._wants_log(np.array([1.0, 900.0])) and not plots._wants_log(np.array([1.0, 2.0]))
    assert plots.plot_histogram(tmp_path / "h.png", {"a": [1.0, 2.0, 900.0]}).stat().st_size > 1000


def test_one_way_to_write_a_figure():
    """fmt_number / fmt_mb: what the demo's report and summary and the bench table print for a figure."""
    assert report.fmt_number(0.91234) == "0.912" and report.fmt_number(2000.0, 0) == "2000"
    assert report.fmt_number(5, 2) == "5.00"
    for none in (None, float("nan"), float("inf"), "n/a", True):
        assert report.fmt_number(none) == report.MISSING == "—"
    assert report.fmt_mb(2_500_000) == "2.50 MB" and report.fmt_mb(None) == report.fmt_mb(0) == "—"
