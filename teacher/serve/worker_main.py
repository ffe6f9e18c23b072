"""`python -m teacher.serve.worker_main CONFIG_JSON`: one worker process of `teacher serve`.

The server starts these itself (one per GPU, CUDA_VISIBLE_DEVICES set in the config); a separate
module so that running it never re-imports a half-initialised `teacher.serve.workers`.
"""
import json
import os
import sys

from teacher.serve.workers import worker_process_main

if __name__ == "__main__":
    rc = worker_process_main(json.loads(sys.argv[1]))
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(rc)  # no interpreter teardown waiting on leftover threads
