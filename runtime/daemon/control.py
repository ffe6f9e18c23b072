"""The control socket: status, metrics snapshot, reload an artifact, shut down.

A ROUTER on an ipc:// socket file by default, made mode 0600 as it is bound: only the daemon's user (and
root) may connect, so no other local user can reload or shut the line down. Without CURVE it must be such a
file. A TCP port on loopback is open to every local user: refused unless ``security.insecure_control``. A
network address (open to everyone) and an abstract ``ipc://@name`` (no permissions at all) are always
refused. With CURVE (``security.control_secret``) it admits only the operators' keys
(``control_allowed_keys``, else ``allowed_keys``), never a camera's unless that directory holds it.
Requests are protocol messages, from a DEALER (``lineside control``/``status``) or a REQ (an empty
delimiter is echoed):

    {"kind": "control", "cmd": "status" | "metrics" | "reload" | "shutdown", "path": DIR?}   or {"kind": "status"}
    {"kind": "control", "cmd": "replay", "since": SEQ, "limit": N?}   journaled verdicts after SEQ, oldest first
    -> {"kind": "status", "status": {...}}  |  {"kind": "error", "field": ..., "message": ...}

Every published verdict carries ``seq``, one more than the one before it (continued across restarts from
the journal). A subscriber that sees a gap, or starts late, asks ``replay`` for what it missed (zguide's
Clone pattern: the journal is the snapshot, the PUB stream the updates); ``lineside watch --since``.

``reload`` only takes an artifact under the configured artifacts directory, and refuses one whose
manifest or checksums fail (runtime.contracts.manifest.load_manifest), or, with ``security.trusted_signers``, whose
signature does (runtime/contracts/signing.py); the running model stays in place then.
"""
from __future__ import annotations

import logging
import os
import threading

import zmq

from runtime.contracts import protocol
from runtime.curve import CurveError, is_loopback, make_server
from runtime.contracts.protocol import ProtocolError

log = logging.getLogger("lineside.control")

POLL_MS = 100
COMMANDS = ("status", "metrics", "reload", "shutdown", "replay")
REPLAY_MAX = 1000  # verdicts per replay reply: a bounded message; "more" asks for the next page
IPC_MODE = 0o600  # the control socket file: this user only
IPC_BIND_UMASK = 0o077  # while binding: the file (and the directory of an ipc://* wildcard) is created private


def check_control_policy(endpoint: str, secured: bool, insecure_control: bool) -> None:
    """Refuse a control endpoint anyone but the operator could reach (see the module docstring)."""
    if secured:
        return
    if endpoint.startswith("tcp://") and not is_loopback(endpoint):
        raise CurveError(f"control: refusing to bind {endpoint} without CURVE (security.control_secret); "
                         "use an ipc:// socket file or loopback")
    if endpoint.startswith("ipc://@"):
        raise CurveError(f"control: refusing to bind the abstract socket {endpoint} without CURVE: it has no file "
                         "permissions, any local user could connect; use an ipc:// socket file")
    if endpoint.startswith("tcp://") and not insecure_control:
        raise CurveError(f"control: refusing to bind {endpoint} without CURVE: any local user could reload or shut "
                         "down the daemon; use ipc://PATH (file permissions), give security.control_secret, or "
                         "pass --insecure-control")


def bind_control(sock: zmq.Socket, endpoint: str) -> str:
    """Bind; an ipc:// socket file is created under a private umask and set to IPC_MODE. Returns the endpoint."""
    if not endpoint.startswith("ipc://"):
        sock.bind(endpoint)
        return sock.last_endpoint.decode()
    old = os.umask(IPC_BIND_UMASK)  # process-wide, for the instant of the bind; only ever stricter
    try:
        sock.bind(endpoint)
    finally:
        os.umask(old)
    bound = sock.last_endpoint.decode()
    os.chmod(bound[len("ipc://"):], IPC_MODE)  # whatever the umask was: the mode is this, not "at most this"
    return bound


class Control(threading.Thread):
    def __init__(self, ctx: zmq.Context, cfg, daemon):
        super().__init__(name="lineside-control", daemon=True)
        self.daemon_ref = daemon
        self.stop_event = threading.Event()
        ep, secret = cfg.sockets.control, cfg.security.control_secret
        check_control_policy(ep, bool(secret), cfg.security.insecure_control)
        s = self.sock = ctx.socket(zmq.ROUTER)
        s.linger = 0
        s.maxmsgsize = 1 << 20
        if secret:
            make_server(s, secret, domain="control")
        self.endpoint = bind_control(s, ep)

    def run(self) -> None:
        try:
            while not self.stop_event.is_set():
                if not self.sock.poll(POLL_MS, zmq.POLLIN):
                    continue
                msg = self.sock.recv_multipart()
                env, frames = (msg[:2], msg[2:]) if len(msg) > 1 and msg[1] == b"" else (msg[:1], msg[1:])
                reply = self._handle(frames)
                try:
                    self.sock.send_multipart(env + reply, zmq.NOBLOCK)
                except zmq.ZMQError as e:
                    log.warning("control reply not sent: %s", e)
        finally:
            self.sock.close(linger=0)

    def _handle(self, frames: list[bytes]) -> list[bytes]:
        d = self.daemon_ref
        try:
            h = protocol.decode_header(frames, expect=("control", "status"))
            cmd = "status" if h["kind"] == "status" else h.get("cmd")
            if cmd not in COMMANDS:
                raise ProtocolError("cmd", f"unknown command {cmd!r}; commands are {', '.join(COMMANDS)}")
            if cmd == "status":
                body = d.status()
            elif cmd == "metrics":
                body = d.metrics()
            elif cmd == "replay":
                since, limit = h.get("since"), h.get("limit", REPLAY_MAX)
                for name, v, lo in (("since", since, 0), ("limit", limit, 1)):
                    if not isinstance(v, int) or isinstance(v, bool) or not lo <= v <= (1 << 62):
                        raise ProtocolError(name, f"must be an integer >= {lo}")
                body = d.replay(since, min(limit, REPLAY_MAX))
            elif cmd == "reload":
                path = h.get("path")
                if not isinstance(path, str) or not path:
                    raise ProtocolError("path", "reload needs the artifact directory in \"path\"")
                body = d.reload(path)  # raises ProtocolError("path", ...) when refused
            else:
                body = {"shutting_down": True}
                d.request_shutdown("control socket")
            return protocol.encode({"kind": "status", "cmd": cmd, "status": body})
        except ProtocolError as e:
            log.warning("control request refused: %s", e)
            return protocol.error_frames(e.field, e.message)
