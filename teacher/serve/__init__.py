"""`teacher serve`: the fallback server the line-side daemons send their unsure frames to.

    server.py    ROUTER-DEALER proxy (zmq.proxy_steerable) in front of N workers, CURVE, status, shutdown
    workers.py   one model per worker; each batches what it receives (I/O thread + compute thread)
    worker_main.py  the process around a worker (process mode): env, signals, context, exit
    wire.py      envelope split, ids of a refused request, image size from PNG/JPEG headers, JSON-safe
    batching.py  bounded batch queue and the LRU of recent replies (idempotent retries)
    models.py    the model interface, FakeModel (slow / fail / crash flags), load_model(spec)
    status.py    per-worker counters, the merged status object, Prometheus metrics
    bench.py     ServeClient (minimal synchronous DEALER client) and run_server_bench
    cli.py       the `teacher serve` command

Requests and replies are runtime/protocol.py v1: "infer" in; "verdict", "busy", "error" (naming the
field) or "status" out.
"""
from teacher.serve.server import ServeConfig, ServeError, TeacherServer

__all__ = ["ServeConfig", "ServeError", "TeacherServer"]
