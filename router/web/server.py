"""The production WSGI server (waitress, pure Python) for the app, in the foreground or a thread.

``serve_app(app, host, port, http_threads=...)`` runs waitress until interrupted (Flask's
development server only when ``server="flask"`` is asked for). Waitress gives each request a
thread of ``http_threads``; a request thread then waits on the engine's batcher, so the pool
must be larger than the batcher's queue for load to be shed by the queue (503) rather than by
waitress holding connections: ``http_threads_for`` picks that size. ``BackgroundServer`` runs
the same server on a loopback port in a thread (tests, benchmarks) and stops it.
"""
from __future__ import annotations

import logging
import threading
from typing import Any, Callable

SERVERS = ("waitress", "flask")


def http_threads_for(max_queue: int, max_batch: int, workers: int = 1) -> int:
    """Enough request threads to fill the queue and the batches in hand, plus a few for the
    page, health checks and refusals."""
    return max_queue + max_batch * workers + 8


def _waitress(app: Any, host: str, port: int, http_threads: int) -> Any:
    try:
        from waitress import create_server
    except ImportError:
        raise SystemExit("serve: waitress is not installed; `pip install adaptive-router[web]` "
                         "(or pass --server flask for the development server)") from None
    logging.getLogger("waitress.queue").setLevel(logging.ERROR)  # our queue is the bound
    return create_server(app, host=host, port=port, threads=http_threads,
                         connection_limit=max(100, 2 * http_threads), backlog=2048,
                         asyncore_use_poll=True, channel_timeout=120, ident="adaptive-router")


def serve_app(app: Any, host: str, port: int, *, server: str = "waitress",
              http_threads: int = 64, on_ready: Callable[[str], None] | None = None) -> None:
    """Serve ``app`` until interrupted; ``on_ready(url)`` once the socket is bound."""
    if server == "flask":
        if on_ready:
            on_ready(f"http://{host}:{port}/")
        app.run(host=host, port=port, threaded=True)
        return
    if server != "waitress":
        raise ValueError(f"unknown server {server!r}; use one of {list(SERVERS)}")
    srv = _waitress(app, host, port, http_threads)
    if on_ready:
        on_ready(f"http://{_url_host(host)}:{srv.effective_port}/")
    try:
        srv.run()
    finally:
        srv.close()


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


class BackgroundServer:
    """Waitress on ``127.0.0.1`` (a free port by default) in a daemon thread; ``stop()``."""

    def __init__(self, app: Any, host: str = "127.0.0.1", port: int = 0, http_threads: int = 64):
        self.server = _waitress(app, host, port, http_threads)
        self.url = f"http://{_url_host(host)}:{self.server.effective_port}"
        self.thread = threading.Thread(target=self.server.run, name="waitress", daemon=True)

    def start(self) -> "BackgroundServer":
        self.thread.start()
        return self

    def stop(self, timeout: float = 10.0) -> None:
        from waitress import wasyncore
        self.server.task_dispatcher.shutdown(timeout=timeout)
        wasyncore.close_all(self.server._map)   # an empty map ends the server's loop
        self.thread.join(timeout=timeout)

    def __enter__(self) -> "BackgroundServer":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()
