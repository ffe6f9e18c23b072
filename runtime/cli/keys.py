"""`lineside keys OUTDIR --name NAME [--signing]`: a CURVE key pair for a daemon, a teacher server or a
client; with ``--signing``, an Ed25519 pair that signs artifacts.

Writes ``OUTDIR/NAME.key`` (public certificate: copy it to the peers, or into a server's allowed-keys
directory) and ``OUTDIR/NAME.key_secret`` (both keys: keep it on this machine, mode 0600), in the
format ``zmq.auth.create_certificates`` writes and ``runtime/curve.py`` loads. ``--signing`` writes
``NAME.ed25519`` (private, 0600: for ``distill export --sign``) and ``NAME.ed25519.pub`` (copy it into
each edge's ``--trusted-signers`` directory), as ``runtime/contracts/signing.py`` reads them. Existing keys are
never overwritten unless ``--force`` is given: a replaced server key locks out every client.

    lineside keys /etc/lineside/keys --name teacher
    lineside keys /etc/lineside/keys --name edge-cam0
    cp /etc/lineside/keys/edge-cam0.key /etc/lineside/allowed/   # on the teacher server
    lineside keys ~/keys --name release --signing                 # on the workstation that exports
"""
from __future__ import annotations

import argparse
import os
import re
import sys
from pathlib import Path

from runtime.cli.dispatch import print_json

NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


class KeysError(ValueError):
    pass


def make_keypair(outdir: str | Path, name: str, force: bool = False, signing: bool = False) -> tuple[Path, Path]:
    """Create ``NAME.key`` and ``NAME.key_secret`` in ``outdir`` (``signing``: ``NAME.ed25519.pub`` and
    ``NAME.ed25519``); returns (public_file, secret_file)."""
    import zmq
    import zmq.auth

    from runtime.contracts import signing as sig

    if not NAME_PATTERN.match(name):
        raise KeysError(f"--name {name!r}: use letters, digits, '.', '_' or '-' (at most 64, no path separators)")
    if not signing and not zmq.has("curve"):
        raise KeysError(f"this libzmq ({zmq.zmq_version()}) was built without CURVE support")
    out = Path(outdir)
    if out.exists() and not out.is_dir():
        raise KeysError(f"{out} exists and is not a directory")
    if signing:
        public, secret = out / f"{name}{sig.PUBLIC_SUFFIX}", out / f"{name}{sig.SECRET_SUFFIX}"
    else:
        public, secret = out / f"{name}.key", out / f"{name}.key_secret"
    existing = [p for p in (public, secret) if p.exists()]
    if existing and not force:
        raise KeysError(f"{', '.join(str(p) for p in existing)} already exist(s); refusing to overwrite "
                        "(--force replaces them, and every peer holding the old public key is locked out)")
    out.mkdir(parents=True, exist_ok=True)
    for p in existing:
        p.unlink()
    if signing:
        return sig.write_keypair(out, name)
    pub_file, sec_file = zmq.auth.create_certificates(str(out), name)
    os.chmod(sec_file, 0o600)
    return Path(pub_file), Path(sec_file)


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("outdir", help="directory for the key files (created if missing)")
    parser.add_argument("--name", required=True, help="key name: NAME.key (public) and NAME.key_secret")
    parser.add_argument("--signing", action="store_true",
                        help="an Ed25519 artifact-signing pair (distill export --sign, lineside run --trusted-signers) "
                        "instead of a CURVE pair")
    parser.add_argument("--force", action="store_true", help="overwrite existing keys of that name")
    parser.add_argument("--json", action="store_true", help="print one JSON object as the last stdout line")


def run(args: argparse.Namespace) -> int:
    try:
        public, secret = make_keypair(args.outdir, args.name, force=args.force, signing=args.signing)
    except KeysError as e:
        print(f"lineside keys: {e}", file=sys.stderr)
        if args.json:
            print_json({"ok": False, "error": str(e)})
        return 2
    if args.json:
        print_json({"ok": True, "public": str(public), "secret": str(secret)})
    else:
        print(f"public: {public}")
        print(f"secret: {secret}")
    return 0
