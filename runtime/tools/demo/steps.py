"""Run lineside's own commands as subprocesses, the way a user types them, and read their JSON.

Every step is a real `teacher …` / `distill …` / `lineside …` process. Its stdout and stderr go to
``OUT/logs/<step>.log``; a ``--json`` command prints one JSON object as the last stdout line, which
is what the demo reads. A failed step raises StepError with the command line and the log's tail, so
the user sees which command to re-run by hand.
"""
from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

# One step's hang guard, not its budget: the whole demo targets 600 s on two cores, but its teacher step alone
# took 793 s on a slow 2-core machine and over 900 s beside a CI run, and a slow machine is not a hang.
STEP_TIMEOUT_S = 2400
LOG_TAIL_LINES = 25


class StepError(RuntimeError):
    """A step's command failed; the message names the command, its exit status and the log tail."""


@dataclass
class StepResult:
    name: str
    argv: list[str]
    wall_s: float
    result: dict = field(default_factory=dict)  # the command's JSON (last stdout line), {} if none
    log: Path | None = None
    returncode: int = 0


def command(tool: str) -> list[str]:
    """argv prefix for one of lineside's console scripts: the installed script beside this Python,
    else ``python -m <package>`` (same code; works from a source checkout)."""
    exe = Path(sys.executable).parent / tool
    if exe.is_file() and os.access(exe, os.X_OK):
        return [str(exe)]
    found = shutil.which(tool)
    if found:
        return [found]
    return [sys.executable, "-m", {"lineside": "runtime"}.get(tool, tool)]


def child_env(threads: int | None = None) -> dict:
    """Environment for child processes; ``threads`` caps BLAS/OpenMP threads when given (tests pass 1)."""
    env = dict(os.environ)
    env.setdefault("PYTHONUNBUFFERED", "1")
    if threads is not None:
        for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
            env[k] = str(threads)
    return env


def last_json_line(text: str) -> dict:
    """The JSON object on the last non-empty stdout line, or {} when that line is not one."""
    for line in reversed(text.splitlines()):
        line = line.strip()
        if not line:
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError:
            return {}
        return obj if isinstance(obj, dict) else {}
    return {}


def tail(path: Path, n: int = LOG_TAIL_LINES) -> str:
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return ""
    return "\n".join(lines[-n:])


@dataclass
class Background:
    name: str
    argv: list[str]
    proc: subprocess.Popen
    stdout: Path
    log: Path
    t0: float


class StepRunner:
    """Runs the demo's steps in order, logging each, timing each, keeping their JSON."""

    def __init__(self, log_dir: Path, env: dict, timeout_s: float = STEP_TIMEOUT_S):
        self.log_dir = Path(log_dir)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.env = env
        self.timeout_s = timeout_s
        self.results: dict[str, StepResult] = {}

    def run(self, name: str, tool: str, args: list[str], want_json: bool = True,
            ok_codes: tuple[int, ...] = (0,)) -> StepResult:
        """Run one command to completion. ``ok_codes``: exit statuses that are an answer rather than a
        failure (``distill quantize`` exits 2 when its guard refuses every INT8 model)."""
        argv = command(tool) + [str(a) for a in args]
        log = self.log_dir / f"{name}.log"
        t0 = time.perf_counter()
        with open(log, "w") as logf:
            logf.write("$ " + shlex.join(argv) + "\n")
            logf.flush()
            try:
                proc = subprocess.run(argv, stdout=subprocess.PIPE, stderr=logf, env=self.env,
                                      timeout=self.timeout_s, text=True)
            except subprocess.TimeoutExpired as e:
                out = e.stdout.decode(errors="replace") if isinstance(e.stdout, bytes) else (e.stdout or "")
                logf.write(out)
                raise StepError(f"step {name}: `{shlex.join(argv)}` did not finish in {self.timeout_s:.0f} s "
                                f"(log: {log})") from None
            logf.write("--- stdout ---\n" + proc.stdout)
        wall = time.perf_counter() - t0
        if proc.returncode not in ok_codes:
            raise StepError(f"step {name}: `{shlex.join(argv)}` exited with status {proc.returncode}\n"
                            f"--- last lines of {log} ---\n{tail(log)}")
        result = last_json_line(proc.stdout)
        if want_json and not result:
            raise StepError(f"step {name}: `{shlex.join(argv)}` printed no JSON object on its last stdout line "
                            f"(log: {log})")
        r = StepResult(name, argv, wall, result, log, proc.returncode)
        self.results[name] = r
        return r

    def start(self, name: str, tool: str, args: list[str]) -> "Background":
        """Start a step that runs beside the next ones (e.g. a look-up while the line streams)."""
        argv = command(tool) + [str(a) for a in args]
        log = self.log_dir / f"{name}.log"
        out = self.log_dir / f"{name}.stdout"
        logf, outf = open(log, "w"), open(out, "w")
        logf.write("$ " + shlex.join(argv) + "\n")
        logf.flush()
        try:
            proc = subprocess.Popen(argv, stdout=outf, stderr=logf, env=self.env, start_new_session=True)
        finally:
            logf.close()
            outf.close()
        return Background(name, argv, proc, out, log, time.perf_counter())

    def finish(self, bg: "Background", timeout_s: float | None = None) -> StepResult:
        """Wait for a background step; its JSON like ``run``'s. Killed (and StepError) on timeout."""
        try:
            bg.proc.wait(timeout=self.timeout_s if timeout_s is None else timeout_s)
        except subprocess.TimeoutExpired:
            bg.proc.kill()
            bg.proc.wait()
            raise StepError(f"step {bg.name}: `{shlex.join(bg.argv)}` did not finish in time (log: {bg.log})") from None
        wall = time.perf_counter() - bg.t0
        if bg.proc.returncode != 0:
            raise StepError(f"step {bg.name}: `{shlex.join(bg.argv)}` exited with status {bg.proc.returncode}\n"
                            f"--- last lines of {bg.log} ---\n{tail(bg.log)}")
        result = last_json_line(bg.stdout.read_text())
        if not result:
            raise StepError(f"step {bg.name}: `{shlex.join(bg.argv)}` printed no JSON object on its last stdout line")
        r = StepResult(bg.name, bg.argv, wall, result, bg.log)
        self.results[bg.name] = r
        return r

    def timings(self) -> dict[str, float]:
        return {k: round(v.wall_s, 2) for k, v in self.results.items()}
