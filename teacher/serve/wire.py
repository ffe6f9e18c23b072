"""What the teacher's edge-facing side (a server's workers, a broker) reads and writes on the wire beyond
the protocol: the ROUTER envelope, the ids of a request that failed validation, JSON-safe reply headers,
the edge-facing ROUTER itself (bound alike by the server's proxy and the broker) and how long it may flush
at close. The wire rules themselves (header parsing, the frame/infer header check, ids, pre-decode size
checks) are runtime/contracts/protocol.py's, the same functions the daemon calls.

Pure functions of bytes and dicts (and that one socket), kept apart from the worker's threads
(teacher/serve/workers.py).
"""
from __future__ import annotations

from typing import Optional

import numpy as np
import zmq

from runtime.contracts.protocol import ProtocolError, parse_json_object, safe_id
from runtime.curve import make_server, start_authenticator

FRONTEND_CLOSE_LINGER_MS = 500  # server proxy and broker: bounded flush of replies still queued at close


def bind_frontend(ctx: zmq.Context, bind: str, *, max_message_mb: float, curve_secret: Optional[str] = None,
                  allowed_keys: Optional[str] = None) -> tuple[zmq.Socket, object]:
    """The edges' ROUTER of a server or a broker, bound on ``bind``: linger 0, ZMQ_MAXMSGSIZE (a bigger message
    part disconnects its peer), and with ``curve_secret`` a CURVE server behind a ZAP authenticator admitting
    the keys in ``allowed_keys`` -> (socket, authenticator or None). If it cannot bind, the authenticator it
    started is stopped and the error raised; the socket is the context's to destroy."""
    auth = start_authenticator(ctx, allowed_keys) if curve_secret else None
    try:
        frontend = ctx.socket(zmq.ROUTER)
        frontend.linger = 0
        frontend.setsockopt(zmq.MAXMSGSIZE, int(max_message_mb * 2 ** 20))
        if curve_secret:
            make_server(frontend, curve_secret)
        frontend.bind(bind)
    except BaseException:
        if auth is not None:
            auth.stop()
        raise
    return frontend, auth


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
