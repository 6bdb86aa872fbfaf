"""The serving benchmark: test images replayed against the service, open loop, at offered rates.

``bench_serving(run, url, config)`` sends, for each offered rate and each method (the best
single model, the cheapest adequate single model and the answer selected on val at a level:
``router.web.methods`` aliases, read by the service from ``routers.csv``), Poisson arrivals of
the run's test images (``router.web.loadgen``) to ``URL/api/predict?method=M&level=S``, and
returns one ``serving.csv`` row per (method, rate): achieved rate, latency percentiles from each
request's scheduled arrival to its answer, requests, answered, errors (503 refusals counted apart
as ``rejected``), lost (no HTTP answer at all), accuracy on the answered requests, and, where
``RUN/results/router_predictions.npz`` holds the method's offline answers, the offline accuracy
on the same images and the share of answers equal to the offline ones.

``ServerProcess(cmd)`` starts ``serve`` on a loopback port and stops it; ``sustained`` gives the
highest offered rate each method held with p99 under the objective, no error and nothing lost.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from common.io import read_csv, write_csv
from router.web.images import tensor_to_png
from router.web.loadgen import (Prepared, check_loopback, multipart, poisson_arrivals,
                                run_open_loop, send, summarize)
from router.web.methods import ALIASES, load_rows_or_none, resolve_alias

SERVING_COLUMNS = ["backend", "method", "served", "level", "offered_rps", "achieved_rps",
                   "p50_ms", "p95_ms", "p99_ms", "requests", "answered", "errors", "rejected",
                   "lost", "accuracy", "offline_accuracy", "agree_offline", "mean_batch",
                   "mean_queue_ms", "mean_compute_ms", "duration_s", "sent_late_p99_ms",
                   "slo_ms", "within_slo"]


@dataclass
class LoadConfig:
    """What the benchmark offers: rates, bounds, the objective."""

    rates: list[float] = field(default_factory=lambda: [10.0, 25.0, 50.0, 100.0, 200.0])
    methods: list[str] = field(default_factory=lambda: list(ALIASES))
    level: float = 0.005
    slo_ms: float = 100.0
    max_requests: int = 500        # per (method, rate)
    max_seconds: float = 20.0      # of arrivals per (method, rate)
    timeout_s: float = 30.0        # a request unanswered by then is lost
    concurrency: int = 256         # client threads
    input: str = "upload"          # upload: PNG in a multipart form; sample: ?sample=I
    warmup: int = 8                # sequential requests per method before the first rate
    seed: int = 0


def http_json(url: str, timeout_s: float = 10.0) -> Any:
    """GET ``url`` and parse its JSON (errors included)."""
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as r:
            return json.loads(r.read())
    except urllib.error.HTTPError as e:
        return json.loads(e.read() or b"null")


def test_split(run: str | Path) -> Any:
    """The run's test split (an ``ImageSet``), as the service loads it."""
    from router.web.service import _load_samples
    from zoo.rundir import RunDir
    samples, note = _load_samples(RunDir(run))
    if samples is None:
        raise FileNotFoundError(f"cannot load the test images of {run}: {note}")
    return samples


def build_requests(samples: Any, method: str, level: float, n: int, mode: str,
                   seed: int = 0) -> list[Prepared]:
    """``n`` requests for ``method``: test images in a fixed shuffled order (the same for every
    method and rate), as PNG uploads or as ``sample=I``."""
    order = np.random.default_rng(seed).permutation(len(samples))
    idx = [int(order[k % len(order)]) for k in range(n)]
    query = f"/api/predict?method={method}&level={level:g}"
    out = []
    for i in idx:
        label = int(samples.labels[i])
        if mode == "sample":
            out.append(Prepared("GET", f"{query}&sample={i}", None, {}, label, i))
        elif mode == "upload":
            body, headers = multipart("image", f"test-{i}.png",
                                      tensor_to_png(samples.images[i], scale=1))
            out.append(Prepared("POST", query, body, headers, label, i))
        else:
            raise ValueError(f"input must be 'upload' or 'sample', got {mode!r}")
    return out


