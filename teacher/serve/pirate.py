"""The broker <-> worker wire of `teacher serve broker`: Paranoid Pirate (zguide ch. 4) with credit.

One module for the contract, imported by the broker (teacher/serve/broker.py) and the worker
(teacher/serve/links.py), as zguide keeps Majordomo's in MDP.py. The client side is unchanged:
edges speak runtime/contracts/protocol.py v1 to the broker exactly as to a server.

    worker DEALER -> broker ROUTER (the broker sees [worker identity] + these frames)
        [WORKER_PROTOCOL, READY, info JSON]        after the model loaded; info: worker_id, pid, host,
                                                   device, model_hash, credit (requests it may hold)
        [WORKER_PROTOCOL, HEARTBEAT]               every HEARTBEAT_INTERVAL_S, busy or not
        [WORKER_PROTOCOL, REPLY, token, header, payload?]   the runtime/contracts/protocol.py reply to request `token`
        [WORKER_PROTOCOL, DISCONNECT]              draining: route nothing more here; what it still held
                                                   comes back as "busy" and is re-queued elsewhere
    broker -> worker
        [WORKER_PROTOCOL, REQUEST, token, header, payload?]  a client's request, its envelope kept by the broker
        [WORKER_PROTOCOL, HEARTBEAT]
        [WORKER_PROTOCOL, DISCONNECT]              "I do not know you": register again (the broker restarted,
                                                   or presumed this worker dead)

Any message is proof of life. A peer silent for HEARTBEAT_LIVENESS intervals is presumed dead: the
broker re-queues the worker's requests to another worker, the worker reopens its socket.
"""
from __future__ import annotations

import json

WORKER_PROTOCOL = b"LSPW1"  # lineside pirate worker, version 1; a peer refuses any other

READY = b"\x01"
REQUEST = b"\x02"
REPLY = b"\x03"
HEARTBEAT = b"\x04"
DISCONNECT = b"\x05"
COMMANDS = {READY: "READY", REQUEST: "REQUEST", REPLY: "REPLY", HEARTBEAT: "HEARTBEAT", DISCONNECT: "DISCONNECT"}

# A dead or frozen worker host is noticed after HEARTBEAT_LIVENESS * HEARTBEAT_INTERVAL_S = 1.5 s of silence:
# well inside the edge's try deadline ([teacher] request_timeout_ms, 2500 ms by default), so a request the broker
# re-queues is answered before the edge gives up on it and resends. Two tiny messages a second per worker cost
# nothing beside a 0.35 s teacher inference. Three intervals (zguide's value): one late heartbeat is not a death.
HEARTBEAT_INTERVAL_S = 0.5
HEARTBEAT_LIVENESS = 3

# A worker takes CREDIT_BATCHES full batches from the broker: one computing while the next fills, so its GPU
# never waits on a broker round trip, and no more, so a worker that dies takes few requests with it.
CREDIT_BATCHES = 2

# A request whose worker died is re-queued at most this many times, then answered with an error: one image
# that crashes the model (zguide's poison pill) must not take down every worker in turn.
MAX_REQUEUES = 2


class PirateError(ValueError):
    """A broker <-> worker message that breaks this protocol."""


def message(command: bytes, *frames: bytes) -> list[bytes]:
    return [WORKER_PROTOCOL, command, *frames]


def ready(info: dict) -> list[bytes]:
    return message(READY, json.dumps(info, separators=(",", ":")).encode())


def parse(frames: list[bytes]) -> tuple[bytes, list[bytes]]:
    """[WORKER_PROTOCOL, command, rest...] (identity already removed) -> (command, rest). Raises PirateError."""
    if len(frames) < 2:
        raise PirateError(f"{len(frames)} frame(s): a message has at least the protocol and a command")
    if bytes(frames[0]) != WORKER_PROTOCOL:
        raise PirateError(f"protocol {bytes(frames[0])[:16]!r} is not supported (this peer speaks {WORKER_PROTOCOL!r})")
    command, rest = bytes(frames[1]), frames[2:]
    if command not in COMMANDS:
        raise PirateError(f"unknown command {command!r}")
    if command in (REQUEST, REPLY) and len(rest) < 2:
        raise PirateError(f"{COMMANDS[command]} needs a token and a header, got {len(rest)} frame(s)")
    if command == READY and len(rest) != 1:
        raise PirateError(f"READY carries one info frame, got {len(rest)}")
    return command, rest


def credit_for(max_batch: int, queue_size: int) -> int:
    return max(1, min(queue_size, CREDIT_BATCHES * max_batch))
