"""A tiny profiled run for the router tests: 2-3 width-0.25 tiny VGGs trained a few steps
(``add_model`` with ``steps=0`` also serves the profile tests: an untrained zoo member)."""
from __future__ import annotations

import datetime as dt
from pathlib import Path

import torch
from torch import nn

import zoo
from common.io import write_json
from zoo.checkpoint import file_sha256, save_checkpoint
from zoo.costs import CostSettings
from zoo.data import normalize, prepare_data
from zoo.profile import ProfileConfig, profile_run
from zoo.rundir import RunConfig, RunDir


def train_steps(model: nn.Module, bundle, steps: int, seed: int) -> None:
    """A few Adam steps on the run's train split (enough to separate the models)."""
    torch.manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    x, y = bundle.train.images, bundle.train.labels
    g = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(steps):
        b = torch.randint(0, len(y), (64,), generator=g)
        loss = nn.functional.cross_entropy(model(normalize(x[b], bundle.info)), y[b])
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()


def add_model(run: Path, name: str, bundle, steps: int, seed: int) -> None:
    torch.manual_seed(seed)
    info = bundle.info
    m = zoo.create_model(name, num_classes=info.num_classes, in_channels=info.in_channels,
                         input_size=info.input_size, width=0.25)
    train_steps(m, bundle, steps, seed)
    rd = RunDir(run)
    save_checkpoint(rd.checkpoint(name), model_name=name, arch=m.arch.to_dict(),
                    state_dict=m.state_dict(), data=info.to_dict())
    write_json(rd.card(name), {
        "model_name": name, "arch": m.arch.to_dict(), "parent": None, "variant": None,
        "dataset": info.to_dict(), "split_fingerprint": bundle.splits.fingerprint,
        "val_accuracy": None, "test_accuracy": None,
        "params": sum(p.numel() for p in m.parameters()), "train_seconds": 0.0,
        "train_config": {"steps": steps}, "command": "tests/router_run.py",
        "created": dt.datetime.now(dt.timezone.utc).isoformat(),
        "checkpoint_sha256": file_sha256(rd.checkpoint(name))})


def make_router_run(run: Path, data_dir: Path,
                    models: dict[str, int] | None = None) -> Path:
    """Config + trained tiny models + tables and costs (profile-zoo, fast settings)."""
    models = models or {"tiny_vgg1": 4, "tiny_vgg2": 15, "tiny_vgg3": 40}
    cfg = RunConfig(data_dir=str(data_dir), download=False)
    RunDir(run).save_config(cfg)
    bundle = prepare_data(run, **cfg.data_kwargs())
    for i, (name, steps) in enumerate(models.items()):
        add_model(run, name, bundle, steps, seed=i)
    profile_run(run, ProfileConfig(progress=False, batch_size=128,
                                   costs=CostSettings(threads=1, budget_s=0.2, memory="off",
                                                      min_latency_runs=2,
                                                      min_throughput_repeats=1)))
    return run
