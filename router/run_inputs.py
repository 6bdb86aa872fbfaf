"""What evaluate-routers reads from a run directory: tables, costs, models, aligned images,
and which models make up each zoo (``all``, ``base``)."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from common.tables import CostTable, PredictionTable
from router.base import RouterError
from zoo.checkpoint import load_model, preprocess_of
from zoo.device import describe_device, place, resolve_device
from zoo.data import DatasetInfo, ImageSet, prepare_data
from zoo.rundir import RunDir


@dataclass
class RunInputs:
    """Everything evaluate needs from a run directory, aligned with the tables."""

    root: Path
    val: PredictionTable
    test: PredictionTable
    costs: CostTable
    cvec: np.ndarray                 # (M,) ms per image, table order
    macs: np.ndarray                 # (M,) MACs per image
    models: list[nn.Module]
    infos: list[DatasetInfo]
    checkpoints: list[Path]
    val_images: torch.Tensor         # (N_val, C, H, W) uint8, val table order
    test_images: torch.Tensor        # (N_test, C, H, W) uint8, test table order
    info: DatasetInfo
    devices: list[str] = field(default_factory=list)   # (M,) where each model runs


# ---- inputs -------------------------------------------------------------------------------

def images_for_table(split: ImageSet, table: PredictionTable) -> torch.Tensor:
    """The split's images in the table's row order (``sample_ids`` are the split's ids)."""
    ids = split.ids.numpy()
    pos = {int(i): p for p, i in enumerate(ids)}
    missing = [int(i) for i in table.sample_ids if int(i) not in pos]
    if missing:
        raise RouterError(f"table {table.split!r} names {len(missing)} sample ids not in the run's "
                          f"{table.split} split (e.g. {missing[:3]}); re-run `profile-zoo`")
    idx = torch.as_tensor([pos[int(i)] for i in table.sample_ids], dtype=torch.long)
    return split.images.index_select(0, idx)


def load_run_inputs(run: str | Path, progress: bool = False,
                    device: str | torch.device = "cpu") -> RunInputs:
    """Tables (checked against the run's checkpoints), costs, models (on ``device``; quantized
    ones stay on the CPU, ``zoo.device.place``) and aligned images (on the CPU)."""
    from zoo.profile import load_tables
    rd = RunDir(run)
    tables = load_tables(rd.root, ("val", "test"))
    val, test = tables["val"], tables["test"]
    costs = CostTable.load(rd.costs)
    names = val.model_names
    bundle = prepare_data(rd.root, **rd.load_config().data_kwargs())
    dev = resolve_device(device)
    models, infos, ckpts, devices = [], [], [], []
    for m in tqdm(names, desc="load models", disable=not progress, leave=False):
        model, ckpt = load_model(rd.checkpoint(m))
        devices.append(describe_device(place(model, dev)))
        models.append(model)
        infos.append(preprocess_of(ckpt, bundle.info))
        ckpts.append(rd.checkpoint(m))
    return RunInputs(rd.root, val, test, costs, costs.vector(names, "ms_per_image"),
                     costs.vector(names, "macs"), models, infos, ckpts,
                     images_for_table(bundle.val, val), images_for_table(bundle.test, test),
                     bundle.info, devices)


def zoo_indices(inp: RunInputs, zoos: Sequence[str]) -> dict[str, np.ndarray]:
    """Model positions of each zoo: ``all`` (every model) and ``base`` (uncompressed models:
    those whose card names no parent). ``base`` is left out where it equals ``all``."""
    M = inp.val.n_models
    out: dict[str, np.ndarray] = {}
    for zoo in zoos:
        if zoo == "all":
            out["all"] = np.arange(M)
        elif zoo == "base":
            rd = RunDir(inp.root)
            base = [i for i, m in enumerate(inp.val.model_names)
                    if not (rd.card(m).exists() and rd.read_card(m).get("parent"))]
            if base and len(base) < M:
                out["base"] = np.asarray(base, dtype=np.int64)
        else:
            raise RouterError(f"unknown zoo {zoo!r}; use 'all' and/or 'base'")
    return out
