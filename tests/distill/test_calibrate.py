import numpy as np
import pytest

from distill.calibrate import best_threshold, calibrate, fit_band


def _val(seed=0, n=80):
    rng = np.random.default_rng(seed)
    labels = (rng.random(n) < 0.4).astype(int)
    scores = rng.normal(1.0, 0.2, n) + labels * 0.8
    mean_nn = rng.normal(0.5, 0.05, n)
    return scores, mean_nn, labels


def test_band_meets_the_target_agreement_outside_and_is_narrow():
    scores, mean_nn, labels = _val()
    teacher = scores + np.random.default_rng(1).normal(0, 0.15, len(scores)) >= 1.4  # noisy teacher
    cal = calibrate(scores, mean_nn, labels, reference=teacher, reference_name="teacher", target_agreement=0.995)
    lo, hi = cal["band"]
    assert lo <= cal["threshold"] <= hi
    outside = (scores < lo) | (scores > hi)
    assert ((scores[outside] >= cal["threshold"]) == teacher[outside]).mean() >= 0.995
    assert cal["val_agreement_outside_band"] >= 0.995
    assert 0 < cal["val_fallback_rate"] < 1
    assert cal["reference"] == "teacher"
    # no narrower band (fewer images inside) satisfies the target
    lo2, hi2, agree2, inside2 = fit_band(scores, teacher, cal["threshold"], 0.995)
    assert inside2 == pytest.approx(cal["val_in_band_rate"])


def test_lower_target_gives_narrower_band():
    scores, mean_nn, labels = _val(3)
    a = calibrate(scores, mean_nn, labels, target_agreement=0.999)
    b = calibrate(scores, mean_nn, labels, target_agreement=0.8)
    assert b["val_in_band_rate"] <= a["val_in_band_rate"]
    assert a["reference"] == "labels"


def test_perfect_separation_needs_no_band_and_ood_limit_flags_far_images():
    scores = np.r_[np.linspace(0, 1, 10), np.linspace(2, 3, 10)]
    labels = np.r_[np.zeros(10), np.ones(10)].astype(int)
    mean_nn = np.r_[np.full(10, 0.5), np.full(10, 0.6)]
    cal = calibrate(scores, mean_nn, labels)
    assert 1 < cal["threshold"] < 2
    assert cal["val_in_band_rate"] == 0.0
    assert cal["ood_limit"] == pytest.approx(0.6)  # 1.2 x the largest good mean-NN distance
    assert cal["val_ood_rate"] == 0.0


def test_threshold_without_defects_sits_above_good_scores():
    s = np.array([1.0, 2.0, 3.0])
    assert best_threshold(s, np.zeros(3, bool)) > 3.0


def _disagreeing_val(seed=5, n=120):
    """A student whose ranking differs from its teacher's: agreement outside any narrow band stays low."""
    rng = np.random.default_rng(seed)
    labels = (rng.random(n) < 0.4).astype(int)
    scores = rng.normal(1.0, 0.3, n) + labels * 0.5
    teacher = rng.random(n) < 0.45  # decisions unrelated to the student's scores
    return scores, rng.normal(0.5, 0.01, n), labels, teacher


def test_band_stops_at_the_fallback_budget_and_says_the_target_was_missed():
    scores, mean_nn, labels, teacher = _disagreeing_val()
    unbounded = calibrate(scores, mean_nn, labels, reference=teacher, reference_name="teacher", max_fallback=1.0)
    assert unbounded["val_fallback_rate"] > 0.5  # what the target alone would need
    cal = calibrate(scores, mean_nn, labels, reference=teacher, reference_name="teacher", max_fallback=0.1)
    assert cal["val_fallback_rate"] <= 0.1 + 1e-9
    assert cal["target_met"] is False and unbounded["target_met"] is True
    assert cal["max_fallback"] == 0.1
    lo, hi = cal["band"]
    assert lo <= cal["threshold"] <= hi


def test_within_the_budget_the_band_is_the_most_agreeing():
    scores, _, _, teacher = _disagreeing_val(7, 60)
    thr = best_threshold(scores, teacher)
    lo, hi, agree, inside = fit_band(scores, teacher, thr, 0.995, max_inside=0.15)
    pred = scores >= thr
    best = 0.0
    for a in np.r_[thr, scores[scores < thr]]:  # brute force over every band edge pair within the budget
        for b in np.r_[thr, scores[scores >= thr]]:
            out = (scores < a) | (scores > b)
            if 1 - out.mean() <= 0.15 + 1e-12:
                best = max(best, (pred[out] == teacher[out]).mean() if out.any() else 1.0)
    assert inside <= 0.15 + 1e-12
    assert agree == pytest.approx(best)


def test_the_report_says_when_the_budget_bound_the_band():
    from runtime.report import calibration_words

    scores, mean_nn, labels, teacher = _disagreeing_val()
    cal = calibrate(scores, mean_nn, labels, reference=teacher, reference_name="teacher", max_fallback=0.1)
    words = calibration_words(cal)
    assert "at most 10%" in words and "out of reach" in words
    met = calibrate(scores, mean_nn, labels, reference=teacher, reference_name="teacher", max_fallback=1.0)
    assert "out of reach" not in calibration_words(met)
