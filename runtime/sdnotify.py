"""systemd readiness and watchdog notifications (sd_notify), without libsystemd.

A unit with ``Type=notify`` and ``WatchdogSec=`` hands the service a datagram socket in
``NOTIFY_SOCKET`` and ``WATCHDOG_USEC``. The daemon says ``READY=1`` once its sockets are bound and
its model is loaded, then ``WATCHDOG=1`` from its main loop at least every ``WATCHDOG_USEC / 2``;
systemd restarts it when the pings stop (a hung backend, a stuck loop). Outside systemd
(``NOTIFY_SOCKET`` unset) every call is a no-op, so the daemon calls these unconditionally.

    notifier = Notifier.from_env()
    notifier.ready(status="serving artifact abc123")
    while running:
        ...
        notifier.watchdog()          # rate-limited to half the watchdog interval
    notifier.stopping()
"""
from __future__ import annotations

import os
import socket
import time


def _address(raw: str) -> str | bytes:
    # "@name" is a Linux abstract socket: leading NUL byte on the wire.
    return b"\0" + raw[1:].encode() if raw.startswith("@") else raw


def notify(message: str, env: dict | None = None) -> bool:
    """Send one sd_notify datagram (e.g. "READY=1\\nSTATUS=..."); False when not under systemd."""
    env = os.environ if env is None else env
    raw = env.get("NOTIFY_SOCKET")
    if not raw:
        return False
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
        s.connect(_address(raw))
        s.sendall(message.encode())
    return True


def watchdog_interval_s(env: dict | None = None) -> float | None:
    """The unit's WatchdogSec in seconds, if systemd set one for this process."""
    env = os.environ if env is None else env
    usec = env.get("WATCHDOG_USEC")
    pid = env.get("WATCHDOG_PID")
    if not usec or (pid and pid != str(os.getpid())):
        return None
    try:
        return int(usec) / 1e6
    except ValueError:
        return None


class Notifier:
    """READY / WATCHDOG / STOPPING for one service process; no-op outside systemd."""

    def __init__(self, socket_path: str | None, watchdog_s: float | None):
        self._env = {"NOTIFY_SOCKET": socket_path} if socket_path else {}
        self.watchdog_s = watchdog_s
        self._last_ping = 0.0

    @classmethod
    def from_env(cls, env: dict | None = None) -> "Notifier":
        env = os.environ if env is None else env
        return cls(env.get("NOTIFY_SOCKET"), watchdog_interval_s(env))

    @property
    def active(self) -> bool:
        return bool(self._env)

    def ready(self, status: str = "") -> bool:
        return notify("READY=1" + (f"\nSTATUS={status}" if status else ""), self._env)

    def status(self, text: str) -> bool:
        return notify(f"STATUS={text}", self._env)

    def watchdog(self, now: float | None = None) -> bool:
        """Ping the watchdog if half its interval has passed since the last ping (cheap to call often)."""
        if not self.active or self.watchdog_s is None:
            return False
        now = time.monotonic() if now is None else now
        if now - self._last_ping < self.watchdog_s / 2:
            return False
        self._last_ping = now
        return notify("WATCHDOG=1", self._env)

    def stopping(self) -> bool:
        return notify("STOPPING=1", self._env)
