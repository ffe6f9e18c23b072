"""`lineside send IMAGE|DIR|VIDEO --to tcp://HOST:PORT [--rate HZ]`: push frames as a camera driver would.

Frame ids are the file stem (images) or ``<video stem>-<n>``. Prints one JSON summary as the last stdout
line with --json (sent, accepted, busy, errors); errors name the field the daemon refused.

An ack means the daemon queued the frame, not that it judged it: under overload (``queue.overload =
"drop_oldest"``) an accepted frame can still be dropped. With ``--verdicts EP`` (the daemon's verdict PUB)
the sender subscribes before sending and counts, from the verdicts it saw for its own frames, how many
were judged and how many dropped (``verdicts`` in the summary; ``unseen``: no verdict within --timeout).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Iterator

import numpy as np

from runtime.cli.dispatch import endpoint, print_json
from runtime.contracts.dataset import IMAGE_SUFFIXES

VIDEO_SUFFIXES = (".mp4", ".avi", ".mkv", ".mov")


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("path", help="an image, a folder of images, or a video file")
    p.add_argument("--to", required=True, type=endpoint, help="the daemon's ingress endpoint (tcp://HOST:PORT)")
    p.add_argument("--verdicts", type=endpoint, help="the daemon's verdict endpoint: count the judged and dropped "
                   "frames from the verdicts seen (an ack only means queued)")
    p.add_argument("--rate", type=float, default=0.0, help="frames per second (0: as fast as acks come)")
    p.add_argument("--camera-id", default="cam0", help="camera id in each frame's header")
    p.add_argument("--encoding", choices=["raw", "jpeg", "png"], default="png", help="payload encoding on the wire")
    p.add_argument("--want-mask", action="store_true", help="ask for the defect mask with each verdict")
    p.add_argument("--repeat", type=int, default=1, help="send the whole set this many times")
    p.add_argument("--timeout", type=float, default=5.0, help="seconds to wait for each ack")
    p.add_argument("--curve-secret", help="this client's CURVE secret key file")
    p.add_argument("--server-key", help="the daemon's CURVE public key file")
    p.add_argument("--json", action="store_true", help="one JSON summary as the last stdout line")


def frames(path: Path) -> Iterator[tuple[str, np.ndarray]]:
    import cv2

    if path.is_dir():
        files = sorted(f for f in path.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise SystemExit(f"lineside send: {path} holds no images")
        for f in files:
            yield f.stem, _read(f)
    elif path.suffix.lower() in VIDEO_SUFFIXES:
        cap = cv2.VideoCapture(str(path))
        if not cap.isOpened():
            raise SystemExit(f"lineside send: cannot open video {path}")
        n = 0
        while True:
            ok, bgr = cap.read()
            if not ok:
                break
            yield f"{path.stem}-{n:06d}", cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
            n += 1
        cap.release()
    elif path.is_file():
        yield path.stem, _read(path)
    else:
        raise SystemExit(f"lineside send: {path} does not exist")


def _read(f: Path) -> np.ndarray:
    import cv2

    bgr = cv2.imread(str(f), cv2.IMREAD_COLOR)
    if bgr is None:
        raise SystemExit(f"lineside send: {f} is not a readable image")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def run(args: argparse.Namespace) -> int:
    from runtime.client import LinesideClient, LinesideError

    client = LinesideClient(args.to, verdicts=args.verdicts, camera_id=args.camera_id if args.verdicts else None,
                            curve_secret=args.curve_secret, server_public=args.server_key, timeout_s=args.timeout)
    summary = {"sent": 0, "accepted": 0, "busy": 0, "errors": [], "frame_ids": []}
    if args.verdicts:
        client.wait_ready()  # subscribed before the first frame, so no verdict of ours is missed
    period = 1.0 / args.rate if args.rate > 0 else 0.0
    next_t = time.monotonic()
    try:
        for rep in range(args.repeat):
            for stem, img in frames(Path(args.path)):
                if period:
                    time.sleep(max(0.0, next_t - time.monotonic()))
                    next_t += period
                fid = stem if args.repeat == 1 else f"{stem}-r{rep}"
                summary["sent"] += 1
                try:
                    ack = client.send(img, frame_id=fid, camera_id=args.camera_id, encoding=args.encoding,
                                      want_mask=args.want_mask)
                    summary["accepted" if ack.get("kind") == "status" else "busy"] += 1
                    summary["frame_ids"].append(fid)
                except LinesideError as e:
                    summary["errors"].append({"frame_id": fid, "field": e.field, "message": e.message})
                print(f"sent {fid}", file=sys.stderr)
        if args.verdicts:
            summary["verdicts"] = verdict_counts(client.collect(summary["frame_ids"], timeout_s=args.timeout,
                                                                final=True), summary["frame_ids"])
    except TimeoutError as e:
        summary["errors"].append({"field": "timeout", "message": str(e)})
        print(f"lineside send: {e}", file=sys.stderr)
    finally:
        client.close()
    if args.json:
        print_json(summary)
    else:
        line = (f"sent {summary['sent']}, accepted {summary['accepted']}, busy {summary['busy']}, "
                f"errors {len(summary['errors'])}")
        if "verdicts" in summary:
            line += ", verdicts: " + ", ".join(f"{k} {v}" for k, v in summary["verdicts"].items())
        else:
            line += " (accepted: queued; --verdicts EP counts the judged and the dropped)"
        print(line)
    return 0 if not summary["errors"] else 1


def verdict_counts(got: dict, frame_ids: list[str]) -> dict[str, int]:
    """Of the accepted frames, how many the verdicts seen say were judged (by decision), dropped, refused,
    and how many had no verdict at all. A frame's last verdict counts (a teacher verdict supersedes)."""
    out = {"judged": 0, "good": 0, "defect": 0, "unknown": 0, "dropped": 0, "error": 0, "teacher_unreachable": 0,
           "unseen": 0}
    for fid in frame_ids:
        vs = got.get(fid)
        if not vs:
            out["unseen"] += 1
            continue
        v = vs[-1]
        if v.status == "ok":
            out["judged"] += 1
            out[v.decision] += 1
        else:
            out[v.status] = out.get(v.status, 0) + 1
    return out
