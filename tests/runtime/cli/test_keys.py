"""`lineside keys`: CURVE key pairs that runtime/curve.py loads; never silently overwritten."""
from __future__ import annotations

import json
import stat

import pytest
import zmq.auth

from runtime.cli import main as lineside
from runtime.curve import _load
from runtime.cli.keys import KeysError, make_keypair


def test_make_keypair_writes_loadable_certificates(tmp_path):
    public, secret = make_keypair(tmp_path / "keys", "teacher")
    assert public == tmp_path / "keys" / "teacher.key" and secret == tmp_path / "keys" / "teacher.key_secret"
    pub, sec = zmq.auth.load_certificate(secret)
    assert len(pub) == 40 and len(sec) == 40
    assert zmq.auth.load_certificate(public) == (pub, None)
    assert _load(secret, need_secret=True) == (pub, sec)
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600


def test_refuses_to_overwrite_unless_forced(tmp_path):
    _, secret = make_keypair(tmp_path, "edge")
    before = zmq.auth.load_certificate(secret)
    with pytest.raises(KeysError, match="refusing to overwrite"):
        make_keypair(tmp_path, "edge")
    assert zmq.auth.load_certificate(secret) == before
    make_keypair(tmp_path, "edge", force=True)
    assert zmq.auth.load_certificate(secret) != before


@pytest.mark.parametrize("name", ["../evil", "a/b", "", "-x", "x" * 65])
def test_bad_names_are_refused(tmp_path, name):
    with pytest.raises(KeysError, match="--name"):
        make_keypair(tmp_path, name)


def test_cli_prints_paths_and_json(tmp_path, capsys):
    assert lineside(["keys", str(tmp_path), "--name", "cam0"]) == 0
    out = capsys.readouterr().out
    assert f"public: {tmp_path / 'cam0.key'}" in out and f"secret: {tmp_path / 'cam0.key_secret'}" in out
    assert lineside(["keys", str(tmp_path), "--name", "cam0", "--json"]) == 2
    last = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert last["ok"] is False and "already exist" in last["error"]
    assert lineside(["keys", str(tmp_path), "--name", "cam0", "--json", "--force"]) == 0
    last = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert last == {"ok": True, "public": str(tmp_path / "cam0.key"), "secret": str(tmp_path / "cam0.key_secret")}
