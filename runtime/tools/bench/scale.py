"""`lineside bench scale`: wall time and peak RSS of every step of the chain against the number of good
images, and how each grows.

    lineside bench scale [--n 100,400,1600] [--size 128] [--once-size 256] [--steps 5] [--work DIR]
                         [--report DIR] [--json]

For each N the chain runs from nothing, tiny preset, ``--steps`` optimiser steps where a step trains:
`teacher data synth` (N good, N/4 defect images), `train-vae`, `train`, `finetune`, `bank`, `distill fit`,
`distill quantize`, `distill export`, each a subprocess exactly as a user types it (this process stays
torch-free). Per step: wall time, and peak RSS from the kernel's own account of the finished child
(``os.wait4``'s ``ru_maxrss``: the child's high-water mark, no sampling, taken in a small launcher
process so that the bench's own size never counts). Per step and figure, the growth
exponent b of ``value ≈ a·N^b`` (least squares on log-log): b ≈ 0 is flat, 1 linear. With ``--once-size``
the chain runs once more at that image size (at the largest N). ``--report DIR`` writes scale.json and
scale.png (time and RSS against N, log-log, one line per step).

Targets (issue 13): every step ≤ ``RSS_LIMIT_MB`` at the largest N and at ``--once-size``, memory growth
≤ ``MEMORY_EXPONENT_MAX``, time growth ≤ ``TIME_EXPONENT_MAX``; judged only once the largest N reaches
``TARGET_N`` (smaller runs report the figures and say the targets were not judged).
"""
from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import threading
import time
from pathlib import Path

import numpy as np

from runtime.report import build_info
from runtime.tools.bench.common import machine
from runtime.tools.demo.steps import StepError, command, last_json_line

DEFAULT_N = (100, 400, 1600)
DEFAULT_STEPS = 5
ONCE_SIZE = 256
PRESET = "tiny"
DEFECT_SHARE = 0.25  # defect images per good image: the val split needs both to calibrate
STEP_TIMEOUT_S = 3600
RSS_LIMIT_MB = 2048.0
MEMORY_EXPONENT_MAX = 0.2
TIME_EXPONENT_MAX = 1.1
TARGET_N = 1600
STEPS = ("synth", "train-vae", "train", "finetune", "bank", "fit", "quantize", "export")


def configure(p) -> None:
    """The scale flags, in their own group of `lineside bench` (``--size``, ``--work``, ``--report`` and
    ``--json`` are bench's own)."""
    g = p.add_argument_group("scale")
    g.add_argument("--n", default=",".join(map(str, DEFAULT_N)),
                   help="scale: comma-separated numbers of good images, one chain each (default %(default)s)")
    g.add_argument("--once-size", type=int, default=ONCE_SIZE,
                   help="scale: run the chain once more at this image size, at the largest N (0: no)")
    g.add_argument("--steps", type=int, default=DEFAULT_STEPS, help="scale: optimiser steps of each training step")


def parse_n(text: str) -> list[int]:
    try:
        n = sorted({int(v) for v in str(text).split(",") if v.strip()})
    except ValueError:
        raise ValueError(f"--n {text!r}: give comma-separated whole numbers, e.g. 100,400,1600") from None
    if not n or n[0] < 4:
        raise ValueError(f"--n {text!r}: every N must be at least 4 (train, val and test need good images)")
    return n


# Runs the step as its own child and reports that child's rusage. A child's ru_maxrss starts at the RSS of the
# process it was forked from (Linux carries the pre-exec high-water mark across exec), so the step is forked
# from this small launcher, not from the bench process, whose size would otherwise count for every step.
_LAUNCHER = """import json, os, subprocess, sys
p = subprocess.Popen(sys.argv[2:])
_, status, ru = os.wait4(p.pid, 0)
code = os.waitstatus_to_exitcode(status)
p.returncode = code
open(sys.argv[1], "w").write(json.dumps({"maxrss_kb": ru.ru_maxrss, "returncode": code}))
sys.exit(code if code >= 0 else 128 - code)
"""


def run_measured(argv: list[str], log: Path, env: dict | None, timeout_s: float = STEP_TIMEOUT_S) -> dict:
    """Run one command to completion: {wall_s, peak_rss_mb, returncode, result (its last-line JSON)}.
    Peak RSS is the command's own ``ru_maxrss`` (KiB on Linux) from ``os.wait4`` in a small launcher
    (see _LAUNCHER), so neither this process, concurrent processes nor earlier steps count."""
    import signal
    import sys

    out, usage = log.with_suffix(".stdout"), log.with_suffix(".rusage.json")
    usage.unlink(missing_ok=True)
    with open(log, "w") as logf, open(out, "w") as outf:
        logf.write("$ " + shlex.join(argv) + "\n")
        logf.flush()
        t0 = time.perf_counter()
        p = subprocess.Popen([sys.executable, "-c", _LAUNCHER, str(usage)] + list(argv), stdout=outf, stderr=logf,
                             env=env, start_new_session=True)
        timer = threading.Timer(timeout_s, lambda: os.killpg(p.pid, signal.SIGKILL))
        timer.start()
        try:
            code = p.wait()
        finally:
            timer.cancel()
        wall = time.perf_counter() - t0
    ru = json.loads(usage.read_text()) if usage.is_file() else {"maxrss_kb": 0, "returncode": code}
    return {"wall_s": round(wall, 3), "peak_rss_mb": round(ru["maxrss_kb"] / 1024.0, 1),
            "returncode": ru["returncode"], "result": last_json_line(out.read_text(errors="replace"))}


