"""Dynamic batching: requests wait in one bounded queue, a worker takes them as batches.

``DynamicBatcher(process, max_batch=32, max_wait_ms=5, max_queue=128)``: ``submit(item)`` puts
an item in the queue and returns a ``Ticket``; ``ticket.result(timeout)`` waits for its answer.
A worker thread takes the oldest item, then more until it holds ``max_batch`` items or the
oldest has waited ``max_wait_ms`` (items already queued by then still join, up to
``max_batch``: they are late already), and calls ``process(items)`` once for the batch. That
returns one result per item, in order; a result that is an ``Exception`` is raised to that
item's caller alone, and an exception raised by ``process`` goes to every item of the batch.

Every ticket is answered exactly once: by its result, by an exception, by ``RequestTimeout``
when its caller stops waiting (the worker then skips it, or drops its late result), or by
``Overloaded`` on ``close``. A full queue refuses at once with ``Overloaded``, whose
``retry_after_s`` (queued items times the measured seconds per item) the HTTP layer sends as
``Retry-After``: load is shed, not queued without bound.

The worker is the only thread that runs models (with ``workers=1``, the default), so it
replaces a lock around inference; ``workers > 1`` runs that many batches at once (eval-mode
models hold no state between calls).
"""
from __future__ import annotations

import math
import queue
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Sequence


class Overloaded(Exception):
    """The queue is full (or the batcher is closing): answer 503 with ``Retry-After``."""

    def __init__(self, message: str, retry_after_s: int = 1):
        super().__init__(message)
        self.retry_after_s = max(1, int(retry_after_s))


class RequestTimeout(Exception):
    """No answer within the caller's timeout (answer 504); the item is dropped."""


@dataclass
class BatchConfig:
    """How requests are batched: the flags of ``serve``."""

    max_batch: int = 32          # most requests in one batch
    max_wait_ms: float = 5.0     # longest the oldest request waits for others to join it
    max_queue: int = 128         # requests waiting beyond this are refused (503)
    workers: int = 1             # batches run at once
    timeout_s: float = 30.0      # a request not answered by then gets 504

    def check(self) -> "BatchConfig":
        if self.max_batch < 1 or self.max_queue < 1 or self.workers < 1:
            raise ValueError(f"max_batch, max_queue and workers must be >= 1, got "
                             f"{self.max_batch}, {self.max_queue}, {self.workers}")
        if self.max_wait_ms < 0 or self.timeout_s <= 0:
            raise ValueError(f"max_wait_ms must be >= 0 and timeout_s > 0, got "
                             f"{self.max_wait_ms}, {self.timeout_s}")
        return self


@dataclass
class Served:
    """One item's answer and what it went through."""

    value: Any
    queue_ms: float     # from submit to the start of its batch
    compute_ms: float   # the whole batch's processing (the item waits for all of it)
    batch_size: int


class Ticket:
    """A submitted item; answered once (result or exception)."""

    __slots__ = ("item", "enqueued", "started", "_done", "_value", "_error", "_lock",
                 "_abandoned")

    def __init__(self, item: Any):
        self.item = item
        self.enqueued = time.perf_counter()
        self.started: float | None = None
        self._done = threading.Event()
        self._value: Served | None = None
        self._error: BaseException | None = None
        self._lock = threading.Lock()
        self._abandoned = False

    def _answer(self, value: Served | None = None, error: BaseException | None = None) -> bool:
        """Set the answer unless one is set already or the caller gave up; True if set."""
        with self._lock:
            if self._done.is_set() or self._abandoned:
                return False
            self._value, self._error = value, error
            self._done.set()
            return True

    @property
    def abandoned(self) -> bool:
        return self._abandoned

    def done(self) -> bool:
        return self._done.is_set()

    def result(self, timeout: float | None = None) -> Served:
        """Wait for the answer; ``RequestTimeout`` (and the item is dropped) after ``timeout``."""
        if not self._done.wait(timeout):
            with self._lock:
                if not self._done.is_set():
                    self._abandoned = True
                    raise RequestTimeout(f"no answer within {timeout:g} s")
        if self._error is not None:
            raise self._error
        assert self._value is not None
        return self._value


_STOP = object()


