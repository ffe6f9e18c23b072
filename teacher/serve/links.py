"""A worker's socket to what feeds it requests: the server's proxy, or a broker on another host.

Both links give the worker's I/O thread (teacher/serve/workers.py) the same five calls (recv,
send_multipart, tick, leaving, close) and a ``sock`` to poll, so the worker does not know which it has:

    ProxyLink   a DEALER to the backend of the server's ROUTER-DEALER proxy: frames in and out as they are
    BrokerLink  a DEALER to a `teacher serve broker` speaking teacher/serve/pirate.py: READY with the
                worker's credit, heartbeats both ways, requests under the broker's token, and a fresh
                socket when the broker falls silent (zguide's Paranoid Pirate worker)
"""
from __future__ import annotations

import logging
import time
from typing import Optional

import zmq

from teacher.serve import pirate

log = logging.getLogger("teacher.serve")


class ProxyLink:
    """The worker's DEALER to the server's proxy: frames in and out as they are."""

    def __init__(self, ctx: zmq.Context, endpoint: str):
        self.sock = ctx.socket(zmq.DEALER)
        self.sock.linger = 0
        self.sock.connect(endpoint)

    def recv(self) -> list[bytes]:
        return self.sock.recv_multipart(zmq.NOBLOCK)

    def send_multipart(self, frames: list[bytes]) -> None:
        self.sock.send_multipart(frames)

    def tick(self, now: float) -> bool:
        return False

    def leaving(self) -> None:
        pass

    def close(self) -> None:
        self.sock.close(linger=0)


class BrokerLink:
    """The worker's DEALER to a broker (teacher/serve/pirate.py): READY on connect, a heartbeat every
    HEARTBEAT_INTERVAL_S, requests under the broker's token (the envelope the worker answers to), replies
    sent as REPLY. A broker silent for HEARTBEAT_LIVENESS intervals gets a fresh socket and a new READY: a
    half-open TCP connection to a host that vanished would otherwise look alive for hours."""

    def __init__(self, ctx: zmq.Context, endpoint: str, info: dict):
        self.ctx, self.endpoint, self.info = ctx, endpoint, info
        self.sock: Optional[zmq.Socket] = None
        self.reconnects = 0
        self._open()

    def _open(self) -> None:
        if self.sock is not None:
            self.sock.close(linger=0)  # what it queued for the silent broker goes with it
            self.reconnects += 1
        self.sock = self.ctx.socket(zmq.DEALER)
        self.sock.linger = 0
        self.sock.connect(self.endpoint)
        now = time.monotonic()
        self._broker_expiry = now + pirate.HEARTBEAT_LIVENESS * pirate.HEARTBEAT_INTERVAL_S
        self._next_heartbeat = now + pirate.HEARTBEAT_INTERVAL_S
        self._send(pirate.ready(self.info))

    def _send(self, frames: list[bytes]) -> None:
        try:  # never block the I/O thread on a broker that is gone: it re-queues what we could not answer
            self.sock.send_multipart(frames, zmq.NOBLOCK)
        except zmq.Again:
            pass

    def recv(self) -> Optional[list[bytes]]:
        """The next request as [token, header, payload?] (split_envelope's shape); None for a command."""
        msg = self.sock.recv_multipart(zmq.NOBLOCK)
        self._broker_expiry = time.monotonic() + pirate.HEARTBEAT_LIVENESS * pirate.HEARTBEAT_INTERVAL_S
        try:
            command, rest = pirate.parse(msg)
        except pirate.PirateError as e:
            log.warning("worker %s: refused a message from the broker: %s", self.info["worker_id"], e)
            return None
        if command == pirate.REQUEST:
            return rest
        if command == pirate.DISCONNECT:  # the broker does not know us (it restarted, or presumed us dead)
            log.warning("worker %s: broker %s asked us to register again", self.info["worker_id"], self.endpoint)
            self._send(pirate.ready(self.info))
        return None

    def send_multipart(self, frames: list[bytes]) -> None:
        self._send(pirate.message(pirate.REPLY, *frames))

    def tick(self, now: float) -> bool:
        """Heartbeat when due; True when the socket was replaced (the caller re-registers it with its poller)."""
        if now >= self._next_heartbeat:
            self._send(pirate.message(pirate.HEARTBEAT))
            self._next_heartbeat = now + pirate.HEARTBEAT_INTERVAL_S
        if now > self._broker_expiry:
            log.warning("worker %s: broker %s silent for %.1f s; reconnecting", self.info["worker_id"], self.endpoint,
                        pirate.HEARTBEAT_LIVENESS * pirate.HEARTBEAT_INTERVAL_S)
            self._open()
            return True
        return False

    def leaving(self) -> None:
        self._send(pirate.message(pirate.DISCONNECT))

    def close(self) -> None:
        self.sock.close(linger=0)
