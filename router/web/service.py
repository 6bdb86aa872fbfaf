"""What the page shows, computed once at start and per request: models, costs, predictions.

``WebService.load(run)`` reads every finished model of ``RUN/zoo`` once (``load_model``), its
card, the measured costs (``RUN/costs.json``) and the baseline (the most accurate single model
on val), the test split for picking samples, and the router strip. ``predict_batch`` runs every
model on a batch of images (one batch per model) and returns the cards that the page and the
JSON endpoint share. The app calls it from the batcher's worker (``router.web.serving``), the
one thread that runs models, so requests neither race nor disturb each other's timings.
"""
from __future__ import annotations

import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from common.ensembles import is_ensemble
from common.tables import CostTable, ModelCost, PredictionTable
from oracle.policy import reference_index
from zoo.checkpoint import load_model, preprocess_of
from zoo.data import DatasetInfo, ImageSet
from zoo.preprocess import Preprocess, prepare
from zoo.rundir import RunDir


@dataclass
class LoadedModel:
    """One model of the zoo, loaded once, with the facts its card and cost table give."""

    name: str
    model: nn.Module
    info: DatasetInfo
    card: dict[str, Any]
    size_mb: float
    cost: ModelCost | None = None
    preprocess: Any = None          # its own zoo.preprocess.Preprocess (add-model); None: info's

    @property
    def how(self) -> Any:
        """What prepares its input (``zoo.preprocess.prepare``): its own or the dataset's."""
        return self.preprocess if self.preprocess is not None else self.info

    @property
    def params(self) -> int:
        if self.card.get("params") is not None:
            return int(self.card["params"])
        return sum(p.numel() for p in self.model.parameters())


@dataclass
class Baseline:
    """The reference model and where its choice came from."""

    name: str
    source: str  # "val table" or "cards"


@dataclass
class TimingConfig:
    """How one image is timed: warm-up runs at load, the median of ``repeats`` per request."""

    repeats: int = 3
    threads: int = 1


@dataclass
class ModelResult:
    """One card: a model's answer on this image and what it costs."""

    name: str
    variant: str | None
    parent: str | None
    top3: list[dict[str, Any]]
    pred: int
    pred_class: str
    confidence: float
    ms_this_image: float
    size_mb: float
    params: int
    macs: int | None
    ms_per_image_batched: float | None
    speedup_this_image: float | None = None
    speedup_batched: float | None = None
    val_accuracy: float | None = None
    test_accuracy: float | None = None
    is_baseline: bool = False
    correct: bool | None = None
    probs: list[float] = field(default_factory=list)
    batch_size: int = 1   # images in the batch this card's time was measured on


