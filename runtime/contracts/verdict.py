"""The verdict: what the edge student and the teacher both say about one frame.

One type for both deciders, so teacher and student verdicts compare field by field. A verdict
travels as a JSON header (``Verdict.to_header()``) and, when asked for, the defect mask as PNG.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Literal, Optional

import numpy as np

Decision = Literal["good", "defect", "unknown"]
Status = Literal["ok", "error", "dropped", "teacher_unreachable"]
Decider = Literal["edge", "teacher"]


@dataclass
class Region:
    bbox: tuple[int, int, int, int]  # x0, y0, x1, y1 in image pixels, exclusive end
    area: int  # pixels in the region's mask
    label: str  # defect type from the label vocabulary, or "anomaly" when only the bank judged
    confidence: float  # in [0, 1]
    score: float = 0.0  # peak anomaly value inside the region

    @classmethod
    def from_dict(cls, d: dict) -> "Region":
        return cls(bbox=tuple(int(v) for v in d["bbox"]), area=int(d["area"]), label=str(d["label"]),
                   confidence=float(d["confidence"]), score=float(d.get("score", 0.0)))


@dataclass
class Verdict:
    frame_id: str
    camera_id: str = "cam0"
    status: Status = "ok"
    decision: Decision = "unknown"
    score: float = float("nan")  # image anomaly score, same scale as the artifact's threshold
    confidence: float = 0.0  # distance from the threshold (normalised units), in [0, 1]: 0 at the threshold
    decided_by: Decider = "edge"
    pending: bool = False  # edge verdict whose frame went to the teacher; a superseding one follows
    in_band: bool = False
    ood: bool = False
    regions: list[Region] = field(default_factory=list)
    latencies_ms: dict[str, float] = field(default_factory=dict)  # stage -> ms
    model_hash: str = ""
    error: Optional[str] = None  # for status "error": what was wrong with the input
    ts_frame: float = 0.0  # the frame's timestamp from its header (s, epoch)
    ts_verdict: float = 0.0  # when this verdict was made (s, epoch)
    supersedes: Optional[str] = None  # decided_by of the verdict this one replaces
    seq: Optional[int] = None  # the daemon's sequence number, set when published (runtime.daemon.publisher)
    # the operator's 0-1 score (runtime.scoring.ScoreNorm): the threshold at 0.5; None from a peer that predates it.
    # Last among the header fields, so positional construction is unchanged; readers that do not know it drop it
    score_norm: Optional[float] = None
    anomaly_map: Optional[np.ndarray] = field(default=None, repr=False)  # float32 (H, W), not in header
    mask: Optional[np.ndarray] = field(default=None, repr=False)  # bool (H, W), PNG payload on request

    def to_header(self) -> dict:
        d = asdict(self)
        d.pop("anomaly_map")
        d.pop("mask")
        d["regions"] = [asdict(r) for r in self.regions]
        d["score"] = None if not np.isfinite(self.score) else float(self.score)
        if self.score_norm is not None:
            d["score_norm"] = None if not np.isfinite(self.score_norm) else float(self.score_norm)
        return d

    @classmethod
    def from_header(cls, h: dict) -> "Verdict":
        known = {f for f in cls.__dataclass_fields__ if f not in ("anomaly_map", "mask")}
        kw = {k: v for k, v in h.items() if k in known}
        kw["regions"] = [Region.from_dict(r) for r in h.get("regions", [])]
        if kw.get("score") is None:
            kw["score"] = float("nan")
        kw["latencies_ms"] = dict(h.get("latencies_ms", {}))
        return cls(**kw)

    @classmethod
    def failure(cls, frame_id: str, status: Status, error: str, camera_id: str = "cam0", **kw) -> "Verdict":
        return cls(frame_id=frame_id, camera_id=camera_id, status=status, error=error, **kw)


def encode_mask_png(mask: np.ndarray) -> bytes:
    import cv2

    ok, buf = cv2.imencode(".png", (mask.astype(np.uint8) * 255))
    if not ok:
        raise ValueError("mask could not be PNG-encoded")
    return buf.tobytes()


def decode_mask_png(data: bytes) -> np.ndarray:
    import cv2

    m = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_GRAYSCALE)
    if m is None:
        raise ValueError("mask payload is not a PNG")
    return m > 127
