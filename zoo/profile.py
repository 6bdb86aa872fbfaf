"""Prediction tables and measured costs for every finished model of a run.

``profile_run(run, config)`` measures each model's cost (``zoo.costs``), orders the models by
measured cost (ms per image at the big batch), runs every model on each requested split and
writes ``RUN/costs.json`` and ``RUN/tables/<split>.{npz,json}``. Work already done is reused:
per-model predictions are cached in ``RUN/tables/cache/<model>-<split>.npz`` keyed by the
checkpoint's SHA-256 and the split's sample ids, and a cost entry is reused while its checkpoint
hash, thread count, device, batch and CPU are unchanged; so adding one compressed variant only
profiles that one.

``load_tables(run, splits)`` is how later steps read the tables: it refuses tables whose
checkpoints or split no longer match the run, naming the model or the fingerprint.
"""
from __future__ import annotations

import datetime as _dt
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from common.io import atomic_write, read_json, write_csv, write_json
from common.tables import CostTable, ModelCost, PredictionTable, TableMismatchError
from zoo.checkpoint import file_sha256, load_model, preprocess_of, read_checkpoint
from zoo.costs import CostSettings, machine_info, measure_cost
from zoo.data import DatasetInfo, ImageSet, Splits, normalize, prepare_data, splits_path
from zoo.infer import predict_logits
from zoo.preprocess import Preprocess, PreprocessLike, prepare
from zoo.rundir import RunDir

SPLITS = ("train", "val", "test")


@dataclass
class ProfileConfig:
    """What ``profile_run`` does; ``models=None`` means every finished model of the run."""

    splits: tuple[str, ...] = ("val", "test")
    models: list[str] | None = None
    batch_size: int = 256            # inference batch for the tables
    force: bool = False              # ignore caches, measure and predict everything again
    progress: bool = True
    costs: CostSettings = field(default_factory=CostSettings)

    def __post_init__(self) -> None:
        self.splits = tuple(self.splits)
        bad = [s for s in self.splits if s not in SPLITS]
        if bad or not self.splits:
            raise ValueError(f"unknown split(s) {bad or '(none)'}; choose from {list(SPLITS)}")


@dataclass
class ProfileResult:
    """What one ``profile_run`` call made and what it reused."""

    tables: dict[str, PredictionTable]
    costs: CostTable
    rows: list[dict[str, Any]]                       # one summary row per model, in cost order
    measured: list[str] = field(default_factory=list)        # models timed in this call
    predicted: list[str] = field(default_factory=list)       # "model/split" run in this call
    reused_costs: list[str] = field(default_factory=list)
    reused_predictions: list[str] = field(default_factory=list)


# ---- hashes and fingerprints ---------------------------------------------------------------

def checkpoint_hashes(run: str | Path, models: Sequence[str]) -> dict[str, str]:
    """SHA-256 of each model's checkpoint, cached in ``RUN/tables/cache/hashes.json`` by
    (size, mtime) so big checkpoints are hashed once."""
    rd = RunDir(run)
    cache_path = rd.tables / "cache" / "hashes.json"
    try:
        cache = read_json(cache_path) if cache_path.exists() else {}
    except ValueError:
        cache = {}
    out, changed = {}, False
    for m in models:
        path = rd.checkpoint(m)
        if not path.exists():
            raise FileNotFoundError(f"checkpoint of model {m!r} ({path}) does not exist")
        st = path.stat()
        hit = cache.get(m)
        if hit and hit.get("size") == st.st_size and hit.get("mtime_ns") == st.st_mtime_ns:
            out[m] = hit["sha256"]
            continue
        out[m] = file_sha256(path)
        cache[m] = {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": out[m]}
        changed = True
    if changed:
        write_json(cache_path, cache)
    return out


def run_split_fingerprint(run: str | Path) -> str:
    """Fingerprint of the run's current (limited) splits, read from RUN/splits without data."""
    rd = RunDir(run)
    cfg = rd.load_config()
    path = splits_path(rd.root, cfg.dataset, cfg.seed)
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist: the run has no fixed splits yet; run "
                                "`train-zoo --run DIR` first")
    d = read_json(path)
    s = Splits(d["dataset"], d["seed"], np.array(d["train"], dtype=np.int64),
               np.array(d["val"], dtype=np.int64), np.array(d["test"], dtype=np.int64))
    return s.limited(cfg.limit_train, cfg.limit_eval).fingerprint


# ---- predictions ---------------------------------------------------------------------------

