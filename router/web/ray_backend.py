"""Ray Serve backend: each zoo model its own deployment, the router the ingress that composes them.

``serve --run DIR --backend ray`` builds one application:

- ``ZooModel`` (one deployment per zoo model, ``--replicas`` each): loads its checkpoint once;
  ``@serve.batch`` coalesces the groups that ingress replicas send it into one forward pass.
- ``RouterIngress`` (the HTTP entry, bound with a ``DeploymentHandle`` per model; both in
  ``router.web.ray_deployments``, which imports Ray): the same
  ``/api/predict`` API as the embedded backend (``method=``, ``level=``, ``sample=I`` or an
  upload in field ``image``; the answer, the model that gave it, queue and compute ms). Its
  own ``@serve.batch`` gathers requests; each batch is routed by the very ``RoutedClassifier``
  the page uses, loaded with ``model_provider=`` handing it ``RemoteModel`` proxies, so the
  dispatcher (or a cascade's thresholds) runs in the ingress and each chosen model's group
  goes to that model's deployment. Past ``max_queue`` requests in flight it answers 503 with
  ``Retry-After``; a request unanswered after ``timeout_s``, 504, so a slow or failed replica
  does not hang the others' callers.

Ray is an optional extra, imported only when this backend is asked for:
``pip install adaptive-router[ray]``. Every node needs this package and the run directory at
the same path (README: the multi-node commands).
"""
from __future__ import annotations

import re
import signal
import threading
from pathlib import Path
from typing import Any

import torch
from torch import nn

from router.web.batching import BatchConfig
from router.web.images import Limits
from router.web.methods import DEFAULT_LEVEL, load_rows_or_none, resolve_key
from router.web.ray_parts import load_methods, model_infos

RAY_HINT = "pip install adaptive-router[ray]"
APP_NAME = "adaptive-router"


def import_serve() -> tuple[Any, Any]:
    """``(ray, ray.serve)``, or ``SystemExit`` naming the extra to install."""
    try:
        import ray
        from ray import serve
    except ImportError:
        raise SystemExit("serve --backend ray needs Ray Serve, which is not installed here: "
                         f"`{RAY_HINT}` (the same as `pip install 'ray[serve]'`), or use the "
                         "embedded backend (the default)") from None
    return ray, serve


def deployment_name(model: str) -> str:
    """A deployment name for a zoo model (letters, digits, ``_`` and ``-`` only)."""
    return "model-" + re.sub(r"[^A-Za-z0-9_-]", "_", model)


# ---- which models and routers ------------------------------------------------------------

class _Probe(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - never called
        raise RuntimeError("a probe model is never run")


def plan(run: str | Path, methods: list[str] | None, level: float) -> tuple[list[str], list[str]]:
    """(the zoo models to deploy, the method keys the ingress serves). ``methods``: names or
    aliases (None: every model and router of the run)."""
    infos = model_infos(run)
    if not infos:
        raise SystemExit(f"serve: no finished model with a card in {Path(run) / 'zoo'}; train "
                         f"some first: `train-zoo --run {run}`")
    if methods is None:
        return sorted(infos), None
    probes = {n: _Probe() for n in infos}
    every = load_methods(run, probes, infos)
    rows, note = load_rows_or_none(run)
    keys = []
    for name in methods:
        try:
            keys.append(resolve_key(name, level, every, rows, note))
        except LookupError as e:
            raise SystemExit(f"serve: {e}") from None
    needed = sorted({n for k in keys for n in every[k].models})
    return needed, sorted(set(keys))


# ---- the application -----------------------------------------------------------------------

def build_app(run: str | Path, *, batching: BatchConfig | None = None,
              limits: Limits | None = None, level: float = DEFAULT_LEVEL,
              default_method: str = "selected", replicas: int = 1, threads: int = 1,
              methods: list[str] | None = None, num_cpus: float = 0.1) -> Any:
    """The bound Ray Serve application (``serve.run`` it): a ``ZooModel`` deployment per model
    (``replicas`` each) and the ``RouterIngress`` holding a handle to each. ``methods`` limits
    what is deployed to the models those methods need; ``num_cpus`` is each replica's CPU
    reservation (fractional on one machine; raise it on a cluster)."""
    _, serve = import_serve()
    from router.web.ray_deployments import RouterIngress, ZooModel

    batching = (batching or BatchConfig()).check()
    limits = limits or Limits()
    run = Path(run).resolve()
    models, keys = plan(run, methods, level)
    wait_s = batching.max_wait_ms / 1000.0
    limit = batching.max_queue + batching.max_batch * batching.workers
    handles = {n: serve.deployment(ZooModel).options(
        name=deployment_name(n), num_replicas=replicas, ray_actor_options={"num_cpus": num_cpus},
        max_ongoing_requests=max(8, 4 * batching.max_batch)).bind(
            str(run / "zoo" / n / "checkpoint.pt"), threads, batching.max_batch, wait_s)
        for n in models}
    ingress = serve.deployment(RouterIngress).options(
        ray_actor_options={"num_cpus": num_cpus}, max_ongoing_requests=limit + 16,
        max_queued_requests=batching.max_queue)
    return ingress.bind(str(run), handles, threads, batching, limits, level, default_method,
                        keys)


def serve_ray(run: str | Path, *, host: str = "127.0.0.1", port: int = 8000,
              batching: BatchConfig | None = None, limits: Limits | None = None,
              level: float = DEFAULT_LEVEL, default_method: str = "selected",
              address: str | None = None, replicas: int = 1, threads: int = 1,
              methods: list[str] | None = None, num_cpus: float = 0.1,
              stop: threading.Event | None = None) -> int:
    """Start (or join, with ``address``) a Ray cluster, run the application on ``host:port``
    and block until SIGINT/SIGTERM (or ``stop``); then shut the application down (and a local
    cluster this call started)."""
    ray, serve = import_serve()
    app = build_app(run, batching=batching, limits=limits, level=level,
                    default_method=default_method, replicas=replicas, threads=threads,
                    methods=methods, num_cpus=num_cpus)
    root = str(Path(__file__).resolve().parents[2])
    init_kw: dict[str, Any] = {"runtime_env": {"env_vars": {"PYTHONPATH": root}},
                               "logging_level": "WARNING"}
    if address is None:  # a local cluster: keep it small
        init_kw.update(include_dashboard=False, object_store_memory=256 * 2**20)
    ray.init(address=address, **init_kw)
    stop = stop or threading.Event()

    def on_signal(*_: Any) -> None:
        stop.set()
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            signal.signal(sig, on_signal)
        except ValueError:  # not the main thread
            pass
    try:
        serve.start(http_options={"host": host, "port": port})
        serve.run(app, name=APP_NAME, route_prefix="/")
        print(f"serve: listening on http://{host}:{port}/ (ray, {len(ray.nodes())} node(s))",
              flush=True)
        while not stop.wait(0.5):
            pass
    finally:
        try:
            serve.shutdown()
        finally:
            ray.shutdown()
    return 0
