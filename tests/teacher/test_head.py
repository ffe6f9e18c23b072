"""Mask head: matcher and losses on hand-made cases (Eq. 11–14, 16), shapes, save/load, and a
short finetune on a tiny fixture dataset lowering the mask loss."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from teacher.head import MaskHead, head_preset, load_head, save_head
from teacher.head.losses import classification_loss, dice_loss, grounding_loss, grounding_similarity, mask_bce_loss
from teacher.head.matcher import HungarianMatcher, assign, pairwise_bce_cost, pairwise_dice_cost
from teacher.head.model import HeadState, defect_probability_map, regions_from_queries
from teacher.head.targets import caption_nouns, downsample_masks, regions_from_mask

torch.set_num_threads(1)


def test_assign_known_cost_matrix():
    cost = np.array([[4.0, 1.0, 3.0],
                     [2.0, 0.0, 5.0],
                     [3.0, 2.0, 2.0]])
    rows, cols = assign(cost)  # optimum 1 + 2 + 2 = 5: (0,1), (1,0), (2,2)
    assert cols.tolist() == [0, 1, 2] and rows.tolist() == [1, 0, 2]
    assert cost[rows, cols].sum() == 5.0
    # more queries than targets: 4 queries, 2 targets -> the two cheapest distinct rows
    cost2 = np.array([[9.0, 9.0], [1.0, 8.0], [9.0, 0.5], [2.0, 2.0]])
    rows, cols = assign(cost2)
    assert rows.tolist() == [1, 2] and cols.tolist() == [0, 1]


def test_bce_and_dice_by_hand():
    logits = torch.tensor([[0.0, 2.0, -1.0, 1.0]])
    target = torch.tensor([[1.0, 1.0, 0.0, 0.0]])
    p = 1 / (1 + np.exp(-np.array([0.0, 2.0, -1.0, 1.0])))
    t = np.array([1, 1, 0, 0.0])
    bce = -(t * np.log(p) + (1 - t) * np.log(1 - p)).mean()  # Eq. (11), mean over pixels
    dice = 1 - (2 * (p * t).sum() + 1) / (p.sum() + t.sum() + 1)
    assert mask_bce_loss(logits, target).item() == pytest.approx(bce, rel=1e-5)
    assert dice_loss(logits, target).item() == pytest.approx(dice, rel=1e-5)
    # the pairwise costs used by the matcher agree with the losses on the diagonal
    assert pairwise_bce_cost(logits, target)[0, 0].item() == pytest.approx(bce, rel=1e-5)
    assert pairwise_dice_cost(logits, target)[0, 0].item() == pytest.approx(dice, rel=1e-5)
    # a perfect confident mask has ~0 of both
    big = torch.tensor([[20.0, 20.0, -20.0, -20.0]])
    assert mask_bce_loss(big, target).item() < 1e-6 and dice_loss(big, target).item() < 1e-3


def test_classification_loss_weights_no_object():
    logits = torch.tensor([[[2.0, 0.0, 0.0], [0.0, 0.0, 1.0]]])  # 1 image, 2 queries, K=2 + no-object
    target = torch.tensor([[0, 2]])
    lp = torch.log_softmax(logits[0], -1)
    w = torch.tensor([1.0, 0.1])
    expected = -(w[0] * lp[0, 0] + w[1] * lp[1, 2]) / w.sum()  # weighted mean CE (Eq. 12 with ∅ weight)
    assert classification_loss(logits, target, no_object_weight=0.1).item() == pytest.approx(expected.item(), rel=1e-6)


def test_grounding_similarity_and_loss_by_hand():
    z = torch.tensor([[1.0, 0.0], [0.0, 1.0]])  # 2 queries
    words = torch.tensor([[1.0, 0.0], [0.6, 0.8]])  # 2 nouns
    tau = 0.5
    sim = z @ words.T
    p = torch.softmax(sim / tau, -1)
    g = (p * sim).sum(-1).mean()  # Eq. (13), mean over queries
    assert grounding_similarity(z, words, tau).item() == pytest.approx(g.item(), rel=1e-6)
    # matched pairs (image m with its own caption) give a lower loss than swapped pairs
    za = torch.tensor([[[1.0, 0.0]], [[0.0, 1.0]]])
    wa = [torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 1.0]])]
    good = grounding_loss(za, wa, 0.1).item()
    bad = grounding_loss(za, wa[::-1], 0.1).item()
    gm = torch.tensor([[1.0, 0.0], [0.0, 1.0]]) / 0.1  # g matrix by hand: (B, B)
    expected = 2 * torch.nn.functional.cross_entropy(gm, torch.arange(2)).item()  # Eq. (14), both directions
    assert good == pytest.approx(expected, rel=1e-5) and bad > good


def test_matcher_pairs_queries_with_their_regions():
    t = torch.zeros(2, 16)
    t[0, :4] = 1
    t[1, 8:12] = 1
    ml = torch.full((3, 16), -8.0)
    ml[2, :4] = 8.0  # query 2 predicts region 0
    ml[0, 8:12] = 8.0  # query 0 predicts region 1
    cl = torch.zeros(3, 3)
    qi, ti = HungarianMatcher()(cl, ml, torch.tensor([0, 1]), t)
    assert dict(zip(ti.tolist(), qi.tolist())) == {0: 2, 1: 0}
    assert HungarianMatcher()(cl, ml, torch.zeros(0, dtype=torch.long), t[:0])[0].size == 0


def test_targets_components_and_caption_nouns():
    m = np.zeros((32, 32), bool)
    m[2:6, 2:6] = True
    m[20:30, 20:24] = True
    m[0, 31] = True  # a 1-px speck is not a region
    comps = regions_from_mask(m)
    assert sorted(c.sum() for c in comps) == [16, 40]
    soft = downsample_masks(comps, 8)
    assert soft.shape == (2, 8, 8) and soft.max() <= 1 and soft.sum() == pytest.approx(56 / 16)
    assert caption_nouns("A metal plate with a deep pin hole and rust near the left edge", ["pin hole", "rust"]) \
        [:4] == ["pin hole", "rust", "metal", "plate"]


def _feats(b=2):
    g = torch.Generator().manual_seed(0)
    return {"s8": torch.randn(b, 32, 16, 16, generator=g), "s16": torch.randn(b, 64, 8, 8, generator=g),
            "s32": torch.randn(b, 64, 4, 4, generator=g), "s64": torch.randn(b, 64, 2, 2, generator=g)}


def test_head_shapes_and_save_load_roundtrip(tmp_path):
    torch.manual_seed(0)
    head = MaskHead(in_channels=(32, 64, 64, 64), embed_dim=24, image_size=128, **head_preset("tiny")).eval()
    outs = head(_feats())
    assert len(outs) == head_preset("tiny")["num_layers"] + 1
    assert outs[-1]["masks"].shape == (2, 16, 16, 16) and outs[-1]["embeds"].shape == (2, 16, 24)
    text = torch.randn(3, 24)
    logits = head.class_logits(outs[-1]["embeds"], text)
    assert logits.shape == (2, 16, 4)
    save_head(tmp_path / "head", HeadState(head=head, vocabulary=["a", "b", "c"], text_emb=text, threshold=0.3))
    st = load_head(tmp_path / "head")
    assert st.vocabulary == ["a", "b", "c"] and st.threshold == pytest.approx(0.3)
    with torch.no_grad():
        again = st.head(_feats())[-1]
    torch.testing.assert_close(again["masks"], outs[-1]["masks"])
    # open vocabulary: any number of categories at test time
    assert st.head.class_logits(again["embeds"], torch.randn(7, 24)).shape == (2, 16, 8)


def test_regions_from_queries_are_components_of_the_thresholded_map():
    probs = np.array([[0.45, 0.05, 0.5], [0.1, 0.8, 0.1], [0.6, 0.0, 0.4], [0.0, 0.0, 1.0]])  # K=2 + ∅
    mp = np.zeros((4, 10, 10), np.float32)
    mp[0, :4, :4] = 0.9  # "stain" query, map value 0.45
    mp[1, 2:6, 2:6] = 0.9  # "scratch" query, map value 0.81, overlapping query 0: one blob
    mp[2, 8:, 8:] = 1.0  # a separate "stain" blob, map value 0.6
    mp[3, 6:, :3] = 0.9  # the ∅ query contributes nothing
    regs = regions_from_queries(probs, mp, ["stain", "scratch"], (10, 10), threshold=0.3, min_region_px=1)
    assert [r[1] for r in regs] == ["scratch", "stain"]  # by confidence
    big, small = regs
    assert big[0].sum() == 28 and small[0].sum() == 4  # the two queries' blob is one region
    assert big[2] == pytest.approx((16 * 0.81 + 12 * 0.45) / 28, rel=1e-5) and big[3] == pytest.approx(0.81)
    assert small[2] == pytest.approx(0.6, rel=1e-5)  # the label with the most map mass wins: 12.96 > 5.4
    amap = defect_probability_map(torch.tensor(probs)[None], torch.tensor(mp)[None])[0].numpy()
    np.testing.assert_array_equal(big[0] | small[0], amap >= 0.3)  # the regions are the thresholded map
    assert [r[1] for r in regions_from_queries(probs, mp, ["stain", "scratch"], (10, 10), threshold=0.7,
                                               min_region_px=1)] == ["scratch"]
    assert len(regions_from_queries(probs, mp, ["stain", "scratch"], (10, 10), threshold=0.3, min_region_px=5)) == 1


def test_finetune_lowers_mask_loss(tmp_path):
    from runtime.contracts.dataset import load_dataset
    from teacher.checkpoint import build_random_teacher
    from teacher.finetune import FeatureSource, build_samples, evaluate_loss, finetune_head, loss_size_for, new_head
    from tests.support.teacher_fixtures import make_dataset

    ds = load_dataset(make_dataset(tmp_path / "d"))
    teacher = build_random_teacher("tiny")
    vocab = ds.labels()
    with torch.no_grad():
        text = teacher.embed_texts(vocab).float()
    ls = loss_size_for(teacher.feature_spec.image_size)
    samples = build_samples(ds, ds.split("train"), vocab, teacher, ls)
    assert sum(s.is_defect for s in samples) == 6 and sum(len(s.labels) for s in samples) >= 6
    torch.manual_seed(0)
    head = new_head(teacher, text.shape[1])
    feats = FeatureSource(teacher, samples, batch_size=8)
    before = evaluate_loss(head, feats, text, samples, ls)
    hist = finetune_head(head, feats, text, samples, steps=40, batch_size=6, lr=1e-3, seed=0)
    after = evaluate_loss(head, feats, text, samples, ls)
    assert all(math.isfinite(h["loss"]) for h in hist)
    assert after["mask"] < 0.8 * before["mask"], (before, after)
    assert after["cls"] < before["cls"], (before, after)


def test_caption_only_records_train_with_grounding_loss(tmp_path):
    from runtime.contracts.dataset import load_dataset
    from teacher.checkpoint import build_random_teacher
    from teacher.finetune import FeatureSource, build_samples, evaluate_loss, finetune_head, loss_size_for, new_head
    from tests.support.teacher_fixtures import make_dataset

    ds = load_dataset(make_dataset(tmp_path / "d", with_masks=False))
    teacher = build_random_teacher("tiny")
    vocab = ds.labels()
    with torch.no_grad():
        text = teacher.embed_texts(vocab).float()
    ls = loss_size_for(128)
    samples = build_samples(ds, ds.split("train"), vocab, teacher, ls)
    cap = [s for s in samples if s.caption_only]
    assert len(cap) == 6 and all(s.words.shape[0] >= 1 for s in cap)
    torch.manual_seed(0)
    head = new_head(teacher, text.shape[1])
    feats = FeatureSource(teacher, samples, batch_size=12)
    before = evaluate_loss(head, feats, text, samples, ls, batch_size=12)
    finetune_head(head, feats, text, samples, steps=20, batch_size=12, lr=1e-3, seed=0)
    after = evaluate_loss(head, feats, text, samples, ls, batch_size=12)
    assert before["ground"] > 0 and after["ground"] < before["ground"], (before, after)
