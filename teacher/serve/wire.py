"""What a serve worker reads and writes on the wire without a model: the ROUTER envelope, the ids of a
request that failed validation, an encoded image's size read from its header, JSON-safe reply headers.

Pure functions of bytes and dicts, kept apart from the worker's threads (teacher/serve/workers.py).
"""
from __future__ import annotations

import json
from typing import Optional

import numpy as np

MAX_ID_CHARS = 256


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
        h = json.loads(bytes(raw).decode("utf-8"))
    except Exception:
        return {"frame_id": None}
    ids = {}
    for key in ("frame_id", "camera_id"):
        val = h.get(key) if isinstance(h, dict) else None
        if isinstance(val, str) and len(val) <= MAX_ID_CHARS:
            ids[key] = val
    return {"frame_id": ids.pop("frame_id", None), **ids}


_JPEG_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def encoded_dims(data: bytes, encoding: str) -> Optional[tuple[int, int]]:
    """(height, width) from a PNG IHDR or a JPEG SOF marker without decoding; None if not found
    (the decoder then reports the payload as corrupt)."""
    b = memoryview(data)
    if encoding == "png":
        if len(b) >= 24 and bytes(b[:8]) == _PNG_SIGNATURE and bytes(b[12:16]) == b"IHDR":
            return int.from_bytes(b[20:24], "big"), int.from_bytes(b[16:20], "big")
        return None
    if encoding != "jpeg" or len(b) < 4 or b[0] != 0xFF or b[1] != 0xD8:
        return None
    i = 2
    while i + 9 < len(b):
        if b[i] != 0xFF:
            return None
        marker = b[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker in _JPEG_SOF:
            return int.from_bytes(b[i + 5:i + 7], "big"), int.from_bytes(b[i + 7:i + 9], "big")
        if marker == 0x01 or 0xD0 <= marker <= 0xD8:  # markers without a length
            i += 2
            continue
        i += 2 + int.from_bytes(b[i + 2:i + 4], "big")
    return None


def split_envelope(frames: list[bytes]) -> tuple[list[bytes], list[bytes]]:
    """[identity, (b"" from a REQ client), header, payload...] -> (envelope, body)."""
    if len(frames) > 1 and frames[1] == b"":
        return frames[:2], frames[2:]
    return frames[:1], frames[1:]
