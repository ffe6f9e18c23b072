"""The command dispatcher every console script shares: one-line errors (exit 2), --debug, --version, missing
extras named, counts refused at parse time."""
from __future__ import annotations

import subprocess
import sys

import pytest

from runtime.commands import dispatch, version


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
    assert e.value.code == 0 and capsys.readouterr().out.strip() == f"teacher {version()}"
    r = _run("teacher", "train", "--data", "d", "--out", "o", "--steps", "-3")
    assert r.returncode == 2 and "--steps: must be at least 1, got -3" in r.stderr


def test_a_missing_extra_is_named(tmp_path, monkeypatch, capsys):
    (tmp_path / "needs_torch_cmd.py").write_text("raise ModuleNotFoundError(\"No module named 'torch'\", name='torch')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert dispatch("teacher", {"x": ("needs_torch_cmd", "a command that imports torch")}, ["x"]) == 2
    err = capsys.readouterr().err
    assert err.strip() == "teacher x: needs 'torch', which is not installed: install the lineside[teacher] extra"


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
    from runtime.config import ConfigError, load_config

    bad = tmp_path / "lineside.toml"
    bad.write_text('[backend]\nnmae = "onnxruntime"\nthreads = -1\n[ingres]\nx = 1\n')
    with pytest.raises(ConfigError) as e:
        load_config(bad)
    msg = str(e.value)
    assert "backend.threads:" in msg and "backend.nmae: unknown key (did you mean 'backend.name'?)" in msg
    assert "ingres: unknown key (did you mean 'sockets.ingress'?)" in msg