def offline_answers(run: str | Path, level: float, methods: Sequence[str]
                    ) -> dict[str, tuple[str, dict[int, int] | None]]:
    """Per alias: (served key, {sample id: offline prediction} or None) from routers.csv and
    router_predictions.npz (evaluate-routers' own test answers)."""
    rows, note = load_rows_or_none(run)
    out: dict[str, tuple[str, dict[int, int] | None]] = {}
    npz = Path(run) / "results" / "router_predictions.npz"
    data = np.load(npz, allow_pickle=False) if npz.exists() else None
    for m in methods:
        if rows is None or m not in ALIASES:
            out[m] = (m, None)
            continue
        key, row = resolve_alias(rows, m, level)
        preds = None
        if data is not None:
            want = ("single:" + row["method"].split(":", 1)[1]) if ":" in row["method"] \
                else row["method"]
            hit = np.flatnonzero((data["zoos"] == "all") & (data["methods"] == want) &
                                 ((np.abs(data["sacrifices"] - level) < 1e-9) |
                                  np.char.startswith(data["methods"].astype(str), "single:")))
            if len(hit):
                preds = dict(zip(data["sample_ids"].tolist(), data["preds"][hit[0]].tolist()))
        out[m] = (key, preds)
    return out


def bench_serving(run: str | Path, url: str, config: LoadConfig, backend: str = "embedded",
                  log: Callable[[str], None] = print) -> list[dict[str, Any]]:
    """Every rate against every method; one row per pair (see ``SERVING_COLUMNS``)."""
    check_loopback(url)
    url = url.rstrip("/")
    samples = test_split(run)
    offline = offline_answers(run, config.level, config.methods)
    n_max = config.max_requests
    reqs = {m: build_requests(samples, m, config.level, n_max, config.input, config.seed)
            for m in config.methods}
    host, port = check_loopback(url)
    for m in config.methods:  # warm-up, and a clear error for a method the service lacks
        for k in range(max(1, config.warmup)):
            status, data, err = send(host, port, reqs[m][k % len(reqs[m])], config.timeout_s)
            if status != 200:
                raise RuntimeError(f"the service answers method {m!r} with {status}: {err}")
        log(f"  {m}: served by {data.get('method')}")
    rows = []
    ids = samples.ids.tolist()
    for rate in config.rates:
        for k, m in enumerate(config.methods):
            arrivals = poisson_arrivals(rate, n_max, config.max_seconds,
                                        seed=config.seed + 1000 * k + int(rate))
            outcomes, duration = run_open_loop(url, reqs[m], arrivals,
                                               timeout_s=config.timeout_s,
                                               concurrency=config.concurrency)
            s = summarize(outcomes, reqs[m], rate, duration)
            key, offl = offline[m]
            row = {"backend": backend, "method": m, "served": key, "level": config.level,
                   **asdict(s), "slo_ms": config.slo_ms}
            row["within_slo"] = int(s.p99_ms is not None and s.p99_ms <= config.slo_ms
                                    and s.errors == 0 and s.lost == 0)
            if offl is not None:
                ok = [o for o in outcomes if o.answered and o.answer_index is not None]
                sid = [ids[reqs[m][o.index].sample] for o in ok]
                have = [(o, offl[i]) for o, i in zip(ok, sid) if i in offl]
                if have:
                    row["offline_accuracy"] = float(np.mean(
                        [p == reqs[m][o.index].label for o, p in have]))
                    row["agree_offline"] = float(np.mean([o.answer_index == p for o, p in have]))
            rows.append(row)
            log(_line(row))
            _drain(url, config.timeout_s)
    return rows


def _line(r: dict[str, Any]) -> str:
    def f(v: Any, fmt: str = ".1f") -> str:
        return "-" if v is None or v == "" else format(v, fmt)
    return (f"  {r['method']:<16} offered {r['offered_rps']:>7.1f}/s  achieved "
            f"{r['achieved_rps']:>7.1f}/s  p50 {f(r['p50_ms'])}  p95 {f(r['p95_ms'])}  p99 "
            f"{f(r['p99_ms'])} ms  n={r['requests']} ok={r['answered']} err={r['errors']} "
            f"(503: {r['rejected']}) lost={r['lost']}  acc {f(r['accuracy'], '.4f')}  batch "
            f"{f(r['mean_batch'])}")


