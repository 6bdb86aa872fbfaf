"""Routed classifiers (cascade, dispatcher) saved under ``RUN/routers/*.pt``, seen by the page.

Each artifact is read once, by ``RoutedClassifier.load`` with a ``model_provider`` that hands
it the server's own, already loaded copies of the checkpoint files the router may call (each
file's SHA-256 checked against the artifact's, once per file). So a router adds only its own
small weights: on runs/quick1 (18 artifacts, 14 models) loading every artifact with its own
models took 62 s and 4.7 GB resident at start, as every artifact loaded its own copies of up to
14 models. For one image an entry gives the model it picks, that model's answer, and why: a
cascade's confidence per stage against each stage's threshold, a dispatcher's scores
(per-label probabilities or each model's predicted chance of being right) against its rule.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from router.artifact import ModelProvider, RoutedClassifier
from router.kinds import ROUTER_KINDS, kind_of
from router.web.entry import ROUTERS_HINT, StripEntry
from router.web.images import resize_input
from zoo.data import DatasetInfo



def families() -> tuple[str, ...]:
    """The families of the registered router kinds (``router.kinds``), in the table's order:
    the page's strip shows one entry per family at least (a note where none was saved)."""
    return tuple(dict.fromkeys(k.family for k in ROUTER_KINDS.values()))


@dataclass
class LoadedRouter:
    """One routed-classifier artifact, loaded once."""

    key: str       # file stem
    family: str    # the router kind's family (cascade, learned, dispatcher, ...)
    routed: Any    # router.artifact.RoutedClassifier

    @property
    def sacrifice(self) -> float | None:
        s = self.routed.meta.get("sacrifice")
        return None if s is None else float(s)

    @property
    def group(self) -> str:
        """Routers of one group differ only in their sacrifice: the router's kind
        (``router.kinds``: cascade, learned-cascade, dispatcher-label, ...)."""
        return kind_of(self.routed.router).name

    @property
    def title(self) -> str:
        s = self.sacrifice
        return self.group + ("" if s is None else f", sacrifice {100 * s:g}%")

    def verdict(self, image: torch.Tensor, by_name: dict[str, Any], label: int | None) -> StripEntry:
        """Run the routed classifier on one uint8 ``(C, H, W)`` image and explain its choice."""
        return self.verdicts([image], [label])[0]

    def verdicts(self, images: list[torch.Tensor], labels: list[int | None]) -> list[StripEntry]:
        """One routed call on a batch of uint8 ``(C, H, W)`` images; an entry per image."""
        rc = self.routed
        info = rc.info
        x = torch.stack([resize_input(image, info) for image in images])
        t0 = time.perf_counter()
        out = rc(x)
        ms = (time.perf_counter() - t0) * 1000.0
        classes = info.classes or []
        took = (f"{ms:.2f} ms for this one image" if len(x) == 1 else
                f"{ms:.2f} ms for a batch of {len(x)} images, this one among them")
        entries = []
        for i, label in enumerate(labels):
            pred = int(out.preds[i])
            text = f"{out.rule}. The whole routed call took {took} (router plus the models it ran)."
            if rc.meta.get("statement"):
                text += f" Its budget: {rc.meta['statement']}."
            entries.append(StripEntry(self.title, self.family, "ok", model=out.chosen_names[i],
                                      answer=classes[pred] if pred < len(classes) else str(pred),
                                      answer_index=pred,
                                      correct=None if label is None else pred == label,
                                      why=self._why(out, i), why_text=text))
        return entries

    def _why(self, out: Any, i: int = 0) -> list[dict[str, Any]]:
        """The kind's own explanation of image ``i``'s choice (``RouterKind.why``)."""
        scores = out.scores[i] if out.scores is not None else np.array([])
        return kind_of(self.routed.router).why(self.routed.router, scores,
                                               list(out.score_names))


SharedModels = dict[str, tuple[Path, nn.Module, Any]]  # name -> (checkpoint, model, DatasetInfo)


def load_all(routers_dir: Path, run_root: Path, shared_models: SharedModels
             ) -> tuple[list[LoadedRouter], list[StripEntry]]:
    """Every artifact under ``routers_dir``; entries for families with none (or a broken one)."""
    hint = ROUTERS_HINT.format(run=run_root)
    files = sorted(routers_dir.glob("*.pt")) if routers_dir.is_dir() else []
    routers: list[LoadedRouter] = []
    errors: list[StripEntry] = []
    provider = server_models(shared_models)
    hashes: dict[Path, str] = {}
    for f in files:
        family = next((k.family for k in ROUTER_KINDS.values() if f.stem.startswith(k.name)),
                      "router")
        try:
            rc = RoutedClassifier.load(f, run_root, model_provider=provider, checksums=hashes)
        except Exception as e:  # a stale or foreign artifact must not stop the server
            errors.append(StripEntry(f.stem, family, "error",
                                     message=f"{f.name} cannot be loaded ({e}); {hint}"))
            continue
        family = kind_of(rc.router).family
        routers.append(LoadedRouter(f.stem, family, rc))
    have = {r.family for r in routers} | {e.family for e in errors}
    for family in families():
        if family not in have:
            errors.append(StripEntry(family, family, "missing",
                                     message=f"no saved {family} in {routers_dir}: {hint}"))
    return routers, errors


def server_models(shared: SharedModels) -> ModelProvider:
    """A ``model_provider`` for ``RoutedClassifier.load`` that hands out the server's models by
    checkpoint file; a model the server did not load is refused (``ValueError``)."""
    by_file = {p.resolve(): (model, minfo) for p, model, minfo in shared.values()}

    def provide(name: str, checkpoint: Path) -> tuple[nn.Module, DatasetInfo | None]:
        if checkpoint not in by_file:
            raise ValueError(f"it needs model {name!r} ({checkpoint}), which is not a finished "
                             "model of this run")
        return by_file[checkpoint]
    return provide


def pick_per_group(routers: list[LoadedRouter], sacrifice: float | None) -> list[LoadedRouter]:
    """One router per group: the one whose sacrifice is closest to ``sacrifice`` (default 1%)."""
    target = 0.01 if sacrifice is None else sacrifice
    best: dict[str, LoadedRouter] = {}
    for r in routers:
        cur = best.get(r.group)
        dist = abs((r.sacrifice if r.sacrifice is not None else target) - target)
        if cur is None or dist < abs((cur.sacrifice if cur.sacrifice is not None else target)
                                     - target):
            best[r.group] = r
    order = {f: i for i, f in enumerate(families())}
    return sorted(best.values(), key=lambda r: (order.get(r.family, len(order)), r.group))