class DynamicBatcher:
    """A bounded queue and ``workers`` threads that run ``process`` on batches of items."""

    def __init__(self, process: Callable[[list[Any]], Sequence[Any]],
                 config: BatchConfig | None = None, name: str = "batcher"):
        self.process = process
        self.config = (config or BatchConfig()).check()
        self.name = name
        self._queue: queue.Queue = queue.Queue(maxsize=self.config.max_queue)
        self._threads: list[threading.Thread] = []
        self._start_lock = threading.Lock()
        self._closed = False
        self._stats_lock = threading.Lock()
        self.batches = 0            # batches processed
        self.items = 0              # items answered by a batch
        self.rejected = 0           # submits refused (queue full or closed)
        self.timed_out = 0          # callers that stopped waiting
        self.largest_batch = 0
        self._sec_per_item = 0.0    # moving average, for Retry-After

    # ---- callers ---------------------------------------------------------------------
    def submit(self, item: Any) -> Ticket:
        """Queue ``item``; ``Overloaded`` at once when the queue is full or closed."""
        if self._closed:
            self._count_rejected()
            raise Overloaded("the service is shutting down; retry against another replica", 1)
        self._ensure_started()
        ticket = Ticket(item)
        try:
            self._queue.put_nowait(ticket)
        except queue.Full:
            self._count_rejected()
            wait = self.retry_after_s()
            raise Overloaded(f"the service is at capacity ({self.config.max_queue} requests "
                             f"queued); retry after {wait} s", wait) from None
        return ticket

    def run(self, item: Any, timeout: float | None = None) -> Served:
        """Submit and wait (``config.timeout_s`` by default)."""
        ticket = self.submit(item)
        try:
            return ticket.result(self.config.timeout_s if timeout is None else timeout)
        except RequestTimeout:
            with self._stats_lock:
                self.timed_out += 1
            raise

    def retry_after_s(self) -> int:
        """Seconds until the queue has drained at the measured rate (at least 1)."""
        per_item = self._sec_per_item or 0.01
        return max(1, math.ceil(self._queue.qsize() * per_item / self.config.workers))

    def stats(self) -> dict[str, Any]:
        with self._stats_lock:
            return {"batches": self.batches, "items": self.items, "rejected": self.rejected,
                    "timed_out": self.timed_out, "largest_batch": self.largest_batch,
                    "mean_batch": self.items / self.batches if self.batches else 0.0,
                    "queued": self._queue.qsize(), "max_batch": self.config.max_batch,
                    "max_wait_ms": self.config.max_wait_ms, "max_queue": self.config.max_queue,
                    "workers": self.config.workers,
                    "ms_per_item": 1000.0 * self._sec_per_item}

    def close(self, timeout: float = 10.0) -> None:
        """Stop the workers after the batch in hand; items still queued get ``Overloaded``."""
        self._closed = True
        for _ in self._threads:
            try:
                self._queue.put(_STOP, timeout=timeout)
            except queue.Full:
                break
        for t in self._threads:
            t.join(timeout=timeout)
        self._fail_queued(Overloaded("the service is shutting down; retry later", 1))

    # ---- the workers -----------------------------------------------------------------
    def _count_rejected(self) -> None:
        with self._stats_lock:
            self.rejected += 1

    def _ensure_started(self) -> None:
        if self._threads:
            return
        with self._start_lock:
            if self._threads:
                return
            for k in range(self.config.workers):
                t = threading.Thread(target=self._loop, name=f"{self.name}-{k}", daemon=True)
                t.start()
                self._threads.append(t)

    def _take_batch(self) -> list[Ticket] | None:
        """The next batch (None: stop). Blocks for the first item, then gathers more until
        ``max_batch`` or the first item's deadline; items already waiting always join."""
        first = self._queue.get()
        if first is _STOP:
            return None
        batch = [first]
        deadline = first.enqueued + self.config.max_wait_ms / 1000.0
        stop = False
        while len(batch) < self.config.max_batch:
            remaining = deadline - time.perf_counter()
            try:
                nxt = (self._queue.get(timeout=remaining) if remaining > 0
                       else self._queue.get_nowait())
            except queue.Empty:
                break
            if nxt is _STOP:
                stop = True
                break
            batch.append(nxt)
        if stop:  # answer this batch, then stop
            self._queue.put(_STOP)
        return batch

    def _loop(self) -> None:
        while True:
            batch = self._take_batch()
            if batch is None:
                return
            live = [t for t in batch if not t.abandoned]
            if not live:
                continue
            self._run_batch(live)

    def _run_batch(self, batch: list[Ticket]) -> None:
        t0 = time.perf_counter()
        for t in batch:
            t.started = t0
        try:
            results = list(self.process([t.item for t in batch]))
            if len(results) != len(batch):
                raise RuntimeError(f"the batch function returned {len(results)} results for "
                                   f"{len(batch)} items")
        except Exception as e:  # the whole batch failed: each caller hears why
            results = [e] * len(batch)
        dt = time.perf_counter() - t0
        compute_ms = 1000.0 * dt
        for t, r in zip(batch, results):
            if isinstance(r, BaseException):
                t._answer(error=r)
            else:
                t._answer(Served(r, 1000.0 * (t0 - t.enqueued), compute_ms, len(batch)))
        with self._stats_lock:
            self.batches += 1
            self.items += len(batch)
            self.largest_batch = max(self.largest_batch, len(batch))
            per_item = dt / len(batch)
            self._sec_per_item = (per_item if self._sec_per_item == 0.0
                                  else 0.8 * self._sec_per_item + 0.2 * per_item)

    def _fail_queued(self, error: BaseException) -> None:
        while True:
            try:
                t = self._queue.get_nowait()
            except queue.Empty:
                return
            if t is not _STOP:
                t._answer(error=error)
