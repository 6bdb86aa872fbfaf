"""Training on in-memory tensors: ``fit`` (resumable, early stopping), ``evaluate``.

(Training a whole zoo into a run directory, with cards and the ladder, is ``zoo.train_zoo``.)

Data stays as uint8 tensors; each batch is augmented (optional random crop with padding and
horizontal flip, or the flip alone with ``crop=False``; optional random erasing), normalised with ``zoo.data.normalize`` and sent to the device.
On a GPU (any device but the CPU) the whole uint8 train and val sets move to the device once per
``fit`` (``on_device``) and batches are indexed and augmented there: no per-batch host-to-device
copy. The learning rate changes every step (cosine with optional linear warm-up, or
one-cycle). After every epoch ``fit`` rewrites ``history.csv`` and a resumable state file (model, optimizer, scheduler,
epoch, history, best weights), both atomically; a later call with the same ``state_path``
continues from the last finished epoch. At the end ``fit`` restores the weights with the lowest
validation loss (``keep="best"``) or keeps those of the last epoch (``keep="last"``: for a
schedule that anneals to zero, where the final low-rate epochs are the point).
"""
from __future__ import annotations

import copy
import math
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Callable, Protocol

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from common.io import write_csv
from zoo.checkpoint import atomic_torch_save, load_torch_file
from zoo.data import DatasetInfo, ImageSet, normalize
from zoo.distill import distillation_loss

HISTORY_COLUMNS = ["epoch", "train_loss", "train_accuracy", "val_loss", "val_accuracy", "lr",
                   "seconds"]
STATE_FORMAT = "adaptive-router-train-state/1"
# Settings that change how fast training runs but not what it computes (up to float noise):
# they may differ between an interrupted run and its resumption.
RUNTIME_FIELDS = ("device", "channels_last", "threads")
# Mixed precision for training steps: bfloat16 autocast runs on CPUs (oneDNN; fastest with
# AVX512-BF16 or AMX) and on recent GPUs, and needs no loss scaling. Evaluation stays float32.
AMP_MODES = ("off", "bf16")
# Which weights ``fit`` returns: those of the epoch with the lowest validation loss, or the last.
KEEP_MODES = ("best", "last")


def identity_diffs(saved: dict[str, Any], config: TrainConfig) -> list[str]:
    """``"field: old -> new"`` for each identity field where a saved config differs from ``config``.

    Fields missing from ``saved`` (written before they existed) count as their defaults.
    """
    new = config.identity()
    old = {**TrainConfig().identity(), **saved}   # only identity fields are compared below
    return [f"{k}: {old[k]!r} -> {new[k]!r}" for k in sorted(new) if old[k] != new[k]]


def autocast_context(device: torch.device, amp: str) -> Any:
    """``torch.autocast`` for ``amp`` on ``device`` (a no-op context when amp is "off")."""
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=amp == "bf16")


