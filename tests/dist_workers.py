"""Worker functions for tests/test_distributed.py, run in processes ``torch.multiprocessing``
spawns (one per rank, a gloo group over a file store); importable, so spawn can find them."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from zoo.data import prepare_data
from zoo.distributed import DataParallel, Dist, evaluate_sharded, init_distributed
from zoo.registry import model_arch
from zoo.train import TrainConfig, fit
from zoo.train_zoo import train_zoo_model
from zoo.vgg import VGG

# SGD, so that float rounding between one process and two cannot flip an update's sign (Adam's
# first steps move every weight by about lr whatever the gradient's size); an odd global batch
# (7 + 6 per rank) checks the weighting of unequal parts.
DDP_CONFIG = dict(epochs=1, batch_size=13, optimizer="sgd", lr=0.05, momentum=0.9,
                  weight_decay=5e-4, schedule="cosine", patience=None, max_batches_per_epoch=3)
RESUME_CONFIG = dict(epochs=3, batch_size=16, optimizer="sgd", lr=0.05, momentum=0.9,
                     weight_decay=0.0, schedule="cosine", patience=None)


def bundle_for(run: Path, data_dir: Path) -> Any:
    return prepare_data(run, "fashion-mnist", data_dir, seed=0, limit_train=96, limit_eval=41,
                        download=False)


def arch_for(bundle: Any, name: str = "tiny_vgg2") -> Any:
    """A narrow VGG with BatchNorm and no dropout (dropout draws differ from rank to rank)."""
    info = bundle.info
    arch = model_arch(name, num_classes=info.num_classes, in_channels=info.in_channels,
                      input_size=info.input_size, width=0.25)
    arch.batch_norm, arch.dropout = True, 0.0
    return arch


def join(rank: int, world: int, store: Path) -> Dist:
    torch.set_num_threads(1)
    env = {"RANK": str(rank), "WORLD_SIZE": str(world), "LOCAL_RANK": str(rank)}
    return init_distributed("cpu", environ=env, init_method=f"file://{store}")


def ddp_fit_and_evaluate(rank: int, world: int, store: Path, run: Path, data_dir: Path,
                         out: Path) -> None:
    """Fit with DDP, save the weights; evaluate the initial model sharded, save the figures."""
    dist = join(rank, world, store)
    try:
        bundle = bundle_for(run, data_dir)
        torch.manual_seed(0)
        model = VGG(arch_for(bundle))
        sharded = {s: evaluate_sharded(model, getattr(bundle, s), bundle.info, dist,
                                       batch_size=8) for s in ("val", "test")}
        fit(model, bundle.train, bundle.val, bundle.info, TrainConfig(**DDP_CONFIG),
            progress=False, data_parallel=DataParallel(dist))
        torch.save(model.state_dict(), out / f"weights-{rank}.pt")
        (out / f"eval-{rank}.json").write_text(json.dumps(sharded))
    finally:
        dist.close()


class Cut(Exception):
    """Stands for a kill after an epoch."""


def ddp_train_zoo_model(rank: int, world: int, store: Path, run: Path, data_dir: Path,
                        out: Path, cut_after: int) -> None:
    """``train_zoo_model`` with DDP; ``cut_after`` > 0 stops every rank after that epoch."""
    dist = join(rank, world, store)
    try:
        bundle = bundle_for(run, data_dir)

        def cut(epoch: int, row: dict) -> None:
            if epoch == cut_after:
                raise Cut

        try:
            res = train_zoo_model(run, "tiny_vgg2", arch_for(bundle), bundle,
                                  TrainConfig(**RESUME_CONFIG), command="test", progress=False,
                                  log_epochs=False, on_epoch_end=cut if cut_after else None,
                                  data_parallel=DataParallel(dist),
                                  placement={"mode": "ddp", "launch_world_size": world})
            status = res.status
        except Cut:
            status = "cut"
        (out / f"status-{cut_after}-{rank}.json").write_text(json.dumps(status))
    finally:
        dist.close()


def compress_config(run: Path, variants: list[str]) -> Any:
    """A fast ``compress`` of tiny_vgg3: one fine-tune epoch on 128 images, timings cut short."""
    from zoo.compress.measure import MeasureSettings
    from zoo.compress.run import CompressConfig
    return CompressConfig(run=str(run), base="tiny_vgg3", variants=list(variants),
                          finetune_epochs=1, limit_train=128, calib_images=64, threads=1,
                          measure=MeasureSettings(threads=1, latency_runs=2, batch_repeats=1,
                                                  budget_s=0.2, memory=False),
                          progress=False, command="test")


def compress_on_ranks(rank: int, world: int, store: Path, run: Path, out: Path,
                      variants: list[str], tag: str) -> None:
    """``run_compress`` on every rank; each rank saves what it built and what it logged."""
    from zoo.compress.run import run_compress
    dist = join(rank, world, store)
    try:
        lines: list[str] = []
        res = run_compress(compress_config(run, variants), log=lines.append, dist=dist)
        (out / f"compress-{tag}-{rank}.json").write_text(json.dumps(
            {"built": res.built, "skipped": res.skipped, "rows": len(res.rows), "log": lines}))
    finally:
        dist.close()
