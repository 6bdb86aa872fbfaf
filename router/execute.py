"""Routed execution on data already in memory, and the one timing harness for everything.

``execute_routed``: the router runs on the whole batch of inputs (in batches), inputs are
grouped by chosen model, each group runs in batches, answers go back to input order.
``execute_cascade``: stage by stage, only the still-unsure inputs go on. Single models run
through ``execute_routed`` with a ``ConstantRouter``, so every speedup is a ratio of two
measurements by the same code. ``benchmark`` wraps any of them: warm-up runs, then the median
of timed repeats; the router's own time (routing plus grouping and gathering: everything that
is not a model's forward pass) is measured inside the same clock.

Each model runs on its own device (``zoo.device.device_of``: move it there before calling) with
its own preprocessing (``zoo.preprocess``); inputs move to that device batch by batch unless
they are there already, and every clock is read after ``zoo.device.synchronize``, so a GPU's
asynchronous kernels are inside the time they are charged to.
"""
from __future__ import annotations

import statistics
import time
from dataclasses import asdict, dataclass, field
from typing import Callable, Hashable, Mapping, Sequence

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from router.base import Router, RouterError, first_confident, table_precision
from zoo.infer import predict_logits
from zoo.preprocess import PreprocessLike


@dataclass
class ExecResult:
    """Answers for N inputs: predictions, the model that answered each, and timing parts."""

    preds: np.ndarray             # (N,) int64 class predictions, input order
    chosen: np.ndarray            # (N,) int64 index of the model whose answer was kept
    seconds: float = 0.0          # wall-clock of the whole call
    model_seconds: float = 0.0    # time inside model forward passes
    confidence: np.ndarray | None = None  # (N,) top softmax prob of the answering model
    stage_confidence: np.ndarray | None = None  # cascades: (N, S) stage scores, NaN: not reached
    wasted_seconds: float = 0.0   # cascades: model time on inputs that then went on to a later stage

    @property
    def router_seconds(self) -> float:
        """Everything that is not a zoo model's forward pass: routing, grouping, gathering."""
        return max(0.0, self.seconds - self.model_seconds)

    @property
    def overhead_seconds(self) -> float:
        """What routing costs beyond the answering models' useful work: router + wasted."""
        return self.router_seconds + self.wasted_seconds


@dataclass
class Timing:
    """Median wall-clock of repeats after warm-up, with what it was measured under."""

    seconds: float
    router_seconds: float
    n_samples: int
    threads: int
    repeats: int
    warmup: int
    all_seconds: list[float] = field(default_factory=list)
    wasted_seconds: float = 0.0   # median over the repeats (cascades; 0 for the others)

    @property
    def images_per_second(self) -> float:
        return self.n_samples / self.seconds if self.seconds > 0 else float("inf")

    @property
    def router_share(self) -> float:
        return self.router_seconds / self.seconds if self.seconds > 0 else 0.0

    @property
    def overhead_share(self) -> float:
        """(router + wasted seconds) / routed seconds: everything that is not useful work."""
        return ((self.router_seconds + self.wasted_seconds) / self.seconds
                if self.seconds > 0 else 0.0)

    def to_dict(self) -> dict:
        d = asdict(self)
        d.update(images_per_second=self.images_per_second, router_share=self.router_share,
                 overhead_share=self.overhead_share)
        return d


class ModelClock:
    """Accumulates time spent inside model forward passes."""

    def __init__(self) -> None:
        self.model_seconds = 0.0


def timed_logits(model: nn.Module, images: torch.Tensor, how: PreprocessLike, batch_size: int,
                 clock: ModelClock, batch_seconds: list[float] | None = None) -> torch.Tensor:
    """Logits (n, C) float32 on the CPU for uint8 images, in batches on the model's device
    with its preprocessing (``zoo.infer.predict_logits``, the one inference loop); every
    batch's time goes on the clock (and on ``batch_seconds``)."""
    times: list[float] = []
    logits = predict_logits(model, images, how, batch_size, batch_seconds=times)
    clock.model_seconds += sum(times)
    if batch_seconds is not None:
        batch_seconds.extend(times)
    return logits if len(images) else torch.empty(0, 0)