@dataclass
class TrainConfig:
    """How one model is trained; saved in its checkpoint and card."""

    epochs: int = 10
    batch_size: int = 128
    optimizer: str = "adam"            # "adam" (AdamW, decoupled decay) | "sgd" (momentum)
    lr: float = 1e-3                   # peak learning rate
    weight_decay: float = 5e-4
    momentum: float = 0.9              # SGD momentum (Adam: beta1 is left at 0.9)
    schedule: str = "cosine"           # "cosine" (per step, after warm-up) | "onecycle"
    warmup_epochs: float = 0.0         # linear warm-up for "cosine"
    patience: int | None = None        # early stop after this many epochs without a lower val loss
    label_smoothing: float = 0.0
    augment: bool = False              # random crop (padding 2) per batch
    flip: bool = True                  # with augment: horizontal flip (off for digits)
    crop: bool = True                  # with augment: the random crop; False: flips only
    erase: float = 0.0                 # random-erasing probability per image (0 = off)
    seed: int = 0
    device: str = "cpu"
    channels_last: bool = False
    max_batches_per_epoch: int | None = None  # cap on steps per epoch (a random subset each epoch)
    threads: int | None = None         # torch.set_num_threads for CPU training; None = leave
    eval_batch_size: int = 512
    amp: str = "off"                   # "bf16": forward and loss under bfloat16 autocast
    keep: str = "best"                 # weights kept: "best" (lowest val loss) | "last" epoch
    # knowledge distillation (zoo.distill): the zoo members whose mean softmax teaches, the
    # weight of the KL term to it (0 = off; fit then needs teacher_log_probs), its temperature
    teachers: list[str] = field(default_factory=list)
    distill: float = 0.0
    distill_temperature: float = 2.0

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Refuse settings that cannot train, naming the field and the fix."""
        problems = []
        if self.epochs < 1:
            problems.append(f"epochs={self.epochs} (use at least 1)")
        if self.batch_size < 1:
            problems.append(f"batch_size={self.batch_size} (use at least 1)")
        if self.optimizer not in ("adam", "sgd"):
            problems.append(f"optimizer={self.optimizer!r} (use 'adam' or 'sgd')")
        if self.schedule not in ("cosine", "onecycle"):
            problems.append(f"schedule={self.schedule!r} (use 'cosine' or 'onecycle')")
        if not self.lr > 0:
            problems.append(f"lr={self.lr} (use a positive learning rate)")
        if self.warmup_epochs < 0 or self.warmup_epochs >= self.epochs and self.warmup_epochs > 0:
            problems.append(f"warmup_epochs={self.warmup_epochs} (use 0 <= warmup < epochs)")
        if self.patience is not None and self.patience < 1:
            problems.append(f"patience={self.patience} (use None to turn early stopping off)")
        if not 0 <= self.distill <= 1:
            problems.append(f"distill={self.distill} (use a weight 0 <= a <= 1; 0 turns it off)")
        if (self.distill > 0) != bool(self.teachers):
            problems.append(f"distill={self.distill} with teachers={list(self.teachers)} (name "
                            "the teachers and a weight > 0 together, or neither)")
        if not self.distill_temperature > 0:
            problems.append(f"distill_temperature={self.distill_temperature} (use T > 0)")
        if not 0 <= self.label_smoothing < 1:
            problems.append(f"label_smoothing={self.label_smoothing} (use 0 <= s < 1)")
        if self.max_batches_per_epoch is not None and self.max_batches_per_epoch < 1:
            problems.append(f"max_batches_per_epoch={self.max_batches_per_epoch} (use None or >= 1)")
        if self.threads is not None and self.threads < 1:
            problems.append(f"threads={self.threads} (use None or >= 1)")
        if not 0 <= self.erase <= 1:
            problems.append(f"erase={self.erase} (a probability: use 0 <= erase <= 1)")
        if self.keep not in KEEP_MODES:
            problems.append(f"keep={self.keep!r} (use one of {', '.join(KEEP_MODES)})")
        if self.amp not in AMP_MODES:
            problems.append(f"amp={self.amp!r} (use one of {', '.join(AMP_MODES)})")
        if problems:
            raise ValueError("invalid TrainConfig: " + "; ".join(problems))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TrainConfig":
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"unknown TrainConfig fields {unknown}; known: {sorted(names)}")
        return cls(**d)

    def identity(self) -> dict[str, Any]:
        """The fields that decide what is trained (runtime-only fields left out).

        Compare with ``identity_diffs``, which reads a field missing from an older card as
        its default, so cards written before a field existed still match.
        """
        return {k: v for k, v in self.to_dict().items() if k not in RUNTIME_FIELDS}


@dataclass
class FitResult:
    """What ``fit`` did: per-epoch history and the epoch whose weights were kept.

    ``best_epoch`` and ``best_val_*`` describe the kept weights: the lowest-val-loss epoch under
    ``keep="best"``, the last epoch under ``keep="last"``.
    """

    history: list[dict[str, float]]
    best_epoch: int
    best_val_loss: float
    best_val_accuracy: float
    epochs_run: int
    stopped_early: bool
    seconds: float                      # training + validation time over all epochs (resumes included)
    resumed_from: int = 0               # epochs already finished when this call started
    extra: dict[str, Any] = field(default_factory=dict)


# ---- data on the device ----------------------------------------------------------------------

def data_stays_on(device: torch.device) -> bool:
    """Whether ``fit`` and ``evaluate`` keep the whole dataset on ``device`` (every device but
    the CPU, where batches are plain slices of the host tensors already)."""
    return torch.device(device).type != "cpu"


def on_device(images: ImageSet, device: str | torch.device) -> ImageSet:
    """``images`` with its uint8 images and labels on ``device``, copied once as a whole (ids
    stay on the host); ``images`` itself when they are there already."""
    device = torch.device(device)

    def there(t: torch.Tensor) -> bool:
        return t.device.type == device.type and device.index in (None, t.device.index)
    if there(images.images) and there(images.labels):
        return images
    return ImageSet(images.images.to(device), images.labels.to(device), images.ids)


def normalizer(info: DatasetInfo, device: str | torch.device) -> Callable[[torch.Tensor],
                                                                           torch.Tensor]:
    """``zoo.data.normalize`` with the mean and std put on ``device`` once, not per batch."""
    mean = torch.tensor(info.mean, dtype=torch.float32, device=device).view(1, -1, 1, 1)
    std = torch.tensor(info.std, dtype=torch.float32, device=device).view(1, -1, 1, 1)
    return lambda images: (images.float().div_(255.0) - mean) / std


# ---- evaluation ------------------------------------------------------------------------------

@torch.inference_mode()
def evaluate(model: nn.Module, images: ImageSet, info: DatasetInfo, batch_size: int = 512,
             device: str | torch.device = "cpu", channels_last: bool = False) -> dict[str, float]:
    """Mean cross-entropy, top-1 and top-5 accuracy (fractions) over ``images``, in eval mode.

    On a GPU the whole split moves to the device once (a no-op for ``fit``'s val set, already
    there), then every batch is a slice of it."""
    was_training = model.training
    model.eval()
    n = len(images)
    if n == 0:
        model.train(was_training)
        return {"loss": float("nan"), "accuracy": float("nan"), "top5": float("nan")}
    k = min(5, info.num_classes)
    loss_sum, correct, correct5 = 0.0, 0, 0
    resident = data_stays_on(torch.device(device))
    if resident:
        images = on_device(images, device)
        norm = normalizer(info, device)
    else:
        norm = lambda xb: normalize(xb, info)  # noqa: E731
    for s in range(0, n, batch_size):
        xb, y = images.images[s:s + batch_size], images.labels[s:s + batch_size]
        if not resident:
            xb, y = xb.to(device), y.to(device)
        x = norm(xb)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        logits = model(x).float()
        loss_sum += float(F.cross_entropy(logits, y, reduction="sum"))
        top = logits.topk(k, dim=1).indices  # (B, k)
        correct += int((top[:, 0] == y).sum())
        correct5 += int((top == y[:, None]).any(dim=1).sum())
    model.train(was_training)
    return {"loss": loss_sum / n, "accuracy": correct / n, "top5": correct5 / n}


# ---- augmentation ----------------------------------------------------------------------------

def augment_batch(x: torch.Tensor, generator: torch.Generator, pad: int = 2,
                  flip: bool = True, crop: bool = True) -> torch.Tensor:
    """Random crop with zero padding (and random horizontal flip) of uint8 ``(B, C, H, W)``.

    ``crop=False``: the random horizontal flip alone (each image mirrored with probability
    1/2; ``x`` itself when ``flip`` is off too). Draws are made on ``generator``'s device
    (``fit`` gives a GPU batch a GPU generator)."""
    b, c, h, w = x.shape
    g = generator.device
    if not crop:
        if not flip:
            return x
        flipped = torch.rand(b, generator=generator, device=g) < 0.5
        return torch.where(flipped[:, None, None, None], x.flip(-1), x)
    padded = F.pad(x, (pad, pad, pad, pad))
    oy = torch.randint(0, 2 * pad + 1, (b,), generator=generator, device=g)
    ox = torch.randint(0, 2 * pad + 1, (b,), generator=generator, device=g)
    rows = (oy[:, None] + torch.arange(h, device=g))[:, :, None]  # (B, H, 1)
    cols = (ox[:, None] + torch.arange(w, device=g))[:, None, :]  # (B, 1, W)
    if flip:
        flipped = torch.rand(b, generator=generator, device=g) < 0.5
        cols = torch.where(flipped[:, None, None], cols.flip(-1), cols)
    bidx = torch.arange(b, device=g)[:, None, None]
    out = padded.permute(0, 2, 3, 1)[bidx, rows, cols]  # (B, H, W, C)
    return out.permute(0, 3, 1, 2).contiguous()


def random_erase(x: torch.Tensor, generator: torch.Generator, p: float, *,
                 area: tuple[float, float] = (0.02, 0.4),
                 aspect: tuple[float, float] = (0.3, 3.3)) -> torch.Tensor:
    """Random erasing (Zhong et al., 2020) of uint8 ``(B, C, H, W)``, vectorised over the batch.

    Each image is erased with probability ``p``: one rectangle of ``area`` (a fraction of the
    image) and ``aspect`` (height / width, drawn log-uniformly), clipped to the image, is filled
    with uniform random pixel values. Returns a new tensor; ``x`` is left as it is. Draws are
    made on ``generator``'s device, which must be ``x``'s.
    """
    b, c, h, w = x.shape
    if p <= 0 or b == 0:
        return x
    g = generator.device
    chosen = torch.rand(b, generator=generator, device=g) < p
    frac = area[0] + (area[1] - area[0]) * torch.rand(b, generator=generator, device=g)
    log_lo, log_hi = math.log(aspect[0]), math.log(aspect[1])
    ratio = torch.exp(log_lo + (log_hi - log_lo) * torch.rand(b, generator=generator, device=g))
    eh = (torch.sqrt(frac * h * w * ratio).round().long()).clamp(1, h)   # (B,)
    ew = (torch.sqrt(frac * h * w / ratio).round().long()).clamp(1, w)
    y0 = (torch.rand(b, generator=generator, device=g) * (h - eh + 1)).long()
    x0 = (torch.rand(b, generator=generator, device=g) * (w - ew + 1)).long()
    rows = torch.arange(h, device=g)[None, :]
    cols = torch.arange(w, device=g)[None, :]
    in_rows = (rows >= y0[:, None]) & (rows < (y0 + eh)[:, None])        # (B, H)
    in_cols = (cols >= x0[:, None]) & (cols < (x0 + ew)[:, None])        # (B, W)
    mask = (in_rows[:, :, None] & in_cols[:, None, :]) & chosen[:, None, None]   # (B, H, W)
    noise = torch.randint(0, 256, x.shape, generator=generator, dtype=torch.uint8, device=g)
    return torch.where(mask[:, None], noise, x)


# ---- what fit needs to train on every rank ---------------------------------------------------

class DataParallel(Protocol):
    """The data-parallel hooks ``fit`` calls (``zoo.distributed.DataParallel`` implements them
    under torchrun). Declared here, where they are used, so this module never imports
    ``zoo.distributed`` (which imports this one)."""

    @property
    def is_main(self) -> bool: ...
    @property
    def seed_offset(self) -> int: ...
    def check(self, config: TrainConfig) -> None: ...
    def steps_per_epoch(self, n_train: int, config: TrainConfig) -> int: ...
    def wrap(self, model: nn.Module) -> nn.Module: ...
    def unwrap(self, model: nn.Module) -> nn.Module: ...
    def local_part(self, n: int) -> slice: ...
    def loss_weight(self, n_local: int, n_global: int) -> float: ...
    def sum_over_ranks(self, *values: float) -> list[float]: ...
    def evaluate(self, model: nn.Module, images: ImageSet, info: DatasetInfo,
                 batch_size: int = 512, device: str | torch.device = "cpu",
                 channels_last: bool = False) -> dict[str, float]: ...


# ---- optimisation pieces ---------------------------------------------------------------------

def can_fuse(params: list[torch.Tensor]) -> bool:
    """Whether torch's fused optimizer kernels take these parameters (float, on CPU or CUDA)."""
    return bool(params) and all(p.device.type in ("cpu", "cuda") and p.is_floating_point()
                                for p in params)


