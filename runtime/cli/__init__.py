"""`lineside …`: the edge commands, one module each (see runtime/cli/dispatch.py). Torch-free."""
from __future__ import annotations

import sys

from runtime.cli.dispatch import dispatch

COMMANDS = {
    "run": ("runtime.cli.run", "the line-side daemon: frames in, verdicts out, unsure frames to the teacher"),
    "send": ("runtime.cli.send", "push images, a folder or a video to a daemon as a camera would"),
    "predict": ("runtime.cli.predict", "judge a folder, a glob or a manifest offline with an artifact (no daemon)"),
    "watch": ("runtime.cli.watch", "print a daemon's verdicts, optionally save overlays"),
    "status": ("runtime.cli.status", "ask a daemon (control socket) or a teacher server for its status"),
    "control": ("runtime.cli.control", "reload an artifact or shut a daemon down over its control socket"),
    "keys": ("runtime.cli.keys", "generate CURVE key pairs for daemons, teacher servers and clients"),
    "bench": ("runtime.cli.bench", "benchmarks: teacher, students per backend, kernels, daemon, fallback server (JSON)"),
    "demo": ("runtime.cli.demo", "the whole flow on embedded data: dataset, teacher, student, daemon, report"),
}


def main(argv: list[str] | None = None) -> int:
    return dispatch("lineside", COMMANDS, argv)


if __name__ == "__main__":
    sys.exit(main())
