"""evaluate-routers, part 3: the only part that runs models. Every distinct routing is run
once for its answers, then all are timed round-robin (``router.execute.benchmark_interleaved``)
and the timed columns and both speedups are filled into the scored rows."""
from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np
import torch
from scipy import stats
from torch import nn

from router.base import Router
from router.eval_config import EvalConfig
from router.execute import ExecResult, Timing, benchmark_interleaved, execute_routed
from zoo.preprocess import PreprocessLike


# ---- timing -------------------------------------------------------------------------------

class RoutingTimer:
    """Runs each distinct routing once now (answers, and a first warm-up), times them all later.

    ``time``/``routed`` return ``(result, key)``: the answers right away; identical settings
    share a key. ``measure`` then times every key round-robin (``benchmark_interleaved``):
    ``warmup - 1`` more untimed rounds, then ``repeats`` timed rounds, median per key.
    """

    def __init__(self, images: torch.Tensor, models: Sequence[nn.Module],
                 infos: Sequence[PreprocessLike], cfg: EvalConfig):
        self.models, self.infos, self.cfg = list(models), list(infos), cfg
        n = len(images)
        self.k = n if cfg.timing_samples is None else min(n, int(cfg.timing_samples))
        self.x = images[:self.k]
        self.runs: dict[Any, Callable[[], ExecResult]] = {}
        self.results: dict[Any, ExecResult] = {}

    def time(self, key: Any, run: Callable[[torch.Tensor], ExecResult]) -> tuple[ExecResult, Any]:
        if key not in self.runs:
            self.runs[key] = lambda: run(self.x)
            self.results[key] = self.runs[key]()
        return self.results[key], key

    def routed(self, key: Any, index: np.ndarray,
               make_router: Callable[[slice], Router]) -> tuple[ExecResult, Any]:
        """Time a router over the models at ``index`` (answers indexed into that zoo)."""
        models = [self.models[i] for i in index]
        infos = [self.infos[i] for i in index]
        bs = self.cfg.batch_size
        return self.time(key, lambda x: execute_routed(make_router(slice(0, len(x))), x,
                                                       models, infos, bs))

    def measure(self) -> dict[Any, Timing]:
        return benchmark_interleaved(self.runs, self.k, warmup=max(0, self.cfg.warmup - 1),
                                     repeats=self.cfg.repeats, progress=self.cfg.progress,
                                     shuffle_seed=self.cfg.seed)


def fill_timings(rows: list[dict[str, Any]], pending: list[tuple[dict[str, Any], Any]],
                 timings: dict[Any, Timing]) -> None:
    """The timed columns of one zoo's rows, and both speedups (each level's best single and
    cheapest adequate single model of the same zoo, timed in the same rounds)."""
    for row, key in pending:
        tm = timings[key]
        row.update({"seconds": tm.seconds, "images_per_second": tm.images_per_second,
                    "router_seconds": tm.router_seconds, "router_share": tm.router_share,
                    "wasted_seconds": tm.wasted_seconds, "overhead_share": tm.overhead_share,
                    "timing_samples": tm.n_samples, "threads": tm.threads, "repeats": tm.repeats})
    key_of = {id(row): key for row, key in pending}
    ref_key: dict[tuple[str, float], dict[str, Any]] = {}
    for r in rows:
        if r["family"] in ("best-single", "cheapest-single") and id(r) in key_of:
            ref_key.setdefault((r["zoo"], r["sacrifice"]), {})[r["family"]] = key_of[id(r)]
    for r in rows:
        if id(r) not in key_of:
            continue
        refs = ref_key.get((r["zoo"], r["sacrifice"]), {})
        mine = timings[key_of[id(r)]].all_seconds
        for fam, col in (("best-single", "speedup_vs_best"),
                         ("cheapest-single", "speedup_vs_cheapest")):
            if fam not in refs:
                continue
            med, lo, hi = paired_speedup(timings[refs[fam]].all_seconds, mine)
            r["speedup_vs_best" if fam == "best-single" else "speedup_vs_cheapest_single"] = med
            r[f"{col}_lo"], r[f"{col}_hi"] = lo, hi


def median_interval(n: int, level: float = 0.95) -> tuple[int, int]:
    """0-based order statistics (lo, hi) bracketing the median of n values with coverage >=
    ``level`` (distribution-free: the count below the median is Binomial(n, 1/2)); for n < 6
    no pair reaches 95 % and (0, n - 1) is returned."""
    k = 0                                   # coverage of (k, n-1-k): 1 - 2 P(B <= k)
    while k + 1 < n - 2 - k and stats.binom.cdf(k + 1, n, 0.5) <= (1 - level) / 2:
        k += 1
    return k, n - 1 - k


def paired_speedup(base_seconds: Sequence[float], seconds: Sequence[float],
                   level: float = 0.95) -> tuple[float, float, float]:
    """(median, lo, hi) of the per-round ratios base / seconds: round r of both was timed in
    the same round, so each ratio sees the same machine state. The interval brackets the
    median by order statistics (``median_interval``)."""
    if len(base_seconds) != len(seconds) or not len(seconds):
        raise ValueError(f"paired rounds needed: {len(base_seconds)} and {len(seconds)}")
    ratio = np.sort(np.asarray(base_seconds, float) / np.asarray(seconds, float))
    lo, hi = median_interval(len(ratio), level)
    return float(np.median(ratio)), float(ratio[lo]), float(ratio[hi])
