"""``profile-zoo`` under torchrun: the prediction tables' work spread over the ranks.

``predict_sharded`` gives each rank its share of the (model, split) predictions that are not
cached yet, models across ranks as in ``train-zoo`` (``zoo.distributed.assign_to_ranks``,
weighted by checkpoint size x images), and writes them into ``RUN/tables/cache/`` exactly as
``zoo.profile.profile_run`` would. Rank 0 then runs ``profile_run`` alone: it finds every
prediction cached, assembles the tables and measures the costs in one process, so every timing
is still a single worker's (and says so). Every rank must see the run directory.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from zoo.checkpoint import load_model, preprocess_of
from zoo.data import DatasetInfo, prepare_data
from zoo.distributed import Dist, assign_to_ranks
from zoo.profile import (ProfileConfig, _cache_path, _read_cached, _write_cached,
                         checkpoint_hashes, predict_model)
from zoo.rundir import RunDir


def predict_sharded(run: str | Path, config: ProfileConfig, dist: Dist) -> dict[int, list[str]]:
    """Fill the prediction cache on all ranks (call on every rank); returns, on every rank,
    rank -> the ``model/split`` entries it predicted. Errors on any rank are raised on all."""
    rd = RunDir(run)

    def plan() -> tuple[dict[str, str], list[tuple[str, str]]]:
        models = list(dict.fromkeys(config.models or rd.finished_models()))
        hashes = checkpoint_hashes(rd.root, models)     # hashed (and cached) once, by rank 0
        data = prepare_data(rd.root, **rd.load_config().data_kwargs())
        fp = data.splits.meta.get("full_fingerprint", data.splits.fingerprint)
        todo = [(m, s) for m in models for s in config.splits
                if config.force or _read_cached(_cache_path(rd, m, s), hashes[m],
                                                data.split(s).ids.numpy(), fp) is None]
        return hashes, todo
    # decided on rank 0 before any rank writes a cache file, then told to all
    hashes, todo = dist.broadcast_object(plan() if dist.is_main else None)
    work: dict[str, float] = {}
    data = prepare_data(rd.root, **rd.load_config().data_kwargs()) if todo else None
    for m, s in todo:
        work[m] = work.get(m, 0.0) + rd.checkpoint(m).stat().st_size * len(data.split(s))
    owner = assign_to_ranks(work, dist.world_size)
    device = dist.device if str(config.costs.device).startswith("cuda") else config.costs.device
    done: list[str] = []
    error = None
    try:
        for m in [m for m in work if owner[m] == dist.rank]:
            model, ckpt = load_model(rd.checkpoint(m), device=device)
            how: Any = preprocess_of(ckpt, data.info)
            if isinstance(how, DatasetInfo):
                how = data.info                 # the run's own data: its current statistics
            fp = data.splits.meta.get("full_fingerprint", data.splits.fingerprint)
            for s in [s for mm, s in todo if mm == m]:
                part = data.split(s)
                preds, probs = predict_model(model, part, how, config.batch_size, device,
                                             num_classes=data.info.num_classes)
                _write_cached(_cache_path(rd, m, s), hashes[m], part.ids.numpy(), fp, preds,
                              probs)
                done.append(f"{m}/{s}")
    except Exception as e:   # told to the other ranks rather than leaving them waiting
        error = f"rank {dist.rank}: {type(e).__name__}: {e}"
    gathered = dist.gather_objects((done, error))
    errors = [e for _, e in gathered if e]
    if errors:
        raise ValueError("; ".join(errors))
    return {r: d for r, (d, _) in enumerate(gathered)}
