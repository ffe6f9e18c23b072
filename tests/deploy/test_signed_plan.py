"""deploy/tensorrt/signed_plan.py and the Jetson entrypoint with signed artifacts: the signature is checked
before the plan is built and at every start, the derived copy differs from the signed manifest in the plan
only, and an edit, a swapped plan, an unsigned or foreign artifact stops the start. The entrypoint runs for
real with a stand-in plan builder and a stand-in `lineside` that records its arguments (no TensorRT here)."""
from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.runtime_fixtures import build_tiny_artifact

ROOT = Path(__file__).resolve().parents[2]
SIGNED_PLAN = ROOT / "deploy" / "tensorrt" / "signed_plan.py"
ENTRYPOINT = ROOT / "deploy" / "containers" / "jetson-entrypoint.sh"

pytestmark = pytest.mark.timeout(120)


def _module():
    spec = importlib.util.spec_from_file_location("signed_plan", SIGNED_PLAN)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


sp = _module()


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    from runtime.cli.keys import make_keypair
    from runtime.contracts.signing import sign_artifact

    root = tmp_path_factory.mktemp("jetson")
    keys, trusted = root / "keys", root / "trusted"
    release_pub, release = make_keypair(keys, "release", signing=True)
    _, rogue = make_keypair(keys, "rogue", signing=True)
    trusted.mkdir()
    shutil.copy(release_pub, trusted / release_pub.name)
    for name in ("signed", "unsigned", "foreign"):
        build_tiny_artifact(root / name)
    sign_artifact(root / "signed", release)
    sign_artifact(root / "foreign", rogue)
    return dict(root=root, trusted=trusted)


def _derived(world, tmp_path) -> Path:
    art = tmp_path / "copy"
    shutil.copytree(world["root"] / "signed", art)
    sp.verify(art, world["trusted"])
    (art / "model.plan").write_bytes(b"a plan built on this device")
    sp.record(art, art / "model.plan", world["trusted"], "fp16")
    return art


def test_derived_copy_checks_and_differs_from_the_signed_manifest_in_the_plan_only(world, tmp_path):
    from runtime.contracts.manifest import load_manifest

    art = _derived(world, tmp_path)
    line = sp.check(art, world["trusted"])
    assert line.startswith("signed by release.ed25519.pub (") and "plan model.plan" in line
    signed, work = load_manifest(art / "signed", verify=False), load_manifest(art)
    assert work.models == {**signed.models, "tensorrt_plan": "model.plan"}
    assert set(work.files) - set(signed.files) == {"model.plan"}
    d = json.loads((art / "derived.json").read_text())
    assert d["source"] == {"role": "fp32", "file": signed.models["fp32"], "sha256": signed.files[signed.models["fp32"]]}
    assert not (art / "manifest.sig").exists()  # the copy's manifest is not what the release key signed


@pytest.mark.parametrize("tamper", ["threshold", "plan", "derived", "signed_manifest"])
def test_an_edited_copy_is_refused_at_the_next_start(world, tmp_path, tamper):
    from runtime.contracts.formats import ContractError
    from runtime.contracts.manifest import load_manifest, write_manifest

    art = _derived(world, tmp_path)
    if tamper == "threshold":  # re-hashed, as someone with the state volume could: still not the signed figures
        m = load_manifest(art)
        write_manifest(art, m.model_copy(update={"calibration": m.calibration.model_copy(update={"threshold": 1e9})}))
    elif tamper == "plan":
        (art / "model.plan").write_bytes(b"another plan")
    elif tamper == "derived":
        d = json.loads((art / "derived.json").read_text())
        d["source"]["sha256"] = "0" * 64
        (art / "derived.json").write_text(json.dumps(d))
    else:
        p = art / "signed" / "manifest.json"
        p.write_text(p.read_text().replace('"threshold"', '"threshold" ', 1))
    with pytest.raises(ContractError):
        sp.check(art, world["trusted"])