def run_model(model: nn.Module, images: torch.Tensor, how: PreprocessLike,
              batch_size: int = 256) -> torch.Tensor:
    """Logits (n, C) float32 on the CPU of one model on uint8 ``images``, in batches, on the
    model's device with its preprocessing (the executor's own loop)."""
    return timed_logits(model, images, how, batch_size, ModelClock())


def _check_models(models: Sequence[nn.Module], infos: Sequence[PreprocessLike], n: int) -> None:
    if len(models) != n or len(infos) != n:
        raise RouterError(f"the router knows {n} models but got {len(models)} models and "
                          f"{len(infos)} dataset infos; pass them in the table's model order")


def execute_routed(router: Router, images: torch.Tensor, models: Sequence[nn.Module],
                   infos: Sequence[PreprocessLike], batch_size: int = 256) -> ExecResult:
    """Route all inputs, run each chosen model on its group in batches, restore input order."""
    _check_models(models, infos, len(router.model_names))
    clock = ModelClock()
    t0 = time.perf_counter()
    chosen = np.asarray(router.route(images), dtype=np.int64)
    if chosen.shape != (len(images),):
        raise RouterError(f"{type(router).__name__}.route returned shape {chosen.shape} for "
                          f"{len(images)} images")
    preds = torch.empty(len(images), dtype=torch.int64)
    conf = torch.empty(len(images), dtype=torch.float32)
    chosen_t = torch.from_numpy(chosen)
    for m in np.unique(chosen):
        idx = torch.nonzero(chosen_t == int(m), as_tuple=True)[0]
        logits = timed_logits(models[m], images.index_select(0, idx), infos[m], batch_size, clock)
        # the answer is the logits' argmax, as the prediction tables store it
        # (``zoo.profile.table_columns``); the confidence is the top softmax probability
        p, y = torch.softmax(logits, dim=1).max(dim=1).values, logits.argmax(dim=1)
        preds[idx], conf[idx] = y, p
    seconds = time.perf_counter() - t0
    return ExecResult(preds.numpy(), chosen, seconds, clock.model_seconds, conf.numpy())


def escalated_seconds(batch_seconds: Sequence[float], went_on: np.ndarray,
                      batch_size: int) -> float:
    """A stage's forward time spent on the inputs that then went on to a later stage: each
    batch's measured time times the share of its inputs that escalated."""
    share = np.asarray(went_on, dtype=np.float64)
    return float(sum(dt * float(share[b * batch_size:(b + 1) * batch_size].mean())
                     for b, dt in enumerate(batch_seconds)))


