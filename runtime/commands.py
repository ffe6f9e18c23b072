"""Lazy subcommand dispatch shared by the three console scripts (`teacher`, `distill`, `lineside`).

Each subcommand lives in its own module, imported only when it runs, so `lineside status` never
pays for onnxruntime and `teacher info` never for the training stack. A command module exposes
``configure(parser)`` (adds its arguments) and ``run(args) -> int``.
"""
from __future__ import annotations

import argparse
import importlib
import sys


def dispatch(prog: str, commands: dict[str, tuple[str, str]], argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog=prog)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    module = None
    for name, (mod, help_) in commands.items():
        p = sub.add_parser(name, help=help_, description=help_)
        if argv and argv[0] == name:
            module = importlib.import_module(mod)
            module.configure(p)
    args = parser.parse_args(argv)
    return int(module.run(args) or 0)
