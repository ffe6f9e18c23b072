"""`lineside predict`: the edge artifact judges a folder, a glob or a manifest offline, with no daemon."""
import json
import subprocess
import sys

import cv2
import numpy as np

from tests.support.runtime_fixtures import SIZE, TinyArtifact


def _predict(*args, timeout=120):
    return subprocess.run([sys.executable, "-m", "runtime", "predict", *map(str, args)], capture_output=True,
                          text=True, timeout=timeout)


def _write(path, rgb):
    cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))


def test_predict_manifest_writes_verdicts_overlays_and_metrics(art, tmp_path):
    from runtime.contracts.dataset import Record, write_manifest

    (tmp_path / "img").mkdir()
    recs = []
    for i in range(4):
        _write(tmp_path / "img" / f"good{i}.png", TinyArtifact.good(i))
        _write(tmp_path / "img" / f"bad{i}.png", TinyArtifact.defect(i))
        mask = np.zeros((SIZE, SIZE), np.uint8)
        mask[SIZE // 2 - 7:SIZE // 2 + 7, SIZE // 2 - 7:SIZE // 2 + 7] = 255  # defect_image's square
        cv2.imwrite(str(tmp_path / "img" / f"bad{i}_mask.png"), mask)
        recs += [Record(image=f"img/good{i}.png", label="good", product="tiny", split="test"),
                 Record(image=f"img/bad{i}.png", mask=f"img/bad{i}_mask.png", label="defect", defect_type="spot",
                        product="tiny", split="test")]
    manifest = write_manifest(tmp_path, recs)
    out = tmp_path / "pred"
    r = _predict(art.dir, manifest, "--out", out, "--json")
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout.strip().splitlines()[-1])
    lines = [json.loads(x) for x in (out / "verdicts.jsonl").read_text().splitlines()]
    assert len(lines) == res["n_images"] == 8
    by_id = {v["frame_id"]: v for v in lines}
    assert all(by_id[f"bad{i}"]["decision"] == "defect" and by_id[f"good{i}"]["decision"] == "good" for i in range(4))
    assert res["decisions"] == {"defect": 4, "good": 4}
    assert len(list((out / "overlays").glob("*.png"))) == 8
    # the tiny artifact separates its defects fully, so the metrics must say so
    assert res["metrics"]["image_auroc"] == 1.0 and res["metrics"]["escape_rate"] == 0.0
    row = json.loads((out / "metrics.json").read_text())
    assert row["per_product"]["tiny"]["recall_per_type"] == {"spot": 1.0}


def test_predict_folder_and_glob_without_labels(art, tmp_path):
    for i in range(3):
        _write(tmp_path / f"f{i}.png", TinyArtifact.good(i))
    (tmp_path / "notes.txt").write_text("not an image")
    r = _predict(art.dir, tmp_path, "--out", tmp_path / "a", "--no-overlays", "--json")
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout.strip().splitlines()[-1])
    assert res["n_images"] == 3 and "metrics" not in res and res["overlays"] is None
    r = _predict(art.dir, tmp_path / "f[01].png", "--out", tmp_path / "b", "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout.strip().splitlines()[-1])["n_images"] == 2


def test_predict_source_without_images_is_one_line(art, tmp_path):
    r = _predict(art.dir, tmp_path / "nothing-*.png", "--out", tmp_path / "o")
    assert r.returncode == 2 and "no images" in r.stderr and "Traceback" not in r.stderr
