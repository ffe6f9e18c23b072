"""The memory bank prepared once per bank object, not per frame (kernels/knn_score.py's dispatch entries).

``cached(bank, what, build)`` builds ``what`` (the augmented float32 bank on the CPU, the float16 upload
on a GPU) on first use and keeps it while the bank object lives (weak reference), at most
``ENTRIES`` of them. A bank mutated in place must be followed by ``clear()``
(``kernels.dispatch.clear_cache()``).
"""
from __future__ import annotations

import threading
import weakref
from collections import OrderedDict

ENTRIES = 4

_entries: OrderedDict[tuple, tuple[weakref.ref, object]] = OrderedDict()
_lock = threading.Lock()  # the daemon's judge workers score in parallel


def clear() -> None:
    with _lock:
        _entries.clear()


def size() -> int:
    """Entries held now (tests)."""
    with _lock:
        return len(_entries)


def cached(bank, what: str, build):
    """build(bank) once per (bank object, what); the entry dies with the bank."""
    key = (id(bank), what)
    with _lock:
        hit = _entries.get(key)
        if hit is not None and hit[0]() is bank:
            _entries.move_to_end(key)
            return hit[1]
    value = build(bank)  # outside the lock: two threads may both build a first entry, one of them is kept
    try:
        ref = weakref.ref(bank)
    except TypeError:  # not weak-referenceable: do not cache
        return value
    with _lock:
        _entries[key] = (ref, value)
        while len(_entries) > ENTRIES:
            _entries.popitem(last=False)
    return value
