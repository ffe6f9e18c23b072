"""Progress of long work, suited to where it is read: a tqdm bar on a terminal, a plain line in a log.

A bar redrawn with carriage returns is unreadable in a log file, CI output or journald, so when stderr is not
a terminal the work writes one plain line every :data:`LOG_EVERY_S` seconds and one at the end
(``teacher train: 400/2000 it (3.9 it/s) loss=1.0015``). ``TQDM_DISABLE=1`` silences both, as tqdm users expect.
"""
from __future__ import annotations

import os
import sys
import time

LOG_EVERY_S = 30.0


def disabled() -> bool:
    return os.environ.get("TQDM_DISABLE", "").lower() in ("1", "true", "yes")


def progress(total: int, desc: str, *, initial: int = 0, unit: str = "it", leave: bool = True, stream=None):
    """A tqdm-like object (``update``, ``set_postfix``, ``close``) for ``total`` units of work."""
    stream = stream or sys.stderr
    if disabled():
        return LogProgress(total, desc, initial=initial, unit=unit, stream=None)
    if stream.isatty():
        from tqdm import tqdm

        return tqdm(total=total, initial=initial, desc=desc, unit=unit, file=stream, leave=leave,
                    dynamic_ncols=True)
    return LogProgress(total, desc, initial=initial, unit=unit, stream=stream)


class LogProgress:
    """Plain progress lines: at most one per ``every_s`` seconds, and one at :meth:`close`."""

    def __init__(self, total: int, desc: str, *, initial: int = 0, unit: str = "it", stream=None,
                 every_s: float = LOG_EVERY_S, clock=time.monotonic):
        self.total, self.desc, self.unit, self.stream, self.every_s, self.clock = total, desc, unit, stream, every_s, clock
        self.n, self._start_n, self.postfix = initial, initial, {}
        self._t0 = self._last = clock()
        self._closed = False

    def set_postfix(self, **kw) -> None:
        self.postfix = dict(kw)

    def update(self, n: int = 1) -> None:
        self.n += n
        if self.clock() - self._last >= self.every_s:
            self._write()

    def line(self) -> str:
        dt = max(self.clock() - self._t0, 1e-9)
        rate = (self.n - self._start_n) / dt
        extra = "".join(f" {k}={v}" for k, v in self.postfix.items())
        return f"{self.desc}: {self.n}/{self.total} {self.unit} ({rate:.1f} {self.unit}/s){extra}"

    def _write(self) -> None:
        self._last = self.clock()
        if self.stream is not None:
            print(self.line(), file=self.stream, flush=True)

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._write()


def command_log(prefix: str = ""):
    """The one progress-line writer of lineside's commands: ``[prefix] message`` (or the bare message) on
    stderr, flushed, so a terminal, a log file and a CI capture each read it as it comes; stdout stays for
    the --json result."""
    lead = f"[{prefix}] " if prefix else ""

    def log(msg: str) -> None:
        print(f"{lead}{msg}", file=sys.stderr, flush=True)

    return log
