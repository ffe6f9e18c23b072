"""`python -m teacher.serve.worker_main CONFIG_JSON`: one worker process of `teacher serve`.

The server starts these itself (one per GPU, CUDA_VISIBLE_DEVICES set in the config). This file is
the process around a Worker (teacher/serve/workers.py): environment, logging, signals, its own zmq
context and the exit. A separate module so that running it never re-imports a half-initialised
`teacher.serve.workers`.
"""
import json
import logging
import os
import signal
import sys

import zmq

from teacher.serve.workers import Worker, WorkerConfig


def worker_process_main(cfg_dict: dict) -> int:
    """Body of a worker process: its own context, GPU and model."""
    cfg = WorkerConfig(**cfg_dict)
    if cfg.cuda_visible_devices is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = cfg.cuda_visible_devices  # before torch is imported
    logging.basicConfig(level=logging.INFO, format=f"%(asctime)s worker{cfg.worker_id} %(levelname)s %(message)s")
    ctx = zmq.Context()
    worker = Worker(cfg, ctx)
    # systemd / Ctrl-C signal the whole group: drain like the server does, don't die mid-batch
    signal.signal(signal.SIGTERM, lambda *_: worker.stop_requested.set())
    signal.signal(signal.SIGINT, lambda *_: worker.stop_requested.set())
    rc = worker.run()
    ctx.term()
    return rc


if __name__ == "__main__":
    rc = worker_process_main(json.loads(sys.argv[1]))
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(rc)  # no interpreter teardown waiting on leftover threads