def execute_cascade(stages: Sequence[int], thresholds: Sequence[float], images: torch.Tensor,
                    models: Sequence[nn.Module], infos: Sequence[PreprocessLike],
                    batch_size: int = 256,
                    scorers: Sequence[Callable[[np.ndarray], np.ndarray] | None] | None = None
                    ) -> ExecResult:
    """Run ``models[stages[0]]`` on all inputs, keep answers whose score clears the stage
    threshold, send the rest to the next stage; the last stage answers everything left.

    A stage's score is its top softmax probability, compared at table precision
    (``table_precision``) as when fitted, unless ``scorers`` (one per stage, None for the
    default) gives a callable from the stage's softmax probabilities (n, C) float32 to (n,)
    scores (a learned cascade's deferral heads, ``router.deferral``); a scorer's time is router
    time (inside the clock, outside the models'). ``wasted_seconds`` is the measured forward
    time of the non-final stages spent on the inputs that went on: each batch's time times the
    share of its inputs that escalated.
    """
    if len(stages) == 0 or len(thresholds) != len(stages):
        raise RouterError(f"a cascade needs stages and one threshold per stage, got "
                          f"{list(stages)} and {list(thresholds)}")
    if scorers is not None and len(scorers) != len(stages):
        raise RouterError(f"give one scorer (or None) per stage: {len(stages)} stages, "
                          f"{len(scorers)} scorers")
    clock = ModelClock()
    t0 = time.perf_counter()
    n = len(images)
    preds = torch.empty(n, dtype=torch.int64)
    conf = torch.empty(n, dtype=torch.float32)
    chosen = np.full(n, int(stages[-1]), dtype=np.int64)
    stage_conf = np.full((n, len(stages)), np.nan, dtype=np.float32)
    todo = torch.arange(n)
    wasted = 0.0
    for k, (m, th) in enumerate(zip(stages, thresholds)):
        if len(todo) == 0:
            break
        batch_seconds: list[float] = []
        logits = timed_logits(models[m], images.index_select(0, todo), infos[m], batch_size, clock,
                            batch_seconds)
        probs = torch.softmax(logits, dim=1)
        p, y = probs.max(dim=1).values, logits.argmax(dim=1)     # answer as the tables store it
        last = k == len(stages) - 1
        scorer = None if scorers is None or last else scorers[k]
        if scorer is None:
            stage_conf[todo.numpy(), k] = p.numpy()
            score = None if last else table_precision(p)
        else:
            score = np.asarray(scorer(probs.numpy()), dtype=np.float32)
            if score.shape != (len(todo),):
                raise RouterError(f"stage {k}'s scorer returned shape {score.shape} for "
                                  f"{len(todo)} inputs")
            stage_conf[todo.numpy(), k] = score
        stop = (np.ones(len(todo), dtype=bool) if score is None else
                first_confident(score[:, None], th, fallback=-1) == 0)
        stop_t = torch.from_numpy(stop)
        if not last:
            wasted += escalated_seconds(batch_seconds, ~stop, batch_size)
        done = todo[stop_t]
        preds[done], conf[done] = y[stop_t], p[stop_t]
        chosen[done.numpy()] = int(m)
        todo = todo[~stop_t]
    seconds = time.perf_counter() - t0
    return ExecResult(preds.numpy(), chosen, seconds, clock.model_seconds, conf.numpy(),
                      stage_conf, wasted)


