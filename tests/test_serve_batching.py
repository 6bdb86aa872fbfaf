"""Dynamic batching: coalescing, one answer per request, the maximum wait, shedding load with 503,
time-outs, and batched answers equal to offline execution (through the app, on the tiny run)."""
from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch

from router.web import BatchConfig, DynamicBatcher, Overloaded, RequestTimeout, TimingConfig
from router.web import WebService, create_app
from router.web.methods import ServedMethod
from router.web.serving import ServingEngine
from test_serve import add_routers, make_web_run


class SlowDouble:
    """A fake classifier: sleeps ``delay`` per batch, answers ``2 * item``; records batches."""

    def __init__(self, delay: float = 0.03):
        self.delay = delay
        self.batches: list[list[int]] = []
        self.lock = threading.Lock()

    def __call__(self, items: list[int]) -> list[int]:
        time.sleep(self.delay)
        with self.lock:
            self.batches.append(list(items))
        return [2 * i for i in items]


def test_concurrent_requests_coalesce_into_fewer_batches():
    fake = SlowDouble(0.05)
    b = DynamicBatcher(fake, BatchConfig(max_batch=16, max_wait_ms=20, max_queue=100))
    with ThreadPoolExecutor(40) as pool:
        out = list(pool.map(lambda i: b.run(i).value, range(40)))
    assert out == [2 * i for i in range(40)]
    assert len(fake.batches) <= 10 and max(len(x) for x in fake.batches) > 1
    assert all(len(x) <= 16 for x in fake.batches)
    s = b.stats()
    assert s["batches"] == len(fake.batches) and s["items"] == 40 and s["mean_batch"] > 1
    b.close()


def test_every_request_gets_its_own_answer_once_under_many_threads():
    fake = SlowDouble(0.002)
    b = DynamicBatcher(fake, BatchConfig(max_batch=8, max_wait_ms=2, max_queue=1000))
    n = 400
    with ThreadPoolExecutor(32) as pool:
        served = list(pool.map(lambda i: b.run(i), range(n)))
    assert [s.value for s in served] == [2 * i for i in range(n)]  # own answer, in order
    done = sorted(i for batch in fake.batches for i in batch)
    assert done == list(range(n))                                     # none lost, none twice
    assert all(1 <= s.batch_size <= 8 and s.queue_ms >= 0 and s.compute_ms > 0 for s in served)
    b.close()


def test_a_lone_request_waits_about_max_wait_then_runs():
    fake = SlowDouble(0.0)
    b = DynamicBatcher(fake, BatchConfig(max_batch=32, max_wait_ms=60))
    t0 = time.perf_counter()
    s = b.run(7)
    took = time.perf_counter() - t0
    assert s.value == 14 and s.batch_size == 1
    assert 0.05 <= s.queue_ms / 1000 <= 0.5 and took < 1.0
    quick = DynamicBatcher(fake, BatchConfig(max_batch=32, max_wait_ms=0))
    assert quick.run(1).queue_ms < 50
    b.close()
    quick.close()


def test_full_queue_refuses_with_retry_after_and_answers_the_rest():
    gate, entered = threading.Event(), threading.Event()

    def blocked(items):
        entered.set()
        gate.wait(10)
        return items
    b = DynamicBatcher(blocked, BatchConfig(max_batch=1, max_wait_ms=0, max_queue=2))
    first = b.submit("a")
    assert entered.wait(5)                 # the worker holds "a"; the queue is empty
    queued = [b.submit("b"), b.submit("c")]
    with pytest.raises(Overloaded) as e:
        b.submit("d")
    assert e.value.retry_after_s >= 1 and "capacity" in str(e.value)
    gate.set()
    assert [t.result(5).value for t in [first, *queued]] == ["a", "b", "c"]
    assert b.stats()["rejected"] == 1
    b.close()


def test_errors_reach_their_callers_and_close_refuses_the_queued():
    def process(items):
        if "all" in items:
            raise RuntimeError("the whole batch failed")
        return [ValueError(f"bad {i}") if i == "bad" else i for i in items]
    b = DynamicBatcher(process, BatchConfig(max_batch=4, max_wait_ms=30))
    with ThreadPoolExecutor(2) as pool:
        fut = [pool.submit(b.run, x) for x in ("ok", "bad")]
    assert fut[0].result().value == "ok"
    with pytest.raises(ValueError, match="bad bad"):
        fut[1].result()
    with pytest.raises(RuntimeError, match="whole batch"):
        b.run("all")
    b.close()
    with pytest.raises(Overloaded, match="shutting down"):
        b.submit("late")


def test_timeout_drops_the_request_and_the_batcher_goes_on():
    gate = threading.Event()

    def process(items):
        if "slow" in items:
            gate.wait(5)
        return items
    b = DynamicBatcher(process, BatchConfig(max_batch=1, max_wait_ms=0, timeout_s=0.2))
    with pytest.raises(RequestTimeout):
        b.run("slow")
    gate.set()
    assert b.run("next").value == "next"
    assert b.stats()["timed_out"] == 1
    b.close()


