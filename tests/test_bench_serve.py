"""The load benchmark end to end (it starts `serve` on a loopback port, offers two low rates,
writes serving.csv and the figure), the load generator's bounds, `serve`'s server choice, and
the Ray backend: a clear error without Ray, and (slow) the same answers as the embedded one."""
from __future__ import annotations

import shutil
import socket
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from common.io import read_csv, write_csv
from router.web.loadgen import Prepared, poisson_arrivals, run_open_loop, summarize
from test_serve import MODELS, add_routers, copy_run, make_web_run

REQUIRED = ["backend", "method", "offered_rps", "achieved_rps", "p50_ms", "p95_ms", "p99_ms",
            "requests", "errors", "lost", "accuracy"]
LEVEL = 0.01


def routers_csv(run: Path) -> None:
    """routers.csv rows for level 1% (by hand): best single tiny_vgg2, cheapest adequate
    tiny_vgg1, and the cascade selected (its artifact saved as cascade-s0.01.pt)."""
    base = {"zoo": "all", "sacrifice": LEVEL, "selected": 0}
    write_csv(run / "results" / "routers.csv", [
        {**base, "method": "best-single:tiny_vgg2", "family": "best-single"},
        {**base, "method": "cheapest-single:tiny_vgg1", "family": "cheapest-single"},
        {**base, "method": "cascade", "family": "cascade", "selected": 1},
        {**base, "method": "cascade", "family": "cascade", "sacrifice": 0.05}])
    shutil.copy(run / "routers" / "cascade-0.01.pt", run / "routers" / "cascade-s0.01.pt")


@pytest.fixture(scope="module")
def bench_run(fake_fmnist_dir, tmp_path_factory) -> Path:
    root = make_web_run(tmp_path_factory.mktemp("benchrun"), fake_fmnist_dir)
    add_routers(root)
    routers_csv(root)
    return root


def test_bench_serve_writes_serving_csv_and_figure(bench_run, capsys):
    from scripts import bench_serve
    assert bench_serve.main(["--run", str(bench_run), "--rates", "4", "8", "--max-requests",
                             "10", "--max-seconds", "4", "--level", str(LEVEL),
                             "--max-wait-ms", "2", "--timeout", "20"]) == 0
    out = capsys.readouterr().out
    rows = read_csv(bench_run / "results" / "serving.csv")
    assert set(REQUIRED) <= set(rows[0])
    assert len(rows) == 6
    assert {(r["method"], float(r["offered_rps"])) for r in rows} == {
        (m, rate) for m in ("best-single", "cheapest-single", "selected") for rate in (4, 8)}
    served = {r["method"]: r["served"] for r in rows}
    assert served == {"best-single": "single:tiny_vgg2", "cheapest-single": "single:tiny_vgg1",
                      "selected": "router:cascade-s0.01"}
    for r in rows:
        assert r["backend"] == "embedded"
        n = int(r["requests"])
        assert 1 <= n <= 10
        assert n == int(r["answered"]) + int(r["errors"]) and int(r["lost"]) == 0
        assert int(r["answered"]) == n and 0 <= float(r["accuracy"]) <= 1
        assert float(r["p50_ms"]) <= float(r["p95_ms"]) <= float(r["p99_ms"])
    assert (bench_run / "reports" / "serving.png").stat().st_size > 0
    assert (bench_run / "reports" / "serving.csv").exists()
    assert "highest offered rate sustained with p99 <= 100 ms" in out
    assert "router:cascade-s0.01" in out


def test_bench_serve_refuses_a_remote_url(bench_run):
    from scripts import bench_serve
    with pytest.raises(SystemExit, match="loopback"):
        bench_serve.main(["--run", str(bench_run), "--url", "http://example.org:80",
                          "--rates", "1", "--max-requests", "1"])


def test_poisson_arrivals_stay_within_count_and_time():
    a = poisson_arrivals(50, 30, 100.0, seed=1)
    assert len(a) == 30 and a[0] == 0 and (np.diff(a) >= 0).all()
    b = poisson_arrivals(50, 10_000, 0.5, seed=1)
    assert len(b) < 10_000 and b.max() <= 0.5
    assert abs(len(poisson_arrivals(200, 100_000, 5.0, seed=2)) - 1000) < 150