class WebService:
    """Everything the server holds in memory, loaded once."""

    def __init__(self, run: Path, models: list[LoadedModel], baseline: Baseline | None,
                 samples: ImageSet | None, sample_note: str, timing: TimingConfig,
                 costs_machine: dict[str, Any] | None = None, strip: Any = None):
        self.run = run
        self.models = models
        self.baseline = baseline
        self.samples = samples
        self.sample_note = sample_note
        self.timing = timing
        self.costs_machine = costs_machine or {}
        self.strip = strip

    # ---- loading ---------------------------------------------------------------------
    @classmethod
    def load(cls, run: str | Path, timing: TimingConfig | None = None,
             load_samples: bool = True, load_routers: bool = True) -> "WebService":
        run_dir = RunDir(run)
        timing = timing or TimingConfig()
        if not run_dir.root.is_dir():
            raise FileNotFoundError(f"run directory {run_dir.root} does not exist; pass the --run "
                                    "of a run made by `train-zoo` or `run-all`")
        names = run_dir.finished_models()
        if not names:
            raise FileNotFoundError(
                f"no finished model in {run_dir.root / 'zoo'} (a model needs checkpoint.pt and "
                f"card.json); train some first: `train-zoo --run {run_dir.root}`")
        costs = CostTable.load(run_dir.costs) if run_dir.costs.exists() else None
        models = [_load_one(run_dir, n, costs) for n in names]
        models.sort(key=lambda m: _cost_key(m))
        torch.set_num_threads(timing.threads)
        for m in models:  # warm-up: first calls allocate and pick kernels
            x = torch.zeros(1, m.info.in_channels, m.info.input_size, m.info.input_size,
                            dtype=torch.uint8)
            with torch.inference_mode():
                for _ in range(2):
                    m.model(prepare(x, m.how))
        baseline = pick_baseline(run_dir, models)
        samples, note = _load_samples(run_dir) if load_samples else (None, "samples not loaded")
        strip = None
        if load_routers:
            from router.web.strip import RouterStrip
            shared = {m.name: (run_dir.checkpoint(m.name), m.model, m.how) for m in models}
            strip = RouterStrip.load(run_dir, shared)
        return cls(run_dir.root, models, baseline, samples, note, timing,
                   costs.machine if costs else None, strip)

    # ---- per request -----------------------------------------------------------------
    def native_model(self) -> LoadedModel:
        """The model whose input is the dataset's own: the baseline, else the largest input."""
        if self.baseline is not None:
            for m in self.models:
                if m.name == self.baseline.name:
                    return m
        return max(self.models, key=lambda m: m.info.input_size)

    def model_names(self) -> list[str]:
        return [m.name for m in self.models]

    def predict(self, inputs: dict[str, torch.Tensor], label: int | None = None) -> list[ModelResult]:
        """Every model on its uint8 ``(C, H, W)`` input (one image: ``predict_batch``)."""
        return self.predict_batch([inputs], [label])[0]

    def predict_batch(self, inputs: list[dict[str, torch.Tensor]],
                      labels: list[int | None]) -> list[list[ModelResult]]:
        """Cards for K images: each model runs once on the stacked batch (``repeats`` times,
        timed), so a card's ``ms_this_image`` is the median batch time over K. Not locked: call
        it from one thread at a time (the app's batcher worker) for undisturbed timings."""
        torch.set_num_threads(self.timing.threads)
        per_image: list[list[ModelResult]] = [[] for _ in inputs]
        for m in self.models:
            x = prepare(torch.stack([d[m.name] for d in inputs]), m.how)
            for k, r in enumerate(self._run_one(m, x)):
                per_image[k].append(r)
        for results, label in zip(per_image, labels):
            self._fill_relative(results, label)
        return per_image

    @torch.inference_mode()
    def _run_one(self, m: LoadedModel, x: torch.Tensor) -> list[ModelResult]:
        """One card per image of the batch ``x`` (normalised, ``(K, C, H, W)``)."""
        times = []
        logits = None
        for _ in range(max(1, self.timing.repeats)):
            t0 = time.perf_counter()
            logits = m.model(x)
            times.append((time.perf_counter() - t0) * 1000.0)
        ms = float(statistics.median(times)) / len(x)
        all_probs = torch.softmax(logits.float(), dim=1)
        classes = m.info.classes or [str(i) for i in range(all_probs.shape[1])]
        card = m.card
        out = []
        for probs in all_probs:
            top = torch.topk(probs, k=min(3, len(probs)))
            top3 = [{"class_index": int(i), "class": classes[int(i)], "prob": float(p)}
                    for p, i in zip(top.values, top.indices)]
            out.append(ModelResult(
                name=m.name, variant=card.get("variant"), parent=card.get("parent"), top3=top3,
                pred=top3[0]["class_index"], pred_class=top3[0]["class"],
                confidence=top3[0]["prob"], ms_this_image=ms, size_mb=m.size_mb,
                params=m.params, macs=int(m.cost.macs) if m.cost else None,
                ms_per_image_batched=m.cost.ms_per_image if m.cost else None,
                val_accuracy=card.get("val_accuracy"), test_accuracy=card.get("test_accuracy"),
                probs=[float(p) for p in probs], batch_size=len(x)))
        return out

    def _fill_relative(self, results: list[ModelResult], label: int | None) -> None:
        base = next((r for r in results if self.baseline and r.name == self.baseline.name), None)
        for r in results:
            r.is_baseline = base is not None and r is base
            if label is not None:
                r.correct = r.pred == label
            if base is None:
                continue
            if r.ms_this_image > 0:
                r.speedup_this_image = base.ms_this_image / r.ms_this_image
            if r.ms_per_image_batched and base.ms_per_image_batched:
                r.speedup_batched = base.ms_per_image_batched / r.ms_per_image_batched

    def describe(self) -> dict[str, Any]:
        """What is loaded (for ``GET /api/models``)."""
        return {"run": str(self.run), "baseline": asdict(self.baseline) if self.baseline else None,
                "timing": asdict(self.timing), "costs_machine": self.costs_machine,
                "n_test_samples": len(self.samples) if self.samples is not None else 0,
                "models": [{"name": m.name, "variant": m.card.get("variant"),
                            "parent": m.card.get("parent"), "params": m.params,
                            "size_mb": m.size_mb, "macs": m.cost.macs if m.cost else None,
                            "input_size": m.info.input_size,
                            "val_accuracy": m.card.get("val_accuracy")} for m in self.models]}


