"""runtime.metrics against scikit-learn, brute-force definitions and cases worked out by hand."""
from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage
from sklearn import metrics as skm

from runtime import metrics as M


def _rng(seed=0):
    return np.random.default_rng(seed)


def _tied_scores(rng, n):
    # Few distinct values so ties are everywhere.
    return rng.integers(0, 6, size=n).astype(np.float64) / 5.0


# ------------------------------------------------------------------------------------------- AUROC

@pytest.mark.parametrize("seed", range(5))
def test_auroc_matches_sklearn_and_rank_definition(seed):
    rng = _rng(seed)
    y = rng.integers(0, 2, size=60)
    y[:2] = [0, 1]
    for s in (rng.normal(size=60) + y, _tied_scores(rng, 60)):
        got = M.image_auroc(y, s)
        assert got == pytest.approx(skm.roc_auc_score(y, s), abs=1e-12)
        pos, neg = s[y == 1], s[y == 0]
        brute = ((pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()) / (
            pos.size * neg.size)
        assert got == pytest.approx(brute, abs=1e-12)


def test_roc_curve_matches_sklearn_points():
    rng = _rng(3)
    y = rng.integers(0, 2, size=50)
    s = _tied_scores(rng, 50)
    fpr, tpr, thr = M.roc_curve(y, s)
    sf, st, sthr = skm.roc_curve(y, s, drop_intermediate=False)
    np.testing.assert_allclose(fpr, sf)
    np.testing.assert_allclose(tpr, st)
    np.testing.assert_allclose(thr[1:], sthr[1:])
    assert np.isinf(thr[0])


def test_auroc_all_tied_is_half_and_perfect_is_one():
    assert M.image_auroc([0, 1, 0, 1], [0.3, 0.3, 0.3, 0.3]) == pytest.approx(0.5)
    assert M.image_auroc([0, 0, 1, 1], [0.1, 0.2, 0.8, 0.9]) == 1.0
    assert M.image_auroc([0, 0, 1, 1], [0.9, 0.8, 0.2, 0.1]) == 0.0


def test_string_labels_are_read_not_guessed():
    assert M.image_auroc(["good", "defect", "good"], [0.1, 0.9, 0.2]) == 1.0
    assert M.f1_max(np.array(["good", "defect"], dtype=object), [0.1, 0.9]) == (1.0, 0.9)
    with pytest.raises(ValueError, match="'good' or 'defect'"):
        M.image_auroc(["ok", "nok"], [0.1, 0.9])


def test_auroc_refuses_one_class_and_bad_input():
    with pytest.raises(ValueError, match="both classes"):
        M.image_auroc([0, 0, 0], [0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match="differ in size"):
        M.image_auroc([0, 1], [0.1])
    with pytest.raises(ValueError, match="NaN"):
        M.image_auroc([0, 1], [0.1, np.nan])


def test_pixel_auroc_matches_sklearn_on_lists_of_different_sizes():
    rng = _rng(1)
    masks = [rng.random((8, 9)) > 0.7, np.zeros((5, 6), bool), rng.random((7, 7)) > 0.8]
    maps = [m * 0.5 + rng.random(m.shape) for m in masks]
    y = np.concatenate([m.ravel() for m in masks])
    s = np.concatenate([a.ravel() for a in maps])
    assert M.pixel_auroc(masks, maps) == pytest.approx(skm.roc_auc_score(y, s), abs=1e-12)
    with pytest.raises(ValueError, match="image 1"):
        M.pixel_auroc(masks, [maps[0], maps[0], maps[2]])


def test_roc_curve_thinning_keeps_ends():
    rng = _rng(2)
    y = rng.integers(0, 2, size=5000)
    fpr, tpr, _ = M.roc_curve(y, rng.random(5000), max_points=100)
    assert len(fpr) <= 100
    assert fpr[0] == 0 and tpr[0] == 0 and fpr[-1] == 1 and tpr[-1] == 1


# --------------------------------------------------------------------------------------- AP / F1

@pytest.mark.parametrize("seed", range(4))
def test_average_precision_matches_sklearn(seed):
    rng = _rng(seed)
    y = rng.integers(0, 2, size=80)
    y[0] = 1
    for s in (rng.normal(size=80) + y, _tied_scores(rng, 80)):
        assert M.average_precision(y, s) == pytest.approx(skm.average_precision_score(y, s), abs=1e-12)


@pytest.mark.parametrize("seed", range(4))
def test_f1_max_matches_brute_force_over_thresholds(seed):
    rng = _rng(seed)
    y = rng.integers(0, 2, size=40)
    y[0] = 1
    s = _tied_scores(rng, 40) if seed % 2 else rng.normal(size=40) + y
    best, thr = M.f1_max(y, s)
    brute = max(skm.f1_score(y, s >= t) for t in np.unique(s))
    assert best == pytest.approx(brute, abs=1e-12)
    assert skm.f1_score(y, s >= thr) == pytest.approx(best, abs=1e-12)


def test_precision_recall_curve_matches_sklearn():
    rng = _rng(7)
    y = rng.integers(0, 2, size=30)
    s = _tied_scores(rng, 30)
    p, r, thr = M.precision_recall_curve(y, s)
    sp, sr, sthr = skm.precision_recall_curve(y, s)
    # sklearn: ascending thresholds plus a final (1, 0) point; ours: descending, no sentinel.
    np.testing.assert_allclose(p, sp[:-1][::-1])
    np.testing.assert_allclose(r, sr[:-1][::-1])
    np.testing.assert_allclose(thr, sthr[::-1])


# ----------------------------------------------------------------------------- IoU / Dice / accuracy

def test_iou_dice_accuracy_vs_sklearn():
    rng = _rng(4)
    a, b = rng.random((3, 16, 16)) > 0.6, rng.random((3, 16, 16)) > 0.5
    assert M.iou(a, b) == pytest.approx(skm.jaccard_score(b.ravel(), a.ravel()))
    assert M.dice(a, b) == pytest.approx(skm.f1_score(b.ravel(), a.ravel()))
    assert M.iou(np.zeros((4, 4)), np.zeros((4, 4))) == 1.0
    assert M.dice(np.zeros((4, 4)), np.ones((4, 4))) == 0.0
    y, p = rng.integers(0, 2, 50), rng.integers(0, 2, 50)
    assert M.accuracy(y, p) == pytest.approx(skm.accuracy_score(y, p))
    assert M.accuracy(["good", "defect"], ["good", "good"]) == 0.5
    with pytest.raises(ValueError, match="shape"):
        M.iou(np.zeros((2, 2)), np.zeros((3, 3)))


# ------------------------------------------------------------------------------------------ AU-PRO

def _hand_case(tie: bool):
    # One 1x8 image. Components: C1 = pixels {0, 1}, C2 = pixel {4}. Good pixels: 2, 3, 5, 6, 7.
    mask = np.array([[1, 1, 0, 0, 1, 0, 0, 0]], bool)
    amap = np.array([[0.9, 0.5, 0.8, 0.1, 0.7, 0.2, 0.3, 0.5 if tie else 0.4]])
    return [mask], [amap]


def test_au_pro_hand_case_without_ties():
    # Thresholds descending: 0.9 -> PRO 1/4 (half of C1), FPR 0;  0.8 -> FPR 1/5;  0.7 -> PRO 3/4;
    # 0.5 -> PRO 1;  0.4 -> FPR 2/5. Area to 0.3: 0.2 * 0.25 + 0.1 * 1.0 = 0.15 -> /0.3 = 0.5.
    masks, maps = _hand_case(tie=False)
    assert M.au_pro(masks, maps) == pytest.approx(0.5, abs=1e-12)
    # Up to FPR 0.2 only the 0.25 plateau counts: 0.05 / 0.2.
    assert M.au_pro(masks, maps, fpr_limit=0.2) == pytest.approx(0.25, abs=1e-12)
    fpr, pro, thr = M.pro_curve(masks, maps)
    assert fpr[0] == 0 and pro[0] == 0 and np.isinf(thr[0])
    assert fpr[-1] == pytest.approx(1) and pro[-1] == pytest.approx(1)


def test_au_pro_hand_case_with_tie_interpolates_at_limit():
    # Good pixel 7 ties with C1's pixel 1 at 0.5: one step from (0.2, 0.75) to (0.4, 1.0).
    # PRO at FPR 0.3 interpolates to 0.875: area = 0.2*0.25 + 0.1*(0.75+0.875)/2 = 0.13125 -> /0.3.
    masks, maps = _hand_case(tie=True)
    assert M.au_pro(masks, maps) == pytest.approx(0.13125 / 0.3, abs=1e-12)


def test_au_pro_perfect_and_constant_maps():
    rng = _rng(5)
    masks = [np.zeros((12, 12), bool) for _ in range(3)]
    masks[0][2:5, 2:6] = True
    masks[2][8:11, 1:3] = True
    perfect = [m.astype(float) + 0.01 * rng.random(m.shape) for m in masks]
    assert M.au_pro(masks, perfect) == pytest.approx(1.0)
    const = [np.ones(m.shape) for m in masks]
    # All tied: one straight segment (0,0)-(1,1); area to 0.3 is 0.045 -> 0.15.
    assert M.au_pro(masks, const) == pytest.approx(0.15)


def _brute_au_pro(masks, maps, limit):
    labelled = [ndimage.label(m, structure=np.ones((3, 3)))[0] for m in masks]
    comps = [(i, lab == k) for i, lab in enumerate(labelled) for k in range(1, lab.max() + 1)]
    good = np.concatenate([~m.ravel() for m in masks])
    pts = [(0.0, 0.0)]
    for t in np.unique(np.concatenate([a.ravel() for a in maps]))[::-1]:
        pred = [a >= t for a in maps]
        pro = np.mean([pred[i][c].mean() for i, c in comps])
        fpr = np.concatenate([p.ravel() for p in pred])[good].mean()
        pts.append((fpr, pro))
    area = 0.0
    for (x0, y0), (x1, y1) in zip(pts, pts[1:]):
        if x0 >= limit:
            break
        if x1 > limit:
            y1 = y0 + (y1 - y0) * (limit - x0) / (x1 - x0)
            x1 = limit
        area += (x1 - x0) * (y0 + y1) / 2
    return area / limit


@pytest.mark.parametrize("seed", range(4))
def test_au_pro_matches_brute_force(seed):
    rng = _rng(seed)
    masks, maps = [], []
    for i in range(4):
        m = ndimage.binary_opening(rng.random((14, 16)) > 0.75) if i else np.zeros((14, 16), bool)
        m[1:3, 1:4] |= i == 3
        masks.append(m)
        a = m * rng.random() + rng.random(m.shape)
        maps.append(np.round(a, 1) if seed % 2 else a)  # odd seeds: heavy ties
    for limit in (0.3, 0.05, 1.0):
        assert M.au_pro(masks, maps, fpr_limit=limit) == pytest.approx(_brute_au_pro(masks, maps, limit), abs=1e-9)


def test_au_pro_refuses_without_regions():
    with pytest.raises(ValueError, match="regions"):
        M.au_pro([np.zeros((4, 4), bool)], [np.zeros((4, 4))])
    with pytest.raises(ValueError, match="fpr_limit"):
        M.au_pro([np.ones((4, 4), bool)], [np.zeros((4, 4))], fpr_limit=0)


# ------------------------------------------------------------------------------------------- boxes

def test_mask_and_map_boxes():
    m = np.zeros((20, 20), bool)
    m[2:5, 3:9] = True
    m[10:12, 10:11] = True
    np.testing.assert_array_equal(M.mask_boxes(m), [[3, 2, 9, 5], [10, 10, 11, 12]])
    a = np.zeros((20, 20))
    a[2:5, 3:9] = 0.6
    a[3, 4] = 0.9
    boxes, scores = M.map_boxes(a, 0.5)
    np.testing.assert_array_equal(boxes, [[3, 2, 9, 5]])
    np.testing.assert_allclose(scores, [0.9])
    assert M.mask_boxes(np.zeros((5, 5))).shape == (0, 4)


def test_box_iou_hand_values():
    got = M.box_iou([[0, 0, 10, 10]], [[0, 0, 10, 10], [2, 0, 12, 10], [20, 20, 30, 30]])
    np.testing.assert_allclose(got, [[1.0, 80 / 120, 0.0]])


def test_box_map_hand_case_101_point():
    gt = [np.array([[0, 0, 10, 10]]), np.array([[20, 20, 30, 30]])]
    pred = [np.array([[0, 0, 10, 10], [50, 50, 60, 60]]), np.array([[22, 20, 32, 30]])]
    scores = [np.array([0.9, 0.8]), np.array([0.7])]
    # IoU 0.5: TP, FP, TP -> recall .5 .5 1, precision 1 .5 .667; envelope 1, .667, .667:
    # recall points 0..0.50 (51) at 1, 0.51..1 (50) at 2/3.
    # IoU 0.75: the shifted box (IoU 0.667) misses -> 51 points at 1, the rest 0.
    got = M.box_map(gt, pred, scores)
    assert got["map@0.5"] == pytest.approx((51 + 50 * 2 / 3) / 101)
    assert got["map@0.75"] == pytest.approx(51 / 101)


def test_box_map_classes_and_perfect_maps():
    gt = [np.array([[0, 0, 4, 4], [6, 6, 9, 9]])]
    pred = [np.array([[0, 0, 4, 4], [6, 6, 9, 9]])]
    # Right boxes, swapped labels -> 0; right labels -> 1.
    swapped = M.box_map(gt, pred, [np.array([0.9, 0.8])], [["crack", "hole"]], [["hole", "crack"]])
    assert swapped["map@0.5"] == 0.0
    right = M.box_map(gt, pred, [np.array([0.9, 0.8])], [["crack", "hole"]], [["crack", "hole"]])
    assert right["map@0.5"] == 1.0 and right["map@0.75"] == 1.0
    masks = [np.zeros((16, 16), bool), np.zeros((16, 16), bool)]
    masks[0][3:7, 3:9] = True
    maps = [m.astype(float) for m in masks]
    assert M.box_map_from_maps(masks, maps, 0.5) == {"map@0.5": 1.0, "map@0.75": 1.0}
    assert np.isnan(M.box_ap([np.zeros((0, 4))], [np.zeros((0, 4))], [np.zeros(0)]))


# ------------------------------------------------------------------------------------------ summary

def test_compute_all_reports_what_the_data_allows():
    rng = _rng(9)
    labels = np.array([0, 0, 1, 1, 0, 1])
    masks = [np.zeros((16, 16), bool) for _ in labels]
    for i in np.nonzero(labels)[0]:
        masks[i][4:9, 5:10] = True
    maps = [m * 0.8 + 0.3 * rng.random(m.shape) for m in masks]
    scores = np.array([a.max() for a in maps])
    out = M.compute_all(labels, scores, masks, maps)
    for key in ("image_auroc", "pixel_auroc", "au_pro", "image_f1_max", "accuracy", "iou", "dice",
                "box_map@0.5", "box_map@0.75", "image_ap"):
        assert key in out, key
    assert out["image_auroc"] == 1.0 and out["accuracy"] == 1.0
    assert out["pixel_auroc"] == pytest.approx(skm.roc_auc_score(
        np.concatenate([m.ravel() for m in masks]), np.concatenate([a.ravel() for a in maps])))
    assert out["pixel_ap"] == pytest.approx(M.average_precision(np.concatenate([m.ravel() for m in masks]),
                                                                 np.concatenate([a.ravel() for a in maps])))
    assert out["au_pro"] == pytest.approx(M.au_pro(masks, maps))
    assert (out["image_f1_max"], out["image_f1_threshold"]) == M.f1_max(labels, scores)
    only_good = M.compute_all([0, 0], [0.1, 0.2], threshold=0.15)
    assert "image_auroc" not in only_good and only_good["accuracy"] == 0.5


# ------------------------------------------------------------------------------- bounded pixel metrics

def _smooth_case(seed, n=12, size=(48, 56)):
    """Blurred noise maps with planted regions, the first image's range narrow (so the bins must grow)."""
    rng = _rng(seed)
    masks, maps = [], []
    for i in range(n):
        m = np.zeros(size, bool)
        if i % 3:
            y, x = rng.integers(4, size[0] - 12), rng.integers(4, size[1] - 12)
            m[y:y + rng.integers(2, 9), x:x + rng.integers(2, 9)] = True
            if i % 2:
                m[1:3, -4:-1] = True  # a second, tiny region
        a = ndimage.gaussian_filter(rng.random(size), 2) + m * rng.random() * 0.5
        maps.append(a * (0.1 if i == 0 else rng.uniform(0.5, 3.0)) + (rng.normal() if i > 5 else 0.0))
        masks.append(m)
    return masks, maps


def _accumulate(masks, maps, **kw):
    acc = M.PixelAccumulator(**kw)
    for m, a in zip(masks, maps):
        acc.add(m, a)
    return acc


@pytest.mark.parametrize("seed", range(4))
def test_pixel_accumulator_is_within_0005_of_the_exact_metrics(seed):
    cases = [_smooth_case(seed)]
    rng = _rng(seed)  # the exact tests' own data: the brute-force AU-PRO case and compute_all's
    bm, ba = [], []
    for i in range(4):
        m = ndimage.binary_opening(rng.random((14, 16)) > 0.75) if i else np.zeros((14, 16), bool)
        m[1:3, 1:4] |= i == 3
        bm.append(m)
        a = m * rng.random() + rng.random(m.shape)
        ba.append(np.round(a, 1) if seed % 2 else a)
    cases.append((bm, ba))
    for masks, maps in cases:
        acc = _accumulate(masks, maps)
        assert acc.pixel_auroc() == pytest.approx(M.pixel_auroc(masks, maps), abs=0.005)
        for limit in (0.3, 0.05, 1.0):
            assert acc.au_pro(limit) == pytest.approx(M.au_pro(masks, maps, fpr_limit=limit), abs=0.005)
    masks, maps = cases[0]  # 2^16 bins on smooth maps: far inside the tolerance; 64 bins: visibly coarser
    fine, coarse = _accumulate(masks, maps), _accumulate(masks, maps, bins=64)
    exact = M.au_pro(masks, maps)
    assert abs(fine.au_pro() - exact) < 1e-4 and abs(fine.au_pro() - exact) < abs(coarse.au_pro() - exact)


def test_pixel_accumulator_memory_does_not_grow_with_the_images():
    masks, maps = _smooth_case(0, n=30)
    small, large = _accumulate(masks[:3], maps[:3]), _accumulate(masks, maps)
    size = lambda acc: sum(h.nbytes for h in (acc.good, acc.defect, acc.region))  # noqa: E731
    assert size(small) == size(large) == 3 * M.HIST_BINS * 8
    assert large.n_images == 30 and large.n_regions > small.n_regions


def test_pixel_accumulator_refuses_what_the_exact_path_refuses():
    acc = M.PixelAccumulator()
    acc.add(np.zeros((4, 4), bool), np.zeros((4, 4)))
    with pytest.raises(ValueError, match="regions"):
        acc.au_pro()
    with pytest.raises(ValueError, match="both classes"):
        acc.pixel_auroc()
    with pytest.raises(ValueError, match="shape"):
        acc.add(np.zeros((4, 4), bool), np.zeros((4, 5)))
    with pytest.raises(ValueError, match="NaN"):
        acc.add(np.zeros((2, 2), bool), np.full((2, 2), np.nan))


@pytest.mark.parametrize("seed", range(4))
def test_pixel_accumulator_bounds_hold_and_its_curves_match(seed):
    masks, maps = _smooth_case(seed)
    for bins, relative in ((M.HIST_BINS, False), (256, False), (16, False), (M.HIST_BINS, True), (256, True)):
        acc = _accumulate(masks, maps, bins=bins, relative=relative)  # the bounds hold however coarse
        assert abs(acc.pixel_auroc() - M.pixel_auroc(masks, maps)) <= acc.auroc_bound() + 1e-12
        for limit in (0.3, 1.0):
            assert abs(acc.au_pro(limit) - M.au_pro(masks, maps, limit)) <= acc.au_pro_bound(limit) + 1e-12
    acc = _accumulate(masks, maps)
    assert acc.auroc_bound() < 1e-3 and acc.au_pro_bound() < 1e-3 and acc.method() == "histogram, 65536 bins"
    fpr, tpr, _ = acc.roc_curve()
    assert float(np.trapezoid(tpr, fpr)) == pytest.approx(acc.pixel_auroc(), abs=1e-12)
    y, s = np.concatenate([m.ravel() for m in masks]), np.concatenate([a.ravel() for a in maps])
    exact = M._one_sort_stats(y, s)
    got = acc.pixel_stats()
    assert got["auroc"] == pytest.approx(exact["auroc"], abs=0.005)
    assert got["ap"] == pytest.approx(exact["ap"], abs=0.005)
    assert got["f1_max"] == pytest.approx(exact["f1_max"], abs=0.005)
    tp, fp = acc.counts_at(got["f1_threshold"])  # exact at a bin edge
    assert (tp, fp) == (float((s[y] >= got["f1_threshold"]).sum()), float((s[~y] >= got["f1_threshold"]).sum()))


@pytest.mark.parametrize("pixel_threshold", [None, 0.6])
def test_streaming_metrics_match_compute_all(pixel_threshold):
    masks, maps = _smooth_case(1)
    maps = [a.astype(np.float32) for a in maps]  # as the evaluations' maps: relative bins key on float32
    labels = [int(m.any()) for m in masks]
    scores = [float(a.max()) for a in maps]
    st = M.StreamingMetrics(threshold=0.5, pixel_threshold=pixel_threshold)
    for lab, sc, m, a in zip(labels, scores, masks, maps):
        st.add(lab, sc, m, a)
    got = st.result()
    ref = M.compute_all(labels, scores, masks, maps, threshold=0.5,
                        pixel_threshold=pixel_threshold if pixel_threshold is not None else got["pixel_threshold"])
    for k in ("n_images", "n_defect", "image_auroc", "image_ap", "image_f1_max", "threshold", "accuracy"):
        assert got[k] == ref[k], k  # image figures: exact, the same numbers
    for k in ("pixel_auroc", "pixel_ap", "pixel_f1_max", "au_pro"):
        assert got[k] == pytest.approx(ref[k], abs=0.005), k
    assert abs(got["pixel_auroc"] - ref["pixel_auroc"]) <= got["pixel_auroc_bound"] + 1e-12
    assert abs(got["au_pro"] - ref["au_pro"]) <= got["au_pro_bound"] + 1e-12
    # segmentation at the same threshold: exact counts (given up front, or the F1-max bin edge)
    assert got["iou"] == pytest.approx(ref["iou"], abs=1e-12) and got["dice"] == pytest.approx(ref["dice"], abs=1e-12)
    if pixel_threshold is None:
        assert "box_map@0.5" not in got  # needs every map at a threshold known only at the end
        boxed = M.StreamingMetrics(box_threshold=0.6)  # ... or a threshold known up front
        for lab, sc, m, a in zip(labels, scores, masks, maps):
            boxed.add(lab, sc, m, a)
        assert boxed.result()["box_map@0.5"] == M.box_map_from_maps(masks, maps, 0.6)["map@0.5"]
        assert boxed.result()["box_threshold"] == 0.6
    else:
        assert got["box_map@0.5"] == ref["box_map@0.5"] and got["box_map@0.75"] == ref["box_map@0.75"]
    assert got["pixel_method"] == "histogram, 65536 bins, relative (float32 keys)"


def test_relative_bins_resolve_a_probability_map_at_every_scale():
    """Good pixels at 1e-9..1e-3 and defects up to 1 (a mask head's map), the first image's range narrow: bins
    even in the score merge the good pixels into a few bins; bins even in the float32 keys do not."""
    rng = _rng(7)
    masks, maps = [], []
    for i in range(8):
        m = np.zeros((40, 40), bool)
        if i >= 2:
            m[10:20, 12:22] = True
        a = 10 ** rng.uniform(-9, -3, m.shape)
        a[m] = np.where(rng.random(m.sum()) < 0.8, rng.uniform(0.2, 1.0, m.sum()), 10 ** rng.uniform(-6, -3, m.sum()))
        masks.append(m)
        maps.append(a.astype(np.float32))
    exact_auroc, exact_pro = M.pixel_auroc(masks, maps), M.au_pro(masks, maps)
    even, rel = _accumulate(masks, maps), _accumulate(masks, maps, relative=True)
    assert abs(rel.pixel_auroc() - exact_auroc) < 1e-5 and abs(rel.au_pro() - exact_pro) < 1e-5
    assert abs(rel.pixel_auroc() - exact_auroc) < abs(even.pixel_auroc() - exact_auroc)
    assert rel.auroc_bound() < even.auroc_bound()
    assert rel.method() == "histogram, 65536 bins, relative (float32 keys)"