def test_load_generator_stops_when_the_server_never_answers():
    """A socket that accepts connections but never answers: every request is lost after its
    time-out, and the run ends within arrivals + time-out."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(64)
    port = srv.getsockname()[1]
    try:
        reqs = [Prepared("GET", "/api/predict?sample=0", None, {}, 0, 0)] * 5
        arrivals = poisson_arrivals(20, 5, 1.0, seed=0)
        t0 = time.perf_counter()
        out, duration = run_open_loop(f"http://127.0.0.1:{port}", reqs, arrivals,
                                      timeout_s=0.5, concurrency=8)
        took = time.perf_counter() - t0
        assert took < float(arrivals[-1]) + 0.5 + 2.0
        s = summarize(out, reqs, 20, duration or 1.0)
        assert s.requests == 5 and s.lost == 5 and s.answered == 0 and s.errors == 0
    finally:
        srv.close()


# ---- serve: the server it runs ----------------------------------------------------------------

def test_serve_runs_waitress_on_loopback_by_default(bench_run, monkeypatch, capsys):
    import waitress
    from flask import Flask
    from scripts import serve
    seen = {}

    class FakeServer:
        effective_port = 8000

        def __init__(self, app, **kw):
            seen.update(kw, app=app)

        def run(self):
            seen["ran"] = True

        def close(self):
            seen["closed"] = True
    monkeypatch.setattr(waitress, "create_server", FakeServer)
    assert serve.main(["--run", str(bench_run), "--repeats", "1", "--max-queue", "16",
                       "--max-batch", "4"]) == 0
    assert seen["host"] == "127.0.0.1" and seen["port"] == 8000 and seen["ran"]
    assert seen["threads"] == 16 + 4 + 8
    out = capsys.readouterr().out
    assert "listening on http://127.0.0.1:8000/ (waitress)" in out
    # routers.csv has no level 0.5% (the default): the baseline is served, and it says why
    assert "serving single:tiny_vgg2 by default (routers.csv has no level 0.005" in out
    flask_seen = {}
    monkeypatch.setattr(Flask, "run", lambda self, **kw: flask_seen.update(kw))
    assert serve.main(["--run", str(bench_run), "--server", "flask", "--level", "0.01"]) == 0
    assert flask_seen["host"] == "127.0.0.1" and flask_seen["threaded"] is True
    assert "serving router:cascade-s0.01 by default" in capsys.readouterr().out


def test_serve_refuses_bad_batching_flags(bench_run):
    from scripts import serve
    with pytest.raises(SystemExit, match="max_batch"):
        serve.main(["--run", str(bench_run), "--max-batch", "0"])


def test_background_waitress_server_answers_and_stops(bench_run):
    import json
    import urllib.request

    from router.web import TimingConfig, WebService, create_app
    from router.web.server import BackgroundServer
    svc = WebService.load(bench_run, TimingConfig(repeats=1))
    with BackgroundServer(create_app(svc)) as srv:
        with urllib.request.urlopen(f"{srv.url}/api/predict?sample=1&method=selected&level=0.01",
                                    timeout=30) as r:
            d = json.loads(r.read())
    assert d["method"] == "router:cascade-s0.01" and d["model"] == "tiny_vgg1"
    assert not srv.thread.is_alive()


# ---- Ray ------------------------------------------------------------------------------------

def test_ray_backend_without_ray_names_the_extra(bench_run, monkeypatch):
    from scripts import serve
    for mod in ("ray", "ray.serve"):
        monkeypatch.setitem(sys.modules, mod, None)   # import ray -> ImportError
    with pytest.raises(SystemExit, match=r"pip install adaptive-router\[ray\]"):
        serve.main(["--run", str(bench_run), "--backend", "ray"])


@pytest.mark.slow
def test_ray_serve_answers_like_the_embedded_backend(bench_run, tmp_path):
    """A local Ray cluster, one replica per model: a handful of requests answer as the
    embedded backend does (needs `pip install adaptive-router[ray]`)."""
    pytest.importorskip("ray.serve")
    import json
    import urllib.request

    from router.web import TimingConfig, WebService
    from router.web.loadbench import ServerProcess, free_loopback_port
    from router.web.serving import ServingEngine
    run = copy_run(bench_run, tmp_path / "r")
    port = free_loopback_port()
    url = f"http://127.0.0.1:{port}"
    methods = ["selected", "best-single", "cheapest-single", "router:dispatcher-label-0.01"]
    cmd = [sys.executable, "-m", "scripts.serve", "--run", str(run), "--backend", "ray",
           "--port", str(port), "--level", str(LEVEL), "--ray-methods", ",".join(methods),
           "--max-wait-ms", "2"]
    engine = ServingEngine(WebService.load(run, TimingConfig(repeats=1)), level=LEVEL)
    with ServerProcess(cmd, tmp_path / "ray.log", url, start_timeout_s=240):
        for m in methods:
            want = engine.resolve(m, None)
            preds, models, _ = want.run(engine.service.samples.images[:6])
            for i in range(6):
                with urllib.request.urlopen(f"{url}/api/predict?sample={i}&method={m}",
                                            timeout=60) as r:
                    d = json.loads(r.read())
                assert d["method"] == want.key and d["answer_index"] == int(preds[i])
                assert d["model"] == models[i] and d["queue_ms"] >= 0
        with urllib.request.urlopen(f"{url}/api/methods", timeout=30) as r:
            listed = {m["key"] for m in json.loads(r.read())["methods"]}
        assert {"single:" + n for n in MODELS} <= listed
    engine.close()
