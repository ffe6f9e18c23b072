"""Several judge workers: verdicts handed over in frame order, the queue's drain waits for every worker,
the math-thread limit, and a backend judged from two threads at once (no sockets here)."""
import threading

import numpy as np
import pytest

from tests.support.runtime_fixtures import TinyArtifact


def test_in_order_hands_over_in_ticket_order_whatever_the_finishing_order():
    from runtime.daemon.judge import InOrder
    from runtime.daemon.queues import BoundedQueue

    q = BoundedQueue(8)
    for f in ("f0", "f1", "f2", "f3"):
        q.put(f)
    order = InOrder(q)
    taken = [order.take(0) for _ in range(4)]
    assert [t for t, _ in taken] == [0, 1, 2, 3] and [f for _, f in taken] == ["f0", "f1", "f2", "f3"]
    out = []
    order.release(2, lambda: out.append("f2"))
    order.release(3, lambda: out.append("f3"))
    assert out == []  # ticket 0 and 1 still being judged: nothing may overtake them
    order.release(0, lambda: out.append("f0"))
    assert out == ["f0"]

    def broken():
        raise RuntimeError("publish queue gone")

    order.release(1, broken)  # a failing hand-over must not hold back the tickets after it
    assert out == ["f0", "f2", "f3"]
    assert order.take(0.01) is None


def test_in_order_under_real_threads_keeps_queue_order():
    """Workers that finish in scrambled order (sleeping by a seeded random amount) still hand over in order."""
    import time

    from runtime.daemon.judge import InOrder
    from runtime.daemon.queues import BoundedQueue

    n, q = 60, BoundedQueue(100)
    for i in range(n):
        q.put(i)
    order, out = InOrder(q), []
    delays = np.random.default_rng(0).uniform(0, 0.004, n)

    def worker():
        while (taken := order.take(0.05)) is not None:
            ticket, item = taken
            time.sleep(delays[item])
            order.release(ticket, lambda item=item: out.append(item))
            q.done()

    ts = [threading.Thread(target=worker) for _ in range(4)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(10)
    assert out == list(range(n))
    assert q.wait_idle(0)


def test_bounded_queue_drain_waits_for_every_consumer():
    from runtime.daemon.queues import BoundedQueue

    q = BoundedQueue(4)
    q.put("a")
    q.put("b")
    assert q.get(0) == "a" and q.get(0) == "b"  # two workers each hold a frame
    assert not q.wait_idle(0.01)
    q.done()
    assert not q.wait_idle(0.01)  # the second worker is still judging
    q.done()
    assert q.wait_idle(0.01)


def test_math_thread_limit_applies_and_restores():
    import cv2
    from threadpoolctl import threadpool_info

    from runtime.daemon.threads import MathThreadLimit

    before_cv2 = cv2.getNumThreads()
    before = {p["filepath"]: p["num_threads"] for p in threadpool_info()}
    with MathThreadLimit(1):
        assert cv2.getNumThreads() == 1
        assert all(p["num_threads"] == 1 for p in threadpool_info())
    assert cv2.getNumThreads() == before_cv2
    assert {p["filepath"]: p["num_threads"] for p in threadpool_info()} == before


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
def test_engine_judged_from_two_threads_matches_one_thread(art, backend):
    """What the workers do: one Engine, frames judged concurrently, the same verdicts as one at a time
    (OpenVINO gets an infer request per thread; sharing one would mix frames up)."""
    from runtime.engine import Engine

    eng = Engine(art.dir, backend=backend)
    images = [TinyArtifact.good(i) for i in range(6)] + [TinyArtifact.defect(i) for i in range(6)]
    alone = [eng.judge(img).score for img in images]
    together = [None] * len(images)

    def judge(idx):
        for _ in range(5):  # several rounds so that the two threads really overlap
            for i in idx:
                together[i] = eng.judge(images[i]).score

    ts = [threading.Thread(target=judge, args=(range(k, len(images), 2),)) for k in (0, 1)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(60)
    assert together == pytest.approx(alone, abs=1e-6)
    eng.close()