def make_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    """AdamW or SGD with Nesterov-free momentum; weight decay on weights, not biases or BN.

    Uses torch's fused kernels where they apply: the same update up to float rounding, and on
    this 2-core CPU the AdamW step of the full-width vgg19_small took 30 ms instead of 185 ms
    (SGD 23 ms instead of 69 ms), about 15% of a whole training step.
    """
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.ndim > 1 else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": config.weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    fused = can_fuse(decay + no_decay) or None
    if config.optimizer == "adam":
        return torch.optim.AdamW(groups, lr=config.lr, fused=fused)
    return torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum, fused=fused)


ONECYCLE_PCT_START = 0.25   # share of the run spent warming up to the peak rate
# OneCycleLR's warm-up phase ends at step pct_start * total - 1: at 4 steps that is step 0 and
# torch divides by zero; below 8 the warm-up is shorter than one step. Shorter runs fall back.
ONECYCLE_MIN_STEPS = math.ceil(2 / ONECYCLE_PCT_START)


def schedule_fallback(config: TrainConfig, steps_per_epoch: int) -> str | None:
    """Why the run cannot have the schedule it asked for, or None when it can.

    One-cycle needs ``ONECYCLE_MIN_STEPS`` steps for its warm-up and anneal phases; a shorter
    run (``--epochs 1 --limit-train 512`` at batch 128 is 4 steps) gets cosine annealing from
    the peak rate instead, without warm-up.
    """
    total = max(1, config.epochs * steps_per_epoch)
    if config.schedule == "onecycle" and total < ONECYCLE_MIN_STEPS:
        return (f"one-cycle needs at least {ONECYCLE_MIN_STEPS} steps for its warm-up and "
                f"anneal phases and this run has {total}: cosine annealing from lr "
                f"{config.lr:g} instead, without warm-up")
    return None


