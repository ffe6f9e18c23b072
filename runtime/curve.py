"""CURVE security for every lineside socket, with pyzmq's own machinery (zmq.auth).

Keys are the certificate files ``zmq.auth.create_certificates`` writes (``lineside keys`` makes them):
``NAME.key`` (public) and ``NAME.key_secret`` (both). A server loads its secret file and admits only
clients whose public certificates sit in an allowed-keys directory; a client loads its own secret
and the server's public key.

One authenticator (ZAP handler) serves every socket of a context. A socket names its ZAP domain
(``make_server(..., domain="control")``) and the authenticator admits, for that domain, only the keys of
the directory configured for it: a camera's key in the ingress directory opens ingress, not control.
Note that pyzmq's "*" domain is not a wildcard: it is the domain of sockets that name none.
"""
from __future__ import annotations

from pathlib import Path

import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator

LOOPBACK_PREFIXES = ("tcp://127.", "tcp://localhost", "tcp://[::1]", "ipc://", "inproc://")


class CurveError(ValueError):
    pass


def is_loopback(endpoint: str) -> bool:
    return endpoint.startswith(LOOPBACK_PREFIXES)


def _load(path: str | Path, need_secret: bool) -> tuple[bytes, bytes | None]:
    p = Path(path)
    if not p.is_file():
        raise CurveError(f"CURVE key file {p} does not exist (make keys with `lineside keys`)")
    try:
        public, secret = zmq.auth.load_certificate(p)
    except (ValueError, OSError) as e:
        raise CurveError(f"CURVE key file {p} is not a ZeroMQ certificate: {e}") from None
    if need_secret and secret is None:
        raise CurveError(f"CURVE key file {p} holds no secret key (use the .key_secret file)")
    return public, secret


def start_authenticator(context: zmq.Context, allowed_keys_dir: str | Path | None = None,
                        domains: dict[str, str | Path] | None = None) -> ThreadAuthenticator:
    """Admit only CURVE clients whose public certificates are in the directory of their socket's ZAP domain:
    ``domains`` maps a domain to its directory; ``allowed_keys_dir`` serves sockets that name no domain."""
    wanted = {**({"*": allowed_keys_dir} if allowed_keys_dir else {}), **(domains or {})}
    for d in map(Path, wanted.values()):
        if not d.is_dir():
            raise CurveError(f"allowed-keys directory {d} does not exist")
    auth = ThreadAuthenticator(context)
    auth.start()
    for domain, d in wanted.items():
        auth.configure_curve(domain=domain, location=str(d))
    return auth


def make_server(sock: zmq.Socket, secret_file: str | Path, domain: str = "") -> bytes:
    """Make ``sock`` a CURVE server (before bind), authenticated in ZAP ``domain`` ("": the default one).
    Returns its public key."""
    public, secret = _load(secret_file, need_secret=True)
    sock.curve_secretkey = secret
    sock.curve_publickey = public
    sock.curve_server = True
    if domain:
        sock.zap_domain = domain.encode()
    return public


def make_client(sock: zmq.Socket, secret_file: str | Path, server_public_file: str | Path) -> None:
    """Make ``sock`` a CURVE client of the server whose public certificate is given (before connect)."""
    public, secret = _load(secret_file, need_secret=True)
    server_public, _ = _load(server_public_file, need_secret=False)
    sock.curve_secretkey = secret
    sock.curve_publickey = public
    sock.curve_serverkey = server_public


def check_bind_policy(endpoint: str, secured: bool, insecure_ok: bool, what: str) -> None:
    """Refuse to bind a network address without CURVE unless the operator said --insecure."""
    if not secured and not insecure_ok and not is_loopback(endpoint):
        raise CurveError(f"{what}: refusing to bind {endpoint} without CURVE keys; give keys, bind loopback, "
                         "or pass --insecure on a trusted network")
