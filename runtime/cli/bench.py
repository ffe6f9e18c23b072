"""`lineside bench`: one run, side by side, on the machine it runs on.

    lineside bench                       # a table for people
    lineside bench --json                # one JSON object (last stdout line) for machines
    lineside bench --full                # adds the sd15 teacher at 256 px (the 300x target needs it)
    lineside bench --artifact ART        # an existing student artifact (else: see below)
    lineside bench kernels --json        # only the kernels part
    lineside bench quality --data M      # detection quality beside reference detectors (runtime/tools/bench/quality.py)
    lineside bench soak --duration 3600  # the daemon at --load of its capacity for an hour: RSS slope, latency drift
                                         # (runtime/tools/bench/soak.py)
    lineside bench edge --json           # the whole edge path per stage, 256 px, 1 thread / all cores, bank x1 / x4,
                                         # beside EfficientAD-S and PatchCore (runtime/tools/bench/edge.py)
    lineside bench scale --report DIR    # time and peak RSS of every chain step at N = 100, 400, 1600 good images
                                         # and once at 256 px, growth exponents, plot (runtime/tools/bench/scale.py)

Sections: ``teacher`` (`teacher bench --preset tiny --json`, and sd15 at 256 px with --full: a
subprocess, torch stays out of this process), ``student`` (FP32 and INT8 on every backend this
machine has, timed here with runtime.backends on the artifact's own model files — exactly what the
daemon runs, torch-free), ``kernels`` (kernels.bench.run), ``daemon`` (runtime.tools.bench.daemon: p50/p99,
maximum sustained rate, overhead over the raw backend), ``server`` (`teacher serve --bench --json`,
a subprocess), and ``targets``: each target named in the issues, the measured value, pass/fail.

Artifact: ``--artifact DIR`` benchmarks that artifact (and ``--checkpoint CKPT`` a real teacher for
the server section). Without it, bench builds a small one with the demo's quick pipeline (teacher
data synth → … → distill export, about two minutes on two cores) into ``--work`` (default
``$XDG_CACHE_HOME/lineside/bench``) and reuses it on later runs (``--rebuild`` to redo it).
A section that cannot run here says why (``status: skipped``) instead of failing the whole bench.
"""
from __future__ import annotations

import argparse
import os
import platform
import time

from runtime.cli.dispatch import positive_float, print_json
from runtime.tools.bench import scale as bench_scale
from runtime.tools.bench import soak as bench_soak
from runtime.tools.bench.common import ensure_artifact, error, machine, say, skipped
from runtime.tools.bench.sections import (PARTS, STUDENT_RUNS, bench_daemon, bench_kernels, bench_server,
                                          bench_student_section, bench_teacher)
from runtime.tools.bench.table import print_table
from runtime.tools.bench.targets import targets
from runtime.tools.demo.steps import StepError, child_env

SEPARATE_PARTS = ("quality", "edge", "soak", "scale")  # asked for by name only: quality trains and evaluates;
# soak runs for --duration (an hour by default); edge re-exports the student at 256 px and times the peers in
# torch; scale runs the whole chain at several N
EXIT_TARGET_FAILED = 3  # --check: a measured target failed (1: a section could not run, 2: usage)


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("part", nargs="?", default="all", choices=PARTS + SEPARATE_PARTS,
                   help="run only this part (default: all but quality)")
    p.add_argument("--json", action="store_true", help="one JSON object as the last stdout line")
    p.add_argument("--full", action="store_true", help="also the sd15 teacher at 256 px (slow without a GPU)")
    p.add_argument("--artifact", help="student artifact directory (default: build a small one, see --work); "
                   "quality: a student of --teacher to judge beside it (with no --teacher, the recipe distils one)")
    p.add_argument("--checkpoint", help="teacher checkpoint for the server section (default: the built one, "
                                        "or a fake model with --artifact)")
    p.add_argument("--work", default=None, help="where the built artifact is cached")
    p.add_argument("--rebuild", action="store_true", help="rebuild the cached artifact")
    p.add_argument("--runs", type=int, default=STUDENT_RUNS, help="timed student runs per model and backend")
    p.add_argument("--threads", type=int, default=1, help="threads per backend / child BLAS threads")
    p.add_argument("--quick", action="store_true", help="small shapes and few runs (seconds; for tests)")
    p.add_argument("--check", action="store_true", help="exit 3 when a measured target fails (CI, a plant's "
                   "acceptance test); a target not measured here does not fail it")
    q = p.add_argument_group("quality")
    q.add_argument("--data", help="quality: dataset manifest.jsonl to judge")
    q.add_argument("--teacher", help="quality: teacher checkpoint with bank/ or head/ (default: train one with "
                                     "the demo's recipe in --work)")
    q.add_argument("--split", default="test", choices=("train", "val", "test"), help="quality: split to judge")
    q.add_argument("--size", type=int, default=128, help="quality: input size of the reference detectors and of "
                                                        "the recipe's teacher (a multiple of 64)")
    q.add_argument("--report", help="quality: write an HTML report to this directory; scale: scale.json and "
                                    "scale.png")
    bench_scale.configure(p)
    s = p.add_argument_group("soak")
    s.add_argument("--duration", type=positive_float, default=bench_soak.DEFAULT_DURATION_S, help="soak: seconds")
    s.add_argument("--load", type=positive_float, default=bench_soak.DEFAULT_LOAD,
                   help="soak: share of the daemon's measured capacity to send (at most 1)")
    s.add_argument("--window", type=positive_float, default=bench_soak.DEFAULT_WINDOW_S,
                   help="soak: seconds per sample of RSS and latency")