@pytest.mark.parametrize("name", ["unsigned", "foreign"])
def test_unsigned_or_foreign_artifact_is_refused_before_the_build(world, name):
    r = subprocess.run([sys.executable, str(SIGNED_PLAN), "verify", str(world["root"] / name),
                        "--trusted-signers", str(world["trusted"])], capture_output=True, text=True, cwd=ROOT,
                       env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert r.returncode == 2 and r.stderr.startswith("signed_plan.py verify: ") and r.stderr.count("\n") == 1


def _entrypoint(world, tmp_path, artifact: str, *args: str, env: dict | None = None):
    """Run a copy of the entrypoint with the deploy paths pointing here, a builder that writes a stand-in plan,
    and a `lineside` that prints its arguments as JSON."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    builder = bin_dir / "build_engine.py"
    builder.write_text("import sys\nout = sys.argv[sys.argv.index('--out') + 1]\nopen(out, 'wb').write(b'plan')\n")
    lineside = bin_dir / "lineside"
    lineside.write_text(f"#!{sys.executable}\nimport json, sys\nprint(json.dumps(sys.argv[1:]))\n")
    lineside.chmod(0o755)
    python3 = bin_dir / "python3"  # this interpreter (and its environment), as the image's venv is
    python3.write_text(f'#!/bin/sh\nexec "{sys.executable}" "$@"\n')
    python3.chmod(0o755)
    script = tmp_path / "entrypoint.sh"
    script.write_text(ENTRYPOINT.read_text().replace("/opt/lineside/deploy/tensorrt/build_engine.py", str(builder))
                      .replace("/opt/lineside/deploy/tensorrt/signed_plan.py", str(SIGNED_PLAN)))
    e = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "PYTHONPATH": str(ROOT),
         "LINESIDE_ARTIFACT": str(world["root"] / artifact), "LINESIDE_STATE": str(tmp_path / "state"), **(env or {})}
    return subprocess.run(["bash", str(script), *args], capture_output=True, text=True, env=e, timeout=100)


def test_entrypoint_serves_a_signed_artifact_through_its_derived_copy(world, tmp_path):
    for _ in range(2):  # the build, then a start from the cached copy: both checked
        r = _entrypoint(world, tmp_path, "signed", "--trusted-signers", str(world["trusted"]), "--insecure")
        assert r.returncode == 0, r.stderr
        assert "lineside-jetson: signed by release.ed25519.pub" in r.stderr
    argv = json.loads(r.stdout.strip().splitlines()[-1])
    assert argv[0] == "run" and "--trusted-signers" not in argv and argv[-1] == "--insecure"
    work = Path(argv[argv.index("--artifact") + 1])
    assert Path(argv[argv.index("--artifacts-dir") + 1]) == work.parent == tmp_path / "state" / "artifacts-signed"
    assert (work / "derived.json").is_file() and (work / "signed" / "manifest.sig").is_file()


def test_entrypoint_refuses_an_unsigned_artifact_and_an_edited_copy(world, tmp_path):
    r = _entrypoint(world, tmp_path, "unsigned", env={"LINESIDE_TRUSTED_SIGNERS": str(world["trusted"])})
    assert r.returncode == 2 and "is not signed" in r.stderr and not r.stdout
    r = _entrypoint(world, tmp_path, "signed", env={"LINESIDE_TRUSTED_SIGNERS": str(world["trusted"])})
    assert r.returncode == 0, r.stderr
    work = Path(json.loads(r.stdout.strip().splitlines()[-1])[2])
    m = json.loads((work / "manifest.json").read_text())
    m["calibration"]["threshold"] = 1e9
    (work / "manifest.json").write_text(json.dumps(m))
    r = _entrypoint(world, tmp_path, "signed", env={"LINESIDE_TRUSTED_SIGNERS": str(world["trusted"])})
    assert r.returncode == 2 and not r.stdout, r.stderr


def test_entrypoint_without_signers_builds_and_serves_as_before(world, tmp_path):
    r = _entrypoint(world, tmp_path, "unsigned", "--teacher", "tcp://gpu:5560")
    assert r.returncode == 0, r.stderr
    argv = json.loads(r.stdout.strip().splitlines()[-1])
    work = Path(argv[argv.index("--artifact") + 1])
    assert work.parent == tmp_path / "state" / "artifacts" and argv[-2:] == ["--teacher", "tcp://gpu:5560"]
    assert json.loads((work / "manifest.json").read_text())["models"]["tensorrt_plan"] == "model.plan"
    assert not (work / "derived.json").exists()
