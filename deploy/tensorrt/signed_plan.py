#!/usr/bin/env python3
"""A signed artifact on the Jetson: check the signature, then derive the TensorRT plan from the model it covers.

The plan is built on the device, after signing, so no release key can sign it, and a manifest that lists it
is not the manifest the release key signed. This file keeps the two apart instead of pretending otherwise
(deploy/containers/jetson-entrypoint.sh calls it; deploy/OPERATIONS.md, "Signed artifacts on the Jetson"):

    verify ART --trusted-signers DIR   before the build: ART's manifest.json is signed by a key in DIR and every
                                       file it lists has its sha256 (the checks `lineside run --trusted-signers`
                                       makes); prints the signer
    record ART PLAN [--trusted-signers DIR] [--precision P]
                                       after the build: list PLAN in ART's manifest (models.tensorrt_plan, its
                                       sha256 in files); when signed, keep the signed manifest and its signature
                                       as ART/signed/ and write ART/derived.json: the plan's sha256, the signed
                                       manifest's sha256, the source model (role, file, sha256) and the signer
    check ART --trusted-signers DIR    at every start: signed/ still verifies against DIR, ART's manifest is the
                                       signed one plus exactly the plan, and the plan and derived.json agree

What the signature then covers on the device: the model the plan was built from, the bank, the threshold, the
band and every other figure of the manifest (any edit of the copy is refused at the next start). The plan
itself is trusted as the device is: built here from the verified model, bound to it by derived.json, which
no release key signs. Exit 0 when the check holds, 2 with one line saying why when it does not.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

DERIVED_NAME = "derived.json"
SIGNED_DIR = "signed"  # the signed manifest.json and manifest.sig, as they came
DERIVED_FORMAT, DERIVED_VERSION = "lineside-derived-plan", 1
PLAN_ROLE = "tensorrt_plan"


def verify(art: Path, trusted: Path) -> str:
    """The signer of ``art`` ("FILE (FINGERPRINT)") once its signature and every file's checksum hold."""
    from runtime.contracts.manifest import load_manifest, read_manifest_bytes
    from runtime.contracts.signing import verify_manifest

    data = read_manifest_bytes(art)
    signer = verify_manifest(art, data, trusted)
    load_manifest(art, verify=True, data=data)
    return signer


def source_role(models: dict) -> str:
    """The model a plan is built from: the FP32 ONNX (TensorRT quantizes it itself for int8)."""
    if "fp32" not in models:
        from runtime.contracts.formats import ContractError

        raise ContractError(f"the artifact names no fp32 model to build a TensorRT plan from (models: {sorted(models)})")
    return "fp32"


def record(art: Path, plan: Path, trusted: Path | None, precision: str) -> None:
    from runtime.contracts.manifest import MANIFEST_NAME, SIGNATURE_NAME, load_manifest, read_manifest_bytes, \
        sha256_file, write_manifest

    signed_bytes = read_manifest_bytes(art)
    signer = verify(art, trusted) if trusted is not None else None
    m = load_manifest(art, verify=False, data=signed_bytes)
    sig = (art / SIGNATURE_NAME).read_bytes() if signer else None
    rel = str(plan.relative_to(art))
    write_manifest(art, m.model_copy(update={"models": {**m.models, PLAN_ROLE: rel}}))  # drops the old signature
    if signer is None:
        return
    # after write_manifest: the derived manifest lists the original files and the plan, nothing else
    (art / SIGNED_DIR).mkdir()
    (art / SIGNED_DIR / MANIFEST_NAME).write_bytes(signed_bytes)
    (art / SIGNED_DIR / SIGNATURE_NAME).write_bytes(sig)
    role = source_role(m.models)
    derived = {"format": DERIVED_FORMAT, "version": DERIVED_VERSION, "signer": signer,
               "signed_manifest_sha256": hashlib.sha256(signed_bytes).hexdigest(),
               "source": {"role": role, "file": m.models[role], "sha256": m.files[m.models[role]]},
               "plan": {"file": rel, "sha256": sha256_file(plan), "precision": precision}}
    (art / DERIVED_NAME).write_text(json.dumps(derived, indent=2) + "\n")


