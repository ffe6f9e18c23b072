"""`lineside bench scale`: the measurement (a finished child's own peak RSS), the growth exponents, the
report and plot, with fake tools (fast); and the real chain at N = 8, 16 (slow, opt-in with -m slow)."""
from __future__ import annotations

import json
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from runtime.tools.bench import scale as bench_scale

# A stand-in for `teacher` / `distill`: holds ~n_good MB for the synth step, 50 MB + 1 MB per image for the
# others (the data's size read back from the manifest), and prints one JSON line.
FAKE_TOOL = r'''
import json, sys, time
from pathlib import Path
argv = sys.argv[1:]
tool, step = argv[0], argv[1]
if step == "data":
    out = Path(argv[3]); out.mkdir(parents=True, exist_ok=True)
    n = int(argv[argv.index("--n-good") + 1])
    (out / "manifest.jsonl").write_text("x\n" * n)
else:
    m = next(Path(a) for a in argv if a.endswith("manifest.jsonl")) if any(a.endswith("manifest.jsonl") for a in argv) \
        else Path(argv[2]).parent / "data" / "manifest.jsonl"
    n = len(m.read_text().splitlines())
    for i, a in enumerate(argv):
        if a == "--out":
            Path(argv[i + 1]).mkdir(parents=True, exist_ok=True)
block = bytearray((50 + n) << 20)
for i in range(0, len(block), 4096):
    block[i] = 1
time.sleep(0.01 * n)
print(json.dumps({"tool": tool, "step": step, "n": n}))
'''


def test_run_measured_reports_the_childs_own_peak_rss(tmp_path):
    ballast = bytearray(400 << 20)  # this process's size must not count for its children (Linux carries the
    ballast[::4096] = b"x" * len(ballast[::4096])  # forking parent's high-water mark across exec)
    r = bench_scale.run_measured([sys.executable, "-c", "b = bytearray(300 << 20); b[::4096] = b'x' * len(b[::4096]);"
                                  " print('{\"ok\": 1}')"], tmp_path / "big.log", env=None)
    small = bench_scale.run_measured([sys.executable, "-c", "print(1)"], tmp_path / "small.log", env=None)
    assert r["returncode"] == 0 and r["result"] == {"ok": 1}
    assert 300 <= r["peak_rss_mb"] < 390 and small["peak_rss_mb"] < 100
    assert bench_scale.run_measured([sys.executable, "-c", "raise SystemExit(3)"], tmp_path / "x.log",
                                    env=None)["returncode"] == 3
    hung = bench_scale.run_measured([sys.executable, "-c", "import time; time.sleep(60)"], tmp_path / "h.log",
                                    env=None, timeout_s=1)
    assert hung["returncode"] != 0 and hung["wall_s"] < 30
    del ballast


def test_growth_exponent_is_the_log_log_slope():
    n = [100, 400, 1600]
    assert bench_scale.growth_exponent(n, [3 * v ** 1.0 for v in n]) == pytest.approx(1.0)
    assert bench_scale.growth_exponent(n, [7.0, 7.0, 7.0]) == pytest.approx(0.0, abs=1e-12)
    assert bench_scale.growth_exponent(n, [2 * v ** 0.5 for v in n]) == pytest.approx(0.5)
    assert bench_scale.growth_exponent([100], [1.0]) is None
    with pytest.raises(ValueError, match="at least 4"):
        bench_scale.parse_n("2,8")
    assert bench_scale.parse_n("16, 8,16") == [8, 16]


def test_scale_report_with_fake_tools(tmp_path, monkeypatch):
    fake = tmp_path / "fake_tool.py"
    fake.write_text(FAKE_TOOL)
    monkeypatch.setattr(bench_scale, "command", lambda tool: [sys.executable, str(fake), tool])
    args = SimpleNamespace(n="8,32", size=128, once_size=256, steps=2, work=str(tmp_path / "w"),
                           report=str(tmp_path / "rep"))
    said = []
    report = bench_scale.run_scale(args, env=None, say=said.append)
    assert [(r["n"], r["size"]) for r in report["runs"]] == [(8, 128), (32, 128), (32, 256)]
    for r in report["runs"]:
        assert list(r["steps"]) == list(bench_scale.STEPS)
        assert all(v["wall_s"] > 0 and v["peak_rss_mb"] > 50 for v in r["steps"].values())
    e = report["exponents"]
    assert set(e) == set(bench_scale.STEPS)
    # 50 MB + 1 MB per image: between flat and linear; the fit sees that
    assert all(0.0 < e[s]["memory"] < 1.0 for s in bench_scale.STEPS if s != "synth")
    assert all(t["passed"] is None for t in report["targets"])  # N = 32 is too small to judge
    assert any("256px" in t["target"] for t in report["targets"])
    saved = json.loads((tmp_path / "rep" / "scale.json").read_text())
    assert saved["exponents"] == json.loads(json.dumps(e))
    assert saved["commit"] is None or isinstance(saved["commit"], str)
    assert Path(report["plot"]).is_file() and Path(report["plot"]).stat().st_size > 10_000
    assert any("N=32 256px export" in m for m in said)


def test_targets_are_judged_at_the_issue_size():
    steps = {s: {"wall_s": 1.0, "peak_rss_mb": 500.0, "returncode": 0} for s in bench_scale.STEPS}
    runs = [{"n": n, "size": 128, "steps": steps} for n in (100, 400, 1600)]
    big = dict(steps, bank={"wall_s": 9.0, "peak_rss_mb": 3000.0, "returncode": 0})
    runs.append({"n": 1600, "size": 256, "steps": big})
    report = {"runs": runs, "size": 128}
    report["exponents"] = bench_scale.fit_exponents(runs[:3])
    rows = {t["target"]: t["passed"] for t in bench_scale.targets(report)}
    assert rows["bank peak RSS MB at N=1600"] is True and rows["fit time growth exponent"] is True
    assert rows["bank peak RSS MB at N=1600 256px"] is False


@pytest.mark.slow
def test_scale_runs_the_real_chain_at_tiny_n(tmp_path):
    import subprocess

    from runtime.tools.demo.steps import child_env, command, last_json_line

    p = subprocess.run(command("lineside") + ["bench", "scale", "--n", "8,16", "--steps", "2", "--once-size", "0",
                                              "--work", str(tmp_path / "w"), "--report", str(tmp_path / "r"),
                                              "--json"], capture_output=True, text=True, env=child_env(1),
                       timeout=1200)
    assert p.returncode == 0, p.stderr[-3000:]
    report = last_json_line(p.stdout)
    assert [r["n"] for r in report["runs"]] == [8, 16]
    for r in report["runs"]:
        assert all(0 < v["peak_rss_mb"] < 2048 for v in r["steps"].values())
    assert all(np.isfinite(report["exponents"][s]["memory"]) for s in bench_scale.STEPS)
    assert (tmp_path / "r" / "scale.png").is_file()
