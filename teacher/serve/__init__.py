"""`teacher serve`: the fallback server the line-side daemons send their unsure frames to (the command and its
flags: teacher/commands/serve.py).

    server.py    ROUTER-DEALER proxy (zmq.proxy_steerable) in front of N workers, CURVE, status, shutdown;
                 with --broker no proxy: its workers register with a broker on another host
    broker.py    `teacher serve broker`: one endpoint for workers on many hosts (Paranoid Pirate + credit):
                 heartbeats, a dead or frozen worker's requests re-queued, each request answered once
    pirate.py    the broker <-> worker wire (READY, REQUEST, REPLY, HEARTBEAT, DISCONNECT) and its timing
    workers.py   one model per worker; each batches what it receives (I/O thread + compute thread)
    links.py     a worker's socket to the server's proxy (ProxyLink) or to a broker (BrokerLink)
    worker_main.py  the process around a worker (process mode): env, signals, context, exit
    wire.py      envelope split, ids of a refused request, JSON-safe headers, the frontend's close linger
    batching.py  bounded batch queue and the LRU of recent replies (idempotent retries)
    models.py    the model interface, FakeModel (slow / fail / crash flags), load_model(spec)
    status.py    per-worker counters, the merged status object, Prometheus metrics
    bench.py     ServeClient (runtime/client.py's RequestClient in ms, None on silence) and run_server_bench

Requests and replies are runtime/contracts/protocol.py v1: "infer" in; "verdict", "busy", "error" (naming the
field) or "status" out, the same from a server and from a broker. Headers and images are checked by that
module's functions (check_frame_header, decode_image), the same the daemon calls.
"""
from teacher.serve.server import ServeConfig, ServeError, TeacherServer

__all__ = ["ServeConfig", "ServeError", "TeacherServer"]
