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

PUB topics (the daemon's verdict socket; the first part of every message on it)
    verdict.<camera_id>            one "verdict" message (verdict_topic(camera_id)); subscribe to
                                   VERDICT_TOPIC_PREFIX for every camera
    hb                             a "status" heartbeat (HEARTBEAT_TOPIC), so a subscriber knows it is live

A reader rejects a version it does not know, names the field of anything malformed, and never
"fixes" a frame whose bytes disagree with its header (STYLE.md, runtime/). This module is the one
implementation of those rules for every peer (daemon ingress and judge, teacher server, clients), strict
where a lax reader could be made to crash or to judge the wrong thing:

* the header is bounded in bytes and in nesting depth before it is parsed (a deep header exhausts the
  parser's recursion), and integers are bounded in digits (Python refuses huge int strings by raising);
* NaN and Infinity are not JSON and are refused; booleans are not integers (``"v": true`` is not 1);
* ids are non-empty strings of valid UTF-8 (no lone surrogates: they cannot be journaled) of at most
  MAX_ID_CHARS characters; an integer is not an id (``"frame_id": 7`` is refused naming the field, not
  turned into "7"), on every peer alike;
* a "frame" or "infer" header is checked by one function, check_frame_header, on the daemon's ingress,
  the teacher's broker and its workers alike;
* a raw frame's shape is checked in Python integers against the pixel limit before any allocation;
* an encoded frame's magic bytes must match its declared encoding, and its size is read from its
  JPEG/PNG header and checked against the pixel limit *before* decoding (a 5 KB JPEG can claim 144 Mpx):
  check_encoded, which decode_image calls before cv2.imdecode on every peer (teacher worker, daemon
  judge) and the daemon's ingress calls before it acknowledges a frame.
"""
from __future__ import annotations

import json
import math
import re
import time
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np

PROTOCOL_VERSION = 1
ENDPOINT_PREFIXES = ("tcp://", "ipc://", "inproc://")  # the transports a lineside socket binds or connects on
KINDS = ("frame", "infer", "verdict", "error", "busy", "status", "trigger", "control")
ENCODINGS = ("raw", "jpeg", "png")
DTYPES = ("uint8", "uint16", "float32")
MAX_HEADER_BYTES = 64 * 1024
MAX_HEADER_DEPTH = 8  # nesting of objects/arrays; the protocol's own headers use 3
MAX_INT_DIGITS = 20  # an int64 has 19 digits and a sign
MAX_ID_CHARS = 256
MAX_FRAME_SIDE_PX = 8192
DEFAULT_MAX_PIXELS = 25_000_000  # ~5472x4568, a 25 MP camera; 75 MB as RGB uint8 (daemon: limits.max_pixels)
_JSON_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"')
_JSON_BRACKET = re.compile(rb"[\[\]{}]")
MAGIC = {"jpeg": b"\xff\xd8", "png": b"\x89PNG\r\n\x1a\n"}
VERDICT_TOPIC_PREFIX = b"verdict."  # PUB topic of a verdict: this + its camera id
HEARTBEAT_TOPIC = b"hb"  # PUB topic of the daemon's heartbeats


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
    h = parse_json_object(bytes(frames[0]), "header")
    if "v" not in h:
        raise ProtocolError("v", "missing protocol version")
    if type(h["v"]) is not int or h["v"] != PROTOCOL_VERSION:
        raise ProtocolError("v", f"protocol version {h['v']!r} is not supported (this peer speaks {PROTOCOL_VERSION})")
    kind = h.get("kind")
    if kind not in KINDS:
        raise ProtocolError("kind", f"unknown kind {kind!r}; kinds are {', '.join(KINDS)}")
    if expect is not None and kind not in expect:
        raise ProtocolError("kind", f"kind {kind!r} not accepted here; expected {' or '.join(expect)}")
    return h


def _refuse_constant(name: str):
    raise ValueError(f"{name} is not JSON")


def _bounded_int(text: str) -> int:
    if len(text.lstrip("-")) > MAX_INT_DIGITS:
        raise ValueError(f"integer of {len(text)} digits (limit {MAX_INT_DIGITS})")
    return int(text)


def json_depth(raw: bytes) -> int:
    """Deepest nesting of objects/arrays in JSON text, strings skipped (their brackets do not count)."""
    depth = deepest = 0
    for b in _JSON_BRACKET.findall(_JSON_STRING.sub(b'""', raw)):
        depth += 1 if b in (b"[", b"{") else -1
        deepest = max(deepest, depth)
    return deepest


def parse_json_object(raw: bytes, field: str) -> dict:
    """Strict, bounded parse of one JSON object (a header); ProtocolError naming ``field`` otherwise."""
    if len(raw) > MAX_HEADER_BYTES:
        raise ProtocolError(field, f"{len(raw)} bytes, limit {MAX_HEADER_BYTES}")
    if json_depth(raw) > MAX_HEADER_DEPTH:
        raise ProtocolError(field, f"nested deeper than {MAX_HEADER_DEPTH} levels")
    try:
        h = json.loads(raw.decode("utf-8"), parse_constant=_refuse_constant, parse_int=_bounded_int)
    except (UnicodeDecodeError, ValueError) as e:  # JSONDecodeError is a ValueError
        raise ProtocolError(field, f"not a UTF-8 JSON object ({e.__class__.__name__}: {str(e)[:80]})") from None
    if not isinstance(h, dict):
        raise ProtocolError(field, f"must be a JSON object, got {type(h).__name__}")
    return h


def check_id(header: dict, key: str, default: Optional[str] = None) -> str:
    """A header's id field: a non-empty string of valid UTF-8 of at most MAX_ID_CHARS characters.
    ``default`` when absent (None: required)."""
    v = header.get(key, default)
    if v is None:
        raise ProtocolError(key, "missing")
    if not isinstance(v, str) or not v:
        raise ProtocolError(key, f"must be a non-empty string, got {type(v).__name__}")
    if len(v) > MAX_ID_CHARS:
        raise ProtocolError(key, f"{len(v)} characters, limit {MAX_ID_CHARS}")
    try:
        v.encode("utf-8")
    except UnicodeEncodeError:
        raise ProtocolError(key, "not valid UTF-8 (a lone surrogate)") from None
    return v


def _shown(v: Any) -> str:
    """A refused value for an error message, bounded (a header may be 64 KB of it)."""
    r = repr(v)
    return r if len(r) <= 80 else r[:77] + "..."


def _number(header: dict, key: str, default: Optional[float]) -> Optional[float]:
    """A time field (s, epoch) as a float; ``default`` when absent. With default None the field is
    optional and null means absent; otherwise null is refused like any other non-number."""
    v = header.get(key, default)
    if v is None and default is None:
        return None
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise ProtocolError(key, f"must be a number (s, epoch), got {_shown(v)}")
    return float(v)


@dataclass(frozen=True)
class FrameHeader:
    """The checked fields of a "frame" (camera -> daemon) or "infer" (edge -> teacher) header."""
    frame_id: str
    camera_id: str
    ts: float  # s, epoch; 0.0 when absent
    want_mask: bool
    encoding: str
    deadline_ts: Optional[float] = None  # s, epoch; "infer" only


def check_frame_header(h: dict) -> FrameHeader:
    """The header fields of a "frame" or "infer" message (decode_header already passed), or ProtocolError
    naming the field. The one check both peers call: the daemon's ingress and the teacher's broker and
    workers. The payload is checked apart (decode_image, check_encoded), once its size is known to fit."""
    frame_id = check_id(h, "frame_id")
    camera_id = check_id(h, "camera_id", "cam0")
    ts = _number(h, "ts", 0.0)
    deadline_ts = _number(h, "deadline_ts", None) if h.get("kind") == "infer" else None
    want_mask = h.get("want_mask", False)
    if not isinstance(want_mask, bool):
        raise ProtocolError("want_mask", f"must be true or false, got {_shown(want_mask)}")
    encoding = h.get("encoding", "raw")
    if not isinstance(encoding, str) or encoding not in ENCODINGS:
        raise ProtocolError("encoding", f"unknown encoding {_shown(encoding)}; encodings are {', '.join(ENCODINGS)}")
    return FrameHeader(frame_id, camera_id, ts, want_mask, encoding, deadline_ts)


def safe_id(header, key: str, default: str = "") -> str:
    """Best-effort id for an error reply about a message that failed validation: valid or ``default``."""
    try:
        return check_id(header, key, default or None) if isinstance(header, dict) else default
    except ProtocolError:
        return default


def encoded_dims(data: bytes, encoding: str) -> Optional[tuple[int, int]]:
    """(height, width) from a PNG IHDR or a JPEG SOF marker without decoding; None if not found."""
    b = memoryview(data)
    if encoding == "png":
        if len(b) >= 24 and bytes(b[:8]) == MAGIC["png"] and bytes(b[12:16]) == b"IHDR":
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


_JPEG_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}


def check_pixels(h: int, w: int, max_pixels: int, field: str = "shape") -> None:
    if max(h, w) > MAX_FRAME_SIDE_PX:
        raise ProtocolError(field, f"{h}x{w} exceeds {MAX_FRAME_SIDE_PX} px per side")
    if h * w > max_pixels:
        raise ProtocolError(field, f"{h}x{w} = {h * w} pixels exceeds the limit of {max_pixels}")


def check_encoded(payload: bytes, encoding: str, max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[int, int]:
    """Before decoding: magic bytes match ``encoding``, and the size in the header is within the limits."""
    magic = MAGIC[encoding]
    if bytes(payload[:len(magic)]) != magic:
        other = next((e for e, m in MAGIC.items() if bytes(payload[:len(m)]) == m), None)
        raise ProtocolError("encoding", f"payload is {other.upper() + ' data' if other else 'not ' + encoding.upper()}"
                                        f", declared {encoding!r}")
    dims = encoded_dims(payload, encoding)
    if dims is None or min(dims) < 1:
        raise ProtocolError("payload", f"corrupt {encoding.upper()} data (no image size in its header)")
    check_pixels(*dims, max_pixels)
    return dims


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


def decode_image(header: dict, frames: list[bytes], channels: tuple[int, ...] = (1, 3),
                 max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Pixels of a frame/infer message as uint8 RGB (H, W, 3) or grey (H, W). Raises ProtocolError."""
    if len(frames) < 2:
        raise ProtocolError("payload", "missing: a frame needs a payload part after the header")
    if len(frames) > 2:
        raise ProtocolError("payload", f"expected 2 message parts, got {len(frames)}")
    payload = frames[1]
    if len(payload) == 0:
        raise ProtocolError("payload", "empty frame")
    enc = header.get("encoding", "raw")
    if not isinstance(enc, str) or enc not in ENCODINGS:
        raise ProtocolError("encoding", f"unknown encoding {_shown(enc)}; encodings are {', '.join(ENCODINGS)}")
    if enc == "raw":
        img = _decode_raw(header, payload, max_pixels)
    else:
        import cv2

        check_encoded(payload, enc, max_pixels)
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


def _decode_raw(header: dict, payload: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    shape = header.get("shape")
    if not isinstance(shape, list) or len(shape) not in (2, 3) or not all(type(s) is int and s >= 0 for s in shape):
        raise ProtocolError("shape", f"raw frame needs shape [H, W] or [H, W, C] of non-negative ints, got {shape!r}")
    if 0 in shape:
        raise ProtocolError("shape", f"empty frame {shape}")
    check_pixels(shape[0], shape[1], max_pixels)
    if len(shape) == 3 and shape[2] > 4:
        raise ProtocolError("shape", f"{shape[2]} channels; a frame has 1, 3 or 4")
    dtype = header.get("dtype")
    if not isinstance(dtype, str) or dtype not in DTYPES:
        raise ProtocolError("dtype", f"unknown dtype {dtype!r}; dtypes are {', '.join(DTYPES)}")
    expected = math.prod(shape) * np.dtype(dtype).itemsize  # Python ints: no int64 wrap
    if len(payload) != expected:
        raise ProtocolError("payload", f"{len(payload)} bytes, shape {shape} x {dtype} needs {expected}")
    return np.frombuffer(payload, dtype=dtype).reshape(shape)


def verdict_topic(camera_id: str) -> bytes:
    """The PUB topic a camera's verdicts go out on. ZeroMQ subscriptions match prefixes, so a subscriber to
    one camera compares the topic exactly ("verdict.cam1" also matches "verdict.cam10")."""
    return VERDICT_TOPIC_PREFIX + camera_id.encode()


def error_frames(field: str, message: str, frame_id: str | None = None, **extra: Any) -> list[bytes]:
    return encode({"kind": "error", "field": field, "message": message, "frame_id": frame_id, **extra})
