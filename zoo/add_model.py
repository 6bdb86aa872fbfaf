"""Add a trained classifier of the user's own to a run: ``add-model``.

A torchvision architecture with the user's state dict (``--arch resnet50 --weights FILE``)
becomes a zoo member like any other: ``RUN/zoo/<name>/{checkpoint.pt, card.json}`` in this
project's checkpoint format (state dict plus the architecture description, never a pickled
module), with its own preprocessing stored beside (``extra["preprocess"]``: e.g. ImageNet's
Resize 256, CenterCrop 224, mean and std, grey images repeated to 3 channels). profile-zoo,
evaluate-routers, the report and the page then run it through that preprocessing. Its val and
test accuracy are measured here, on the run's own splits, and written to the card.
"""
from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from common.ensembles import ENSEMBLE_PREFIX, is_ensemble
from common.io import write_json
from zoo.checkpoint import file_sha256, save_checkpoint
from zoo.data import DatasetInfo, prepare_data
from zoo.infer import predict_logits
from zoo.preprocess import Preprocess
from zoo.rundir import RunDir
from zoo.torchvision_models import build_torchvision, torchvision_arch_dict

PREPROCESS_CHOICES = ("imagenet", "dataset")


@dataclass
class AddModelConfig:
    """What ``add_model`` adds: a torchvision ``arch`` with the weights at ``weights``."""

    arch: str
    weights: str | Path | None          # a state dict file (or a dict holding "state_dict")
    name: str | None = None             # default: the arch name
    preprocess: str = "imagenet"        # "imagenet" or "dataset" (the run's own normalisation)
    resize: int | None = None           # override the preset's resize / crop
    crop: int | None = None
    in_channels: int | None = None      # the model's first conv (default 3 for imagenet)
    small_input: bool = False           # ResNet stem for 28-64 px inputs (3x3 conv, no pool)
    force: bool = False                 # replace a member of the same name
    batch_size: int = 128

    def __post_init__(self) -> None:
        if self.preprocess not in PREPROCESS_CHOICES:
            raise ValueError(f"--preprocess must be one of {PREPROCESS_CHOICES}, got "
                             f"{self.preprocess!r}")


def _load_state(weights: str | Path) -> dict[str, Any]:
    path = Path(weights)
    if not path.exists():
        raise FileNotFoundError(f"weights file {path} does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ValueError(f"{path} cannot be read as a state dict with weights_only=True "
                         f"({type(e).__name__}: {e}); save it with "
                         "torch.save(model.state_dict(), path)") from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ValueError(f"{path} holds a {type(state).__name__}, not a state dict")
    return state


def preprocess_for(cfg: AddModelConfig, info: DatasetInfo) -> tuple[Preprocess, int]:
    """The member's preprocessing and the channel count its first convolution takes."""
    if cfg.preprocess == "imagenet":
        channels = cfg.in_channels or 3
        base = Preprocess.imagenet(resize=cfg.resize or 256, crop=cfg.crop or 224,
                                   channels=channels)
        return base, channels
    channels = cfg.in_channels or info.in_channels
    mean, std = list(info.mean), list(info.std)
    if channels != info.in_channels:               # grey statistics repeated per channel
        mean, std = mean[:1] * channels, std[:1] * channels
    return Preprocess(mean, std, cfg.resize, cfg.crop, channels if channels != info.in_channels
                      else None, name=f"{info.name}-normalize"), channels


def add_model(run: str | Path, cfg: AddModelConfig, log=print) -> dict[str, Any]:
    """Write ``RUN/zoo/<name>/{checkpoint.pt, card.json}``; returns the card."""
    rd = RunDir(run)
    if not rd.config_path.exists():
        raise FileNotFoundError(f"{rd.root} is not a run directory (no config.json); run "
                                "`train-zoo --run DIR` first, or pass the right --run")
    name = cfg.name or cfg.arch
    if "/" in name or not name:
        raise ValueError(f"model name {name!r} must be a plain folder name")
    if is_ensemble(name):
        raise ValueError(f"model name {name!r}: names starting with {ENSEMBLE_PREFIX!r} are "
                         "kept for committees (never the reference model); pass another --name")
    if rd.card(name).exists() and not cfg.force:
        raise FileExistsError(f"the run already has a model {name!r}; pass --force to replace "
                              "it or --name to add it under another name")
    bundle = prepare_data(rd.root, **rd.load_config().data_kwargs())
    info = bundle.info
    pre, channels = preprocess_for(cfg, info)
    extra_arch = {"in_channels": channels} if channels != 3 else {}
    if cfg.small_input:
        extra_arch["small_input"] = True
    model = build_torchvision(cfg.arch, info.num_classes, **extra_arch)
    if cfg.weights is not None:
        state = _load_state(cfg.weights)
        try:
            model.load_state_dict(state)
        except RuntimeError as e:
            first = str(e).splitlines()[0]
            raise ValueError(
                f"the weights in {cfg.weights} do not fit {cfg.arch} with {info.num_classes} "
                f"classes and {channels} input channels ({first}); fine-tune the model to this "
                f"run's {info.num_classes} classes first, or set --in-channels/--small-input to "
                "match how it was built") from None
    else:
        log(f"add-model: no --weights: {name} keeps random weights (a test or a placeholder)")
    model.eval()
    metrics = {}
    for split in ("val", "test"):
        data = bundle.split(split)
        logits = predict_logits(model, data, pre, batch_size=cfg.batch_size)
        metrics[f"{split}_accuracy"] = float(
            (logits.argmax(1).numpy() == data.labels.numpy()).mean()) if len(data) else float("nan")
    arch = torchvision_arch_dict(cfg.arch, info.num_classes, **extra_arch)
    ckpt_path = rd.checkpoint(name)
    save_checkpoint(ckpt_path, model_name=name, arch=arch, state_dict=model.state_dict(),
                    parent=None, metrics=metrics, data=info.to_dict(),
                    extra={"preprocess": pre.to_dict(), "added_from": str(cfg.weights or ""),
                           "command": "add-model"})
    params = int(sum(p.numel() for p in model.parameters()))
    card = {"model_name": name, "arch": arch, "parent": None, "variant": "added",
            "dataset": info.to_dict(), "preprocess": pre.to_dict(),
            "val_accuracy": metrics["val_accuracy"], "test_accuracy": metrics["test_accuracy"],
            "params": params, "weights": str(cfg.weights or ""),
            "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "checkpoint_sha256": file_sha256(ckpt_path), "metrics": metrics}
    write_json(rd.card(name), card)
    log(f"add-model: {name} ({cfg.arch}, {params:,} parameters, preprocessing "
        f"{pre.name or 'custom'}: resize {pre.resize}, crop {pre.crop}) -> {ckpt_path}; val "
        f"{100 * metrics['val_accuracy']:.2f}% test {100 * metrics['test_accuracy']:.2f}%; now "
        "run profile-zoo and evaluate-routers")
    return card