# ------------------------------------------------------------------------------------------- main

def run(args: argparse.Namespace) -> int:
    env = child_env(args.threads)
    if args.part == "quality":
        from runtime.tools.bench import quality as bench_quality

        return bench_quality.run(args, child_env(None), say)
    if args.part == "edge":
        return _edge(args, env)
    if args.part == "soak":
        return _soak(args, env)
    if args.part == "scale":
        return _scale(args, env)
    report: dict = {"machine": machine(), "part": args.part}
    t0 = time.perf_counter()
    want = set(PARTS[1:]) if args.part == "all" else {args.part}
    runs = min(args.runs, 10) if args.quick else args.runs
    art = ckpt = None
    if want & {"student", "daemon", "server"}:
        try:
            art, ckpt, how = ensure_artifact(args, env)
            report["artifact"] = {"path": str(art), **how}
        except (StepError, OSError) as e:
            report["artifact"] = error(e)
    sections = {
        "teacher": lambda: bench_teacher(args.full, env),
        "student": lambda: bench_student_section(art, runs, args, env),
        "kernels": lambda: bench_kernels(args.quick),
        "daemon": lambda: bench_daemon(art, args.threads, args.quick) if art else skipped("no artifact"),
        "server": lambda: bench_server(ckpt, env, args.quick),
    }
    for name in PARTS[1:]:
        if name not in want:
            continue
        say(f"{name} …")
        t = time.perf_counter()
        try:
            report[name] = sections[name]()
        except Exception as e:  # one section failing must not hide the others' figures
            report[name] = error(e)
        report[name]["wall_s"] = round(time.perf_counter() - t, 2)
    report["targets"] = targets(report)
    report["wall_s"] = round(time.perf_counter() - t0, 2)
    if args.json:
        print_json(report)
    else:
        print_table(report)
    failed = [n for n in want if (report.get(n) or {}).get("status") == "error"]
    missed = [t["target"] for t in report["targets"] if t["pass"] is False]
    if args.check and missed:
        say(f"--check: target(s) failed: {', '.join(missed)}")
        return EXIT_TARGET_FAILED
    return 1 if failed else 0


def _edge(args: argparse.Namespace, env: dict) -> int:
    from runtime.tools.bench import edge as bench_edge

    try:
        art, _, how = ensure_artifact(args, env)
    except (StepError, OSError) as e:
        return _failed("edge", e, args.json)
    say(f"edge path of {art} …")
    t0 = time.perf_counter()
    report = {"part": "edge", "machine": machine(), "artifact_source": how, **bench_edge.run_edge_bench(art, env=env, quick=args.quick, runs=args.runs)}
    report["wall_s"] = round(time.perf_counter() - t0, 2)
    _emit(report, args.json, bench_edge.print_edge_table)
    return 0


def _failed(part: str, e: BaseException, as_json: bool) -> int:
    """A separate part that could not run: its error as the JSON result, or one line for people; exit 1."""
    if as_json:
        print_json({"part": part, **error(e)})
    else:
        print(f"lineside bench {part}: {e}")
    return 1


def _emit(report: dict, as_json: bool, print_table) -> None:
    """A separate part's report: one JSON line for machines, or its table for people."""
    if as_json:
        print_json(report)
    else:
        print_table(report)


def _scale(args: argparse.Namespace, env: dict) -> int:
    try:
        report = bench_scale.run_scale(args, env, say)
    except (StepError, ValueError, OSError) as e:
        return _failed("scale", e, args.json)
    _emit(report, args.json, bench_scale.print_table)
    return 0


def _soak(args: argparse.Namespace, env: dict) -> int:
    try:
        art, _, how = ensure_artifact(args, env)
        report = {"part": "soak", "machine": {"node": platform.node(), "cpus": os.cpu_count()},
                  "artifact_source": how, **bench_soak.run_soak(art, duration_s=args.duration, load=args.load,
                                                                window_s=args.window, threads=args.threads, say=say)}
    except (StepError, OSError, RuntimeError, ValueError) as e:
        return _failed("soak", e, args.json)
    _emit(report, args.json, bench_soak.print_soak)
    return 0 if report["lost"] == 0 and report["exit_code"] == 0 else 1
