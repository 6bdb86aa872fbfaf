"""An open-loop load generator over loopback (standard library and numpy only).

``poisson_arrivals(rate, max_requests, max_seconds)`` draws arrival times; ``run_open_loop``
sends request ``i`` at arrival ``i`` whether or not earlier ones have been answered (open loop:
a slow server faces the same offered load, it does not slow the client down), from a pool of
threads each holding one ``http.client`` connection per request. A request's latency runs from
its scheduled arrival, not from when a thread got to it, so a saturated client pool shows up as
latency instead of hiding it. Each outcome is an answer (200), an error (any other status: 503
is a refusal) or lost (no HTTP answer within ``timeout_s``: a refused connection, a reset, a
time-out). The run stops by itself: arrivals end at ``max_requests`` or ``max_seconds``, and no
request outlives its timeout.
"""
from __future__ import annotations

import http.client
import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Sequence
from urllib.parse import urlsplit

import numpy as np

LOOPBACK = ("127.0.0.1", "localhost", "::1")


@dataclass
class Prepared:
    """One request ready to send: method, path with query, body, headers, the true label."""

    verb: str
    path: str
    body: bytes | None
    headers: dict[str, str]
    label: int | None = None
    sample: int | None = None     # the test-split index it carries


@dataclass
class Outcome:
    """What became of one request."""

    index: int
    status: int | None            # None: lost (no HTTP answer)
    latency_ms: float             # scheduled arrival -> answer read
    sent_late_ms: float = 0.0     # how long after its arrival a client thread sent it
    answer_index: int | None = None
    model: str | None = None
    queue_ms: float | None = None
    compute_ms: float | None = None
    batch_size: int | None = None
    error: str = ""

    @property
    def answered(self) -> bool:
        return self.status == 200


def check_loopback(url: str) -> tuple[str, int]:
    """(host, port) of ``url``; refuses anything but a loopback address."""
    parts = urlsplit(url)
    if parts.scheme != "http" or parts.hostname not in LOOPBACK:
        raise ValueError(f"{url} is not a loopback http URL; the load benchmark only talks to "
                         f"{', '.join(LOOPBACK)}")
    return parts.hostname, parts.port or 80


def multipart(field: str, filename: str, data: bytes, content_type: str = "image/png"
              ) -> tuple[bytes, dict[str, str]]:
    """A one-file multipart/form-data body and its headers."""
    boundary = "adaptive-router-bench-boundary"
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"{field}\"; "
            f"filename=\"{filename}\"\r\nContent-Type: {content_type}\r\n\r\n").encode() + \
        data + f"\r\n--{boundary}--\r\n".encode()
    return body, {"Content-Type": f"multipart/form-data; boundary={boundary}"}


def poisson_arrivals(rate: float, max_requests: int, max_seconds: float,
                     seed: int = 0) -> np.ndarray:
    """Arrival offsets in seconds of a Poisson process at ``rate``/s: at most ``max_requests``,
    none after ``max_seconds``."""
    if rate <= 0 or max_requests < 1 or max_seconds <= 0:
        raise ValueError(f"need rate > 0, max_requests >= 1, max_seconds > 0; got {rate}, "
                         f"{max_requests}, {max_seconds}")
    gaps = np.random.default_rng(seed).exponential(1.0 / rate, size=max_requests)
    t = np.cumsum(gaps) - gaps[0]        # the first request goes at once
    return t[t <= max_seconds]


def send(host: str, port: int, req: Prepared, timeout_s: float) -> tuple[int | None, Any, str]:
    """(status, parsed JSON body or None, error text) of one request on a fresh connection."""
    conn = http.client.HTTPConnection(host, port, timeout=timeout_s)
    try:
        conn.request(req.verb, req.path, body=req.body,
                     headers={**req.headers, "Connection": "close"})
        resp = conn.getresponse()
        raw = resp.read()
        try:
            data = json.loads(raw) if raw else None
        except ValueError:
            data = None
        err = "" if resp.status == 200 else (
            (data or {}).get("error", "") if isinstance(data, dict) else raw[:200].decode(
                "utf-8", "replace"))
        return resp.status, data, err
    except (OSError, http.client.HTTPException) as e:
        return None, None, f"{type(e).__name__}: {e}"
    finally:
        conn.close()


