"""runtime/scoring.py: the one scoring path shared by teacher bank mode, distill calibration and the edge."""
import numpy as np
import pytest

from runtime.scoring import decide, find_regions, score_embedding


def test_planted_outlier_is_the_peak():
    rng = np.random.default_rng(0)
    bank = rng.normal(size=(200, 8)).astype(np.float32)
    emb = bank[rng.integers(0, 200, 7 * 9)].T.reshape(1, 8, 7, 9).copy()
    emb[0, :, 5, 2] += 10.0  # one location far from every bank vector
    r = score_embedding(emb, bank, (70, 90), blur_sigma_px=2.0)
    assert r.anomaly_map.shape == (70, 90)
    y, x = np.unravel_index(np.argmax(r.anomaly_map), r.anomaly_map.shape)
    assert abs(y - 55) <= 6 and abs(x - 25) <= 6
    # every other location is an exact bank member: distance 0 far from the outlier
    assert r.anomaly_map[:20, 60:].max() < 1e-3
    regions, mask = find_regions(r.anomaly_map, r.score * 0.5, min_area_px=4)
    assert len(regions) == 1 and mask[y, x]
    x0, y0, x1, y1 = regions[0].bbox
    assert x0 <= x < x1 and y0 <= y < y1


def test_decide_band_and_confidence():
    assert decide(2.0, 1.0, (0.8, 1.2)) == ("defect", 1.0, False)
    d, c, inb = decide(1.1, 1.0, (0.8, 1.2))
    assert d == "defect" and inb and abs(c - 0.5) < 1e-6
    d, c, inb = decide(0.9, 1.0, (0.8, 1.2))
    assert d == "good" and inb and abs(c - 0.5) < 1e-6


def test_head_map_matches_the_teacher_heads_and_modes_combine_by_norms():
    import cv2
    import pytest
    import torch

    from runtime.scoring import head_probability_map, score_outputs
    from teacher.head.model import defect_probability_map

    rng = np.random.default_rng(1)
    cls = rng.normal(size=(1, 5, 3)).astype(np.float32)  # 5 queries, 2 classes + no-object
    masks = rng.normal(size=(1, 5, 8, 8)).astype(np.float32)
    want = defect_probability_map(torch.from_numpy(cls).softmax(-1), torch.from_numpy(masks).sigmoid())[0].numpy()
    got = head_probability_map(cls, masks, (32, 32))
    np.testing.assert_allclose(got, cv2.resize(want, (32, 32), interpolation=cv2.INTER_LINEAR), atol=1e-6)
    bank = rng.normal(size=(50, 4)).astype(np.float32)
    out = {"embedding": bank[rng.integers(0, 50, 16)].T.reshape(1, 4, 4, 4).copy(), "class_logits": cls,
           "mask_logits": masks}
    b = score_outputs(out, bank, (32, 32), mode="bank")
    h = score_outputs(out, bank, (32, 32), mode="head")
    both = score_outputs(out, bank, (32, 32), mode="both", bank_norm=2.0, head_norm=0.5)
    np.testing.assert_allclose(h.anomaly_map, got, atol=1e-6)
    np.testing.assert_allclose(both.anomaly_map, (b.anomaly_map / 2.0 + got / 0.5) / 2, atol=1e-6)
    assert both.score == pytest.approx(float(both.anomaly_map.max()))
    assert b.mean_nn_distance == h.mean_nn_distance == both.mean_nn_distance  # OOD always from the bank
    with pytest.raises(ValueError, match="needs .defect_map. or the head outputs"):
        score_outputs({"embedding": out["embedding"]}, bank, (32, 32), mode="both")


def test_normalised_score_maps_the_threshold_to_half_and_keeps_the_ranking():
    from runtime.scoring import ScoreNorm

    n = ScoreNorm.checked(0.2, 1.0, 3.0)
    assert n(1.0) == 0.5 and n(0.2) == 0.0 and n(3.0) == 1.0
    assert n(0.6) == pytest.approx(0.25) and n(2.0) == 0.75 and n(-5) == 0.0 and n(99) == 1.0  # piecewise, clipped
    raw = np.random.default_rng(0).uniform(0, 4, 200)
    normed = np.array([n(s) for s in raw])
    assert ((normed >= 0.5) == (raw >= 1.0)).all()  # the same decisions
    inside = (raw > 0.2) & (raw < 3.0)  # strictly monotone inside the validation range: the same ranking there
    assert (np.diff(normed[inside][np.argsort(raw[inside])]) > 0).all()
    d = ScoreNorm.default(2.0, (2.0, 2.0))  # no validation figures: 0 -> 0, mirrored above
    assert (d.low, d.threshold, d.high) == (0.0, 2.0, 4.0)
    bad = ScoreNorm.checked(5.0, 1.0, 0.5)  # anchors on the wrong side of the threshold: the default's
    assert bad.low < 1.0 < bad.high and bad(1.0) == 0.5


def test_confidence_grows_with_distance_even_with_a_zero_width_band():
    from runtime.scoring import ScoreNorm

    # the band-based confidence is unchanged where the band has width
    assert decide(1.1, 1.0, (0.8, 1.2))[1] == pytest.approx(0.5)
    # a zero-width band used to give 1.0 for every frame; now it grows from 0 at the threshold
    confs = [decide(s, 1.0, (1.0, 1.0))[1] for s in (1.0, 1.05, 1.5, 2.5)]
    assert confs[0] == 0.0 and confs == sorted(confs) and confs[1] < 0.1 and confs[-1] == 1.0
    n = ScoreNorm.checked(0.0, 1.0, 3.0)
    d, c, inb = decide(2.0, 1.0, (1.0, 1.0), n)  # in normalised units: 0.75 -> |0.75 - 0.5| x 2
    assert d == "defect" and not inb and c == pytest.approx(0.5)
    assert decide(0.5, 1.0, (1.0, 1.0), n)[:1] == ("good",) and decide(0.5, 1.0, (1.0, 1.0), n)[1] == pytest.approx(0.5)


def test_verdict_carries_the_normalised_score_and_reads_old_headers():
    from runtime.contracts.verdict import Verdict

    v = Verdict(frame_id="a", decision="defect", score=2.0, score_norm=0.75, confidence=0.5)
    h = v.to_header()
    assert h["score"] == 2.0 and h["score_norm"] == 0.75
    assert Verdict.from_header(h).score_norm == 0.75
    old = dict(h)
    old.pop("score_norm")  # a peer from before score_norm
    assert Verdict.from_header(old).score_norm is None and Verdict.from_header(old).score == 2.0
    assert Verdict.from_header({**h, "some_future_field": 1}).score == 2.0  # unknown fields are dropped