def _load_one(run_dir: RunDir, name: str, costs: CostTable | None) -> LoadedModel:
    try:
        card = run_dir.read_card(name)
        model, ckpt = load_model(run_dir.checkpoint(name))
    except Exception as e:  # a damaged file: say which, and what remakes it
        raise ValueError(f"model {name} cannot be loaded from {run_dir.model_dir(name)} "
                         f"({type(e).__name__}: {e}); remake it (`train-zoo` or `compress` with "
                         f"--run {run_dir.root}) or move that folder out of zoo/") from None
    data = card.get("dataset") or ckpt.get("data")
    if not data:
        raise ValueError(f"{run_dir.card(name)} and its checkpoint hold no dataset description; "
                         "re-run the step that wrote this model")
    info = DatasetInfo.from_dict(data)
    cost = costs.models.get(name) if costs else None
    size_mb = cost.size_mb if cost else run_dir.checkpoint(name).stat().st_size / 2**20
    own = preprocess_of(ckpt)
    return LoadedModel(name, model, info, card, float(size_mb), cost,
                       own if isinstance(own, Preprocess) else None)


def _cost_key(m: LoadedModel) -> tuple:
    """Cheapest first: measured batched cost when there is one, else parameter count."""
    if m.cost:
        return (0, m.cost.ms_per_image, m.cost.macs, m.name)
    return (1, m.params, 0, m.name)


def pick_baseline(run_dir: RunDir, models: list[LoadedModel]) -> Baseline | None:
    """Most accurate single model on val, committees left out (``oracle.policy.reference_index``):
    from ``RUN/tables/val.npz`` if present (ties -> the cheaper, as tables are sorted by cost),
    else from the cards' ``val_accuracy``."""
    loaded = {m.name for m in models}
    if (run_dir.tables / "val.npz").exists():
        table = PredictionTable.load(run_dir.tables, "val")
        keep = [n for n in table.model_names if n in loaded]
        if keep:
            return Baseline(keep[reference_index(table.select_models(keep))], "val table")
    scored = [m for m in models if m.card.get("val_accuracy") is not None]
    scored = [m for m in scored if not is_ensemble(m.name)] or scored   # committees last resort
    if not scored:
        return None
    best = max(m.card["val_accuracy"] for m in scored)
    return Baseline(next(m.name for m in scored if m.card["val_accuracy"] == best), "cards")


def _load_samples(run_dir: RunDir) -> tuple[ImageSet | None, str]:
    """The run's test split (the samples a user may pick), or why it is unavailable."""
    from zoo.data import prepare_data
    try:
        config = run_dir.load_config()
        bundle = prepare_data(run_dir.root, **{**config.data_kwargs(), "download": False})
    except Exception as e:  # no config, no data here: the page still works with uploads
        return None, f"test samples unavailable ({e})"
    return bundle.test, f"{len(bundle.test)} test images of {bundle.info.name}"