# ---- through the app, on the tiny run ----------------------------------------------------------

@pytest.fixture(scope="module")
def service(fake_fmnist_dir, tmp_path_factory):
    root = make_web_run(tmp_path_factory.mktemp("batchrun"), fake_fmnist_dir)
    add_routers(root)
    return WebService.load(root, TimingConfig(repeats=1, threads=1))


def test_batched_answers_equal_offline_execution(service):
    """Concurrent requests for many test samples, through single models and routers, get the
    answers the classifier gives on the whole split at once."""
    engine = ServingEngine(service, BatchConfig(max_batch=8, max_wait_ms=20))
    app = create_app(service, engine=engine)
    x = service.samples.images
    n = len(x)
    for key in ("single:tiny_vgg1", "single:tiny_vgg2", "router:cascade-0.01",
                "router:dispatcher-label-0.01"):
        offline_preds, offline_models, _ = engine.methods[key].run(x)

        def ask(i: int, key=key) -> dict:
            return app.test_client().get(f"/api/predict?sample={i}&method={key}").get_json()
        order = list(np.random.default_rng(0).permutation(n)) * 2
        with ThreadPoolExecutor(12) as pool:
            got = list(pool.map(ask, order))
        for i, d in zip(order, got):
            assert d["method"] == key and d["source"]["sample_index"] == i
            assert d["answer_index"] == int(offline_preds[i]) and d["model"] == offline_models[i]
            assert d["correct"] == (d["answer_index"] == int(service.samples.labels[i]))
    s = engine.batcher.stats()
    assert s["items"] == 4 * 2 * n and s["batches"] < s["items"]  # some requests were batched
    engine.close()


def test_overload_answers_503_with_retry_after_over_http(service):
    engine = ServingEngine(service, BatchConfig(max_batch=1, max_wait_ms=0, max_queue=1))
    gate, entered = threading.Event(), threading.Event()
    info = service.models[0].info

    def blocked(x):
        entered.set()
        gate.wait(10)
        return np.zeros(len(x), dtype=np.int64), ["tiny_vgg1"] * len(x), np.ones(len(x))
    engine.methods["single:slow"] = ServedMethod("single:slow", "single", info, blocked)
    app = create_app(service, engine=engine)
    url = "/api/predict?sample=0&method=single:slow"
    with ThreadPoolExecutor(2) as pool:
        first = pool.submit(lambda: app.test_client().get(url))
        assert entered.wait(10)
        second = pool.submit(lambda: app.test_client().get(url))
        for _ in range(200):
            if engine.batcher.stats()["queued"] == 1:
                break
            time.sleep(0.01)
        r = app.test_client().get(url)
        assert r.status_code == 503 and int(r.headers["Retry-After"]) >= 1
        assert "capacity" in r.get_json()["error"]
        page = app.test_client().get("/?sample=1")
        assert page.status_code == 503 and page.headers["Retry-After"]
        gate.set()
        assert first.result(10).status_code == 200 and second.result(10).status_code == 200
    assert app.test_client().get(url).status_code == 200   # serving on after the burst
    engine.close()


def test_a_stuck_method_gets_504_and_does_not_hang_the_others(service):
    engine = ServingEngine(service, BatchConfig(max_batch=4, max_wait_ms=0, timeout_s=0.3,
                                                workers=2))
    gate = threading.Event()
    info = service.models[0].info

    def stuck(x):
        gate.wait(5)
        raise RuntimeError("replica failed")
    engine.methods["single:stuck"] = ServedMethod("single:stuck", "single", info, stuck)
    c = create_app(service, engine=engine).test_client()
    r = c.get("/api/predict?sample=0&method=single:stuck")
    assert r.status_code == 504 and "retry" in r.get_json()["error"]
    ok = c.get("/api/predict?sample=0&method=single:tiny_vgg1")   # the second worker answers
    assert ok.status_code == 200
    gate.set()
    engine.close()


def test_unknown_method_and_alias_without_routers_csv(service):
    c = create_app(service).test_client()
    r = c.get("/api/predict?sample=0&method=nope")
    assert r.status_code == 400 and r.get_json()["parameter"] == "method"
    assert "single:tiny_vgg1" in r.get_json()["error"]
    r = c.get("/api/predict?sample=0&method=selected")
    assert r.status_code == 404 and "routers.csv" in r.get_json()["error"]
    r = c.get("/api/predict?sample=0&method=single:tiny_vgg1&level=abc")
    assert r.status_code == 400
    d = c.get("/api/methods").get_json()
    assert d["default"] == "single:tiny_vgg2" and "routers.csv" in d["default_note"]
    served = c.get("/api/predict?sample=2").get_json()["served"]
    assert served["method"] == "single:tiny_vgg2" and served["queue_ms"] >= 0
    assert torch.is_tensor(service.samples.images)
