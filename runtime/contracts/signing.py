"""Ed25519 signatures of student artifacts: ``distill export --sign KEY`` signs, the edge checks
(``lineside run|predict --trusted-signers DIR``). Both sides call this module; it needs ``cryptography``
(in the runtime extra), never torch.

What is signed is manifest.json's bytes exactly as written, after a domain tag (so a signing key signs
nothing else by accident). The manifest lists every other file with its sha256 and the reader re-hashes
them (runtime/contracts/manifest.py), so this one signature covers the model files, the bank, the threshold and the
band: an edited manifest fails the signature, a replaced file fails its checksum.

    ARTIFACT/manifest.sig  {"format": "lineside-signature", "version": 1, "algorithm": "ed25519",
                            "signer": FINGERPRINT, "signature": BASE64}

Keys (``lineside keys DIR --name NAME --signing``): ``NAME.ed25519`` is the private key (PKCS#8 PEM, mode
0600; it stays on the machine that exports) and ``NAME.ed25519.pub`` the public key (PEM): copy it into
each edge's trusted-signers directory. A fingerprint is the first 16 hex digits of the sha256 of the raw
32-byte public key.
"""
from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
from pathlib import Path

from runtime.contracts.formats import ContractError
from runtime.contracts.manifest import MANIFEST_NAME, SIGNATURE_NAME

SIGNATURE_FORMAT = "lineside-signature"
SIGNATURE_VERSION = 1
DOMAIN_TAG = b"lineside artifact manifest v1\n"  # prefixed to the manifest bytes before signing
SECRET_SUFFIX, PUBLIC_SUFFIX = ".ed25519", ".ed25519.pub"
MAX_SIGNATURE_FILE_BYTES = 4096


class SignatureError(ContractError):
    pass


def _crypto():
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519

    return serialization, ed25519, InvalidSignature


def fingerprint(public_key) -> str:
    serialization, _, _ = _crypto()
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def write_keypair(outdir: str | Path, name: str) -> tuple[Path, Path]:
    """``NAME.ed25519.pub`` and ``NAME.ed25519`` (created 0600, never over an existing file); returns
    (public_file, secret_file). runtime/cli/keys.py checks the name and what already exists."""
    serialization, ed25519, _ = _crypto()
    out = Path(outdir)
    key = ed25519.Ed25519PrivateKey.generate()
    secret = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                               serialization.NoEncryption())
    public = key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    sec_file, pub_file = out / f"{name}{SECRET_SUFFIX}", out / f"{name}{PUBLIC_SUFFIX}"
    fd = os.open(sec_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)  # never readable by others, not even briefly
    with os.fdopen(fd, "wb") as f:
        f.write(secret)
    pub_file.write_bytes(public)
    return pub_file, sec_file


def load_signing_key(path: str | Path):
    serialization, ed25519, _ = _crypto()
    p = Path(path)
    if not p.is_file():
        raise SignatureError(f"signing key {p} does not exist "
                             "(make one with `lineside keys DIR --name NAME --signing`)")
    try:
        key = serialization.load_pem_private_key(p.read_bytes(), password=None)
    except (ValueError, TypeError) as e:
        raise SignatureError(f"signing key {p} is not an unencrypted PEM private key: {e}") from None
    if not isinstance(key, ed25519.Ed25519PrivateKey):
        raise SignatureError(f"signing key {p} is not an Ed25519 key")
    return key


def load_trusted(directory: str | Path) -> dict[str, tuple[Path, object]]:
    """Every ``*.ed25519.pub`` in ``directory``: fingerprint -> (file, Ed25519 public key). A file that is not
    an Ed25519 public key is an error naming it, not skipped: a trust list should hold what it says."""
    serialization, ed25519, _ = _crypto()
    d = Path(directory)
    if not d.is_dir():
        raise SignatureError(f"trusted-signers directory {d} does not exist")
    keys = {}
    for p in sorted(d.glob(f"*{PUBLIC_SUFFIX}")):
        try:
            key = serialization.load_pem_public_key(p.read_bytes())
        except (ValueError, TypeError) as e:
            raise SignatureError(f"trusted signer {p} is not a PEM public key: {e}") from None
        if not isinstance(key, ed25519.Ed25519PublicKey):
            raise SignatureError(f"trusted signer {p} is not an Ed25519 key")
        keys[fingerprint(key)] = (p, key)
    if not keys:
        raise SignatureError(f"trusted-signers directory {d} holds no public keys (*{PUBLIC_SUFFIX})")
    return keys


def sign_artifact(artifact_dir: str | Path, key_file: str | Path) -> str:
    """Sign ``artifact_dir``'s manifest.json with the private key in ``key_file``; writes manifest.sig and
    returns the signer's fingerprint."""
    d = Path(artifact_dir)
    key = load_signing_key(key_file)
    data = (d / MANIFEST_NAME).read_bytes()
    fp = fingerprint(key.public_key())
    sig = {"format": SIGNATURE_FORMAT, "version": SIGNATURE_VERSION, "algorithm": "ed25519", "signer": fp,
           "signature": base64.b64encode(key.sign(DOMAIN_TAG + data)).decode()}
    (d / SIGNATURE_NAME).write_text(json.dumps(sig, indent=2) + "\n")
    return fp


def verify_manifest(artifact_dir: str | Path, manifest_bytes: bytes, trusted_dir: str | Path) -> str:
    """Check that ``manifest_bytes`` (the manifest.json the caller read, and will parse) carry a valid
    signature by a key in ``trusted_dir``; returns ``"FILE (FINGERPRINT)"`` naming the signer."""
    _, _, InvalidSignature = _crypto()
    d = Path(artifact_dir)
    trusted = load_trusted(trusted_dir)
    p = d / SIGNATURE_NAME
    if not p.is_file():
        raise SignatureError(f"{d}: artifact is not signed (no {SIGNATURE_NAME}) and only artifacts signed by a key "
                             f"in {trusted_dir} are accepted; export it with `distill export --sign KEY`")
    try:
        if p.stat().st_size > MAX_SIGNATURE_FILE_BYTES:
            raise ValueError(f"larger than {MAX_SIGNATURE_FILE_BYTES} bytes")
        sig = json.loads(p.read_text())
        if not isinstance(sig, dict):
            raise ValueError("not a JSON object")
        if (sig.get("format"), sig.get("version"), sig.get("algorithm")) != (SIGNATURE_FORMAT, SIGNATURE_VERSION,
                                                                             "ed25519"):
            raise ValueError(f"format/version/algorithm {sig.get('format')!r}/{sig.get('version')!r}/"
                             f"{sig.get('algorithm')!r} is not {SIGNATURE_FORMAT}/{SIGNATURE_VERSION}/ed25519")
        signer, raw = sig.get("signer"), base64.b64decode(str(sig.get("signature", "")), validate=True)
    except (ValueError, binascii.Error, UnicodeDecodeError) as e:  # JSONDecodeError is a ValueError
        raise SignatureError(f"{p}: not a lineside signature ({e})") from None
    if not isinstance(signer, str) or signer not in trusted:
        raise SignatureError(f"{d}: signed by key {signer!r}, which is not in the trusted-signers directory "
                             f"{trusted_dir} (trusted: {', '.join(sorted(trusted))})")
    path, key = trusted[signer]
    try:
        key.verify(raw, DOMAIN_TAG + manifest_bytes)
    except InvalidSignature:
        raise SignatureError(f"{d}: signature check failed: {MANIFEST_NAME} is not what {path.name} signed "
                             "(the manifest was edited after signing, or the signature belongs to another artifact)"
                             ) from None
    return f"{path.name} ({signer})"
