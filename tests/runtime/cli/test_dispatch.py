"""The command dispatcher every console script shares: one-line errors (exit 2), --debug, --version, missing
extras named, counts refused at parse time."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from runtime.cli.dispatch import dispatch
from runtime.report import version


def _run(*args: str, env_debug: bool = False) -> subprocess.CompletedProcess:
    import os

    env = dict(os.environ, LINESIDE_DEBUG="1" if env_debug else "0")
    return subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True, timeout=120, env=env)


@pytest.mark.parametrize("argv", [("teacher", "eval", "--checkpoint", "/nope", "--data", "/nope"),
                                  ("distill", "export", "/nope", "--out", "/tmp/never-written"),
                                  ("distill", "fit", "--teacher", "/nope", "--data", "/nope", "--out", "/tmp/x")])
def test_user_errors_are_one_line_and_exit_2(argv):
    r = _run(*argv)
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr
    lines = [line for line in r.stderr.splitlines() if line.strip() and not line.startswith("[")]
    assert len(lines) == 1 and "/nope" in lines[0] and lines[0].startswith(f"{argv[0]} {argv[1]}:"), r.stderr


def test_debug_shows_the_traceback():
    assert "Traceback" in _run("teacher", "--debug", "eval", "--checkpoint", "/nope", "--data", "/nope").stderr
    assert "Traceback" in _run("teacher", "eval", "--checkpoint", "/nope", "--data", "/nope", env_debug=True).stderr


def test_version_and_counts_checked_at_parse_time(capsys):
    with pytest.raises(SystemExit) as e:
        dispatch("teacher", {}, ["--version"])
    assert e.value.code == 0 and capsys.readouterr().out.strip().startswith(f"teacher {version()}")
    r = _run("teacher", "train", "--data", "d", "--out", "o", "--steps", "-3")
    assert r.returncode == 2 and "--steps: must be at least 1, got -3" in r.stderr


@pytest.mark.parametrize("text, ok", [("0", True), ("0.1", True), ("1", True), ("1.5", False), ("-0.1", False),
                                      ("nan", False), ("ten", False)])
def test_fraction_accepts_shares_only(text, ok):
    import argparse

    from runtime.cli.dispatch import fraction

    if ok:
        assert fraction(text) == float(text)
    else:
        with pytest.raises(argparse.ArgumentTypeError):
            fraction(text)


def test_a_missing_extra_is_named(tmp_path, monkeypatch, capsys):
    (tmp_path / "needs_torch_cmd.py").write_text("raise ModuleNotFoundError(\"No module named 'torch'\", name='torch')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert dispatch("teacher", {"x": ("needs_torch_cmd", "a command that imports torch")}, ["x"]) == 2
    err = capsys.readouterr().err
    assert err.strip() == "teacher x: needs 'torch', which is not installed: install the lineside[teacher] extra"
    # a distill command names the distill extra (which brings the teacher's)
    assert dispatch("distill", {"x": ("needs_torch_cmd", "a command that imports torch")}, ["x"]) == 2
    assert capsys.readouterr().err.strip().endswith("install the lineside[distill] extra")


def test_help_shows_defaults_but_not_empty_ones(tmp_path, monkeypatch, capsys):
    (tmp_path / "flags_cmd.py").write_text(
        "def configure(p):\n"
        "    p.add_argument('--steps', type=int, default=600, help='optimiser steps')\n"
        "    p.add_argument('--out', help='output folder')\n"
        "    p.add_argument('--seed', type=int, default=0, help='random seed (default 0 keeps the run reproducible)')\n"
        "    p.add_argument('--json', action='store_true', help='print JSON')\n"
        "def run(args):\n    return 0\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(SystemExit):
        dispatch("tool", {"go": ("flags_cmd", "a command")}, ["go", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "optimiser steps (default: 600)" in text
    assert "output folder" in text and "(default: None)" not in text and "(default: False)" not in text
    assert "reproducible) (default" not in text  # a help line that states its default is left as written


def test_a_config_file_reports_every_error_and_the_nearest_key(tmp_path):
    from runtime.daemon.config import ConfigError, load_config

    bad = tmp_path / "lineside.toml"
    bad.write_text('[backend]\nnmae = "onnxruntime"\nthreads = -1\n[ingres]\nx = 1\n')
    with pytest.raises(ConfigError) as e:
        load_config(bad)
    msg = str(e.value)
    assert "backend.threads:" in msg and "backend.nmae: unknown key (did you mean 'backend.name'?)" in msg
    assert "ingres: unknown key (did you mean 'sockets.ingress'?)" in msg


def _command_parser(prog: str, name: str):
    """The parser `prog name` builds, as the dispatcher configures it (without running the command)."""
    import argparse

    import distill.cli
    import runtime.cli
    import teacher.cli

    tools = {"lineside": runtime.cli, "teacher": teacher.cli, "distill": distill.cli}
    grabbed = {}
    real = argparse.ArgumentParser.parse_args

    def grab(self, *a, **k):
        grabbed["top"] = self
        raise SystemExit(0)

    argparse.ArgumentParser.parse_args = grab
    try:
        with pytest.raises(SystemExit):
            tools[prog].main([name, "--help"])
    finally:
        argparse.ArgumentParser.parse_args = real
    sub = [a for a in grabbed["top"]._actions if isinstance(a, argparse._SubParsersAction)][0]
    return sub.choices[name]


def _all_commands():
    import distill.cli
    import runtime.cli
    import teacher.cli

    return [(prog, name) for prog, mod in (("lineside", runtime.cli), ("teacher", teacher.cli), ("distill", distill.cli))
            for name in mod.COMMANDS]


@pytest.mark.parametrize("prog,name", _all_commands())
def test_every_flag_has_a_help_line_and_help_renders(prog, name):
    import argparse

    p = _command_parser(prog, name)

    def walk(q):
        for a in q._actions:
            if isinstance(a, argparse._SubParsersAction):
                for c in a.choices.values():
                    yield from walk(c)
            elif not a.help and a.dest != "help":
                yield a.option_strings[0] if a.option_strings else a.dest

    assert not list(walk(p)), f"{prog} {name}: flags without a help line"
    assert "--no-progress" in p.format_help()  # and formatting it does not crash (a bare % in a help string)


def _every_command_line():
    """[prog, name] of every command, and [prog, name, sub] of every subcommand (teacher data synth, ...)."""
    import argparse

    lines = []
    for prog, name in _all_commands():
        lines.append([prog, name])
        for a in _command_parser(prog, name)._actions:
            if isinstance(a, argparse._SubParsersAction):
                lines += [[prog, name, sub] for sub in a.choices]
    return lines


def test_help_does_not_import_torch():
    """Every command's and subcommand's --help, one after the other in one fresh process: the first that
    imports torch is named."""
    import json

    lines = _every_command_line()
    assert {"finetune", "bank", "baselines", "fit", "quantize"} <= {line[1] for line in lines}
    code = ("import contextlib, io, json, sys\n"
            "import distill.cli, runtime.cli, teacher.cli\n"
            "mains = {'lineside': runtime.cli.main, 'teacher': teacher.cli.main, 'distill': distill.cli.main}\n"
            "assert 'torch' not in sys.modules\n"
            f"for line in json.loads({json.dumps(json.dumps(lines))}):\n"
            "    out = io.StringIO()\n"
            "    with contextlib.redirect_stdout(out):\n"
            "        try:\n"
            "            mains[line[0]]([*line[1:], '--help'])\n"
            "        except SystemExit:\n"
            "            pass\n"
            "    assert 'usage:' in out.getvalue(), line\n"
            "    if 'torch' in sys.modules:\n"
            "        sys.exit(' '.join(line) + ' --help imported torch')\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-500:]


def _bad_path_cases(tmp: Path) -> list[tuple[list[str], str]]:
    """(argv, the bad path its one-line error must name) for every teacher and distill command that reads a
    checkpoint, a run, an artifact or a dataset: missing, or of the wrong kind."""
    ok_dir, a_file, no_manifest = tmp / "ckpt", tmp / "file.txt", tmp / "empty"
    ok_dir.mkdir()
    no_manifest.mkdir()
    a_file.write_text("x")
    data = tmp / "data"
    data.mkdir()
    (data / "manifest.jsonl").write_text("")
    nope = str(tmp / "nope")
    c, d, f, e = str(ok_dir), str(data), str(a_file), str(no_manifest)
    return [
        (["teacher", "eval", "--checkpoint", nope, "--data", d], nope),
        (["teacher", "eval", "--checkpoint", f, "--data", d], f),
        (["teacher", "eval", "--checkpoint", c, "--data", nope], nope),
        (["teacher", "eval", "--checkpoint", c, "--data", e], e),
        (["teacher", "finetune", "--checkpoint", nope, "--data", d, "--steps", "1"], nope),
        (["teacher", "finetune", "--checkpoint", c, "--data", nope, "--steps", "1"], nope),
        (["teacher", "bank", "--checkpoint", nope, "--data", d], nope),
        (["teacher", "bank", "--checkpoint", c, "--data", nope], nope),
        (["teacher", "extract", "--checkpoint", nope, "--data", d, "--out", str(tmp / "o")], nope),
        (["teacher", "extract", "--checkpoint", c, "--data", f + "x", "--out", str(tmp / "o")], f + "x"),
        (["teacher", "generate", "--checkpoint", f, "--prompt", "p", "--out", str(tmp / "g.png")], f),
        (["teacher", "train", "--data", nope, "--out", str(tmp / "o"), "--steps", "1"], nope),
        (["teacher", "train", "--data", d, "--out", str(tmp / "o"), "--steps", "1", "--vae", nope], nope),
        (["teacher", "train", "--data", d, "--out", str(tmp / "o"), "--steps", "1", "--init-from", f], f),
        (["teacher", "train-vae", "--data", e, "--out", str(tmp / "o"), "--steps", "1"], e),
        (["teacher", "baselines", "--data", nope], nope),
        (["teacher", "bench", "--checkpoint", nope], nope),
        (["teacher", "data", "import", "mvtec", nope, str(tmp / "o")], nope),
        (["distill", "fit", "--teacher", nope, "--data", d, "--out", str(tmp / "o")], nope),
        (["distill", "fit", "--teacher", c, "--data", nope, "--out", str(tmp / "o")], nope),
        (["distill", "fit", "--teacher", c, "--data", d, "--out", str(tmp / "o"), "--features", f], f),
        (["distill", "export", nope, "--out", str(tmp / "o")], nope),
        (["distill", "export", c, "--out", str(tmp / "o"), "--sign", e], e),
        (["distill", "eval", nope], nope),
        (["distill", "eval", c, "--teacher", f], f),
        (["distill", "eval", c, "--data", nope], nope),
        (["distill", "retarget", f, "--size", "64", "--out", str(tmp / "o")], f),
        (["distill", "quantize", nope, "--data", d], nope),
        (["distill", "quantize", f, "--data", d], f),
        (["distill", "quantize", c, "--data", nope], nope),
        (["distill", "quantize", c, "--data", e], e),
    ]


def test_bad_paths_are_refused_in_one_line_before_torch(tmp_path):
    """A missing checkpoint, run, artifact or dataset (or a file where a folder belongs) is named in one line
    with exit 2, before the command imports torch: the cases one after the other in one fresh process, so the
    first that imports torch is the one named."""
    import json

    cases = _bad_path_cases(tmp_path)
    code = ("import contextlib, io, json, sys\n"
            "import distill.cli, teacher.cli\n"
            "mains = {'teacher': teacher.cli.main, 'distill': distill.cli.main}\n"
            "for argv in json.loads(sys.stdin.read()):\n"
            "    err = io.StringIO()\n"
            "    with contextlib.redirect_stderr(err):\n"
            "        try:\n"
            "            rc = mains[argv[0]](argv[1:])\n"
            "        except SystemExit as e:\n"
            "            rc = f'SystemExit({e.code})'\n"
            "    print(json.dumps({'rc': rc, 'err': err.getvalue(), 'torch': 'torch' in sys.modules}))\n")
    r = subprocess.run([sys.executable, "-c", code], input=json.dumps([argv for argv, _ in cases]),
                       capture_output=True, text=True, timeout=120, env=dict(os.environ, LINESIDE_DEBUG="0"))
    assert r.returncode == 0, r.stderr[-500:]
    results = [json.loads(line) for line in r.stdout.strip().splitlines()]
    assert len(results) == len(cases)
    for (argv, path), res in zip(cases, results):
        lines = res["err"].strip().splitlines()
        assert res["rc"] == 2 and len(lines) == 1, (argv, res)
        assert lines[0].startswith(f"{argv[0]} {argv[1]}: ") and f" {path}: " in lines[0], (argv, lines)
        assert not res["torch"], (argv, "torch imported before the path was checked")


def test_paths_are_checked_after_print_config(tmp_path, capsys):
    from teacher.cli import main

    assert main(["train", "--data", str(tmp_path / "nope"), "--out", "o", "--steps", "5", "--print-config"]) == 0
    assert "steps = 5" in capsys.readouterr().out


def test_a_config_file_of_flags_and_print_config(tmp_path, capsys):
    from teacher.cli import main

    cfg = tmp_path / "train.toml"
    cfg.write_text('data = "d/manifest.jsonl"\nout = "ckpt"\nsteps = 50\nbatch-size = 4\n')
    assert main(["train", "--config", str(cfg), "--steps", "70", "--print-config"]) == 0
    out = capsys.readouterr().out
    assert "steps = 70" in out and "batch-size = 4" in out and 'data = "d/manifest.jsonl"' in out
    import tomllib

    assert tomllib.loads(out)["steps"] == 70  # what it prints is a config file again
    cfg.write_text("steps = -3\nlrr = 0.1\n")
    assert main(["train", "--config", str(cfg), "--data", "d", "--out", "o"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1
    assert "steps: must be at least 1, got -3" in err and "lrr: unknown key (did you mean 'lr'?)" in err


def test_no_progress_silences_progress_for_the_process(tmp_path, monkeypatch):
    import os

    monkeypatch.delenv("TQDM_DISABLE", raising=False)
    (tmp_path / "progress_cmd.py").write_text(
        "def configure(p):\n    pass\n"
        "def run(args):\n    from runtime.progress import disabled\n    return 0 if disabled() else 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert dispatch("tool", {"go": ("progress_cmd", "a command")}, ["go"]) == 1
    assert dispatch("tool", {"go": ("progress_cmd", "a command")}, ["go", "--no-progress"]) == 0
    assert os.environ["TQDM_DISABLE"] == "1"


@pytest.mark.parametrize("argv,says", [
    (("teacher", "train", "--data", "d", "--out", "o", "--steps", "-3"), "--steps: must be at least 1, got -3"),
    (("runtime", "send", "x", "--to", "127.0.0.1:6999"), "did you mean tcp://127.0.0.1:6999?"),
    (("runtime", "predict", "/nope", "/nope"), "/nope"),
])
def test_bad_arguments_are_one_line_with_exit_2(argv, says):
    r = _run(*argv)
    assert r.returncode == 2 and "Traceback" not in r.stderr and says in r.stderr, r.stderr
    assert len([x for x in r.stderr.splitlines() if x.strip() and not x.startswith((" ", "usage:", "["))]) == 1


def test_version_names_the_commit_when_there_is_one():
    from runtime.report import build_info

    commit = build_info().get("commit")
    for tool in ("runtime", "teacher", "distill"):  # python -m runtime is `lineside`
        r = _run(tool, "--version")
        name = "lineside" if tool == "runtime" else tool
        assert r.returncode == 0 and r.stdout.strip() == f"{name} {version()}" + (f" (commit {commit})" if commit else "")


def test_print_json_is_one_compact_line_of_plain_json(capsys, tmp_path):
    import json

    import numpy as np

    from runtime.cli.dispatch import print_json

    print_json({"a": np.float32(0.5), "n": np.int64(3), "v": np.arange(2), "p": tmp_path})
    out = capsys.readouterr().out
    assert out.count("\n") == 1 and " " not in out.strip()
    assert json.loads(out) == {"a": 0.5, "n": 3, "v": [0, 1], "p": str(tmp_path)}
