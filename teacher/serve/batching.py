"""Dynamic batching: a bounded queue that hands out batches, and the LRU of recent replies.

A batch starts with the oldest waiting request and closes when it holds ``max_batch`` requests or
``max_wait_s`` has passed since that request arrived, whichever comes first. While the model is busy
requests pile up, so the next batch is taken full at once: batches grow with load and a lone request
waits at most ``max_wait_s``. The queue is bounded; ``put`` on a full queue returns False and the
caller replies "busy" at once rather than hold a client past its deadline.
"""
from __future__ import annotations

import threading
import time
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np


@dataclass
class Request:
    key: tuple[str, str]  # (camera_id, frame_id): the idempotency key
    image: np.ndarray  # uint8 RGB (H, W, 3)
    camera_id: str
    frame_id: str
    ts_frame: float  # the frame's own timestamp (s, epoch)
    deadline_ts: Optional[float]  # s, epoch; None: no deadline
    t_arrival: float = field(default_factory=time.monotonic)


class BatchQueue:
    """Thread-safe bounded FIFO of Requests, read as batches."""

    def __init__(self, maxsize: int):
        if maxsize < 1:
            raise ValueError(f"queue size must be >= 1, got {maxsize}")
        self.maxsize = maxsize
        self._items: deque[Request] = deque()
        self._cond = threading.Condition()
        self._closed = False

    def __len__(self) -> int:
        with self._cond:
            return len(self._items)

    def full(self) -> bool:
        with self._cond:
            return len(self._items) >= self.maxsize

    def put(self, item: Request) -> bool:
        with self._cond:
            if self._closed or len(self._items) >= self.maxsize:
                return False
            self._items.append(item)
            self._cond.notify()
            return True

    def take_all(self) -> list[Request]:
        """Empty the queue (shutdown: the caller answers what was still waiting)."""
        with self._cond:
            items = list(self._items)
            self._items.clear()
            return items

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def get_batch(self, max_batch: int, max_wait_s: float, timeout_s: float) -> list[Request]:
        """Wait up to ``timeout_s`` for a first request, then fill the batch (see module docstring).

        Returns [] on timeout or when the queue is closed and empty.
        """
        t_end = time.monotonic() + timeout_s
        with self._cond:
            while not self._items:
                left = t_end - time.monotonic()
                if self._closed or left <= 0:
                    return []
                self._cond.wait(left)
            close_at = self._items[0].t_arrival + max_wait_s
            while len(self._items) < max_batch and not self._closed:
                left = close_at - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(left)
            n = min(max_batch, len(self._items))
            return [self._items.popleft() for _ in range(n)]


class ReplyCache:
    """LRU of recent replies by idempotency key: a retry after a lost reply is answered without recompute."""

    def __init__(self, capacity: int):
        self.capacity = max(0, int(capacity))
        self._d: OrderedDict[Any, Any] = OrderedDict()

    def __len__(self) -> int:
        return len(self._d)

    def get(self, key: Any) -> Any:
        if key not in self._d:
            return None
        self._d.move_to_end(key)
        return self._d[key]

    def put(self, key: Any, value: Any) -> None:
        if self.capacity == 0:
            return
        self._d[key] = value
        self._d.move_to_end(key)
        while len(self._d) > self.capacity:
            self._d.popitem(last=False)
