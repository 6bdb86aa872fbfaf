"""Scale-out with ``torchrun``: process groups, the per-model rule, DDP pieces for ``fit``.

Launch any script under ``torchrun`` (``torchrun --standalone --nproc-per-node N -m
scripts.train_zoo ...``); torchrun sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` (and
``MASTER_ADDR``/``MASTER_PORT``) for every process. ``init_distributed`` reads them and joins
the process group: NCCL when training on CUDA, gloo on the CPU. Without those variables (or
with ``WORLD_SIZE=1``) it returns a single-process ``Dist`` whose every call is a no-op, so the
default stays one process and nothing changes there.

Two levels, chosen per model by ``parallel_modes`` (the documented rule):

- **models across ranks** (``"across"``): independent models are spread over the ranks by
  ``assign_to_ranks`` (longest estimated job first, to the least-loaded rank); each rank trains
  its own share in one process, exactly as a single-process run would;
- **data parallel** (``"ddp"``): a model whose counted MACs per input are at least
  ``DDP_MIN_MACS`` (300 M: vgg19_small at full width, 363 M at 28x28, 417 M at 32x32; every
  tiny VGG up to width 1 stays below, tiny_vgg5 at 205 / 268 M), or one named by the user,
  trains on every rank with ``DistributedDataParallel``. ``config.batch_size`` stays the
  *global* batch: each rank takes its contiguous part of every batch of the epoch order (which
  depends only on seed and epoch), weights its mean loss by its share so that DDP's averaged
  gradient is the gradient of the global batch's mean loss, and BatchNorm normalises with the
  statistics of the whole global batch (``GroupBatchNorm``: torch's ``SyncBatchNorm`` runs on
  GPUs only). One DDP step on W ranks therefore equals one step of one process on the whole
  batch, up to float rounding (dropout draws its own stream per rank). Evaluation is sharded
  and summed over ranks (``evaluate_sharded``), so early stopping agrees on every rank; only
  rank 0 writes history, state, checkpoints and cards.

Small results (evaluation sums, rows, errors) travel over a gloo group with a long timeout
(``WAIT_TIMEOUT``): a rank that finished its share may wait hours for the others. Every rank
reads and rank 0 writes the run directory, so on several machines it must be on a shared
filesystem.
"""
from __future__ import annotations

import datetime as dt
import math
import os
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence, TypeVar

import torch
import torch.distributed as tdist
import torch.nn.functional as F
from torch import nn

from zoo.data import DatasetInfo, ImageSet
from zoo.train import TrainConfig, evaluate, steps_per_epoch

# A model with at least this many multiply-accumulates per input trains with DDP on every rank.
DDP_MIN_MACS = 300_000_000
# How long a rank waits at a barrier for the others (training a share can take hours on a CPU).
WAIT_TIMEOUT = dt.timedelta(hours=48)
MODES = ("single", "across", "ddp")

T = TypeVar("T")


# ---- the launch environment ---------------------------------------------------------------------

