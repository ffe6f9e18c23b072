"""What flows between the daemon's threads: a bounded frame queue with an explicit overload policy, the
frame job, and the outgoing verdict (journaled, then published)."""
from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass, field
from typing import Optional

import numpy as np

from runtime.contracts.verdict import Verdict


@dataclass
class FrameJob:
    frame_id: str
    camera_id: str
    ts_frame: float
    t_recv: float  # time.perf_counter() at ingress
    header: dict  # the frame's wire header (encoding, shape, dtype, ...)
    payload: Optional[bytes]  # wire payload (None for camera frames, which carry ``image``)
    image: Optional[np.ndarray] = None  # decoded pixels when already known (raw frames, camera)
    want_mask: bool = False
    source: str = "ingress"


@dataclass
class Outgoing:
    """One verdict for the publisher; ``pending_*`` keep the frame in the journal until the teacher answers."""
    verdict: Verdict
    want_mask: bool = False
    mask_png: Optional[bytes] = None  # already-encoded mask (the teacher's), passed through
    pending_request: Optional[bytes] = None
    pending_payload: Optional[bytes] = None
    pending_deadline: float = 0.0
    resolves_pending: bool = False
    t_recv: Optional[float] = None  # for the end-to-end latency histogram
    extra: dict = field(default_factory=dict)  # header fields beyond the Verdict's (e.g. "reason")


class BoundedQueue:
    """FIFO of at most ``maxsize`` items. When full, ``drop_oldest`` evicts the head to make room,
    ``reject_newest`` refuses the new item; the caller gives whichever frame lost a ``dropped`` verdict."""

    def __init__(self, maxsize: int, policy: str = "drop_oldest"):
        if policy not in ("drop_oldest", "reject_newest"):
            raise ValueError(f"overload policy {policy!r}: drop_oldest or reject_newest")
        self.maxsize, self.policy = maxsize, policy
        self._d: deque = deque()
        self._cv = threading.Condition()
        self.max_seen = 0
        self._in_hand = 0  # items consumers took and have not finished (one per judge worker at most)

    def put(self, item) -> tuple[bool, object]:
        """-> (accepted, evicted item or None); never blocks."""
        with self._cv:
            evicted = None
            if len(self._d) >= self.maxsize:
                if self.policy == "reject_newest":
                    return False, None
                evicted = self._d.popleft()
            self._d.append(item)
            self.max_seen = max(self.max_seen, len(self._d))
            self._cv.notify()
            return True, evicted

    def get(self, timeout: float) -> object | None:
        """The oldest item, or None after ``timeout``; the taker calls ``done()`` when it has finished it."""
        with self._cv:
            if not self._d:
                self._cv.wait(timeout)
            if not self._d:
                return None
            self._in_hand += 1
            return self._d.popleft()

    def done(self) -> None:
        with self._cv:
            self._in_hand = max(0, self._in_hand - 1)
            self._cv.notify_all()

    def wait_idle(self, timeout: float) -> bool:
        """Block until the queue is empty and every consumer finished its item (drain on shutdown)."""
        with self._cv:
            return self._cv.wait_for(lambda: not self._d and not self._in_hand, timeout)

    def __len__(self) -> int:
        return len(self._d)