def make_scheduler(optimizer: torch.optim.Optimizer, config: TrainConfig,
                   steps_per_epoch: int) -> torch.optim.lr_scheduler.LRScheduler:
    """Per-step schedule over the whole run (see ``schedule_fallback`` for a too-short run)."""
    total = max(1, config.epochs * steps_per_epoch)
    fallback = schedule_fallback(config, steps_per_epoch) is not None
    if config.schedule == "onecycle" and not fallback:
        return torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=config.lr, total_steps=total, pct_start=ONECYCLE_PCT_START,
            cycle_momentum=config.optimizer == "sgd")
    warmup = 0 if fallback else int(round(config.warmup_epochs * steps_per_epoch))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        t = (step - warmup) / max(1, total - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, t)))
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def steps_per_epoch(n_train: int, config: TrainConfig) -> int:
    """Batches per epoch: a final batch of one sample is dropped (BatchNorm cannot train on it)."""
    n = n_train // config.batch_size + (1 if n_train % config.batch_size > 1 else 0)
    if config.max_batches_per_epoch is not None:
        n = min(n, config.max_batches_per_epoch)
    return n


# ---- resumable state -------------------------------------------------------------------------

def _save_state(path: Path, state: dict[str, Any]) -> None:
    atomic_torch_save(state, path)


