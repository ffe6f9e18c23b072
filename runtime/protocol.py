"""lineside wire protocol v1 (ZeroMQ multipart), shared by the daemon, its clients and the teacher server.

    frame 0  header: UTF-8 JSON object, always with "v" (protocol version) and "kind"
    frame 1  payload (optional): raw pixels (header gives "shape" and "dtype"), or JPEG / PNG bytes

Kinds
    frame    client -> daemon      one camera frame; header: frame_id, camera_id, ts, encoding, shape?, dtype?,
                                   want_mask?
    infer    edge -> teacher       a frame the edge is unsure of; as "frame" plus deadline_ts (s, epoch)
    verdict  daemon -> subscribers, teacher -> edge
                                   Verdict.to_header() fields; payload: mask PNG when asked for
    error    any reply             field (which header field or "payload" was wrong), message, frame_id?
    busy     teacher -> edge       queue full, retry later (no compute was spent)
    status   request / reply       reply carries a "status" object
    trigger  PLC -> daemon         grab one frame now; camera_id?, frame_id?
    control  operator -> daemon    cmd: status | metrics | reload | shutdown; path? for reload

A reader rejects a version it does not know, names the field of anything malformed, and never
"fixes" a frame whose bytes disagree with its header (STYLE.md, runtime/).
"""
from __future__ import annotations

import json
import time
from typing import Any

import numpy as np

PROTOCOL_VERSION = 1
KINDS = ("frame", "infer", "verdict", "error", "busy", "status", "trigger", "control")
ENCODINGS = ("raw", "jpeg", "png")
DTYPES = ("uint8", "uint16", "float32")
MAX_HEADER_BYTES = 64 * 1024
MAX_FRAME_SIDE_PX = 8192


class ProtocolError(ValueError):
    """A message that breaks the protocol; ``field`` names what was wrong (a header key or "payload")."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


def encode(header: dict, payload: bytes | memoryview | None = None) -> list[bytes]:
    h = {"v": PROTOCOL_VERSION, **header}
    frames = [json.dumps(h, separators=(",", ":"), allow_nan=False).encode()]
    if payload is not None:
        frames.append(bytes(payload) if isinstance(payload, memoryview) else payload)
    return frames


def decode_header(frames: list[bytes], expect: tuple[str, ...] | None = None) -> dict:
    """Parse and check frame 0. Raises ProtocolError naming the field."""
    if not frames:
        raise ProtocolError("header", "empty message")
    raw = frames[0]
    if len(raw) > MAX_HEADER_BYTES:
        raise ProtocolError("header", f"header is {len(raw)} bytes, limit {MAX_HEADER_BYTES}")
    try:
        h = json.loads(bytes(raw).decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ProtocolError("header", f"not a UTF-8 JSON object ({e.__class__.__name__})") from None
    if not isinstance(h, dict):
        raise ProtocolError("header", f"must be a JSON object, got {type(h).__name__}")
    if "v" not in h:
        raise ProtocolError("v", "missing protocol version")
    if h["v"] != PROTOCOL_VERSION:
        raise ProtocolError("v", f"protocol version {h['v']!r} is not supported (this peer speaks {PROTOCOL_VERSION})")
    kind = h.get("kind")
    if kind not in KINDS:
        raise ProtocolError("kind", f"unknown kind {kind!r}; kinds are {', '.join(KINDS)}")
    if expect is not None and kind not in expect:
        raise ProtocolError("kind", f"kind {kind!r} not accepted here; expected {' or '.join(expect)}")
    return h


def image_frames(kind: str, image: np.ndarray, encoding: str = "raw", jpeg_quality: int = 95,
                 **header: Any) -> list[bytes]:
    """Build a frame/infer message from an image array (H, W) or (H, W, C), RGB channel order."""
    if encoding not in ENCODINGS:
        raise ValueError(f"encoding {encoding!r} not in {ENCODINGS}")
    header = {"kind": kind, "ts": time.time(), "encoding": encoding, **header}
    if encoding == "raw":
        arr = np.ascontiguousarray(image)
        header.update(shape=list(arr.shape), dtype=str(arr.dtype))
        return encode(header, arr.data)
    import cv2

    bgr = image if image.ndim == 2 else cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
    params = [cv2.IMWRITE_JPEG_QUALITY, jpeg_quality] if encoding == "jpeg" else []
    ok, buf = cv2.imencode(".jpg" if encoding == "jpeg" else ".png", bgr, params)
    if not ok:
        raise ValueError(f"image could not be {encoding}-encoded")
    return encode(header, buf.tobytes())


def decode_image(header: dict, frames: list[bytes], channels: tuple[int, ...] = (1, 3)) -> np.ndarray:
    """Pixels of a frame/infer message as uint8 RGB (H, W, 3) or grey (H, W). Raises ProtocolError."""
    if len(frames) < 2:
        raise ProtocolError("payload", "missing: a frame needs a payload part after the header")
    if len(frames) > 2:
        raise ProtocolError("payload", f"expected 2 message parts, got {len(frames)}")
    payload = frames[1]
    if len(payload) == 0:
        raise ProtocolError("payload", "empty frame")
    enc = header.get("encoding", "raw")
    if enc not in ENCODINGS:
        raise ProtocolError("encoding", f"unknown encoding {enc!r}; encodings are {', '.join(ENCODINGS)}")
    if enc == "raw":
        img = _decode_raw(header, payload)
    else:
        import cv2

        img = cv2.imdecode(np.frombuffer(payload, np.uint8), cv2.IMREAD_UNCHANGED)
        if img is None:
            raise ProtocolError("payload", f"corrupt {enc.upper()} data ({len(payload)} bytes do not decode)")
        if img.ndim == 3 and img.shape[2] == 3:
            img = cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
        elif img.ndim == 3 and img.shape[2] == 4:
            raise ProtocolError("payload", "image has 4 channels (alpha); send RGB or greyscale")
    c = 1 if img.ndim == 2 else img.shape[2]
    if c not in channels:
        raise ProtocolError("shape", f"{c} channels; accepted: {channels}")
    if min(img.shape[:2]) < 1:
        raise ProtocolError("shape", f"empty image {list(img.shape)}")
    if img.dtype != np.uint8:
        raise ProtocolError("dtype", f"{img.dtype} pixels; this model takes uint8")
    return img


def _decode_raw(header: dict, payload: bytes) -> np.ndarray:
    shape = header.get("shape")
    if not isinstance(shape, list) or len(shape) not in (2, 3) or not all(isinstance(s, int) and s >= 0 for s in shape):
        raise ProtocolError("shape", f"raw frame needs shape [H, W] or [H, W, C] of non-negative ints, got {shape!r}")
    if 0 in shape:
        raise ProtocolError("shape", f"empty frame {shape}")
    if max(shape[:2]) > MAX_FRAME_SIDE_PX:
        raise ProtocolError("shape", f"{shape} exceeds {MAX_FRAME_SIDE_PX} px per side")
    dtype = header.get("dtype")
    if dtype not in DTYPES:
        raise ProtocolError("dtype", f"unknown dtype {dtype!r}; dtypes are {', '.join(DTYPES)}")
    expected = int(np.prod(shape)) * np.dtype(dtype).itemsize
    if len(payload) != expected:
        raise ProtocolError("payload", f"{len(payload)} bytes, shape {shape} x {dtype} needs {expected}")
    return np.frombuffer(payload, dtype=dtype).reshape(shape)


def error_frames(field: str, message: str, frame_id: str | None = None, **extra: Any) -> list[bytes]:
    return encode({"kind": "error", "field": field, "message": message, "frame_id": frame_id, **extra})
