"""`lineside watch --from tcp://HOST:PORT`: print a daemon's verdicts (one JSON line each: the raw ``score`` and
the operator's 0-1 ``score_norm``, threshold at 0.5), optionally save overlays (mask in red, region boxes,
decision and normalised score) drawn on the frame found in --images by frame id, else on black.

Every verdict carries the daemon's sequence number ``seq``. ``--since SEQ --control EP`` first replays what
the journal holds after SEQ (subscribed before asking, so nothing falls between replay and live stream),
then follows the live stream, skipping what the replay already gave. A jump in ``seq`` on the live stream
(the subscriber was too slow, or disconnected) is reported on stderr with the command that recovers it.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

from runtime.cli.dispatch import endpoint, print_json

SUBSCRIBE_SETTLE_S = 0.2  # zguide's slow joiner: a SUB's subscription takes a moment to reach the PUB


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("--from", dest="source", required=True, type=endpoint, help="the daemon's verdict PUB endpoint")
    p.add_argument("--camera-id", help="only this camera's verdicts")
    p.add_argument("--count", type=int, help="stop after this many verdicts")
    p.add_argument("--timeout", type=float, default=0.0, help="stop after this many seconds without a verdict (0: never)")
    p.add_argument("--save", help="write an overlay PNG per verdict into this folder")
    p.add_argument("--images", help="folder of the sent images (file stem = frame id) to draw overlays on")
    p.add_argument("--since", type=int, help="first replay the journaled verdicts after this seq (needs --control)")
    p.add_argument("--control", type=endpoint, help="the daemon's control endpoint, for --since replays")
    p.add_argument("--curve-secret", help="this client's CURVE secret key file")
    p.add_argument("--server-key", help="the daemon's CURVE public key file")


def overlay(v, image: np.ndarray | None) -> np.ndarray:
    import cv2

    if image is None:
        h, w = v.mask.shape if v.mask is not None else (256, 256)
        image = np.zeros((h, w, 3), np.uint8)
    out = cv2.cvtColor(image, cv2.COLOR_RGB2BGR).copy()
    if v.mask is not None and v.mask.shape == out.shape[:2]:
        out[v.mask] = (0.5 * out[v.mask] + (0, 0, 127)).astype(np.uint8)
    colour = (0, 0, 255) if v.decision == "defect" else (0, 200, 0)
    for r in v.regions:
        x0, y0, x1, y1 = r.bbox
        cv2.rectangle(out, (x0, y0), (x1 - 1, y1 - 1), colour, 1)
    # the operator's 0-1 score (threshold 0.5) where the verdict has one, else the raw score
    shown = f"{v.score_norm:.2f}/1" if v.score_norm is not None and np.isfinite(v.score_norm) else f"{v.score:.2f}"
    label = f"{v.decision} {shown} {v.decided_by}{' pending' if v.pending else ''}"
    cv2.putText(out, label, (2, 12), cv2.FONT_HERSHEY_SIMPLEX, 0.4, colour, 1, cv2.LINE_AA)
    return out


def run(args: argparse.Namespace) -> int:
    import cv2

    from runtime.client import LinesideClient

    if args.since is not None and not args.control:
        print("lineside watch: --since needs --control (the daemon's control endpoint) to replay from", file=sys.stderr)
        return 2
    client = LinesideClient(verdicts=args.source, control=args.control, camera_id=args.camera_id,
                            curve_secret=args.curve_secret, server_public=args.server_key)
    save = Path(args.save) if args.save else None
    if save:
        save.mkdir(parents=True, exist_ok=True)
    images = Path(args.images) if args.images else None
    timeout = args.timeout if args.timeout > 0 else 3600.0 * 24 * 365
    n, last = 0, None
    try:
        for v in _stream(client, args, timeout):
            if v.seq is not None and last is not None and v.seq <= last:
                continue  # already replayed
            if v.seq is not None and last is not None and v.seq > last + 1 and not args.camera_id:
                print(f"lineside watch: missed {v.seq - last - 1} verdicts (seq {last + 1}..{v.seq - 1}); "
                      f"recover them with --since {last} --control ENDPOINT", file=sys.stderr, flush=True)
            last = v.seq if v.seq is not None else last
            print_json(v.to_header())
            n += 1
            if save:
                img = None
                if images:
                    hits = sorted(images.glob(f"{v.frame_id}.*"))
                    if hits:
                        bgr = cv2.imread(str(hits[0]), cv2.IMREAD_COLOR)
                        img = None if bgr is None else cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
                tag = v.decided_by + ("-pending" if v.pending else "")
                cv2.imwrite(str(save / f"{v.frame_id}.{tag}.png"), overlay(v, img))
    except KeyboardInterrupt:
        pass
    finally:
        client.close()
    print(f"{n} verdicts", file=sys.stderr)
    return 0


def _stream(client, args, timeout: float):
    """The replay after --since (filtered to --camera-id), then the live stream; --count bounds both."""
    import itertools

    replayed = ()
    if args.since is not None:
        time.sleep(SUBSCRIBE_SETTLE_S)  # the subscription reaches the daemon before the replay is asked for
        replayed = (v for v in client.replay(args.since) if not args.camera_id or v.camera_id == args.camera_id)
    return itertools.islice(itertools.chain(replayed, client.verdicts(timeout)), args.count)