def _load_state(path: Path, config: TrainConfig) -> dict[str, Any]:
    state = load_torch_file(path, STATE_FORMAT, what="training state file",
                            fix="delete it to train this model from scratch")
    diffs = identity_diffs(state["config"], config)
    if diffs:
        raise ValueError(f"training state {path} was written with other settings "
                         f"({', '.join(diffs)}); rerun with the original settings or delete the "
                         "file to start over")
    return state


def _cpu_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu", copy=True).contiguous() for k, v in model.state_dict().items()}


# ---- fit -------------------------------------------------------------------------------------

EpochCallback = Callable[[int, dict[str, float]], None]


@dataclass
class RunState:
    """What a training run carries from epoch to epoch and saves for a resume: the epochs done,
    their history, the best epoch by val loss (and its weights under ``keep="best"``), the
    epochs since it, and whether early stopping has fired."""

    epoch: int = 0
    history: list[dict[str, float]] = field(default_factory=list)
    best: dict[str, float] = field(default_factory=lambda: {"loss": math.inf,
                                                            "accuracy": float("nan"),
                                                            "epoch": 0})
    best_weights: dict[str, torch.Tensor] | None = None
    bad_epochs: int = 0
    stopped: bool = False

    @classmethod
    def restore(cls, state: dict[str, Any], model: nn.Module, optimizer: Any,
                scheduler: Any) -> "RunState":
        """Load a saved state into ``model``, ``optimizer`` and ``scheduler``; its run state."""
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        return cls(int(state["epoch"]), list(state["history"]), dict(state["best"]),
                   state["best_weights"], int(state["bad_epochs"]), bool(state["stopped"]))

    def record(self, epoch: int, row: dict[str, float], model: nn.Module,
               config: TrainConfig) -> None:
        """Epoch ``epoch`` (1-based) is done with ``row``: keep the best, count patience."""
        self.epoch = epoch
        self.history.append(row)
        loss = row["val_loss"]
        if (not math.isnan(loss) and loss < self.best["loss"]) or self.best["epoch"] == 0:
            self.best = {"loss": loss, "accuracy": row["val_accuracy"], "epoch": epoch}
            if config.keep == "best":   # under "last" the model's own weights are what is kept
                self.best_weights = _cpu_state_dict(model)
            self.bad_epochs = 0
        else:
            self.bad_epochs += 1
            self.stopped = config.patience is not None and self.bad_epochs >= config.patience

    def to_state(self, config: TrainConfig, model: nn.Module, optimizer: Any,
                 scheduler: Any) -> dict[str, Any]:
        """The dict ``_save_state`` writes (read back by ``restore``)."""
        return {"format": STATE_FORMAT, "config": config.identity(), "epoch": self.epoch,
                "model": _cpu_state_dict(model), "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(), "history": self.history, "best": self.best,
                "best_weights": self.best_weights, "bad_epochs": self.bad_epochs,
                "stopped": self.stopped}