def check(art: Path, trusted: Path) -> str:
    """One line naming the signer and the plan, once every check of a derived copy holds."""
    from runtime.contracts.formats import ContractError
    from runtime.contracts.manifest import MANIFEST_NAME, load_manifest

    signed_dir = art / SIGNED_DIR
    if not (signed_dir / MANIFEST_NAME).is_file() or not (art / DERIVED_NAME).is_file():
        raise ContractError(f"{art}: no {SIGNED_DIR}/{MANIFEST_NAME} or {DERIVED_NAME}: this copy was not derived "
                            "from a signed artifact (rebuild it: remove the copy and restart)")
    from runtime.contracts.signing import verify_manifest

    signed_bytes = (signed_dir / MANIFEST_NAME).read_bytes()
    signer = verify_manifest(signed_dir, signed_bytes, trusted)
    signed = load_manifest(signed_dir, verify=False, data=signed_bytes)
    work = load_manifest(art, verify=True)  # every file's sha256, the plan's included
    try:
        d = json.loads((art / DERIVED_NAME).read_text())
        plan_rel, plan_sha = d["plan"]["file"], d["plan"]["sha256"]
        ok_format = (d["format"], d["version"]) == (DERIVED_FORMAT, DERIVED_VERSION)
    except (ValueError, KeyError, TypeError) as e:
        raise ContractError(f"{art / DERIVED_NAME}: not a derived-plan record ({e})") from None
    if not ok_format:
        raise ContractError(f"{art / DERIVED_NAME}: format {d['format']!r} v{d['version']!r} is not "
                            f"{DERIVED_FORMAT} v{DERIVED_VERSION}")
    if d.get("signed_manifest_sha256") != hashlib.sha256(signed_bytes).hexdigest():
        raise ContractError(f"{art}: {DERIVED_NAME} was not derived from the signed manifest kept in {SIGNED_DIR}/")
    if work.models.get(PLAN_ROLE) != plan_rel or work.files.get(plan_rel) != plan_sha:
        raise ContractError(f"{art}: the manifest's TensorRT plan is not the one {DERIVED_NAME} records")
    role = source_role(signed.models)
    if d.get("source") != {"role": role, "file": signed.models[role], "sha256": signed.files[signed.models[role]]}:
        raise ContractError(f"{art}: {DERIVED_NAME} names another source model than the signed manifest's {role}")
    expected = signed.model_dump()
    expected["models"] = {**expected["models"], PLAN_ROLE: plan_rel}
    expected["files"] = {**expected["files"], plan_rel: plan_sha}
    if work.model_dump() != expected:
        changed = sorted(k for k in expected if work.model_dump().get(k) != expected[k])
        raise ContractError(f"{art}: manifest.json differs from the signed manifest in more than the TensorRT plan "
                            f"(field(s) {', '.join(changed)}): edited after the check; refused")
    return (f"signed by {signer}; plan {plan_rel} (sha256 {plan_sha[:16]}) derived on this device from "
            f"{role} {signed.models[role]} (sha256 {signed.files[signed.models[role]][:16]})")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="signed_plan.py", description="signed artifacts and their device-built plan")
    sub = p.add_subparsers(dest="cmd", required=True)
    for name in ("verify", "record", "check"):
        s = sub.add_parser(name)
        s.add_argument("artifact", type=Path)
        if name == "record":
            s.add_argument("plan", type=Path)
            s.add_argument("--precision", default="fp16")
        s.add_argument("--trusted-signers", type=Path, required=name != "record", metavar="DIR")
    args = p.parse_args(argv)
    from runtime.contracts.formats import ContractError

    try:
        if args.cmd == "verify":
            print(f"signed by {verify(args.artifact, args.trusted_signers)}")
        elif args.cmd == "record":
            record(args.artifact, args.artifact / args.plan if not args.plan.is_absolute() else args.plan,
                   args.trusted_signers, args.precision)
        else:
            print(check(args.artifact, args.trusted_signers))
    except (ContractError, OSError) as e:
        print(f"signed_plan.py {args.cmd}: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
