"""The learned dispatcher: a small CNN that looks at the image and picks a zoo model.

Two target modes (one network each, trained once, reused at every sacrifice level):

- ``label``: the network classifies the image's label; the chosen model is that predicted
  label mapped through an oracle policy's ``label_to_model`` table (the original study's
  scheme). Routing accuracy = how often that equals the policy's choice for the true label.
- ``sample``: the network predicts, per model, the chance that the model answers this image
  correctly (multi-label, binary cross-entropy on the validation table's correctness). The
  chosen model is the cheapest one whose predicted chance >= a threshold tau (else the
  reference model); tau is chosen on the held-out part of validation as the cheapest setting
  that keeps the sacrifice budget there (``router.base.first_confident`` /
  ``least_cost_meeting``, the same rule as the cascade).

It trains ONLY on the validation split (predictions of data the zoo never trained on), with a
seeded held-out part for early stopping and for choosing tau. Its own cost is capped: the
architecture is the widest of a few that fits ``max_macs`` (a quarter of the cheapest zoo
model's MACs), counted with ``zoo.costs.count_macs``, and optionally ``max_ms`` (a share of
the fastest zoo model's measured time per image).
"""
from __future__ import annotations

import copy
import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from router.base import Router, RouterError, Routing, accuracy_lower_bound, first_confident, \
    least_cost_meeting, table_precision
from zoo.data import DatasetInfo, normalize

MODES = ("label", "sample")


@dataclass
class DispatcherArch:
    """The dispatcher CNN: [avg-pool downsample] conv(w) pool conv(2w) pool conv(4w) GAP linear."""

    in_channels: int
    input_size: int
    n_outputs: int
    width: int = 8
    downsample: int = 1
    kind: str = "dispatcher"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "DispatcherArch":
        return cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})