def train_one_epoch(model: nn.Module, train: ImageSet, order: torch.Tensor,
                    gen: torch.Generator, n_steps: int, config: TrainConfig,
                    optimizer: torch.optim.Optimizer, scheduler: Any, criterion: nn.Module,
                    norm: Callable[[torch.Tensor], torch.Tensor], device: torch.device,
                    resident: bool, dp: DataParallel | None, bar: Any,
                    teacher: torch.Tensor | None = None) -> tuple[float, int, int]:
    """One pass over ``train`` in ``order`` (``n_steps`` batches of the global batch size,
    augmented with ``gen``), stepping ``optimizer`` and ``scheduler``; ``bar`` iterates the
    steps (a tqdm bar); ``teacher`` (N, classes) holds the distillation targets of the training
    images, indexed like them (``config.distill`` > 0). Returns this process's (summed loss,
    correct, seen)."""
    model.train()
    loss_sum, correct, seen = 0.0, 0, 0
    for step in bar:
        idx = order[step * config.batch_size:(step + 1) * config.batch_size]
        xb = train.images[idx]
        if config.augment:
            xb = augment_batch(xb, gen, flip=config.flip, crop=config.crop)
        if config.erase > 0:
            xb = random_erase(xb, gen, config.erase)
        yb = train.labels[idx]
        tb = teacher[idx] if teacher is not None else None   # resident with the data (fit)
        if dp is not None:      # the global batch was drawn and augmented whole: take a part
            part = dp.local_part(len(idx))
            xb, yb = xb[part], yb[part]
            tb = tb[part] if tb is not None else None
        if not resident:
            xb, yb = xb.to(device, non_blocking=True), yb.to(device, non_blocking=True)
            tb = tb.to(device, non_blocking=True) if tb is not None else None
        x = norm(xb)
        if config.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        y = yb
        with autocast_context(device, config.amp):
            logits = model(x)
            loss = criterion(logits, y)
        if tb is not None:
            a = config.distill
            loss = (1 - a) * loss + a * distillation_loss(logits, tb, config.distill_temperature)
        optimizer.zero_grad(set_to_none=True)
        (loss if dp is None else loss * dp.loss_weight(len(y), len(idx))).backward()
        optimizer.step()
        scheduler.step()
        loss_sum += float(loss.detach()) * len(y)
        correct += int((logits.argmax(1) == y).sum())
        seen += len(y)
        if step % 20 == 0:
            bar.set_postfix(loss=f"{loss_sum / seen:.3f}")
    return loss_sum, correct, seen