def chain(n: int, size: int, steps: int, work: Path, env: dict, say) -> dict:
    """The chain at N good images and ``size`` px in ``work`` (emptied first): step -> figures."""
    if work.exists():
        shutil.rmtree(work)
    (work / "logs").mkdir(parents=True)
    data, vae, ckpt, run_dir, art = work / "data", work / "vae", work / "teacher", work / "run", work / "artifact"
    manifest = data / "manifest.jsonl"
    n_defect = max(2, int(round(DEFECT_SHARE * n)))
    plan = {
        "synth": ("teacher", ["data", "synth", data, "--n-good", n, "--n-defect", n_defect, "--size", size,
                              "--seed", 0, "--json"]),
        "train-vae": ("teacher", ["train-vae", "--preset", PRESET, "--data", manifest, "--out", vae, "--steps", steps,
                                  "--image-size", size]),
        "train": ("teacher", ["train", "--preset", PRESET, "--data", manifest, "--out", ckpt, "--steps", steps,
                              "--vae", vae, "--image-size", size, "--json"]),
        "finetune": ("teacher", ["finetune", "--checkpoint", ckpt, "--data", manifest, "--steps", steps,
                                 "--pseudo-defects", 1, "--json"]),
        "bank": ("teacher", ["bank", "--checkpoint", ckpt, "--data", manifest, "--json"]),
        "fit": ("distill", ["fit", "--teacher", ckpt, "--data", manifest, "--student", "s", "--out", run_dir,
                            "--steps", steps, "--json"]),
        "quantize": ("distill", ["quantize", run_dir, "--data", manifest, "--method", "ort", "--json"]),
        "export": ("distill", ["export", run_dir, "--out", art, "--json"]),
    }
    ok_codes = {"quantize": (0, 2)}  # 2: the accuracy guard kept FP32, an answer, not a failure
    figures = {}
    for name in STEPS:
        tool, args = plan[name]
        argv = command(tool) + [str(a) for a in args]
        r = run_measured(argv, work / "logs" / f"{name}.log", env)
        if r["returncode"] not in ok_codes.get(name, (0,)):
            from runtime.tools.demo.steps import tail

            raise StepError(f"scale N={n} {size}px step {name}: `{shlex.join(argv)}` exited {r['returncode']}:\n"
                            + tail(work / "logs" / f"{name}.log"))
        figures[name] = {k: r[k] for k in ("wall_s", "peak_rss_mb", "returncode")}
        say(f"N={n} {size}px {name}: {r['wall_s']:.1f} s, peak RSS {r['peak_rss_mb']:.0f} MB")
    return figures


def growth_exponent(n: list[float], values: list[float]) -> float | None:
    """b of values ≈ a·n^b, least squares on log-log; None with fewer than two distinct N."""
    x = np.log(np.asarray(n, float))
    y = np.log(np.maximum(np.asarray(values, float), 1e-9))
    if len(np.unique(x)) < 2:
        return None
    return float(np.polyfit(x, y, 1)[0])


def fit_exponents(runs: list[dict]) -> dict:
    """runs [{n, size, steps: {step: figures}}] at one size -> step -> {time, memory} exponents."""
    out = {}
    for step in STEPS:
        have = [r for r in runs if step in r["steps"]]
        ns = [r["n"] for r in have]
        out[step] = {"time": growth_exponent(ns, [r["steps"][step]["wall_s"] for r in have]),
                     "memory": growth_exponent(ns, [r["steps"][step]["peak_rss_mb"] for r in have])}
    return out


