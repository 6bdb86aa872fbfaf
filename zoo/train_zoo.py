"""Training a zoo into a run directory: every model of a preset, its card, the ladder check.

``train_zoo_model`` trains one model into ``RUN/zoo/<model>/`` (history.csv, a resumable state
file, checkpoint.pt, then card.json, which marks it finished) or skips one already finished
with the same settings. ``train_zoo`` does that for each model a preset names and returns one
``train_zoo.csv`` row per base model (``zoo_row``); ``ladder_violations`` says where a costlier
model is not more accurate than a cheaper one. The training loop itself is ``zoo.train``.
"""
from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from common.io import read_json, write_json
from zoo.checkpoint import file_sha256, save_checkpoint
from zoo.costs import count_macs
from zoo.data import DatasetInfo
from zoo.presets import flip_makes_sense, get_preset
from zoo.registry import model_arch
from zoo.rundir import RunDir
from zoo.train import EpochCallback, TrainConfig, evaluate, fit, identity_diffs
from zoo.vgg import VGG, VGGArch


# ---- one zoo model into a run directory -------------------------------------------------------

@dataclass
class ZooModelResult:
    """What ``train_zoo_model`` did for one model: "trained", "resumed" or "skipped"."""

    model_name: str
    status: str
    card: dict[str, Any]


def card_mismatch(card: dict[str, Any], arch: dict[str, Any], config: TrainConfig,
                  split_fingerprint: str) -> list[str]:
    """Why an existing card does not describe the requested model (empty: it does)."""
    out = []
    if card.get("arch") != arch:
        out.append(f"arch {card.get('arch')} -> {arch}")
    if card.get("split_fingerprint") != split_fingerprint:
        out.append(f"split_fingerprint {card.get('split_fingerprint')} -> {split_fingerprint}")
    out += [f"train_config.{d}" for d in identity_diffs(card.get("train_config") or {}, config)]
    return out


def train_zoo_model(run_dir: str | Path, model_name: str, arch: Any, bundle: Any,
                    config: TrainConfig, *, command: str, progress: bool = True,
                    on_epoch_end: EpochCallback | None = None,
                    log_epochs: bool = True) -> ZooModelResult:
    """Train ``model_name`` (built from ``arch``, a ``VGGArch``) into ``RUN/zoo/<model>/``.

    Writes history.csv and a resumable ``train_state.pt`` each epoch, then checkpoint.pt and,
    last, card.json (which marks the model finished); removes the state file. A finished model
    whose card matches ``arch``, ``config`` and the split is skipped; a card that does not
    match is an error (a different model must not silently replace one other steps used).
    """
    rd = RunDir(run_dir)
    arch_dict = arch.to_dict()
    fingerprint = bundle.splits.fingerprint
    card_path, ckpt_path = rd.card(model_name), rd.checkpoint(model_name)
    if card_path.exists() and ckpt_path.exists():
        card = read_json(card_path)
        diffs = card_mismatch(card, arch_dict, config, fingerprint)
        if not diffs:
            return ZooModelResult(model_name, "skipped", card)
        raise ValueError(f"{model_name} in {rd.root} is finished but was trained with other "
                         f"settings ({'; '.join(diffs)}); use a new --run directory, the "
                         f"original settings, or delete {rd.model_dir(model_name)} to retrain")
    state_path = rd.model_dir(model_name) / "train_state.pt"
    status = "resumed" if state_path.exists() else "trained"
    torch.manual_seed(config.seed)  # the initial weights depend on the seed only
    model = VGG(arch)
    result = fit(model, bundle.train, bundle.val, bundle.info, config, state_path=state_path,
                 history_path=rd.history(model_name), progress=progress, desc=model_name,
                 on_epoch_end=on_epoch_end, log_epochs=log_epochs)
    device = config.device
    val = evaluate(model, bundle.val, bundle.info, config.eval_batch_size, device,
                   config.channels_last)
    test = evaluate(model, bundle.test, bundle.info, config.eval_batch_size, device,
                    config.channels_last)
    model.to("cpu", memory_format=torch.contiguous_format)
    params = sum(p.numel() for p in model.parameters())
    metrics = {"val_accuracy": val["accuracy"], "val_loss": val["loss"], "val_top5": val["top5"],
               "test_accuracy": test["accuracy"], "test_loss": test["loss"],
               "test_top5": test["top5"], "best_epoch": result.best_epoch,
               "epochs_run": result.epochs_run, "stopped_early": result.stopped_early,
               "train_seconds": round(result.seconds, 2)}
    save_checkpoint(ckpt_path, model_name=model_name, arch=arch_dict,
                    state_dict=model.state_dict(), parent=None, metrics=metrics,
                    train_config=config.to_dict(), data=bundle.info.to_dict(),
                    extra={"split_fingerprint": fingerprint, "command": command,
                           "threads": torch.get_num_threads()})
    card = {"model_name": model_name, "arch": arch_dict, "parent": None, "variant": None,
            "dataset": bundle.info.to_dict(), "split_fingerprint": fingerprint,
            "val_accuracy": val["accuracy"], "test_accuracy": test["accuracy"],
            "params": params, "train_seconds": round(result.seconds, 2),
            "train_config": config.to_dict(), "command": command,
            "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "checkpoint_sha256": file_sha256(ckpt_path),
            "metrics": metrics, "threads": torch.get_num_threads(),
            "n_train": len(bundle.train), "n_val": len(bundle.val), "n_test": len(bundle.test)}
    write_json(card_path, card)
    state_path.unlink(missing_ok=True)
    return ZooModelResult(model_name, status, card)


