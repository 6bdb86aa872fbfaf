"""The inference engine behind the page and ``/api/predict``: every request through one batcher.

``ServingEngine(service, config, method="selected", level=0.005)`` holds the methods a request
can ask for (``router.web.methods``: every zoo model, every routed classifier of ``RUN/routers``
and the aliases ``best-single``, ``cheapest-single``, ``selected`` from ``routers.csv``) and a
``DynamicBatcher`` (``router.web.batching``). Two kinds of job share its queue:

- ``ClassifyJob``: one image for one method. In a batch, the jobs of each method are stacked
  and run in one call: a single model on all of them, a routed classifier routing the batch and
  running each chosen model on its group (``RoutedClassifier.__call__``). Answer: the class,
  the model that gave it, its confidence.
- ``InspectJob``: the page's view of one image: every model's card (``WebService.predict_batch``,
  one batch per model), each router's verdict (``RouterStrip.entries_batch``) and the default
  method's answer (batched with that method's classify jobs).

The batcher adds each answer's queue and compute time; a full queue is ``Overloaded`` (503).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch

from router.web.batching import BatchConfig, DynamicBatcher, Served
from router.web.images import InputError
from router.web.methods import (ALIASES, DEFAULT_LEVEL, ServedMethod, load_rows_or_none,
                                resolve_key, resolve_request, router_method, single_method)


@dataclass
class ClassifyJob:
    method: ServedMethod
    image: torch.Tensor          # uint8 (C, H, W) at method.info's size


@dataclass
class InspectJob:
    inputs: dict[str, torch.Tensor]   # model name -> uint8 (C, H, W) at its size
    shown: torch.Tensor               # the dataset-native image (what routers see)
    label: int | None
    policy: str | None
    served: ClassifyJob | None        # the default method's job on this image


class ServingEngine:
    """Methods plus one batcher; ``classify`` and ``inspect`` block until answered."""

    def __init__(self, service: Any, config: BatchConfig | None = None,
                 method: str = "selected", level: float = DEFAULT_LEVEL):
        self.service = service
        self.config = (config or BatchConfig()).check()
        self.level = float(level)
        self.methods: dict[str, ServedMethod] = {
            f"single:{m.name}": single_method(m.name, m.model, m.info, how=m.how)
            for m in service.models}
        for r in (service.strip.routers if service.strip else []):
            rm = router_method(r.key, r.routed)
            self.methods[rm.key] = rm
        self.rows, self.rows_note = load_rows_or_none(service.run)
        self.default, self.default_note = self._default(method)
        self.batcher = DynamicBatcher(self._process, self.config, "inference")

    # ---- which method ----------------------------------------------------------------
    def _default(self, name: str) -> tuple[ServedMethod, str]:
        """The method the page serves; where ``name`` cannot be resolved (no routers.csv yet),
        the most accurate single model on val, and a note saying why."""
        try:
            return self.resolve(name, None), ""
        except InputError as e:
            base = self.service.native_model().name
            return self.methods[f"single:{base}"], f"{e}; serving single:{base} instead"

    def resolve(self, name: str | None, level: float | None) -> ServedMethod:
        """``single:<model>``, ``router:<stem>`` or an alias at ``level`` (default: the
        engine's); ``InputError`` 404 names what exists."""
        if not name:
            return self.default
        lv = self.level if level is None else float(level)
        try:
            return self.methods[resolve_key(name, lv, self.methods, self.rows, self.rows_note)]
        except LookupError as e:
            raise InputError(str(e), 404) from None

    def resolve_request(self, name: str | None, level_raw: str | None) -> ServedMethod:
        """The method a request's raw ``method`` and ``level`` parameters name (the default
        when no method is given); ``InputError`` 400 names a bad parameter and its allowed
        values (the run's levels, the served methods), 404 an alias the run cannot resolve."""
        return resolve_request(name, level_raw, self.level, self.methods, self.rows,
                               self.rows_note, self.default)

    def describe(self) -> dict[str, Any]:
        aliases = {}
        for a in ALIASES:
            try:
                aliases[a] = self.resolve(a, None).key
            except InputError as e:
                aliases[a] = f"unavailable: {e}"
        return {"default": self.default.key, "default_note": self.default_note,
                "level": self.level, "aliases": aliases, "batching": asdict(self.config),
                "methods": [m.describe() for m in self.methods.values()]}

    # ---- per request -----------------------------------------------------------------
    def classify(self, method: ServedMethod, image: torch.Tensor) -> Served:
        """One image through ``method`` (batched with others); the answer as a dict."""
        return self.batcher.run(ClassifyJob(method, image))

    def inspect(self, job: InspectJob) -> Served:
        return self.batcher.run(job)

    def close(self) -> None:
        self.batcher.close()

    # ---- the batch function (the worker thread) --------------------------------------
    def _process(self, jobs: list[Any]) -> list[Any]:
        out: list[Any] = [None] * len(jobs)
        groups: dict[str, list[tuple[Any, ClassifyJob]]] = {}
        for i, job in enumerate(jobs):
            cj = job if isinstance(job, ClassifyJob) else job.served
            if cj is not None:
                slot = i if isinstance(job, ClassifyJob) else ("served", i)
                groups.setdefault(cj.method.key, []).append((slot, cj))
        answers: dict[Any, Any] = {}
        for members in groups.values():
            method = members[0][1].method
            try:
                preds, chosen, conf = method.run(torch.stack([cj.image for _, cj in members]))
                classes = method.info.classes or []
                for k, (slot, _) in enumerate(members):
                    p = int(preds[k])
                    answers[slot] = {"method": method.key, "answer_index": p,
                                     "answer": classes[p] if p < len(classes) else str(p),
                                     "model": chosen[k], "confidence": float(conf[k])}
            except Exception as e:  # this method failed; other groups still answer
                for slot, _ in members:
                    answers[slot] = e
        inspect = [i for i, job in enumerate(jobs) if isinstance(job, InspectJob)]
        if inspect:
            try:
                ins = [jobs[i] for i in inspect]
                cards = self.service.predict_batch([j.inputs for j in ins], [j.label for j in ins])
                strip = self.service.strip
                entries = (strip.entries_batch([j.shown for j in ins], cards,
                                               [j.label for j in ins], [j.policy for j in ins])
                           if strip else [[] for _ in ins])
                for k, i in enumerate(inspect):
                    served = answers.get(("served", i))
                    if isinstance(served, Exception):
                        served = {"method": jobs[i].served.method.key,
                                  "error": f"{type(served).__name__}: {served}"}
                    out[i] = {"cards": cards[k], "entries": entries[k], "served": served}
            except Exception as e:
                for i in inspect:
                    out[i] = e
        for i, job in enumerate(jobs):
            if isinstance(job, ClassifyJob):
                out[i] = answers[i]
        return out