def run_open_loop(url: str, requests: Sequence[Prepared], arrivals: np.ndarray, *,
                  timeout_s: float = 30.0, concurrency: int = 256) -> tuple[list[Outcome], float]:
    """Send ``requests[i]`` at ``arrivals[i]`` (seconds from now); (outcomes, seconds from the
    first arrival to the last answer). ``len(requests) >= len(arrivals)``."""
    host, port = check_loopback(url)
    if len(requests) < len(arrivals):
        raise ValueError(f"{len(arrivals)} arrivals but only {len(requests)} requests")
    outcomes: list[Outcome | None] = [None] * len(arrivals)
    last_done = [0.0]
    lock = threading.Lock()
    t0 = time.perf_counter() + 0.05

    def one(i: int) -> None:
        due = t0 + float(arrivals[i])
        late = max(0.0, time.perf_counter() - due)
        status, data, err = send(host, port, requests[i], timeout_s)
        done = time.perf_counter()
        o = Outcome(i, status, 1000.0 * (done - due), 1000.0 * late, error=err)
        if status == 200 and isinstance(data, dict):
            o.answer_index = data.get("answer_index")
            o.model = data.get("model")
            o.queue_ms, o.compute_ms = data.get("queue_ms"), data.get("compute_ms")
            o.batch_size = data.get("batch_size")
        outcomes[i] = o
        with lock:
            last_done[0] = max(last_done[0], done)

    with ThreadPoolExecutor(max_workers=max(1, concurrency), thread_name_prefix="load") as pool:
        for i, at in enumerate(arrivals):
            delay = t0 + float(at) - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            pool.submit(one, i)
    # every thread has returned: each request got an answer, an error or its timeout
    out = [o if o is not None else Outcome(i, None, 1000.0 * timeout_s, error="never sent")
           for i, o in enumerate(outcomes)]
    return out, max(1e-9, last_done[0] - t0) if last_done[0] else 0.0


@dataclass
class LoadSummary:
    """One offered rate against one method."""

    offered_rps: float
    achieved_rps: float
    p50_ms: float | None
    p95_ms: float | None
    p99_ms: float | None
    requests: int
    answered: int
    errors: int
    rejected: int                 # 503 answers (a subset of errors)
    lost: int
    accuracy: float | None        # of the answered requests whose label is known
    mean_batch: float | None
    mean_queue_ms: float | None
    mean_compute_ms: float | None
    duration_s: float
    sent_late_p99_ms: float       # client-side delay before sending (pool saturation)


def summarize(outcomes: Sequence[Outcome], requests: Sequence[Prepared], offered_rps: float,
              duration_s: float) -> LoadSummary:
    ok = [o for o in outcomes if o.answered]
    lat = np.array([o.latency_ms for o in ok])

    def pct(q: float) -> float | None:
        return float(np.percentile(lat, q)) if len(lat) else None

    def mean(vals: list[Any]) -> float | None:
        vals = [v for v in vals if v is not None]
        return float(np.mean(vals)) if vals else None
    known = [o for o in ok if requests[o.index].label is not None and o.answer_index is not None]
    acc = (sum(o.answer_index == requests[o.index].label for o in known) / len(known)
           if known else None)
    lost = sum(o.status is None for o in outcomes)
    errors = len(outcomes) - len(ok) - lost
    return LoadSummary(
        offered_rps=float(offered_rps),
        achieved_rps=len(ok) / duration_s if duration_s > 0 else 0.0,
        p50_ms=pct(50), p95_ms=pct(95), p99_ms=pct(99), requests=len(outcomes),
        answered=len(ok), errors=errors, rejected=sum(o.status == 503 for o in outcomes),
        lost=lost, accuracy=acc, mean_batch=mean([o.batch_size for o in ok]),
        mean_queue_ms=mean([o.queue_ms for o in ok]),
        mean_compute_ms=mean([o.compute_ms for o in ok]), duration_s=float(duration_s),
        sent_late_p99_ms=float(np.percentile([o.sent_late_ms for o in outcomes], 99))
        if outcomes else 0.0)