def check_teacher(teacher_log_probs: torch.Tensor | None, config: TrainConfig, n_train: int,
                  num_classes: int) -> torch.Tensor | None:
    """The distillation targets ``fit`` uses, or None; refuses a mismatch with a fix."""
    if config.distill == 0:
        if teacher_log_probs is not None:
            raise ValueError("teacher_log_probs were given but config.distill is 0; set a "
                             "distillation weight or leave the teachers out")
        return None
    if teacher_log_probs is None:
        raise ValueError(f"config.distill={config.distill} needs teacher_log_probs (compute "
                         "them with zoo.distill.teacher_log_probs on the training set)")
    if tuple(teacher_log_probs.shape) != (n_train, num_classes):
        raise ValueError(f"teacher_log_probs has shape {tuple(teacher_log_probs.shape)}, the "
                         f"training set needs ({n_train}, {num_classes}): compute them on the "
                         "same training images")
    return teacher_log_probs.float()


def fit(model: nn.Module, train: ImageSet, val: ImageSet, info: DatasetInfo,
        config: TrainConfig, *, state_path: str | Path | None = None,
        history_path: str | Path | None = None, progress: bool = True, desc: str = "",
        on_epoch_end: EpochCallback | None = None, log_epochs: bool | None = None,
        data_parallel: DataParallel | None = None,
        teacher_log_probs: torch.Tensor | None = None) -> FitResult:
    """Train ``model`` in place; restore the lowest-val-loss weights; resume from ``state_path``.

    ``on_epoch_end(epoch, row)`` runs after each epoch's state is saved (1-based epoch).
    ``log_epochs`` prints one line per epoch (default: when ``progress``).
    ``data_parallel`` (``zoo.distributed.DataParallel``, under torchrun) trains on every rank:
    ``config.batch_size`` is the global batch, of which each rank takes its part; evaluation is
    sharded and summed over the ranks; only rank 0 writes history and state, and shows progress.
    ``teacher_log_probs`` (``zoo.distill.teacher_log_probs`` on ``train``) is required when
    ``config.distill`` > 0 and refused otherwise.
    """
    dp = data_parallel
    log_epochs = progress if log_epochs is None else log_epochs
    if dp is not None and not dp.is_main:
        progress = log_epochs = False
    writes = dp is None or dp.is_main
    config.validate()
    if dp is not None:
        dp.check(config)
    if len(train) == 0:
        raise ValueError("the training set is empty; check --limit-train and the dataset")
    teacher = check_teacher(teacher_log_probs, config, len(train), info.num_classes)
    if config.threads is not None:
        torch.set_num_threads(config.threads)
    device = torch.device(config.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' was asked for but torch sees no GPU; use --device cpu")
    memory_format = torch.channels_last if config.channels_last else torch.contiguous_format
    model.to(device=device, memory_format=memory_format)
    state_path = Path(state_path) if state_path is not None else None
    # GPU: the whole uint8 train and val sets move to the device here, once; every batch is then
    # indexed, augmented and normalised there (no per-batch host-to-device copy)
    resident = data_stays_on(device)
    if resident:
        train, val = on_device(train, device), on_device(val, device)
        norm = normalizer(info, device)
        teacher = teacher.to(device) if teacher is not None else None
    else:
        norm = lambda xb: normalize(xb, info)  # noqa: E731

    n_steps = (steps_per_epoch(len(train), config) if dp is None
               else dp.steps_per_epoch(len(train), config))
    optimizer = make_optimizer(model, config)
    scheduler = make_scheduler(optimizer, config, n_steps)
    fallback = schedule_fallback(config, n_steps)
    if fallback is not None and log_epochs:
        tqdm.write(f"{desc} {fallback}".strip())
    criterion = nn.CrossEntropyLoss(label_smoothing=config.label_smoothing)

    run = RunState()
    if state_path is not None and state_path.exists():
        run = RunState.restore(_load_state(state_path, config), model, optimizer, scheduler)
    resumed_from = start_epoch = run.epoch
    # under DDP: train through the wrapper (gradients averaged); ``model`` keeps the weights
    train_model = model if dp is None else dp.wrap(model)
    evaluate_on = evaluate if dp is None else dp.evaluate

    for epoch in range(start_epoch, config.epochs):
        if run.stopped:
            break
        t0 = time.perf_counter()
        # Seeds depend on (seed, epoch) so a resumed run draws what an unbroken one would
        # (under DDP each rank's dropout has its own stream; the order and augmentation do not).
        torch.manual_seed(config.seed * 100_003 + epoch + (0 if dp is None else dp.seed_offset))
        gen = torch.Generator().manual_seed(config.seed * 100_003 + epoch)
        order = torch.randperm(len(train), generator=gen)
        if resident:   # the same order on every device, moved once per epoch; the augmentation
            order = order.to(device)                           # draws on the device itself
            gen = torch.Generator(device=device).manual_seed(config.seed * 100_003 + epoch)
        loss_sum, correct, seen = train_one_epoch(
            train_model, train, order, gen, n_steps, config, optimizer, scheduler, criterion,
            norm, device, resident, dp,
            tqdm(range(n_steps), desc=f"{desc} epoch {epoch + 1}/{config.epochs}".strip(),
                 disable=not progress, leave=False), teacher)
        if dp is not None:
            loss_sum, correct, seen = dp.sum_over_ranks(loss_sum, correct, seen)
        lr = optimizer.param_groups[0]["lr"]
        metrics = evaluate_on(model, val, info, config.eval_batch_size, device,
                              config.channels_last)
        row = {"epoch": epoch + 1, "train_loss": loss_sum / seen, "train_accuracy": correct / seen,
               "val_loss": metrics["loss"], "val_accuracy": metrics["accuracy"], "lr": lr,
               "seconds": time.perf_counter() - t0}
        run.record(epoch + 1, row, model, config)
        if history_path is not None and writes:
            write_csv(history_path, run.history, HISTORY_COLUMNS)
        if state_path is not None and writes:
            _save_state(state_path, run.to_state(config, model, optimizer, scheduler))
        if log_epochs:
            tqdm.write(f"{desc} epoch {epoch + 1}: train loss {row['train_loss']:.4f} acc "
                       f"{row['train_accuracy']:.4f} | val loss {row['val_loss']:.4f} acc "
                       f"{row['val_accuracy']:.4f} | lr {lr:.2e} | {row['seconds']:.1f} s")
        if on_epoch_end is not None:
            on_epoch_end(epoch + 1, row)

    if dp is not None:
        dp.unwrap(model)
    best, history = run.best, run.history
    if config.keep == "last" and history:
        last = history[-1]
        best = {"loss": last["val_loss"], "accuracy": last["val_accuracy"], "epoch": last["epoch"]}
    elif run.best_weights is not None:
        model.load_state_dict(run.best_weights)
    model.eval()
    return FitResult(history=history, best_epoch=int(best["epoch"]),
                     best_val_loss=float(best["loss"]), best_val_accuracy=float(best["accuracy"]),
                     epochs_run=len(history), stopped_early=run.stopped,
                     seconds=float(sum(r["seconds"] for r in history)), resumed_from=resumed_from)


# ---- speed probe -----------------------------------------------------------------------------

def training_images_per_second(model: nn.Module, info: DatasetInfo, *, batch_size: int = 128,
                               steps: int = 5, repeats: int = 3, warmup: int = 2,
                               channels_last: bool = False, threads: int | None = None,
                               device: str = "cpu", amp: str = "off") -> float:
    """Median training throughput (forward + backward + AdamW step) on random in-memory batches.

    ``warmup`` untimed steps first, then ``repeats`` timings of ``steps`` steps each.
    """
    if threads is not None:
        torch.set_num_threads(threads)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = copy.deepcopy(model).to(device=device, memory_format=fmt).train()
    opt = make_optimizer(model, TrainConfig(optimizer="adam", lr=1e-4))   # what fit uses
    gen = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (batch_size, info.in_channels, info.input_size,
                                    info.input_size), generator=gen, dtype=torch.uint8)
    labels = torch.randint(0, info.num_classes, (batch_size,), generator=gen)

    def step() -> None:
        x = normalize(images.to(device), info)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with autocast_context(torch.device(device), amp):
            loss = F.cross_entropy(model(x), labels.to(device))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    for _ in range(warmup):
        step()
    times = []
    for _ in range(repeats):
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(steps):
            step()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    times.sort()
    return batch_size * steps / times[len(times) // 2]
