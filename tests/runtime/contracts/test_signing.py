"""Signed artifacts (runtime/contracts/signing.py): `lineside keys --signing`, the engine's --trusted-signers policy, and
the daemon refusing an unsigned, edited or foreign-signed artifact on start and on reload (the old model keeps
serving). Loopback only; every receive has a timeout."""
import contextlib
import json
import logging
import shutil
import stat
import sys

import pytest

from tests.support.runtime_fixtures import DaemonRuns, TinyArtifact, build_tiny_artifact

T = TinyArtifact


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Two tiny artifacts signed by `release`, one unsigned, one signed by `rogue`; `trusted/` holds release's
    public key only."""
    from runtime.cli.keys import make_keypair
    from runtime.contracts.signing import sign_artifact

    root = tmp_path_factory.mktemp("signed")
    keys, trusted, arts = root / "keys", root / "trusted", root / "artifacts"
    release_pub, release = make_keypair(keys, "release", signing=True)
    _, rogue = make_keypair(keys, "rogue", signing=True)
    trusted.mkdir()
    shutil.copy(release_pub, trusted / release_pub.name)
    for name, seed in (("a", 0), ("b", 1), ("unsigned", 2), ("foreign", 3)):
        build_tiny_artifact(arts / name, seed=seed)
    for name in ("a", "b"):
        sign_artifact(arts / name, release)
    sign_artifact(arts / "foreign", rogue)
    return dict(root=root, keys=keys, trusted=trusted, arts=arts, release=release, rogue=rogue)


def _edited(world):
    """A copy of signed artifact a, under the artifacts directory, whose manifest says threshold 1e9 (every
    part "good"), its signature left as it was."""
    d = world["arts"] / "edited"
    if not d.exists():
        shutil.copytree(world["arts"] / "a", d)
        m = json.loads((d / "manifest.json").read_text())
        m["calibration"]["threshold"] = 1e9
        (d / "manifest.json").write_text(json.dumps(m, indent=2))
    return d


def test_signing_keys_are_written_private_and_never_overwritten(tmp_path, capsys):
    from runtime.cli import main

    assert main(["keys", str(tmp_path), "--name", "release", "--signing", "--json"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out == {"ok": True, "public": str(tmp_path / "release.ed25519.pub"),
                   "secret": str(tmp_path / "release.ed25519")}
    assert stat.S_IMODE((tmp_path / "release.ed25519").stat().st_mode) == 0o600
    assert b"PUBLIC KEY" in (tmp_path / "release.ed25519.pub").read_bytes()
    assert main(["keys", str(tmp_path), "--name", "release", "--signing"]) == 2
    assert "refusing to overwrite" in capsys.readouterr().err


def test_signed_artifact_is_accepted_and_names_its_signer(world):
    from runtime.engine import Engine
    from runtime.contracts.signing import fingerprint, load_signing_key

    e = Engine(world["arts"] / "a", trusted_signers=world["trusted"])
    fp = fingerprint(load_signing_key(world["release"]).public_key())
    assert e.signer == f"release.ed25519.pub ({fp})"
    assert e.judge(T.defect(1)).decision == "defect"
    assert e.model_hash == Engine(world["arts"] / "a").model_hash  # the policy does not change the model's name


@pytest.mark.parametrize("case, match", [
    ("unsigned", "artifact is not signed"),
    ("foreign", "not in the trusted-signers directory"),
    ("edited", "signature check failed"),
    ("garbled", "not a lineside signature"),
    ("replaced_bank", "bank.npy fails its checksum"),
])
def test_engine_refuses_what_no_trusted_key_signed(world, tmp_path, case, match):
    from runtime.engine import Engine
    from runtime.contracts.formats import ContractError
    from runtime.contracts.signing import SignatureError

    if case == "edited":
        d = _edited(world)
        assert Engine(d).model_hash != Engine(world["arts"] / "a").model_hash  # the edit is another model
    elif case in ("garbled", "replaced_bank"):
        d = tmp_path / case
        shutil.copytree(world["arts"] / "a", d)
        if case == "garbled":
            (d / "manifest.sig").write_text("{not json")
        else:  # the signature is intact: the manifest's checksums catch the file
            shutil.copy(world["arts"] / "b" / "bank.npy", d / "bank.npy")
    else:
        d = world["arts"] / case
    with pytest.raises(SignatureError if case != "replaced_bank" else ContractError, match=match):
        Engine(d, trusted_signers=world["trusted"])


def test_trusted_directory_must_hold_keys_and_only_keys(world, tmp_path):
    from runtime.engine import Engine
    from runtime.contracts.signing import SignatureError

    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(SignatureError, match="holds no public keys"):
        Engine(world["arts"] / "a", trusted_signers=empty)
    with pytest.raises(SignatureError, match="does not exist"):
        Engine(world["arts"] / "a", trusted_signers=tmp_path / "missing")
    junk = tmp_path / "junk"
    shutil.copytree(world["trusted"], junk)
    (junk / "notes.ed25519.pub").write_text("hello")
    with pytest.raises(SignatureError, match="notes.ed25519.pub is not a PEM public key"):
        Engine(world["arts"] / "a", trusted_signers=junk)


@contextlib.contextmanager
def _process_state_restored():
    """`lineside run` sets process-wide logging and the GIL switch interval, as a daemon should."""
    switch, lg = sys.getswitchinterval(), logging.getLogger("lineside")
    handlers, propagate, level = lg.handlers[:], lg.propagate, lg.level
    try:
        yield
    finally:
        sys.setswitchinterval(switch)
        lg.handlers[:], lg.propagate = handlers, propagate
        lg.setLevel(level)


@pytest.mark.parametrize("name, match", [("unsigned", "artifact is not signed"), ("edited", "signature check failed"),
                                         ("foreign", "not in the trusted-signers directory")])
def test_daemon_refuses_to_start_on_an_artifact_no_trusted_key_signed(world, tmp_path, capsys, name, match):
    from runtime.cli import main

    d = _edited(world) if name == "edited" else world["arts"] / name
    with _process_state_restored():
        rc = main(["run", "--artifact", str(d), "--trusted-signers", str(world["trusted"]),
                   "--ingress", "tcp://127.0.0.1:*", "--verdicts", "tcp://127.0.0.1:*",
                   "--control", f"ipc://{tmp_path}/c.sock", "--journal", str(tmp_path / "j.sqlite3")])
    err = capsys.readouterr().err
    assert rc == 1 and "lineside run: cannot start:" in err and match in err and "Traceback" not in err


def test_reload_refuses_unsigned_or_edited_old_model_keeps_serving(world, tmp_path):
    from runtime.client import LinesideError

    runs = DaemonRuns(tmp_path)
    try:
        d, c = runs.start(world["arts"] / "a", {"artifacts_dir": str(world["arts"]),
                                                "security.trusted_signers": str(world["trusted"])}, timeout_s=5.0)
        before = c.status()
        assert before["signer"].startswith("release.ed25519.pub")
        for name, match in (("unsigned", "artifact is not signed"), ("foreign", "not in the trusted-signers"),
                            ("edited", "signature check failed")):
            path = _edited(world) if name == "edited" else world["arts"] / name
            with pytest.raises(LinesideError, match=match) as e:
                c.reload(path)
            assert e.value.field == "path" and f"still serving {before['model_hash']}" in e.value.message
        st = c.status()
        assert st["model_hash"] == before["model_hash"] and st["generation"] == 0
        c.send(T.defect(1), frame_id="still")  # the old model, threshold and all, still judges
        assert c.collect(["still"], timeout_s=5.0)["still"][-1].decision == "defect"
        assert c.reload(world["arts"] / "b")["reloaded"]  # a signed one is taken
        assert c.status()["generation"] == 1
    finally:
        runs.close()


def test_predict_honours_trusted_signers(world, tmp_path, capsys):
    import cv2

    from runtime.cli import main

    img = tmp_path / "part.png"
    cv2.imwrite(str(img), T.good())
    args = ["--out", str(tmp_path / "out"), "--no-overlays", "--trusted-signers", str(world["trusted"]), "--json"]
    assert main(["predict", str(world["arts"] / "unsigned"), str(img), *args]) == 2
    assert "artifact is not signed" in capsys.readouterr().err
    assert main(["predict", str(world["arts"] / "a"), str(img), *args]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["signer"].startswith("release.ed25519.pub")