def targets(report: dict) -> list[dict]:
    """Issue 13's targets, each with the measured value and pass/fail (or why it was not judged)."""
    runs = report["runs"]
    base = [r for r in runs if r["size"] == report["size"]]
    n_max = max(r["n"] for r in base)
    judged = n_max >= TARGET_N
    rows = []

    def add(name, value, comparison, limit):
        ok = None if value is None or not judged else (value <= limit if comparison == "<=" else value >= limit)
        rows.append({"target": name, "value": value, "comparison": comparison, "limit": limit,
                     "passed": ok, **({} if judged else {"why": f"judged at N >= {TARGET_N}; largest N {n_max}"})})

    biggest = next(r for r in base if r["n"] == n_max)
    for step in STEPS:
        add(f"{step} peak RSS MB at N={n_max}", biggest["steps"][step]["peak_rss_mb"], "<=", RSS_LIMIT_MB)
        add(f"{step} memory growth exponent", report["exponents"][step]["memory"], "<=", MEMORY_EXPONENT_MAX)
        add(f"{step} time growth exponent", report["exponents"][step]["time"], "<=", TIME_EXPONENT_MAX)
    for r in runs:
        if r["size"] != report["size"]:
            for step in STEPS:
                add(f"{step} peak RSS MB at N={r['n']} {r['size']}px", r["steps"][step]["peak_rss_mb"], "<=",
                    RSS_LIMIT_MB)
    return rows


def plot(report: dict, path: Path) -> Path | None:
    """Time and peak RSS against N (log-log), one line per step, the fitted exponent in the legend."""
    try:
        import matplotlib

        matplotlib.use("Agg", force=False)
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    base = sorted((r for r in report["runs"] if r["size"] == report["size"]), key=lambda r: r["n"])
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, key, fig_name, unit in ((axes[0], "wall_s", "time", "wall time, s"),
                                    (axes[1], "peak_rss_mb", "memory", "peak RSS, MB")):
        for step in STEPS:
            b = report["exponents"][step][fig_name]
            ax.plot([r["n"] for r in base], [r["steps"][step][key] for r in base], marker="o", lw=1.4,
                    label=f"{step} (N^{b:.2f})" if b is not None else step)
        if fig_name == "memory":
            ax.axhline(RSS_LIMIT_MB, ls="--", lw=0.8, color="grey")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xticks([r["n"] for r in base], [str(r["n"]) for r in base])
        ax.minorticks_off()
        ax.set_xlabel("good images N")
        ax.set_ylabel(unit)
        ax.legend(fontsize=7)
    fig.suptitle(f"lineside bench scale: {PRESET} preset, {report['size']} px, {report['train_steps']} steps "
                 f"({report['machine']['node']}, {report['date']})", fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def run_scale(args, env: dict, say) -> dict:
    ns = parse_n(args.n)
    size = int(args.size)
    work = Path(args.work) if args.work else Path.cwd() / "lineside-bench-scale"
    build = build_info()
    report = {"part": "scale", "preset": PRESET, "size": size, "n": ns, "train_steps": int(args.steps),
              "machine": machine(),
              "date": time.strftime("%Y-%m-%d"), "version": build["lineside"], "commit": build.get("commit"), "runs": []}
    plan = [(n, size) for n in ns] + ([(max(ns), int(args.once_size))] if args.once_size else [])
    t0 = time.perf_counter()
    for n, s in plan:
        say(f"scale: chain at N={n}, {s} px …")
        report["runs"].append({"n": n, "size": s, "steps": chain(n, s, int(args.steps), work / f"n{n}-{s}px",
                                                                  env, say)})
    report["exponents"] = fit_exponents([r for r in report["runs"] if r["size"] == size])
    report["targets"] = targets(report)
    report["wall_s"] = round(time.perf_counter() - t0, 2)
    if getattr(args, "report", None):
        out = Path(args.report)
        out.mkdir(parents=True, exist_ok=True)
        png = plot(report, out / "scale.png")
        report["plot"] = str(png) if png else None
        (out / "scale.json").write_text(json.dumps(report, indent=1, default=str))
    return report


def print_table(report: dict) -> None:
    base = sorted((r for r in report["runs"] if r["size"] == report["size"]), key=lambda r: r["n"])
    other = [r for r in report["runs"] if r["size"] != report["size"]]
    cols = [f"N={r['n']}" for r in base] + [f"N={r['n']} {r['size']}px" for r in other]
    print(f"lineside bench scale — {report['preset']}, {report['size']} px, {report['train_steps']} steps; "
          "wall s / peak RSS MB")
    print(f"{'step':<10}" + "".join(f"{c:>18}" for c in cols) + f"{'b_time':>8}{'b_mem':>8}")
    for step in STEPS:
        cells = [f"{r['steps'][step]['wall_s']:.1f} / {r['steps'][step]['peak_rss_mb']:.0f}" for r in base + other]
        e = report["exponents"][step]
        fmt = lambda v: "—" if v is None else f"{v:.2f}"  # noqa: E731
        print(f"{step:<10}" + "".join(f"{c:>18}" for c in cells) + f"{fmt(e['time']):>8}{fmt(e['memory']):>8}")
    failed = [t["target"] for t in report["targets"] if t["passed"] is False]
    judged = any(t["passed"] is not None for t in report["targets"])
    print("targets: " + ("not judged (" + report["targets"][0].get("why", "") + ")" if not judged else
                         ("all met" if not failed else "missed: " + "; ".join(failed))))
    if report.get("plot"):
        print(f"plot: {report['plot']}")