# ---- the whole zoo ----------------------------------------------------------------------------

def ladder_violations(names: list[str], accuracies: list[float]) -> list[str]:
    """Pairs breaking the ladder: a model (listed later = costlier) not more accurate than an
    earlier (cheaper) one. Empty when the accuracies rise strictly along ``names``."""
    out = []
    for j in range(len(names)):
        for i in range(j):
            if not accuracies[j] > accuracies[i]:
                out.append(f"{names[j]} ({100 * accuracies[j]:.2f}%) is not more accurate than "
                           f"the cheaper {names[i]} ({100 * accuracies[i]:.2f}%)")
    return out


@dataclass
class ZooRunSettings:
    """What ``train-zoo`` was asked for, beyond the run's data settings."""

    preset: str = "quick"
    models: list[str] | None = None      # None: the preset's models
    epochs: int | None = None
    width: float | None = None
    lr: float | None = None
    seed: int = 0
    device: str = "cpu"
    threads: int | None = None
    amp: str | None = None               # None: the preset's ("off")
    progress: bool = True


def train_zoo(run_dir: str | Path, bundle: Any, settings: ZooRunSettings, *, command: str,
              log: Callable[[str], None] = print) -> list[dict[str, Any]]:
    """Train (or resume, or skip) every requested model; return one summary row per base model
    of the run (status trained / resumed / skipped, or "earlier" for one finished by an earlier
    call and not named in this one), in the preset's order, cheapest first."""
    preset = get_preset(settings.preset)
    models = settings.models or preset.models
    info = bundle.info
    rows = []
    for i, name in enumerate(models):
        recipe = preset.recipe(name, epochs=settings.epochs, width=settings.width, lr=settings.lr)
        arch = model_arch(name, num_classes=info.num_classes, in_channels=info.in_channels,
                          input_size=info.input_size, width=recipe.width)
        arch.batch_norm = recipe.batch_norm
        if recipe.dropout is not None:
            arch.dropout = recipe.dropout
        config = preset.train_config(recipe, seed=settings.seed, device=settings.device,
                                     threads=settings.threads, amp=settings.amp)
        if config.augment and not flip_makes_sense(info.name):
            config.flip = False
        log(f"[{i + 1}/{len(models)}] {name}: width {recipe.width}, "
            f"{'BN, ' if recipe.batch_norm else ''}{config.epochs} epochs, lr {config.lr}, "
            f"{config.optimizer}/{config.schedule}"
            f"{', bf16 autocast' if config.amp == 'bf16' else ''}")
        res = train_zoo_model(run_dir, name, arch, bundle, config, command=command,
                              progress=settings.progress)
        card = res.card
        rows.append(zoo_row(name, res.status, card, info, width=recipe.width))
        log(f"[{i + 1}/{len(models)}] {name}: {res.status}; val {100 * card['val_accuracy']:.2f}% "
            f"test {100 * card['test_accuracy']:.2f}% in {card['train_seconds']:.0f} s")
    # base models the run finished in an earlier call that this one did not name: the table
    # and the ladder cover the run's whole zoo (compressed variants, with a parent, are not here)
    rd = RunDir(run_dir)
    named = {r["model"] for r in rows}
    for name in rd.finished_models():
        if name in named:
            continue
        card = rd.read_card(name)
        if card.get("parent") is None:
            rows.append(zoo_row(name, "earlier", card, info))
    order = {m: i for i, m in enumerate(preset.models)}
    rows.sort(key=lambda r: order.get(r["model"], len(order)))   # stable: others keep theirs
    return rows


def zoo_row(name: str, status: str, card: dict[str, Any], info: DatasetInfo,
            width: float | None = None) -> dict[str, Any]:
    """One row of ``train_zoo.csv`` from a model's card (MACs counted for one input). ``width``
    is the one asked for; None reads it off the first conv against the registry's width-1
    model (cards do not record it; rounding of channel counts can show, e.g. 0.3 as 0.2969)."""
    arch = VGGArch.from_dict(card["arch"])
    macs = count_macs(VGG(arch), (1, info.in_channels, info.input_size, info.input_size))
    if width is None:
        full = model_arch(name, num_classes=info.num_classes, in_channels=info.in_channels,
                          input_size=info.input_size, width=1.0)
        width = round(arch.cfg[0] / full.cfg[0], 4)
    return {"model": name, "status": status, "width": width,
            "batch_norm": arch.batch_norm, "params": card["params"], "macs": macs,
            "epochs": card["train_config"]["epochs"],
            "best_epoch": card.get("metrics", {}).get("best_epoch", ""),
            "val_accuracy": card["val_accuracy"], "test_accuracy": card["test_accuracy"],
            "train_seconds": card["train_seconds"]}