class DispatcherNet(nn.Module):
    """Three 3x3 convs (w, 2w, 4w) with two 2x2 max-pools, global average pool, one Linear."""

    def __init__(self, arch: DispatcherArch):
        super().__init__()
        self.arch = arch
        w = arch.width
        self.features = nn.Sequential(
            nn.AvgPool2d(arch.downsample) if arch.downsample > 1 else nn.Identity(),
            nn.Conv2d(arch.in_channels, w, 3, padding=1), nn.BatchNorm2d(w), nn.ReLU(inplace=True),
            nn.MaxPool2d(2, ceil_mode=True),
            nn.Conv2d(w, 2 * w, 3, padding=1), nn.BatchNorm2d(2 * w), nn.ReLU(inplace=True),
            nn.MaxPool2d(2, ceil_mode=True),
            nn.Conv2d(2 * w, 4 * w, 3, padding=1), nn.BatchNorm2d(4 * w), nn.ReLU(inplace=True),
            nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Linear(4 * w, arch.n_outputs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: (B, C, H, W) normalised -> (B, n_outputs) logits
        return self.head(self.features(x))


def dispatcher_macs(arch: DispatcherArch) -> int:
    from zoo.costs import count_macs
    return count_macs(DispatcherNet(arch), (1, arch.in_channels, arch.input_size, arch.input_size))


def arch_within_budget(in_channels: int, input_size: int, n_outputs: int, max_macs: float,
                       widths: tuple[int, ...] = (16, 12, 8, 6, 4, 3, 2), *,
                       max_ms: float | None = None,
                       time_images: torch.Tensor | None = None) -> DispatcherArch:
    """The widest dispatcher (full resolution first, then 2x, 4x downsampled) within ``max_macs``.

    With ``max_ms`` (and ``time_images``, normalised (n, C, H, W)) it must also run within
    ``max_ms`` milliseconds per image (``dispatcher_ms_per_image``): MACs say little about CPU
    time (an int8 model with the same MACs as a float one runs several times faster). When no
    architecture meets the time cap, the fastest one within the MAC cap is returned; the
    caller records that (``dispatcher_ms_per_image`` against the cap).
    """
    within = []
    for down in (1, 2, 4):
        if input_size // down < 4:
            break
        for w in widths:
            arch = DispatcherArch(in_channels, input_size, n_outputs, w, down)
            if dispatcher_macs(arch) <= max_macs:
                within.append(arch)
    if not within:
        raise RouterError(f"no dispatcher fits {max_macs:.0f} MACs per image (a quarter of the "
                          "cheapest zoo model); the zoo's cheapest model is too small to route for")
    if max_ms is None:
        return within[0]
    if time_images is None:
        raise RouterError("a time cap (max_ms) needs time_images to time the candidates on")
    fastest, fastest_ms = within[0], float("inf")
    for arch in within:
        ms = dispatcher_ms_per_image(arch, time_images, rounds=7)
        if ms <= max_ms:
            return arch
        if ms < fastest_ms:
            fastest, fastest_ms = arch, ms
    return fastest


def dispatcher_ms_per_image(arch: DispatcherArch, images: torch.Tensor,
                            batch_size: int = 1024, rounds: int = 3) -> float:
    """Median ms per image of an (untrained: time does not depend on the weights) dispatcher
    network on normalised ``images``, in batches, after one warm-up."""
    from router.execute import measure_ms_per_image
    net = DispatcherNet(arch).eval()

    @torch.inference_mode()
    def run() -> None:
        for s in range(0, len(images), batch_size):
            net(images[s:s + batch_size])
    return float(measure_ms_per_image([run], len(images), rounds=rounds)[0])


@dataclass
class DispatcherConfig:
    """Training settings (the held-out share is carved from the validation split)."""

    epochs: int = 30
    batch_size: int = 128
    lr: float = 3e-3
    weight_decay: float = 1e-4
    patience: int | None = None   # None: run the whole one-cycle schedule, keep the best state
    holdout: float = 0.25
    seed: int = 0
    progress: bool = True

    def __post_init__(self) -> None:
        if not 0.0 < self.holdout < 1.0:
            raise RouterError(f"holdout must be a fraction in (0, 1), got {self.holdout}")
        if self.epochs < 1 or self.batch_size < 1:
            raise RouterError("epochs and batch_size must be >= 1")


@dataclass
class DispatcherFit:
    """A trained dispatcher network plus its held-out validation scores."""

    mode: str
    arch: DispatcherArch
    net: DispatcherNet
    info: DatasetInfo
    model_names: list[str]
    holdout_index: np.ndarray        # (H,) positions in the val table held out from training
    holdout_scores: np.ndarray       # (H, K) softmax (label) or sigmoid (sample) scores
    macs: int
    history: list[dict[str, float]] = field(default_factory=list)


def split_holdout(n: int, holdout: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded (fit, held-out) positions of n samples; both non-empty."""
    if n < 4:
        raise RouterError(f"the validation split has {n} samples; the dispatcher needs at least 4")
    perm = np.random.default_rng(seed).permutation(n)
    n_hold = min(n - 2, max(2, int(round(n * holdout))))
    return np.sort(perm[n_hold:]), np.sort(perm[:n_hold])


@torch.inference_mode()
def dispatcher_scores(net: nn.Module, images: torch.Tensor, info: DatasetInfo, mode: str,
                      batch_size: int = 1024) -> torch.Tensor:
    """(N, K) softmax over labels (``label``) or per-model sigmoid (``sample``)."""
    net.eval()
    out = []
    for s in range(0, len(images), batch_size):
        z = net(normalize(images[s:s + batch_size], info))
        out.append(torch.softmax(z, 1) if mode == "label" else torch.sigmoid(z))
    return torch.cat(out) if out else torch.empty(0, net.arch.n_outputs)


def train_dispatcher(mode: str, images: torch.Tensor, targets: torch.Tensor, info: DatasetInfo,
                     arch: DispatcherArch, config: DispatcherConfig
                     ) -> tuple[DispatcherNet, np.ndarray, np.ndarray, list[dict[str, float]]]:
    """Train on a seeded fit part; the state with the best held-out loss is kept (early
    stopping by checkpoint selection; ``patience``, if set, may also end training, but only in
    the second half of the one-cycle schedule, when the rate has come down).

    ``targets``: (N,) int64 labels for ``label``; (N, M) {0,1} correctness for ``sample``.
    Returns (net, fit positions, held-out positions, history).
    """
    if mode not in MODES:
        raise RouterError(f"unknown dispatcher mode {mode!r}; use one of {MODES}")
    torch.manual_seed(config.seed)
    fit_idx, hold_idx = split_holdout(len(images), config.holdout, config.seed)
    net = DispatcherNet(arch)
    loss_fn: nn.Module = nn.CrossEntropyLoss() if mode == "label" else nn.BCEWithLogitsLoss()
    targets = targets.long() if mode == "label" else targets.float()
    x_fit, y_fit = images[torch.from_numpy(fit_idx)], targets[torch.from_numpy(fit_idx)]
    x_hold, y_hold = images[torch.from_numpy(hold_idx)], targets[torch.from_numpy(hold_idx)]
    opt = torch.optim.AdamW(net.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    steps = config.epochs * math.ceil(len(x_fit) / config.batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=config.lr, total_steps=steps)
    gen = torch.Generator().manual_seed(config.seed)
    best, best_state, bad, history = float("inf"), copy.deepcopy(net.state_dict()), 0, []
    bar = tqdm(range(config.epochs), desc=f"dispatcher[{mode}]", disable=not config.progress,
               leave=False)
    for epoch in bar:
        net.train()
        perm = torch.randperm(len(x_fit), generator=gen)
        total = 0.0
        for s in range(0, len(perm), config.batch_size):
            b = perm[s:s + config.batch_size]
            loss = loss_fn(net(normalize(x_fit[b], info)), y_fit[b])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += float(loss.detach()) * len(b)
        net.eval()
        with torch.inference_mode():
            z = torch.cat([net(normalize(x_hold[s:s + 1024], info))
                           for s in range(0, len(x_hold), 1024)])
            hold_loss = float(loss_fn(z, y_hold))
            hold_acc = (float((z.argmax(1) == y_hold).float().mean()) if mode == "label" else
                        float(((z > 0).float() == y_hold).float().mean()))
        history.append({"epoch": epoch + 1, "train_loss": total / len(x_fit),
                        "holdout_loss": hold_loss, "holdout_accuracy": hold_acc})
        bar.set_postfix(loss=f"{hold_loss:.3f}", acc=f"{hold_acc:.3f}")
        if hold_loss < best - 1e-4:
            best, best_state, bad = hold_loss, copy.deepcopy(net.state_dict()), 0
        else:
            bad += 1
            # one-cycle LR peaks at 30% of the steps: the held-out loss is noisy until the
            # rate comes down, so patience (if set) only stops training in the second half
            if (config.patience is not None and bad >= config.patience
                    and epoch + 1 >= config.epochs / 2):
                break
    net.load_state_dict(best_state)
    return net.eval(), fit_idx, hold_idx, history


def fit_dispatcher(mode: str, val_images: torch.Tensor, val_table, info: DatasetInfo,
                   max_macs: float, config: DispatcherConfig | None = None,
                   max_ms: float | None = None,
                   arch: DispatcherArch | None = None) -> DispatcherFit:
    """Train a ``mode`` dispatcher on the validation split only (images aligned with the table).

    The architecture is the widest within ``max_macs`` (and ``max_ms`` per image, timed on up
    to 1024 validation images: see ``arch_within_budget``), or ``arch`` where given (a pinned
    one: the time cap makes the search depend on the machine's load)."""
    config = config or DispatcherConfig()
    if len(val_images) != val_table.n_samples:
        raise RouterError(f"{len(val_images)} validation images but the val table has "
                          f"{val_table.n_samples} rows; align images with table.sample_ids")
    n_out = val_table.n_classes if mode == "label" else val_table.n_models
    if arch is None:
        arch = arch_within_budget(int(val_images.shape[1]), int(val_images.shape[-1]), n_out,
                                  max_macs, max_ms=max_ms,
                                  time_images=normalize(val_images[:1024], info))
    elif arch.n_outputs != n_out or arch.in_channels != int(val_images.shape[1]):
        raise RouterError(f"the pinned dispatcher architecture {arch.to_dict()} does not fit "
                          f"{n_out} outputs on {int(val_images.shape[1])}-channel images")
    targets = (torch.from_numpy(val_table.labels) if mode == "label"
               else torch.from_numpy(val_table.correct.astype(np.float32)))
    net, _, hold_idx, history = train_dispatcher(mode, val_images, targets, info, arch, config)
    scores = dispatcher_scores(net, val_images[torch.from_numpy(hold_idx)], info, mode).numpy()
    return DispatcherFit(mode, arch, net, info, list(val_table.model_names), hold_idx, scores,
                         dispatcher_macs(arch), history)


# ---- choosing per level ------------------------------------------------------------------

def sample_choice(scores: np.ndarray, threshold: float, order: np.ndarray,
                  fallback: int) -> np.ndarray:
    """Cheapest model (in ``order``) whose predicted chance of being right >= ``threshold``."""
    return first_confident(table_precision(scores), threshold, fallback, order=order)


def choose_threshold(scores: np.ndarray, correct: np.ndarray, costs: np.ndarray, target: float,
                     fallback: int, max_candidates: int = 400, z: float = 0.0,
                     router_cost: float = 0.0) -> tuple[float, float, float]:
    """Cheapest tau whose held-out accuracy >= ``target``: returns (tau, accuracy, cost).

    Candidates: quantiles of the held-out scores plus 1.01 (never trust a score: every input
    goes to ``fallback``, which reproduces the reference and so always meets its own accuracy
    minus a sacrifice). With ``z`` > 0 the held-out accuracy minus z paired standard errors of
    its difference to ``fallback`` (the reference) must meet the target (one-SE rule at z = 1).
    ``router_cost`` (the network's own cost per image, in the units of ``costs``) is added to
    every tau that runs the network; tau = 0 (the cheapest model for all) and tau = 1.01 (the
    fallback for all) do not run it (``Dispatcher.constant_choice``), so a dispatcher that
    cannot beat a single model with its own cost added becomes that model alone.
    """
    if z < 0:
        raise RouterError(f"the margin z must be >= 0 standard errors, got {z}")
    cand, right, cost = threshold_candidates(scores, correct, costs, fallback, max_candidates,
                                             router_cost)
    accs = right.mean(axis=1)
    i = least_cost_meeting(accuracy_lower_bound(right, correct[:, fallback], z), cost, target)
    return float(cand[i]), float(accs[i]), float(cost[i])


def threshold_candidates(scores: np.ndarray, correct: np.ndarray, costs: np.ndarray,
                         fallback: int, max_candidates: int = 400, router_cost: float = 0.0
                         ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every tau ``choose_threshold`` considers: (taus (T,), right (T, n) per-input correctness
    of the model each tau picks, expected cost (T,) with ``router_cost`` where the network runs)."""
    order = np.lexsort((np.arange(len(costs)), costs))
    s = table_precision(scores)
    cand = np.unique(s)
    if len(cand) > max_candidates:
        cand = np.unique(np.quantile(cand, np.linspace(0, 1, max_candidates)).astype(np.float16)
                         .astype(np.float32))
    cand = np.unique(np.concatenate([[0.0], cand, [1.01]]).astype(np.float32))
    rows = np.arange(len(s))
    right = np.empty((len(cand), len(s)), dtype=bool)
    cost = np.empty(len(cand))
    for i, t in enumerate(cand):
        ch = first_confident(s, t, fallback, order=order)
        runs_net = 0.0 < t <= 1.0          # tau 0: the cheapest for all; above 1: the fallback
        right[i], cost[i] = correct[rows, ch], costs[ch].mean() + (router_cost if runs_net else 0)
    return cand, right, cost


class Dispatcher(Router):
    """A trained dispatcher at one setting: a label->model table (``label``) or tau (``sample``)."""

    def __init__(self, mode: str, net: DispatcherNet, info: DatasetInfo, model_names: list[str],
                 costs: np.ndarray, *, label_to_model: np.ndarray | None = None,
                 threshold: float | None = None, fallback: int = 0, macs: int | None = None,
                 batch_size: int = 1024):
        if mode not in MODES:
            raise RouterError(f"unknown dispatcher mode {mode!r}; use one of {MODES}")
        if mode == "label" and label_to_model is None:
            raise RouterError("a label dispatcher needs label_to_model (from an oracle policy)")
        if mode == "sample" and threshold is None:
            raise RouterError("a sample dispatcher needs a threshold (choose_threshold)")
        self.mode, self.net, self.info = mode, net.eval(), info
        self.model_names = list(model_names)
        self.costs = np.asarray(costs, dtype=np.float64)
        self.order = np.lexsort((np.arange(len(self.costs)), self.costs))
        self.label_to_model = (None if label_to_model is None
                               else np.asarray(label_to_model, dtype=np.int64))
        self.threshold, self.fallback = threshold, int(fallback)
        self._macs = macs if macs is not None else dispatcher_macs(net.arch)
        self.batch_size = batch_size

    @classmethod
    def from_fit(cls, fit: DispatcherFit, costs: np.ndarray, *, policy=None,
                 threshold: float | None = None, fallback: int = 0) -> "Dispatcher":
        l2m = None
        if policy is not None:
            idx = policy.label_indices()
            l2m = np.array([idx.get(c, policy.reference_index)
                            for c in range(fit.arch.n_outputs)], dtype=np.int64)
        return cls(fit.mode, fit.net, fit.info, fit.model_names, costs, label_to_model=l2m,
                   threshold=threshold, fallback=fallback, macs=fit.macs)

    @property
    def constant_choice(self) -> int | None:
        """The one model every image goes to when the setting cannot depend on the image (a
        label table naming one model, tau above 1 or tau 0), else None. Such a dispatcher does not
        run its network: it would only add its own time to the model's."""
        if self.mode == "label":
            models = np.unique(self.label_to_model)
            return int(models[0]) if len(models) == 1 else None
        if float(self.threshold) > 1.0:
            return self.fallback
        return int(self.order[0]) if float(self.threshold) <= 0.0 else None

    @property
    def macs_per_image(self) -> int:
        return 0 if self.constant_choice is not None else int(self._macs)

    @classmethod
    def to_one_model(cls, fit: DispatcherFit, costs: np.ndarray, model: int) -> "Dispatcher":
        """The label dispatcher of ``fit`` sending every image to ``model``: it never runs its
        network (``constant_choice``); how a dispatcher that is not worth its cost is kept."""
        return cls("label", fit.net, fit.info, fit.model_names, costs,
                   label_to_model=np.full(fit.arch.n_outputs, model), fallback=model,
                   macs=fit.macs)

    @property
    def network_macs(self) -> int:
        """The network's MACs per image (whether or not this setting runs it)."""
        return int(self._macs)

    def choose(self, scores: np.ndarray) -> np.ndarray:
        """Model indices from scores (N, K)."""
        if self.mode == "label":
            return self.label_to_model[np.argmax(scores, axis=1)]
        return sample_choice(scores, float(self.threshold), self.order, self.fallback)

    def route(self, images: torch.Tensor) -> np.ndarray:
        const = self.constant_choice
        if const is not None:
            return np.full(len(images), const, dtype=np.int64)
        return self.choose(dispatcher_scores(self.net, images, self.info, self.mode,
                                             self.batch_size).numpy())

    def explain(self, images: torch.Tensor) -> Routing:
        s = dispatcher_scores(self.net, images, self.info, self.mode, self.batch_size).numpy()
        if self.mode == "label":
            names = [f"p_label:{c}" for c in (self.info.classes or range(s.shape[1]))]
            rule = "predicted label -> " + ", ".join(
                f"{c}:{self.model_names[m]}" for c, m in enumerate(self.label_to_model))
        else:
            names = [f"p_right:{m}" for m in self.model_names]
            rule = (f"cheapest model with predicted chance of being right >= "
                    f"{self.threshold:.4g}, else {self.model_names[self.fallback]}")
        return Routing(chosen=self.choose(s), scores=s, score_names=names, rule=rule)

    def describe(self) -> dict[str, Any]:
        d: dict[str, Any] = {"type": f"dispatcher-{self.mode}", "macs": self.macs_per_image,
                             "width": self.net.arch.width, "downsample": self.net.arch.downsample}
        if self.mode == "label":
            d["label_to_model"] = [self.model_names[m] for m in self.label_to_model]
        else:
            d["threshold"] = self.threshold
            d["fallback"] = self.model_names[self.fallback]
        return d
