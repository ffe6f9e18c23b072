"""runtime.quality rows and the reference PatchCore detectors of `teacher baselines`."""
import json
import subprocess
import sys

import numpy as np
import pytest

from runtime.quality import quality_row, warnings_for


def _maps(labels, hit):
    masks, maps = [], []
    for i, y in enumerate(labels):
        m = np.zeros((16, 16), bool)
        a = np.zeros((16, 16), np.float32)
        if y:
            m[4:8, 4:8] = True
            a[4:8, 4:8] = 1.0 if hit else 0.0
        a[0, 0] = 0.01 * i  # break ties between images
        masks.append(m)
        maps.append(a)
    return masks, maps


def test_quality_row_perfect_and_per_product_mean():
    labels = [0, 0, 1, 1, 0, 0, 1, 1]
    products = ["a"] * 4 + ["b"] * 4
    types = ["good", "good", "x", "y", "good", "good", "x", "x"]
    masks, maps = _maps(labels, hit=True)
    scores = [float(a.max()) for a in maps]
    row = quality_row(products, labels, types, scores, maps, masks, labels)
    assert set(row["per_product"]) == {"a", "b"}
    m = row["mean"]
    assert m["image_auroc"] == pytest.approx(1.0) and m["au_pro"] == pytest.approx(1.0)
    assert m["accuracy"] == 1.0 and m["false_reject_rate"] == 0.0 and m["escape_rate"] == 0.0
    assert m["recall_per_type"] == {"x": 1.0, "y": 1.0}
    assert m["confusion"] == {"tp": 4, "fp": 0, "fn": 0, "tn": 4}
    assert row["per_product"]["a"]["confusion"] == {"tp": 2, "fp": 0, "fn": 0, "tn": 2}
    assert warnings_for(row) == []
    # the curves a report draws: a perfect ranking reaches TPR 1 at FPR 0, and every region at any FPR > 0
    roc_fpr, roc_tpr = row["per_product"]["a"]["curves"]["roc"]
    assert roc_fpr[0] == 0.0 and roc_tpr[-1] == 1.0 and max(t for f, t in zip(roc_fpr, roc_tpr) if f == 0.0) == 1.0
    pro_fpr, pro = row["per_product"]["b"]["curves"]["pro"]
    assert pro_fpr[-1] == pytest.approx(0.3) and len(pro) == len(pro_fpr) and pro[-1] == 1.0


def test_quality_row_blind_detector_is_at_chance_and_escapes():
    labels = [0, 1] * 4
    masks, maps = _maps(labels, hit=False)
    scores = [0.0] * len(labels)
    row = quality_row(["p"] * 8, labels, ["good", "x"] * 4, scores, maps, masks, [0] * 8)
    assert row["mean"]["image_auroc"] == pytest.approx(0.5)
    assert row["mean"]["escape_rate"] == 1.0 and row["mean"]["recall_per_type"] == {"x": 0.0}
    assert row["mean"]["confusion"] == {"tp": 0, "fp": 0, "fn": 4, "tn": 4}
    warned = warnings_for(row)
    assert len(warned) == 2 and "chance" in warned[0] and "100% of defective parts pass" in warned[1]


def test_a_detector_that_rejects_everything_is_warned_about():
    labels = [0, 1] * 4
    masks, maps = _maps(labels, hit=True)
    row = quality_row(["p"] * 8, labels, ["good", "x"] * 4, [float(a.max()) for a in maps], maps, masks, [1] * 8)
    assert row["mean"]["confusion"] == {"tp": 4, "fp": 4, "fn": 0, "tn": 0}
    assert warnings_for(row) == ["100% of good parts are rejected at the calibrated threshold"]


@pytest.fixture(scope="module")
def evalset(tmp_path_factory):
    from teacher.data.evalset import build_evalset

    out = tmp_path_factory.mktemp("evalset")
    build_evalset(out, size=64, n_good_train=4, n_good_val=2, n_good_test=3, n_defect_test=6, seed=0)
    return out / "manifest.jsonl"


def test_reference_extractors_give_two_levels():
    import torch

    from teacher.reference import build_extractor

    x = torch.rand(2, 3, 64, 64)
    assert build_extractor("pixels")(x)["s8"].shape == (2, 192, 8, 8)
    for name in ("random_cnn", "effnet"):
        f = build_extractor(name)(x)
        assert f["s8"].shape[-1] == 8 and f["s16"].shape[-1] == 4
    with pytest.raises(ValueError, match="unknown reference detector"):
        build_extractor("resnet")


def test_pretrained_and_random_effnet_differ():
    import torch

    from teacher.reference import build_extractor

    x = torch.rand(1, 3, 64, 64)
    a, b = build_extractor("effnet")(x)["s8"], build_extractor("random_cnn")(x)["s8"]
    assert not torch.allclose(a, b)


def test_baselines_command_json(evalset):
    out = subprocess.run([sys.executable, "-m", "teacher", "baselines", "--data", str(evalset), "--size", "64",
                          "--only", "pixels", "--only", "effnet", "--json"],
                         capture_output=True, text=True, timeout=240)
    assert out.returncode == 0, out.stderr
    res = json.loads(out.stdout.strip().splitlines()[-1])
    assert set(res["rows"]) == {"pixels", "effnet"}
    for row in res["rows"].values():
        assert row["mean"]["n_images"] == 4 * 9
        assert 0.0 <= row["mean"]["image_auroc"] <= 1.0
        assert set(row["per_product"]) >= {"moon", "page"}


def test_baselines_refuses_bad_size(evalset):
    out = subprocess.run([sys.executable, "-m", "teacher", "baselines", "--data", str(evalset), "--size", "50"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "--size" in out.stderr and "Traceback" not in out.stderr


def test_bench_quality_table_json_and_report(evalset, tmp_path):
    """`lineside bench quality --teacher CKPT`: the teacher row beside the three reference rows, per product."""
    from teacher.checkpoint import build_random_teacher, save_teacher

    ck = tmp_path / "ckpt"
    save_teacher(build_random_teacher("tiny", image_size=64), ck, {"note": "random tiny teacher for tests"})
    bank = subprocess.run([sys.executable, "-m", "teacher", "bank", "--checkpoint", str(ck), "--data", str(evalset),
                           "--budget", "64"], capture_output=True, text=True, timeout=120)
    assert bank.returncode == 0, bank.stderr
    rep = tmp_path / "report"
    out = subprocess.run([sys.executable, "-m", "runtime", "bench", "quality", "--data", str(evalset), "--teacher",
                          str(ck), "--size", "64", "--json", "--report", str(rep)],
                         capture_output=True, text=True, timeout=280)
    assert out.returncode == 0, out.stderr
    res = json.loads(out.stdout.strip().splitlines()[-1])
    assert list(res["rows"])[0] == "teacher (bank)" and len(res["rows"]) == 4
    for row in res["rows"].values():
        assert row["mean"]["n_images"] == 36 and set(row["per_product"]) >= {"moon", "page"}
    assert set(res["teacher_beats_imagenet_patchcore"]) == {"image_auroc", "au_pro"}
    assert "ImageNet EfficientNet-Lite0" in (rep / "index.html").read_text()
    # ROC and PRO curves per row, a line per product
    assert len(list(rep.glob("row*_roc.png"))) == 4 and len(list(rep.glob("row*_pro.png"))) == 4


def test_bench_quality_needs_data():
    out = subprocess.run([sys.executable, "-m", "runtime", "bench", "quality"], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 2 and "--data" in out.stderr and "Traceback" not in out.stderr