def benchmark(run: Callable[[], ExecResult], n_samples: int, *, warmup: int = 1,
              repeats: int = 3) -> tuple[ExecResult, Timing]:
    """Warm-up runs, then ``repeats`` timed runs; the median total and median router time.

    Returns the last run's result (all runs compute the same answers) and the timing.
    The caller fixes the thread count (``torch.set_num_threads``); it is recorded here.
    """
    if repeats < 1 or warmup < 0:
        raise RouterError(f"need repeats >= 1 and warmup >= 0, got {repeats} and {warmup}")
    result = None
    for _ in range(warmup):
        result = run()
    totals, routers, wasted = [], [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        result = run()
        totals.append(time.perf_counter() - t0)
        routers.append(result.router_seconds)
        wasted.append(result.wasted_seconds)
    assert result is not None
    timing = Timing(seconds=statistics.median(totals), router_seconds=statistics.median(routers),
                    n_samples=n_samples, threads=torch.get_num_threads(), repeats=repeats,
                    warmup=warmup, all_seconds=totals, wasted_seconds=statistics.median(wasted))
    return result, timing


def benchmark_interleaved(runs: Mapping[Hashable, Callable[[], ExecResult]], n_samples: int, *,
                          warmup: int = 0, repeats: int = 3, progress: bool = False,
                          shuffle_seed: int | None = 0) -> dict[Hashable, Timing]:
    """Time many runs round-robin: each of ``repeats`` rounds runs every one once.

    On a shared machine load comes in bursts; timing one method's repeats back to back lets a
    burst land on one method only, which then looks several times slower than its neighbours.
    Interleaving spreads any burst over all of them, and the median per method drops it. The
    order within each round is shuffled (seeded; ``shuffle_seed=None`` keeps the given order),
    so no run always follows the same neighbour or always goes first. ``warmup`` untimed rounds
    go first. Returns one ``Timing`` per key (the median total and median router time over the
    rounds; ``all_seconds[r]`` is round r, so two keys' rounds pair up for per-round ratios).
    """
    if repeats < 1 or warmup < 0:
        raise RouterError(f"need repeats >= 1 and warmup >= 0, got {repeats} and {warmup}")
    for _ in range(warmup):
        for run in runs.values():
            run()
    totals: dict[Hashable, list[float]] = {k: [] for k in runs}
    routers: dict[Hashable, list[float]] = {k: [] for k in runs}
    wasted: dict[Hashable, list[float]] = {k: [] for k in runs}
    keys = list(runs)
    rng = np.random.default_rng(shuffle_seed)
    for _ in tqdm(range(repeats), desc="timing rounds", disable=not progress, leave=False):
        order = keys if shuffle_seed is None else [keys[i] for i in rng.permutation(len(keys))]
        for k in order:
            run = runs[k]
            t0 = time.perf_counter()
            res = run()
            totals[k].append(time.perf_counter() - t0)
            routers[k].append(res.router_seconds)
            wasted[k].append(res.wasted_seconds)
    threads = torch.get_num_threads()
    return {k: Timing(seconds=statistics.median(totals[k]),
                      router_seconds=statistics.median(routers[k]), n_samples=n_samples,
                      threads=threads, repeats=repeats, warmup=warmup, all_seconds=totals[k],
                      wasted_seconds=statistics.median(wasted[k]))
            for k in runs}


def measure_ms_per_image(runs: Sequence[Callable[[], object]], n_images: int, *,
                         warmup: int = 1, rounds: int = 3) -> np.ndarray:
    """(K,) median milliseconds per image of each callable, timed round-robin.

    Every round times each callable once, so a burst of load on a shared machine hits all of
    them alike instead of whichever happened to run then. Used for the costs the routers are
    fitted with (on validation images, in the process and with the threads that execute them).
    """
    if rounds < 1 or warmup < 0 or n_images < 1:
        raise RouterError(f"need rounds >= 1, warmup >= 0, n_images >= 1; got {rounds}, "
                          f"{warmup}, {n_images}")
    for _ in range(warmup):
        for run in runs:
            run()
    times = np.empty((rounds, len(runs)))
    for r in range(rounds):
        for k, run in enumerate(runs):
            t0 = time.perf_counter()
            run()
            times[r, k] = time.perf_counter() - t0
    return np.median(times, axis=0) * 1e3 / n_images


def model_ms_per_image(models: Sequence[nn.Module], infos: Sequence[PreprocessLike],
                       images: torch.Tensor, batch_size: int = 256, *, warmup: int = 1,
                       rounds: int = 3) -> np.ndarray:
    """(M,) ms per image of each model on ``images`` in batches (the executor's own loop)."""
    runs = [lambda m=m, i=i: timed_logits(m, images, i, batch_size, ModelClock())
            for m, i in zip(models, infos)]
    return measure_ms_per_image(runs, len(images), warmup=warmup, rounds=rounds)


def stage_overhead_ms(images: torch.Tensor, n_classes: int, *, rounds: int = 5) -> float:
    """Median ms per image of a routing stage's own work outside the model, as the executors
    do it: selecting the stage's inputs, softmax, top-1, table-precision rounding and the
    stop mask (charged to every stage of every family by the fits' expected costs)."""
    n = len(images)
    logits = torch.randn(n, n_classes)
    idx = torch.arange(n)

    def run() -> None:
        images.index_select(0, idx)
        p, _ = torch.softmax(logits, dim=1).max(dim=1)
        first_confident(table_precision(p)[:, None], 0.5, fallback=-1)
    return float(measure_ms_per_image([run], n, warmup=1, rounds=rounds)[0])
