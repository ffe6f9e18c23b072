"""`teacher finetune`, `teacher bank`, `teacher eval` end to end on a tiny random teacher and a fixture
dataset: head and bank written, TeacherPipeline.load, metrics JSON with every key, HTML report."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from teacher.cli import main
from teacher.evaluate import METRIC_KEYS

torch.set_num_threads(1)


def _last_json(capsys) -> dict:
    out = capsys.readouterr().out.strip().splitlines()
    return json.loads(out[-1])


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    from teacher.checkpoint import build_random_teacher, save_teacher
    from tests.support.teacher_fixtures import make_dataset

    root = tmp_path_factory.mktemp("eval")
    data = make_dataset(root / "data")
    ck = root / "ckpt"
    save_teacher(build_random_teacher("tiny"), ck, {"note": "random tiny teacher for tests"})
    return ck, data


def test_finetune_bank_eval_cli(ckpt, capsys, tmp_path):
    ck, data = ckpt
    assert main(["finetune", "--checkpoint", str(ck), "--data", str(data), "--steps", "30", "--json"]) == 0
    ft = _last_json(capsys)
    assert (ck / "head" / "config.json").is_file() and (ck / "head" / "vocab.json").is_file()
    assert ft["vocabulary"] == ["scratch", "stain"]
    assert ft["mask_loss_after"] < ft["mask_loss_before"]
    assert main(["bank", "--checkpoint", str(ck), "--data", str(data), "--budget", "300", "--json"]) == 0
    bk = _last_json(capsys)
    assert bk["n_vectors"] == 300 and bk["dim"] == 96 and (ck / "bank" / "bank.npy").is_file()

    rep = tmp_path / "report"
    assert main(["eval", "--checkpoint", str(ck), "--data", str(data), "--json", "--report", str(rep)]) == 0
    res = _last_json(capsys)
    assert res["mode"] == "both" and res["n_images"] == 6 and res["split"] == "test"
    m = res["metrics"]
    assert set(METRIC_KEYS) <= set(m)
    for k in METRIC_KEYS:  # the test split has both classes and masks: every metric is a number
        assert isinstance(m[k], float) and 0.0 <= m[k] <= 1.0 or k == "f1_threshold", (k, m[k])
    assert (rep / "index.html").is_file()
    for png in ("roc_image.png", "roc_pixel.png", "pro.png", "scores.png", "latency.png", "worst_0.png", "best_0.png"):
        assert (rep / png).stat().st_size > 500, png
        assert png in (rep / "index.html").read_text()
    # as a new user sees it (tests/support/report_check.py: html.parser, no browser offline): short title, no JSON dump
    # (the Run section is a table now), images resolve, confusion matrix and provenance present
    from tests.support.report_check import check_report_page

    page = check_report_page(rep / "index.html")
    text = " ".join(page.texts)
    assert "escape rate" in text and "false-reject rate" in text and "per defect type" in text
    assert "threshold" in text and "was chosen by" in text  # how the threshold and band were chosen
    assert f"data hash {res['data_hash'][:16]}" in text


def test_pipeline_load_and_new_vocabulary(ckpt):
    from teacher.pipeline import TeacherPipeline

    ck, data = ckpt
    if not (ck / "head").is_dir():
        pytest.skip("needs the head written by test_finetune_bank_eval_cli")
    pipe = TeacherPipeline.load(ck)
    img = np.full((100, 150, 3), 120, np.uint8)
    v = pipe.predict([img])[0]
    assert v.anomaly_map.shape == (100, 150) and v.model_hash == pipe.model_hash and len(pipe.model_hash) == 16
    pipe.set_vocabulary(["rust", "dent"])
    assert pipe.vocabulary == ["rust", "dent"]
    assert all(r.label in ("rust", "dent", "anomaly") for r in pipe.predict([img])[0].regions)


def test_eval_refuses_checkpoint_without_head_or_bank(tmp_path, ckpt):
    import shutil

    from teacher.pipeline import TeacherPipeline

    ck, _ = ckpt
    bare = tmp_path / "bare"
    shutil.copytree(ck, bare, ignore=shutil.ignore_patterns("head", "bank"))
    with pytest.raises(FileNotFoundError, match="teacher finetune"):
        TeacherPipeline.load(bare)


def test_eval_good_only_split_reports_nulls(ckpt, capsys, tmp_path):
    ck, data = ckpt
    if not (ck / "bank").is_dir():
        pytest.skip("needs the bank written by test_finetune_bank_eval_cli")
    # the first 3 test records of the fixture are good: metrics needing both classes are null, not faked
    assert main(["eval", "--checkpoint", str(ck), "--data", str(data), "--json", "--max-images", "3",
                 "--report", str(tmp_path / "r")]) == 0
    m = _last_json(capsys)["metrics"]
    assert m["n_defect"] == 0 and m["image_auroc"] is None and m["au_pro"] is None and m["box_map@0.5"] is None
    assert m["accuracy"] is not None and (tmp_path / "r" / "index.html").is_file()


def test_compute_metrics_by_hand():
    from runtime.contracts.dataset import Record
    from runtime.contracts.verdict import Region, Verdict
    from teacher.evaluate import compute_metrics

    recs = [Record(image="a.png", label="good", product="p", split="test"),
            Record(image="b.png", mask="b_m.png", label="defect", defect_type="stain", product="p", split="test")]
    gt = [np.zeros((10, 10), bool), np.zeros((10, 10), bool)]
    gt[1][2:6, 2:6] = True
    m0 = np.zeros((10, 10), bool)
    m1 = np.zeros((10, 10), bool)
    m1[2:6, 2:4] = True  # half of the GT square
    a0, a1 = np.zeros((10, 10), np.float32), gt[1].astype(np.float32)
    vs = [Verdict("a", decision="good", score=0.1, anomaly_map=a0, mask=m0),
          Verdict("b", decision="defect", score=0.9, anomaly_map=a1, mask=m1,
                  regions=[Region((2, 2, 6, 6), 8, "stain", 0.8)])]
    m = compute_metrics(vs, recs, gt, threshold=0.5, labelled=True)
    assert m["image_auroc"] == 1.0 and m["pixel_auroc"] == 1.0 and m["accuracy"] == 1.0
    assert m["iou"] == pytest.approx(0.5) and m["dice"] == pytest.approx(2 * 8 / (8 + 16))
    assert m["classification_accuracy"] == 1.0 and m["box_map@0.5"] == pytest.approx(1.0)
    vs[1].regions[0].label = "scratch"  # right box, wrong class -> no true positive for "stain"
    m = compute_metrics(vs, recs, gt, threshold=0.5, labelled=True)
    assert m["classification_accuracy"] == 0.5 and m["box_map@0.5"] == 0.0


@pytest.mark.slow
def test_finetune_under_torchrun_two_ranks(ckpt, tmp_path):
    """DDP path (gloo on CPU): two ranks train on their shards, rank 0 writes the head."""
    import os
    import subprocess
    import sys

    ck, data = ckpt
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "-m", "teacher",
                        "finetune", "--checkpoint", str(ck), "--data", str(data), "--steps", "6", "--json",
                        "--out", str(tmp_path / "head")], capture_output=True, text=True, timeout=240, env=env)
    assert r.returncode == 0, r.stderr[-2000:]
    summary = json.loads(r.stdout.strip().splitlines()[-1])
    assert summary["steps"] == 6 and (tmp_path / "head" / "vocab.json").is_file()


@pytest.mark.gpu
def test_finetune_and_pipeline_on_gpu_with_amp(tmp_path):
    """Mixed precision (bf16/fp16 autocast) training and GPU inference on the tiny preset."""
    from runtime.contracts.dataset import load_dataset
    from teacher.checkpoint import build_random_teacher
    from teacher.finetune import FeatureSource, build_samples, evaluate_loss, finetune_head, loss_size_for, new_head
    from teacher.head.model import HeadState
    from teacher.pipeline import TeacherPipeline
    from tests.support.teacher_fixtures import make_dataset

    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    ds = load_dataset(make_dataset(tmp_path / "d"))
    teacher = build_random_teacher("tiny").to("cuda")
    vocab = ds.labels()
    with torch.no_grad():
        text = teacher.embed_texts(vocab).float()
    ls = loss_size_for(128)
    samples = build_samples(ds, ds.split("train"), vocab, teacher, ls)
    torch.manual_seed(0)
    head = new_head(teacher, text.shape[1]).cuda()
    feats = FeatureSource(teacher, samples, batch_size=8)
    before = evaluate_loss(head, feats, text, samples, ls)
    finetune_head(head, feats, text, samples, steps=60, batch_size=6, lr=1e-3)
    after = evaluate_loss(head, feats, text, samples, ls)
    assert after["mask"] < before["mask"]
    pipe = TeacherPipeline(teacher, head=HeadState(head=head, vocabulary=vocab, text_emb=text, threshold=0.3))
    v = pipe.predict([ds.read_image(r) for r in ds.split("test")])
    assert all(x.anomaly_map.shape == (128, 128) for x in v)


class _FakePipe:
    """TeacherPipeline's surface for evaluate_split: a random map per image, the decision at the threshold."""
    threshold, head = 0.5, None

    def __init__(self, size):
        self.size, self.rng = size, np.random.default_rng(0)

    def predict(self, images, frame_ids=None):
        from runtime.contracts.verdict import Verdict

        out = []
        for _ in images:
            a = self.rng.random((self.size, self.size)).astype(np.float32)
            s = float(a.max())
            out.append(Verdict("f", decision="defect" if s >= self.threshold else "good", score=s, anomaly_map=a,
                               mask=a > 0.99, latencies_ms={"features": 1.0, "total": 1.0}))
        return out