def predict_model(model: nn.Module, data: ImageSet, info: PreprocessLike,
                  batch_size: int = 256, device: str = "cpu", progress: bool = False,
                  desc: str = "predict", num_classes: int | None = None
                  ) -> tuple[np.ndarray, np.ndarray]:
    """(preds (N,) int64 from float32 logits, probs (N, C) float16 softmax) of one model;
    ``info``: its preprocessing (the dataset's ``DatasetInfo`` or its own ``Preprocess``)."""
    logits = predict_logits(model, data, info, batch_size=batch_size, device=device,
                            progress=progress, desc=desc)
    n_cls = num_classes if num_classes is not None else getattr(info, "num_classes", None)
    if logits.ndim != 2 or (n_cls is not None and logits.shape[1] != n_cls):
        raise ValueError(f"model returned logits of shape {tuple(logits.shape)}, expected "
                         f"(N, {n_cls}) for this dataset")
    return table_columns(logits)


def table_columns(logits: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """What a prediction table stores of one model's float32 logits (N, C): preds (N,) int64,
    the argmax of the logits, and probs (N, C) float16, their softmax. The one definition, for
    profile-zoo and the library's ``build_table`` alike."""
    preds = logits.argmax(dim=1).numpy().astype(np.int64)
    probs = torch.softmax(logits, dim=1).numpy().astype(np.float16)
    return preds, probs


def assemble_table(per_model: dict[str, tuple[np.ndarray, np.ndarray]], order: Sequence[str],
                   data: ImageSet, split: str, meta: dict[str, Any]) -> PredictionTable:
    """Stack per-model (preds, probs) into a table with models in ``order``."""
    missing = [m for m in order if m not in per_model]
    if missing:
        raise KeyError(f"no predictions for models {missing}")
    preds = np.stack([per_model[m][0] for m in order], axis=1)   # (N, M)
    probs = np.stack([per_model[m][1] for m in order], axis=1)   # (N, M, C)
    return PredictionTable(list(order), data.labels.numpy(), preds, probs, data.ids.numpy(),
                           split, dict(meta))


def build_table(models: dict[str, nn.Module], data: ImageSet, info: DatasetInfo, split: str,
                order: Sequence[str] | None = None, meta: dict[str, Any] | None = None,
                batch_size: int = 256, device: str = "cpu") -> PredictionTable:
    """A table from in-memory modules (no caching): the core that ``profile_run`` also uses."""
    order = list(order or models)
    per = {m: predict_model(models[m], data, info, batch_size, device) for m in order}
    return assemble_table(per, order, data, split, meta or {})


def _cache_path(rd: RunDir, model: str, split: str) -> Path:
    return rd.tables / "cache" / f"{model}-{split}.npz"


def _read_cached(path: Path, sha: str, ids: np.ndarray,
                 dataset_fp: str) -> tuple[np.ndarray, np.ndarray] | None:
    if not path.exists():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            if (str(z["checkpoint_sha256"]) != sha or str(z["dataset_fingerprint"]) != dataset_fp
                    or not np.array_equal(z["sample_ids"], ids)):
                return None
            return z["preds"].astype(np.int64), z["probs"].astype(np.float16)
    except (OSError, KeyError, ValueError):
        return None  # unreadable cache: recompute


def _write_cached(path: Path, sha: str, ids: np.ndarray, dataset_fp: str, preds: np.ndarray,
                  probs: np.ndarray) -> None:
    def write(p: Path) -> None:
        with p.open("wb") as f:
            np.savez_compressed(f, preds=preds, probs=probs, sample_ids=ids,
                                checkpoint_sha256=np.array(sha),
                                dataset_fingerprint=np.array(dataset_fp))
    atomic_write(path, write)


# ---- costs ---------------------------------------------------------------------------------

def _cost_is_current(cost: ModelCost, sha: str, settings: CostSettings, old_machine: dict[str, Any],
                     machine: dict[str, Any]) -> bool:
    e = cost.extra
    return (e.get("checkpoint_sha256") == sha and e.get("threads") == settings.threads
            and e.get("device") == settings.device
            and cost.throughput_batch == settings.throughput_batch
            and old_machine.get("cpu") == machine.get("cpu")
            and old_machine.get("torch") == machine.get("torch"))


def _load_costs(path: Path) -> CostTable | None:
    if not path.exists():
        return None
    try:
        return CostTable.load(path)
    except (ValueError, TypeError, KeyError):
        return None  # written by an older version: measure again


# ---- the whole step ------------------------------------------------------------------------

def profile_run(run: str | Path, config: ProfileConfig | None = None) -> ProfileResult:
    """Costs then tables for the run's finished models (see the module docstring)."""
    config = config or ProfileConfig()
    rd = RunDir(run)
    finished = rd.finished_models()
    if not finished:
        raise FileNotFoundError(f"no finished models in {rd.root / 'zoo'} (a model is finished "
                                "when it has checkpoint.pt and card.json); run `train-zoo` first")
    if config.models:
        unknown = [m for m in config.models if m not in finished]
        if unknown:
            raise ValueError(f"models {unknown} are not finished in {rd.root / 'zoo'}; "
                             f"finished: {finished}")
        models = list(dict.fromkeys(config.models))
    else:
        models = finished
    hashes = checkpoint_hashes(rd.root, models)
    data = prepare_data(rd.root, **rd.load_config().data_kwargs())
    costs, measured, reused_costs = _profile_costs(rd, models, finished, hashes, data, config)
    order = [n for n in costs.sorted_names() if n in models]    # the costs fix the model order
    dataset_fp = data.splits.meta.get("full_fingerprint", data.splits.fingerprint)
    per_split, predicted, reused_pred = _profile_predictions(rd, order, hashes, data, config,
                                                             dataset_fp)
    # step 3: the tables (rewritten only where they changed)
    meta = {"dataset": data.info.name, "dataset_info": data.info.to_dict(),
            "split_fingerprint": data.splits.fingerprint, "full_split_fingerprint": dataset_fp,
            "checkpoint_hashes": {m: hashes[m] for m in order},
            "models_requested": list(config.models) if config.models else None,
            "cost_order_key": "ms_per_image",
            "ms_per_image": {m: costs[m].ms_per_image for m in order},
            "created": _now(), "torch": torch.__version__}
    tables = {}
    for s in config.splits:
        table = assemble_table(per_split[s], order, data.split(s), s, meta)
        if not _table_is_current(rd.tables, s, table):
            table.save(rd.tables)
        tables[s] = table
    rows = summary_rows(tables, costs)
    write_csv(rd.results / "zoo_profile.csv", rows)
    return ProfileResult(tables, costs, rows, measured, predicted, reused_costs, reused_pred)


def _profile_costs(rd: RunDir, models: list[str], finished: list[str], hashes: dict[str, str],
                   data: Any, config: ProfileConfig) -> tuple[CostTable, list[str], list[str]]:
    """Step 1: each model's measured cost (a current entry of costs.json is kept), saved after
    every model; returns (costs, measured, reused)."""
    settings = config.costs

    machine = machine_info(settings)
    old = None if config.force else _load_costs(rd.costs)
    costs = CostTable(models={}, machine=machine)
    measured, reused_costs = [], []
    timing_set = data.val if len(data.val) else data.test
    timing_images = normalize(timing_set.images[:settings.throughput_batch], data.info)
    if old is not None:  # keep other models' entries that are still current
        for name, cost in old.models.items():
            if name not in models and name in finished and _cost_is_current(
                    cost, checkpoint_hashes(rd.root, [name])[name], settings, old.machine,
                    machine):
                costs.models[name] = cost
    for m in tqdm(models, desc="costs", disable=not config.progress):
        if old is not None and m in old.models and _cost_is_current(
                old.models[m], hashes[m], settings, old.machine, machine):
            costs.models[m] = old.models[m]
            reused_costs.append(m)
            continue
        own = own_preprocess(rd.checkpoint(m))
        x = timing_images if own is None else prepare(
            timing_set.images[:settings.throughput_batch], own)   # e.g. Resize 256 + Crop 224
        costs.models[m] = measure_cost(m, rd.checkpoint(m), x, settings,
                                       checkpoint_sha256=hashes[m])
        measured.append(m)
        costs.save(rd.costs)  # keep progress if interrupted
    if not measured and old is not None and set(old.models) == set(costs.models):
        costs.machine = old.machine  # nothing new: leave costs.json as it was
    else:
        costs.save(rd.costs)
    return costs, measured, reused_costs


def _profile_predictions(rd: RunDir, order: list[str], hashes: dict[str, str], data: Any,
                         config: ProfileConfig, dataset_fp: str
                         ) -> tuple[dict[str, dict[str, tuple[np.ndarray, np.ndarray]]],
                                    list[str], list[str]]:
    """Step 2: every model's predictions per split, through the cache (one model in memory at
    a time); returns (split -> model -> (preds, probs), predicted, reused)."""
    settings = config.costs
    per_split: dict[str, dict[str, tuple[np.ndarray, np.ndarray]]] = {s: {} for s in config.splits}
    predicted, reused_pred = [], []
    todo = []  # (model, split), model-major so each model is loaded once
    for m in order:
        for s in config.splits:
            ids = data.split(s).ids.numpy()
            hit = None if config.force else _read_cached(_cache_path(rd, m, s), hashes[m], ids,
                                                          dataset_fp)
            if hit is None:
                todo.append((m, s))
            else:
                per_split[s][m] = hit
                reused_pred.append(f"{m}/{s}")
    torch_threads = torch.get_num_threads()
    torch.set_num_threads(settings.threads)
    try:
        loaded: dict[str, nn.Module] = {}
        for m, s in tqdm(todo, desc="predict", disable=not config.progress):
            if m not in loaded:
                loaded.clear()  # one model in memory at a time
                model, ckpt = load_model(rd.checkpoint(m), device=settings.device)
                loaded[m] = model
                how = preprocess_of(ckpt, data.info)
                if isinstance(how, DatasetInfo):
                    how = data.info        # the run's own data: its current statistics
            split_data = data.split(s)
            preds, probs = predict_model(loaded[m], split_data, how, config.batch_size,
                                         settings.device, progress=config.progress,
                                         desc=f"{m}/{s}", num_classes=data.info.num_classes)
            _write_cached(_cache_path(rd, m, s), hashes[m], split_data.ids.numpy(), dataset_fp,
                          preds, probs)
            per_split[s][m] = (preds, probs)
            predicted.append(f"{m}/{s}")
    finally:
        torch.set_num_threads(torch_threads)
    return per_split, predicted, reused_pred


def _table_is_current(directory: Path, split: str, new: PredictionTable) -> bool:
    """True when the saved table already holds exactly ``new`` (so it is not rewritten)."""
    try:
        old = PredictionTable.load(directory, split)
    except (FileNotFoundError, ValueError):
        return False
    keys = ("split_fingerprint", "checkpoint_hashes", "models_requested", "dataset",
            "ms_per_image")
    return (old.model_names == new.model_names
            and all(old.meta.get(k) == new.meta.get(k) for k in keys)
            and np.array_equal(old.sample_ids, new.sample_ids)
            and np.array_equal(old.preds, new.preds) and np.array_equal(old.probs, new.probs))


def load_tables(run: str | Path, splits: Sequence[str] = ("val", "test"),
                require_all: bool | None = None) -> dict[str, PredictionTable]:
    """Read the run's tables, refusing any that no longer match the run.

    Raises ``TableMismatchError`` naming the model whose checkpoint changed or disappeared,
    the split whose fingerprint changed, or the finished models a whole-zoo table lacks
    (``require_all=None``: required when the table was made for every model).
    """
    rd = RunDir(run)
    tables = {s: PredictionTable.load(rd.tables, s) for s in splits}
    current_fp = run_split_fingerprint(rd.root)
    finished = rd.finished_models()
    for s, t in tables.items():
        fp = t.meta.get("split_fingerprint")
        if fp != current_fp:
            raise TableMismatchError(
                f"table {s!r} was made on split fingerprint {fp} but the run's splits now have "
                f"fingerprint {current_fp}; re-run `profile-zoo --run {rd.root}`")
        recorded = t.meta.get("checkpoint_hashes") or {}
        for m in t.model_names:
            if m not in finished:
                raise TableMismatchError(
                    f"table {s!r} holds model {m!r}, which is no longer a finished model in "
                    f"{rd.root / 'zoo'}; re-run `profile-zoo --run {rd.root}`")
            if m not in recorded:
                raise TableMismatchError(f"table {s!r} records no checkpoint hash for model "
                                         f"{m!r}; re-run `profile-zoo --run {rd.root}`")
        now = checkpoint_hashes(rd.root, t.model_names)
        for m in t.model_names:
            if now[m] != recorded[m]:
                raise TableMismatchError(
                    f"checkpoint of model {m!r} changed since table {s!r} was made (sha256 "
                    f"{recorded[m][:12]}... then, {now[m][:12]}... now); re-run "
                    f"`profile-zoo --run {rd.root}`")
        need_all = (t.meta.get("models_requested") is None) if require_all is None else require_all
        extra = [m for m in finished if m not in t.model_names]
        if need_all and extra:
            raise TableMismatchError(
                f"table {s!r} lacks models finished after it was made: {extra}; re-run "
                f"`profile-zoo --run {rd.root}`")
    names = list(tables)
    for a, b in zip(names, names[1:]):
        tables[a].check_compatible(tables[b])
    return tables


# ---- summary -------------------------------------------------------------------------------

def topk_accuracy(table: PredictionTable, k: int) -> np.ndarray:
    """(M,) fraction of samples whose label is among each model's k most probable classes."""
    if k == 1:  # follows the stored preds (argmax of float32 logits), not the float16 probs
        return table.accuracy()
    k = min(k, table.n_classes)
    top = np.argsort(-table.probs.astype(np.float32), axis=2, kind="stable")[:, :, :k]
    return (top == table.labels[:, None, None]).any(axis=2).mean(axis=0)


def summary_rows(tables: dict[str, PredictionTable], costs: CostTable) -> list[dict[str, Any]]:
    """One row per model: top-1/top-5 per split, macro P/R/F1 on test (else the last split),
    and the measured costs."""
    from sklearn.metrics import precision_recall_fscore_support
    first = next(iter(tables.values()))
    prf_split = "test" if "test" in tables else list(tables)[-1]
    rows = []
    for i, m in enumerate(first.model_names):
        row: dict[str, Any] = {"model": m}
        for s, t in tables.items():
            row[f"{s}_top1"] = float(topk_accuracy(t, 1)[i])
            row[f"{s}_top5"] = float(topk_accuracy(t, 5)[i])
        t = tables[prf_split]
        p, r, f, _ = precision_recall_fscore_support(
            t.labels, t.preds[:, i], labels=np.arange(t.n_classes), average="macro",
            zero_division=0)
        row.update({"prf_split": prf_split, "precision": float(p), "recall": float(r),
                    "f1": float(f)})
        c = costs[m]
        row.update({"params": c.params, "nonzero_params": c.nonzero_params, "macs": c.macs,
                    "size_mb": c.size_mb, "latency_ms_b1": c.latency_ms_b1,
                    "images_per_second": c.images_per_second, "ms_per_image": c.ms_per_image,
                    "throughput_batch": c.throughput_batch, "peak_memory_mb": c.peak_memory_mb})
        rows.append(row)
    return rows


def format_summary(rows: list[dict[str, Any]], splits: Sequence[str]) -> str:
    """A plain-text table of ``summary_rows`` (accuracies in %, MACs in millions)."""
    cols: list[tuple[str, str, str]] = [("model", "model", "{}")]
    for s in splits:
        cols += [(f"{s}_top1", f"{s} top1%", "{:.2f}"), (f"{s}_top5", f"{s} top5%", "{:.2f}")]
    prf = rows[0]["prf_split"] if rows else "test"
    cols += [("precision", f"P({prf})%", "{:.2f}"), ("recall", f"R({prf})%", "{:.2f}"),
             ("f1", f"F1({prf})%", "{:.2f}"), ("params", "params", "{:,}"),
             ("macs", "MMACs", "{:.2f}"), ("size_mb", "MB", "{:.2f}"),
             ("latency_ms_b1", "ms@b1", "{:.2f}"), ("images_per_second", "img/s@b256", "{:.0f}"),
             ("peak_memory_mb", "peakMB", "{:.1f}")]
    pct = {"precision", "recall", "f1"} | {f"{s}_top{k}" for s in splits for k in (1, 5)}

    def cell(r: dict[str, Any], key: str, fmt: str) -> str:
        v = r.get(key, "")
        if v == "":
            return ""
        if key in pct:
            v = 100 * v
        if key == "macs":
            v = v / 1e6
        return fmt.format(v)

    body = [[cell(r, k, f) for k, _, f in cols] for r in rows]
    head = [h for _, h, _ in cols]
    widths = [max(len(h), *(len(b[i]) for b in body)) if body else len(h)
              for i, h in enumerate(head)]
    lines = ["  ".join(h.rjust(w) for h, w in zip(head, widths))]
    lines += ["  ".join(c.rjust(w) for c, w in zip(b, widths)) for b in body]
    return "\n".join(lines)


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def own_preprocess(checkpoint: str | Path) -> Preprocess | None:
    """A model's own ``Preprocess`` (added with ``add-model``), or None for the zoo's models,
    which take the dataset's normalisation."""
    how = preprocess_of(read_checkpoint(checkpoint))
    return how if isinstance(how, Preprocess) else None