def _drain(url: str, timeout_s: float) -> None:
    """Wait until the service's queue is empty (at most ``timeout_s``), so rates do not mix."""
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        try:
            h = http_json(f"{url}/healthz", 5.0)
            if not h.get("queued", 0) and not h.get("inflight", 0):
                break
        except (OSError, ValueError, AttributeError):
            break
        time.sleep(0.2)
    time.sleep(0.3)


def sustained(rows: Sequence[dict[str, Any]]) -> dict[tuple[str, str], float | None]:
    """(backend, method) -> the highest offered rate held within the objective (p99 under the
    SLO, no error, nothing lost), None if none."""
    out: dict[tuple[str, str], float | None] = {}
    for r in rows:
        key = (str(r["backend"]), str(r["method"]))
        out.setdefault(key, None)
        if str(r["within_slo"]) in ("1", "True"):
            rate = float(r["offered_rps"])
            out[key] = rate if out[key] is None else max(out[key], rate)
    return out


def format_sustained(rows: Sequence[dict[str, Any]], slo_ms: float) -> str:
    lines = [f"highest offered rate sustained with p99 <= {slo_ms:g} ms, no error, none lost:"]
    served = {(str(r["backend"]), str(r["method"])): r.get("served", "") for r in rows}
    for (backend, method), rate in sustained(rows).items():
        lines.append(f"  {backend:<9} {method:<16} {served[(backend, method)]:<36} "
                     + ("none of the rates" if rate is None else f"{rate:g} req/s"))
    return "\n".join(lines)


def write_serving(run: str | Path, rows: Sequence[dict[str, Any]]) -> Path:
    """RUN/results/serving.csv, atomically: this run's rows replace earlier rows of the same
    backend; other backends' rows stay."""
    path = Path(run) / "results" / "serving.csv"
    backends = {str(r["backend"]) for r in rows}
    keep = [r for r in read_csv(path) if r.get("backend") not in backends] if path.exists() \
        else []
    return write_csv(path, keep + list(rows), SERVING_COLUMNS)


class ServerProcess:
    """``serve`` in a child process on a loopback port; ``start()`` waits until it answers
    ``/healthz``, ``stop()`` sends SIGTERM (then SIGKILL) to that child alone."""

    def __init__(self, cmd: list[str], log_path: str | Path, url: str,
                 start_timeout_s: float = 300.0):
        self.cmd, self.log_path, self.url = cmd, Path(log_path), url.rstrip("/")
        self.start_timeout_s = start_timeout_s
        self.proc: subprocess.Popen | None = None

    def start(self) -> "ServerProcess":
        check_loopback(self.url)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = self.log_path.open("wb")
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen(self.cmd, stdout=log, stderr=subprocess.STDOUT, env=env,
                                     start_new_session=True)
        log.close()
        end = time.monotonic() + self.start_timeout_s
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the service exited with {self.proc.returncode} before it "
                                   f"answered; its log ({self.log_path}):\n{self.tail()}")
            try:
                if http_json(f"{self.url}/healthz", 2.0).get("ok"):
                    return self
            except (OSError, ValueError, AttributeError):
                pass
            time.sleep(0.5)
        self.stop()
        raise TimeoutError(f"the service did not answer {self.url}/healthz within "
                           f"{self.start_timeout_s:g} s; its log:\n{self.tail()}")

    def tail(self, n: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def stop(self, timeout_s: float = 60.0) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)

    def __enter__(self) -> "ServerProcess":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()


def free_loopback_port() -> int:
    """A TCP port free on 127.0.0.1 now."""
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


__all__ = ["LoadConfig", "ServerProcess", "SERVING_COLUMNS", "bench_serving", "build_requests",
           "format_sustained", "free_loopback_port", "offline_answers", "sustained",
           "write_serving"]
