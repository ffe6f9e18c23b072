"""`lineside …`: the edge commands, one module each (see runtime/commands.py). Torch-free."""
from __future__ import annotations

import sys

from runtime.commands import dispatch

COMMANDS = {
    "run": ("runtime.daemon_cli", "the line-side daemon: frames in, verdicts out, unsure frames to the teacher"),
    "send": ("runtime.send", "push images, a folder or a video to a daemon as a camera would"),
    "predict": ("runtime.predict", "judge a folder, a glob or a manifest offline with an artifact (no daemon)"),
    "watch": ("runtime.watch", "print a daemon's verdicts, optionally save overlays"),
    "status": ("runtime.status_cli", "ask a daemon (control socket) or a teacher server for its status"),
    "control": ("runtime.control_cli", "reload an artifact or shut a daemon down over its control socket"),
    "keys": ("runtime.keys", "generate CURVE key pairs for daemons, teacher servers and clients"),
    "bench": ("runtime.bench", "benchmarks: teacher, students per backend, kernels, daemon, fallback server (JSON)"),
    "demo": ("runtime.demo", "the whole flow on embedded data: dataset, teacher, student, daemon, report"),
}


def main(argv: list[str] | None = None) -> int:
    return dispatch("lineside", COMMANDS, argv)


if __name__ == "__main__":
    sys.exit(main())