class _FakeData:
    def __init__(self, size):
        self.size = size

    def read_image(self, r):
        return np.zeros((self.size, self.size, 3), np.uint8)

    def read_mask(self, r, shape):
        m = np.zeros(shape, bool)
        if r.is_defect:
            m[8:20, 8:20] = True
        return m


def _records(n):
    from runtime.contracts.dataset import Record

    return [Record(image=f"{i}.png", label="defect" if i % 2 else "good", defect_type="stain" if i % 2 else "good",
                   mask=f"{i}_m.png" if i % 2 else None, product="ab"[i % 4 // 2], split="test") for i in range(n)]


def test_evaluate_split_memory_does_not_grow_with_the_images():
    """A full map is 64 KB here; holding every map would cost 64 KB an image more. The streamed evaluation holds
    one batch, the histograms, the 2 x N_CASES shown cases and a few values an image (scores, boxes)."""
    import tracemalloc

    from teacher.evaluate import N_CASES, evaluate_split

    size, peaks = 128, {}
    evaluate_split(_FakePipe(size), _FakeData(size), _records(4), batch_size=4)  # imports out of the measurement
    for n in (16, 80):
        tracemalloc.start()
        ev = evaluate_split(_FakePipe(size), _FakeData(size), _records(n), batch_size=4)
        peaks[n] = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert ev.metrics["n_images"] == n and set(ev.quality["per_product"]) == {"a", "b"}
        assert len(ev.cases["worst"]) == len(ev.cases["best"]) == N_CASES
        assert ev.metrics["pixel_method"] == "histogram, 65536 bins, relative (float32 keys)" and ev.metrics["au_pro_bound"] < 0.01
    map_bytes = size * size * 4
    assert (peaks[80] - peaks[16]) / 64 < map_bytes / 8, peaks  # per extra image: a few values, not a map


def test_evaluate_split_figures_match_the_exact_metrics():
    """The streamed figures against runtime.metrics' exact sort on the same verdicts: image figures equal,
    pixel AUROC and AU-PRO within their recorded bounds."""
    from runtime import metrics as M
    from teacher.evaluate import evaluate_split

    size, recs = 64, _records(12)
    ev = evaluate_split(_FakePipe(size), _FakeData(size), recs, batch_size=5)
    vs = _FakePipe(size).predict([None] * len(recs))
    gt = [_FakeData(size).read_mask(r, (size, size)) for r in recs]
    maps = [v.anomaly_map for v in vs]
    m = ev.metrics
    assert m["image_auroc"] == M.image_auroc([r.is_defect for r in recs], [v.score for v in vs])
    assert abs(m["pixel_auroc"] - M.pixel_auroc(gt, maps)) <= m["pixel_auroc_bound"] + 1e-12
    assert abs(m["au_pro"] - M.au_pro(gt, maps)) <= m["au_pro_bound"] + 1e-12
    assert m["pixel_auroc"] == pytest.approx(M.pixel_auroc(gt, maps), abs=1e-4)
