"""The Ray Serve deployments (imports Ray: only ``router.web.ray_backend.build_app`` imports this).

Plain module-level classes, made deployments by ``serve.deployment(cls)`` at build time, so Ray
ships them to replicas by reference (a replica imports this module) instead of pickling them.
Batch sizes and waits are the ``serve`` flags, set per replica with ``set_max_batch_size`` /
``set_batch_wait_timeout_s`` on the ``@serve.batch`` methods.
"""
from __future__ import annotations

import asyncio
import math
import time
from dataclasses import asdict
from typing import Any

import torch
from ray import serve
from starlette.requests import Request
from starlette.responses import JSONResponse

from router.web.batching import BatchConfig
from router.web.images import InputError, Limits, check_upload, resize_input, to_input
from router.web.methods import ServedMethod, load_rows_or_none, resolve_request
from router.web.ray_parts import RemoteModel, error_response, form_file, load_methods, \
    model_infos

INGRESS_CONCURRENT_BATCHES = 2   # a batch routes while the previous one waits on its models


class ZooModel:
    """One zoo model, loaded once per replica; batches the groups ingresses send it."""

    def __init__(self, checkpoint: str, torch_threads: int, max_batch: int, wait_s: float):
        from zoo.checkpoint import load_model
        torch.set_num_threads(torch_threads)
        self.model, _ = load_model(checkpoint)
        self.model.eval()
        self.__call__.set_max_batch_size(max_batch)
        self.__call__.set_batch_wait_timeout_s(wait_s)

    @serve.batch(max_batch_size=BatchConfig.max_batch,
                 batch_wait_timeout_s=BatchConfig.max_wait_ms / 1000.0)
    async def __call__(self, xs: list[torch.Tensor]) -> list[torch.Tensor]:
        """Groups (preprocessed float batches) from any number of ingress batches, run as one
        forward pass; each caller gets its own rows back."""
        sizes = [len(x) for x in xs]
        with torch.inference_mode():
            out = self.model(torch.cat(xs)).float()
        return list(torch.split(out, sizes))


