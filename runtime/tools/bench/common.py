"""What every `lineside bench` part shares: its stderr progress line, the section status dicts, running a
lineside command for its JSON, and the small artifact the parts measure when none is given."""
from __future__ import annotations

import os
import platform
import subprocess
import sys
import time
from pathlib import Path

from runtime.tools.demo.steps import StepError, command, last_json_line

SUBPROCESS_TIMEOUT_S = 900


def say(msg: str) -> None:
    print(f"lineside bench: {msg}", file=sys.stderr, flush=True)


def skipped(reason: str) -> dict:
    return {"status": "skipped", "reason": reason}


def error(e: BaseException) -> dict:
    return {"status": "error", "error": f"{type(e).__name__}: {e}"}


def machine() -> dict:
    """The machine a bench report was measured on."""
    return {"node": platform.node(), "cpus": os.cpu_count(), "arch": platform.machine(),
            "python": platform.python_version()}


def run_json_command(tool: str, args: list, env: dict, timeout_s: float = SUBPROCESS_TIMEOUT_S) -> dict:
    """Run a lineside command, return its last-line JSON; raises StepError with stderr's tail."""
    argv = command(tool) + [str(a) for a in args]
    p = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=timeout_s)
    if p.returncode != 0:
        raise StepError(f"`{' '.join(argv)}` exited {p.returncode}: {p.stderr.strip()[-800:]}")
    out = last_json_line(p.stdout)
    if not out:
        raise StepError(f"`{' '.join(argv)}` printed no JSON on its last stdout line")
    return out


# ------------------------------------------------------------------------------------------- artifact

def default_work() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "lineside" / "bench"


def ensure_artifact(args, env: dict) -> tuple[Path, Path | None, dict]:
    """(artifact dir, teacher checkpoint or None, how it was obtained)."""
    if args.artifact:
        return Path(args.artifact), (Path(args.checkpoint) if args.checkpoint else None), {"artifact": "given"}
    work = Path(args.work) if args.work else default_work()
    art, ckpt = work / "artifact", work / "teacher"
    if (art / "manifest.json").is_file() and not args.rebuild:
        return art, ckpt if ckpt.is_dir() else None, {"artifact": f"cached in {work}"}
    from runtime.tools.demo.settings import QUICK
    from runtime.tools.demo import pipeline
    from runtime.tools.demo.steps import StepRunner

    if work.exists():  # a stale or half-built one: the commands refuse to overwrite, so start clean
        import shutil

        shutil.rmtree(work)
    say(f"no --artifact: building a small one with the demo's quick pipeline in {work} (reused next time)")
    runner = StepRunner(work / "logs", env)
    t0 = time.perf_counter()
    pipeline.build(work, QUICK, runner, lambda msg, start=None, end=None: say(msg.replace("[bold]", "").replace("[/]", "")
                                                                        .replace("[green]", "")),
          evaluate=False)
    return art, ckpt, {"artifact": f"built in {work}", "build_s": round(time.perf_counter() - t0, 1)}
