"""`distill …`: the workstation commands (fit, quantize, export, eval), one module each: `distill <name>` is
distill/commands/<name>.py."""
from __future__ import annotations

import sys

from runtime.cli.dispatch import dispatch

COMMANDS = {
    "fit": ("distill.commands.fit", "train a student on the teacher's t=50 features; bank, threshold, uncertainty band"),
    "quantize": ("distill.commands.quantize", "INT8 post-training quantization (NNCF, ONNX Runtime), accuracy-guarded"),
    "export": ("distill.commands.export", "write the student artifact directory for the edge"),
    "eval": ("distill.commands.eval", "student vs teacher: fidelity, detection metrics, latency; HTML report"),
    "retarget": ("distill.commands.retarget", "a timing-only copy of an artifact at another input size (lineside bench edge)"),
}


def main(argv: list[str] | None = None) -> int:
    return dispatch("distill", COMMANDS, argv, config_commands=("fit",))


if __name__ == "__main__":
    sys.exit(main())