class RouterIngress:
    """The HTTP entry: ``/api/predict``, ``/api/methods``, ``/healthz``; routes each batch with
    the run's routed classifiers over the model deployments' handles."""

    def __init__(self, run_dir: str, handles: dict[str, Any], torch_threads: int,
                 batching: BatchConfig, limits: Limits, level: float, default_method: str,
                 keys: list[str] | None):
        from router.web.service import _load_samples
        from zoo.rundir import RunDir
        torch.set_num_threads(torch_threads)
        self.batching, self.limits, self.level = batching, limits, level
        self.limit = batching.max_queue + batching.max_batch * batching.workers
        infos = model_infos(run_dir)
        remote = {n: RemoteModel(n, h, batching.timeout_s) for n, h in handles.items()}
        self.methods = load_methods(run_dir, remote, infos, keys)
        self.rows, self.rows_note = load_rows_or_none(run_dir)
        self.samples, self.sample_note = _load_samples(RunDir(run_dir))
        self.inflight = 0
        self.ms_per_item = 10.0
        try:
            self.default = self._resolve(default_method, None)
        except InputError:
            self.default = next(iter(self.methods.values()))
        self._batch.set_max_batch_size(batching.max_batch)
        self._batch.set_batch_wait_timeout_s(batching.max_wait_ms / 1000.0)

    def _resolve(self, name: str | None, level_raw: str | None) -> ServedMethod:
        # a bad method or level is a 400 naming the parameter and its allowed values
        return resolve_request(name, level_raw, self.level, self.methods, self.rows,
                               self.rows_note, self.default)

    @serve.batch(max_batch_size=BatchConfig.max_batch,
                 batch_wait_timeout_s=BatchConfig.max_wait_ms / 1000.0,
                 max_concurrent_batches=INGRESS_CONCURRENT_BATCHES)
    async def _batch(self, items: list[tuple[ServedMethod, torch.Tensor, float]]
                     ) -> list[dict[str, Any]]:
        """Requests of each method stacked and run in one call (a router routes the batch and
        sends each chosen model its group); queue and compute ms added to each answer."""
        t0 = time.perf_counter()
        groups: dict[str, list[int]] = {}
        for i, (m, _, _) in enumerate(items):
            groups.setdefault(m.key, []).append(i)
        out: list[dict[str, Any]] = [{} for _ in items]
        for idx in groups.values():
            m = items[idx[0]][0]
            x = torch.stack([items[i][1] for i in idx])
            try:
                preds, chosen, conf = await asyncio.to_thread(m.run, x)
            except Exception as e:  # a failed or slow model: this group hears why
                for i in idx:
                    out[i] = {"error": f"{type(e).__name__}: {e}"}
                continue
            classes = m.info.classes or []
            for k, i in enumerate(idx):
                p = int(preds[k])
                out[i] = {"method": m.key, "answer_index": p,
                          "answer": classes[p] if p < len(classes) else str(p),
                          "model": chosen[k], "confidence": float(conf[k])}
        dt = time.perf_counter() - t0
        self.ms_per_item = 0.8 * self.ms_per_item + 0.2 * 1000.0 * dt / len(items)
        for (_, _, t_in), o in zip(items, out):
            o.update(queue_ms=1000.0 * (t0 - t_in), compute_ms=1000.0 * dt,
                     batch_size=len(items))
        return out

    async def __call__(self, request: Request) -> Any:
        path = request.url.path.rstrip("/") or "/"
        if path == "/healthz":
            return JSONResponse({"ok": True, "backend": "ray", "inflight": self.inflight,
                                 "methods": len(self.methods)})
        if path == "/api/methods":
            return JSONResponse({"default": self.default.key, "level": self.level,
                                 "batching": asdict(self.batching),
                                 "methods": [m.describe() for m in self.methods.values()]})
        if path != "/api/predict":
            return error_response(f"no route {path}; the Ray backend serves /api/predict, "
                                  "/api/methods and /healthz", 404)
        if self.inflight >= self.limit:
            wait = max(1, math.ceil(self.inflight * self.ms_per_item / 1000.0))
            return error_response(f"the service is at capacity ({self.limit} requests in "
                                  f"flight); retry after {wait} s", 503,
                                  {"Retry-After": str(wait)}, retry_after_s=wait)
        self.inflight += 1
        try:
            return await self._predict(request)
        finally:
            self.inflight -= 1

    async def _predict(self, request: Request) -> Any:
        q = request.query_params
        method = q.get("method")
        body = await request.body() if request.method == "POST" else b""
        try:
            m = self._resolve(method, q.get("level"))
            image, source, label = self._input(q, request.headers, body, m.info)
        except InputError as e:
            return error_response(str(e), e.status, **e.fields)
        try:
            ans = await asyncio.wait_for(self._batch((m, image, time.perf_counter())),
                                         self.batching.timeout_s)
        except asyncio.TimeoutError:
            return error_response(f"no answer within {self.batching.timeout_s:g} s; the service "
                                  "is slow or a model replica failed, retry later", 504)
        if "error" in ans:
            return error_response(ans["error"], 500)
        ans.update(requested=method or self.default.key, source=source)
        if label is not None:
            ans["label"], ans["correct"] = label, ans["answer_index"] == label
        return JSONResponse(ans)

    def _input(self, q: Any, headers: Any, body: bytes, info: Any
               ) -> tuple[torch.Tensor, dict[str, Any], int | None]:
        if "sample" in q and not body:
            if self.samples is None:
                raise InputError(f"no test samples here ({self.sample_note})", 404)
            try:
                index = int(q["sample"])
            except ValueError:
                raise InputError(f"sample must be an integer index, got {q['sample']!r}",
                                 400) from None
            if not 0 <= index < len(self.samples):
                raise InputError(f"sample {index} is out of range; the test split has samples "
                                 f"0..{len(self.samples) - 1}", 404)
            x = resize_input(self.samples.images[index], info)
            return x, {"kind": "test-sample", "sample_index": index}, \
                int(self.samples.labels[index])
        if not body:
            raise InputError("nothing to classify: upload a file in field 'image' (POST) or "
                             "pass sample=I", 400)
        data, filename = form_file(body, headers.get("content-type", ""), self.limits)
        img = check_upload(data, filename, self.limits)
        conv = to_input(data, img, info)
        return conv.tensor, {"kind": "upload", "format": img.format,
                             "inverted": conv.inverted}, None