@dataclass(frozen=True)
class LaunchEnv:
    """Where this process sits, as torchrun's environment variables say (1 process without)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1


def launch_env(environ: Mapping[str, str] | None = None) -> LaunchEnv:
    """Read ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``LOCAL_WORLD_SIZE`` (torchrun sets all)."""
    env = os.environ if environ is None else environ
    if "RANK" not in env or "WORLD_SIZE" not in env:
        return LaunchEnv()
    world = int(env["WORLD_SIZE"])
    out = LaunchEnv(rank=int(env["RANK"]), world_size=world,
                    local_rank=int(env.get("LOCAL_RANK", env["RANK"])),
                    local_world_size=int(env.get("LOCAL_WORLD_SIZE", world)))
    if not 0 <= out.rank < out.world_size:
        raise ValueError(f"RANK={out.rank} is outside WORLD_SIZE={out.world_size}")
    return out


def launched_by_torchrun(environ: Mapping[str, str] | None = None) -> bool:
    """Whether this process is one of several started by torchrun."""
    return launch_env(environ).world_size > 1


# ---- the live process group -------------------------------------------------------------------

@dataclass
class Dist:
    """This process's place in a process group; ``Dist()`` is one process, every call a no-op.

    ``device`` is the rank's own device (``cuda:<local_rank>`` under NCCL, else as asked);
    ``wait_group`` is a gloo group with a long timeout for barriers and small CPU collectives;
    ``sync_group`` carries BatchNorm statistics (same backend as training).
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None
    device: str = "cpu"
    wait_group: Any = None
    sync_group: Any = None
    owns_group: bool = False

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        """Wait for every rank (up to ``WAIT_TIMEOUT``)."""
        if self.enabled:
            tdist.barrier(group=self.wait_group)

    def gather_objects(self, obj: T) -> list[T]:
        """Every rank's ``obj`` (picklable), in rank order, on every rank; also a barrier."""
        if not self.enabled:
            return [obj]
        out: list[Any] = [None] * self.world_size
        tdist.all_gather_object(out, obj, group=self.wait_group)
        return out

    def broadcast_object(self, obj: T, src: int = 0) -> T:
        """``obj`` of rank ``src`` on every rank."""
        if not self.enabled:
            return obj
        box = [obj]
        tdist.broadcast_object_list(box, src=src, group=self.wait_group)
        return box[0]

    def sum_over_ranks(self, *values: float) -> list[float]:
        """Each value summed over the ranks (float64, on the CPU)."""
        if not self.enabled:
            return [float(v) for v in values]
        t = torch.tensor([float(v) for v in values], dtype=torch.float64)
        tdist.all_reduce(t, group=self.wait_group)
        return t.tolist()

    def main_first(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` on rank 0, then on the others (rank 0 makes files the others read: the
        run's config, the splits, a download). An error on rank 0 is raised on every rank."""
        if not self.enabled:
            return fn()
        result, error = None, None
        if self.is_main:
            try:
                result = fn()
            except Exception as e:   # told to the others, then raised here as it was
                error = e
        message = self.broadcast_object(None if error is None else str(error))
        if error is not None:
            raise error
        if message is not None:
            raise ValueError(message)
        return result if self.is_main else fn()

    def close(self) -> None:
        """Leave the process group (only one this object started)."""
        if self.owns_group and tdist.is_initialized():
            tdist.destroy_process_group()
            self.owns_group = False


def backend_for(device: str) -> str:
    """NCCL for CUDA devices, gloo for the CPU."""
    return "nccl" if str(device).startswith("cuda") else "gloo"


def init_distributed(device: str = "cpu", *, environ: Mapping[str, str] | None = None,
                     init_method: str | None = None,
                     wait_timeout: dt.timedelta = WAIT_TIMEOUT) -> Dist:
    """Join the process group torchrun describes (``init_method``: e.g. ``file://...`` for
    tests; default ``env://``); one process returns ``Dist(device=device)`` and starts nothing."""
    env = launch_env(environ)
    if env.world_size == 1 and not tdist.is_initialized():
        return Dist(device=str(device))
    backend = backend_for(device)
    if backend == "nccl":
        if not torch.cuda.is_available():
            raise ValueError("device 'cuda' was asked for but torch sees no GPU; use --device cpu")
        torch.cuda.set_device(env.local_rank)
        device = f"cuda:{env.local_rank}"
    owns = False
    if not tdist.is_initialized():
        tdist.init_process_group(backend, init_method=init_method, rank=env.rank,
                                 world_size=env.world_size)
        owns = True
    wait_group = tdist.new_group(backend="gloo", timeout=wait_timeout)
    sync_group = tdist.new_group(backend=backend)
    return Dist(rank=tdist.get_rank(), world_size=tdist.get_world_size(),
                local_rank=env.local_rank, backend=backend, device=str(device),
                wait_group=wait_group, sync_group=sync_group, owns_group=owns)


# ---- the rule: which models go across ranks, which train with DDP -----------------------------

def parallel_modes(macs: Mapping[str, int], world_size: int, *,
                   ddp_min_macs: float = DDP_MIN_MACS,
                   ddp_models: Sequence[str] = ()) -> dict[str, str]:
    """Per model ``"single"`` (one process), ``"ddp"`` or ``"across"``.

    One process: every model ``"single"``. Several: ``"ddp"`` for a model named in
    ``ddp_models`` or whose counted MACs per input reach ``ddp_min_macs`` (0: every model;
    ``inf``: none), ``"across"`` for the rest.
    """
    if world_size <= 1:
        return {m: "single" for m in macs}
    named = set(ddp_models)
    return {m: "ddp" if m in named or c >= ddp_min_macs else "across" for m, c in macs.items()}


def training_images(config: TrainConfig, n_train: int) -> int:
    """Images one model sees in its whole run (the work estimate behind the assignment)."""
    per_epoch = min(n_train, steps_per_epoch(n_train, config) * config.batch_size)
    return config.epochs * per_epoch


def assign_to_ranks(costs: Mapping[str, float], world_size: int) -> dict[str, int]:
    """Model -> rank: longest job first, each to the rank with the least work so far (ties: the
    lower rank; equal costs keep the given order). The same on every rank: no communication."""
    load = [0.0] * max(1, world_size)
    out: dict[str, int] = {}
    for name in sorted(costs, key=lambda m: -float(costs[m])):     # stable: ties keep order
        r = min(range(len(load)), key=lambda k: (load[k], k))
        out[name] = r
        load[r] += float(costs[name])
    return {m: out[m] for m in costs}


# ---- BatchNorm over the global batch ----------------------------------------------------------

class _GroupBatchNormFn(torch.autograd.Function):
    """Batch statistics and their gradient terms summed over the ranks of ``group``."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, weight: torch.Tensor | None,
                bias: torch.Tensor | None, running_mean: torch.Tensor | None,
                running_var: torch.Tensor | None, eps: float, momentum: float,
                group: Any) -> torch.Tensor:
        c = x.shape[1]
        dims = [0, *range(2, x.dim())]
        shape = [1, c] + [1] * (x.dim() - 2)
        xf = x.float()
        n_local = x.numel() // c if c else 0
        if n_local > 0:
            var_l, mean_l = torch.var_mean(xf, dim=dims, correction=0)          # (C,)
            mean_l, var_l = mean_l.double(), var_l.double()
            stats = torch.cat([mean_l * n_local, (var_l + mean_l * mean_l) * n_local])
        else:                                      # an empty part still joins the reduction
            stats = torch.zeros(2 * c, dtype=torch.float64, device=x.device)
        stats = torch.cat([stats, torch.tensor([float(n_local)], dtype=torch.float64,
                                               device=x.device)])
        tdist.all_reduce(stats, group=group)
        n = float(stats[-1])
        mean = stats[:c] / n
        var = (stats[c:2 * c] / n - mean * mean).clamp_min(0.0)              # biased, (C,)
        if running_mean is not None and running_var is not None:
            with torch.no_grad():
                running_mean.mul_(1 - momentum).add_(momentum * mean.to(running_mean.dtype))
                unbiased = var * (n / max(n - 1.0, 1.0))
                running_var.mul_(1 - momentum).add_(momentum * unbiased.to(running_var.dtype))
        invstd = torch.rsqrt(var + eps).float().view(shape)
        xhat = (xf - mean.float().view(shape)) * invstd
        y = xhat * weight.view(shape) + bias.view(shape) if weight is not None else xhat.clone()
        ctx.save_for_backward(xhat, invstd, weight)
        ctx.n, ctx.group, ctx.dtype = n, group, x.dtype
        return y.to(x.dtype)

    @staticmethod
    def backward(ctx: Any, gy: torch.Tensor) -> tuple[Any, ...]:
        xhat, invstd, weight = ctx.saved_tensors
        c = xhat.shape[1]
        dims = [0, *range(2, xhat.dim())]
        shape = [1, c] + [1] * (xhat.dim() - 2)
        g = gy.float()
        sum_dy = g.sum(dim=dims)                                              # (C,) local
        sum_dy_xhat = (g * xhat).sum(dim=dims)
        both = torch.cat([sum_dy, sum_dy_xhat]).double()
        tdist.all_reduce(both, group=ctx.group)                               # global sums
        mean_dy = (both[:c] / ctx.n).float().view(shape)
        mean_dy_xhat = (both[c:] / ctx.n).float().view(shape)
        scale = invstd * weight.view(shape) if weight is not None else invstd
        gx = scale * (g - mean_dy - xhat * mean_dy_xhat)
        # weight and bias: this rank's part; DDP averages them with the other parameters
        gw = sum_dy_xhat.to(weight.dtype) if weight is not None else None
        gb = sum_dy.to(weight.dtype) if weight is not None else None
        return gx.to(ctx.dtype), gw, gb, None, None, None, None, None


class GroupBatchNorm(nn.modules.batchnorm._BatchNorm):
    """BatchNorm whose training statistics are those of the global batch over all ranks of
    ``group`` (any backend, gloo included); in eval mode a plain BatchNorm."""

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float | None = 0.1,
                 affine: bool = True, track_running_stats: bool = True, group: Any = None):
        super().__init__(num_features, eps, momentum, affine, track_running_stats)
        self.group = group
        self.original_class: type = nn.BatchNorm2d

    def _check_input_dim(self, input: torch.Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected at least 2D input (got {input.dim()}D input)")

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        self._check_input_dim(input)
        if not self.training and self.running_mean is not None:
            return F.batch_norm(input, self.running_mean, self.running_var, self.weight,
                                self.bias, False, 0.0, self.eps)
        factor = 0.0 if self.momentum is None else self.momentum
        track = self.training and self.track_running_stats
        if track and self.num_batches_tracked is not None:
            self.num_batches_tracked.add_(1)
            if self.momentum is None:            # cumulative moving average
                factor = 1.0 / float(self.num_batches_tracked)
        return _GroupBatchNormFn.apply(input, self.weight, self.bias,
                                       self.running_mean if track else None,
                                       self.running_var if track else None,
                                       self.eps, factor, self.group)


def _share_state(src: nn.Module, dst: nn.Module) -> nn.Module:
    """``dst`` takes ``src``'s own parameters and buffers (the optimizer keeps pointing at them)."""
    for name in ("weight", "bias"):
        setattr(dst, name, getattr(src, name))
    for name in ("running_mean", "running_var", "num_batches_tracked"):
        if name in src._buffers:
            dst._buffers[name] = src._buffers[name]
    dst.train(src.training)
    return dst


def convert_batch_norm(module: nn.Module, group: Any) -> nn.Module:
    """Replace every BatchNorm in ``module`` (in place; the root returned) by a
    ``GroupBatchNorm`` sharing its parameters and buffers; state-dict keys do not change."""
    if isinstance(module, nn.modules.batchnorm._BatchNorm) and \
            not isinstance(module, GroupBatchNorm):
        new = GroupBatchNorm(module.num_features, module.eps, module.momentum, module.affine,
                             module.track_running_stats, group)
        new.original_class = type(module)
        return _share_state(module, new)
    for name, child in list(module.named_children()):
        module._modules[name] = convert_batch_norm(child, group)
    return module


def restore_batch_norm(module: nn.Module) -> nn.Module:
    """Undo ``convert_batch_norm``: each ``GroupBatchNorm`` back to its original class."""
    if isinstance(module, GroupBatchNorm):
        old = module.original_class(module.num_features, module.eps, module.momentum,
                                    module.affine, module.track_running_stats)
        return _share_state(module, old)
    for name, child in list(module.named_children()):
        module._modules[name] = restore_batch_norm(child)
    return module


# ---- sharding ----------------------------------------------------------------------------------

def shard_bounds(n: int, rank: int, world_size: int) -> tuple[int, int]:
    """``[lo, hi)`` of rank's contiguous part of ``n`` items (sizes differ by at most one, the
    first ranks larger)."""
    q, r = divmod(n, world_size)
    lo = rank * q + min(rank, r)
    return lo, lo + q + (1 if rank < r else 0)


def evaluate_sharded(model: nn.Module, images: ImageSet, info: DatasetInfo, dist: Dist,
                     batch_size: int = 512, device: str | torch.device = "cpu",
                     channels_last: bool = False) -> dict[str, float]:
    """``zoo.train.evaluate`` with each rank on its contiguous shard and the sums added up over
    the ranks: the single-process figures (up to float rounding) on every rank."""
    lo, hi = shard_bounds(len(images), dist.rank, dist.world_size)
    part = ImageSet(images.images[lo:hi], images.labels[lo:hi], images.ids[lo:hi])
    m = evaluate(model, part, info, batch_size, device, channels_last)
    k = hi - lo
    sums = (m["loss"] * k, round(m["accuracy"] * k), round(m["top5"] * k)) if k else (0, 0, 0)
    loss, correct, correct5, n = dist.sum_over_ranks(*sums, k)
    if n == 0:
        return {"loss": float("nan"), "accuracy": float("nan"), "top5": float("nan")}
    return {"loss": loss / n, "accuracy": correct / n, "top5": correct5 / n}


# ---- DDP for fit --------------------------------------------------------------------------------

class DataParallel:
    """What ``zoo.train.fit`` needs to train one model on every rank of ``dist`` (DDP)."""

    def __init__(self, dist: Dist):
        if not dist.enabled:
            raise ValueError("DataParallel needs a process group of at least 2 ranks")
        self.dist = dist
        self._ddp: nn.Module | None = None

    @property
    def rank(self) -> int:
        return self.dist.rank

    @property
    def world_size(self) -> int:
        return self.dist.world_size

    @property
    def is_main(self) -> bool:
        return self.dist.is_main

    @property
    def seed_offset(self) -> int:
        """Added to the per-epoch torch seed: dropout draws its own stream on each rank."""
        return 7_919 * self.rank

    def check(self, config: TrainConfig) -> None:
        if config.batch_size < self.world_size:
            raise ValueError(f"batch_size={config.batch_size} is the global batch and must be at "
                             f"least the number of ranks ({self.world_size})")

    def steps_per_epoch(self, n_train: int, config: TrainConfig) -> int:
        """``zoo.train.steps_per_epoch``, also dropping a final batch with fewer images than ranks
        (every rank needs at least one)."""
        n = steps_per_epoch(n_train, config)
        if n > n_train // config.batch_size and n_train % config.batch_size < self.world_size:
            n -= 1
        if n < 1:
            raise ValueError(f"{n_train} training images make no batch of at least "
                             f"{self.world_size} images (one per rank)")
        return n

    def wrap(self, model: nn.Module) -> nn.Module:
        """BatchNorm over the global batch, then ``DistributedDataParallel`` (rank 0's weights
        broadcast to all). Train through the returned module; ``model`` keeps the parameters."""
        convert_batch_norm(model, self.dist.sync_group)
        device = next(model.parameters()).device
        ids = [device.index] if device.type == "cuda" else None
        # buffers are synced once here; BatchNorm's running statistics then stay equal on every
        # rank (GroupBatchNorm), so no per-forward broadcast is needed
        self._ddp = nn.parallel.DistributedDataParallel(model, device_ids=ids,
                                                        forward_sync_buffers=False)
        return self._ddp

    def unwrap(self, model: nn.Module) -> nn.Module:
        self._ddp = None
        return restore_batch_norm(model)

    def local_part(self, n: int) -> slice:
        """This rank's contiguous part of a global batch of ``n``."""
        return slice(*shard_bounds(n, self.rank, self.world_size))

    def loss_weight(self, n_local: int, n_global: int) -> float:
        """DDP averages gradients over W ranks; weighting each rank's mean loss by
        ``W * n_local / n_global`` makes that average the gradient of the global mean loss."""
        return self.world_size * n_local / n_global

    def sum_over_ranks(self, *values: float) -> list[float]:
        return self.dist.sum_over_ranks(*values)

    def evaluate(self, model: nn.Module, images: ImageSet, info: DatasetInfo,
                 batch_size: int = 512, device: str | torch.device = "cpu",
                 channels_last: bool = False) -> dict[str, float]:
        return evaluate_sharded(model, images, info, self.dist, batch_size, device,
                                channels_last)


def per_rank_batch(global_batch: int, world_size: int) -> int:
    """The largest part of a global batch one rank takes."""
    return math.ceil(global_batch / max(1, world_size))
