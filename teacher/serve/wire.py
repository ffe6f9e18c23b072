"""What the teacher's edge-facing side (a server's workers, a broker) reads and writes on the wire beyond
the protocol: the ROUTER envelope, the ids of a request that failed validation, JSON-safe reply headers,
and how long the frontend ROUTER may flush at close. The wire rules themselves (header parsing, the
frame/infer header check, ids, pre-decode size checks) are runtime/contracts/protocol.py's, the same
functions the daemon calls.

Pure functions of bytes and dicts, kept apart from the worker's threads (teacher/serve/workers.py).
"""
from __future__ import annotations

import numpy as np

from runtime.contracts.protocol import ProtocolError, parse_json_object, safe_id

FRONTEND_CLOSE_LINGER_MS = 500  # server proxy and broker: bounded flush of replies still queued at close


def json_safe(x):
    """JSON-safe copy: numpy scalars and arrays from a model become Python numbers and lists."""
    if isinstance(x, dict):
        return {str(k): json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [json_safe(v) for v in x]
    if isinstance(x, np.generic):
        x = x.item()
    if isinstance(x, float) and not np.isfinite(x):
        return None
    if isinstance(x, np.ndarray):
        return json_safe(x.tolist())
    return x


def request_ids(raw: bytes) -> dict:
    """Best effort frame_id / camera_id of a request that failed validation, for its error reply."""
    try:
        h = parse_json_object(bytes(raw), "header")
    except ProtocolError:
        return {"frame_id": None}
    ids = {k: safe_id(h, k) for k in ("frame_id", "camera_id")}
    return {"frame_id": ids["frame_id"] or None, **({"camera_id": ids["camera_id"]} if ids["camera_id"] else {})}


def split_envelope(frames: list[bytes]) -> tuple[list[bytes], list[bytes]]:
    """[identity, (b"" from a REQ client), header, payload...] -> (envelope, body)."""
    if len(frames) > 1 and frames[1] == b"":
        return frames[:2], frames[2:]
    return frames[:1], frames[1:]
