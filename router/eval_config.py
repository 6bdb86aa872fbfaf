"""What evaluate-routers fits, times and writes: its configuration and the column order of
``RUN/results/routers.csv`` (shared by the fit, score, time and write modules)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

from oracle.policy import LABEL_KINDS
from router.base import RouterError
from router.certify import check_delta
from router.dispatcher import DispatcherConfig

DEFAULT_SACRIFICES = (0.0, 0.005, 0.01, 0.02, 0.05, 0.1)
LEAD_COLUMNS = ["method", "family", "zoo", "sacrifice", "selected", "accuracy", "precision",
                "recall", "f1", "seconds", "images_per_second", "speedup_vs_best",
                "speedup_vs_cheapest_single", "router_seconds", "wasted_seconds",
                "router_share", "overhead_share", "budget_held", "target_accuracy",
                "accuracy_drop", "budget_margin_se", "gain_se", "macs_per_image", "router_macs",
                "routing_accuracy", "gap_recovered", "random_accuracy", "expected_ms_per_image",
                "fit_ms_per_image", "val_accuracy", "agree_with_table", "timing_samples",
                "n_samples", "threads", "repeats", "device", "selection", "delta",
                "certified", "certified_drop_ucb", "budget_status", "speedup_vs_best_lo",
                "speedup_vs_best_hi", "speedup_vs_cheapest_lo", "speedup_vs_cheapest_hi",
                "settings"]
ZOOS = ("all", "base")
SELECTIONS = ("certified", "estimate")
EPS = 1e-9


@dataclass
class EvalConfig:
    """What ``evaluate_run`` fits, times and writes."""

    sacrifices: Sequence[float] = DEFAULT_SACRIFICES
    threads: int = 2
    device: str = "cpu"                  # zoo models run here ("cuda", "auto"); int8 ones stay on the CPU
    repeats: int = 11                    # timed rounds (shuffled order per round) after the warm-up
    warmup: int = 1
    timing_samples: int | None = 2000   # None: time on the whole test split
    batch_size: int = 256
    oracle_kinds: Sequence[str] = LABEL_KINDS
    label_policy: str = "budget"         # oracle policy the label dispatcher maps through
    cascade_max_stages: int = 3
    cascade_grid: int = 24
    learned_folds: int = 5               # learned cascade: cross-fitting folds (0: one split)
    learned_fit_share: float = 0.5       # ... with learned_folds = 0: share of val the heads train on
    costs: str = "measured"              # "measured": ms/image timed here on val; "profile": costs.json
    costs_from: str | None = None        # a previous fits.json: reuse its costs, overheads, dispatcher archs
    cost_samples: int = 1000             # val images the measured costs are timed on
    margin_z: float = 1.0                # estimate rule: val accuracy - z paired SEs >= target
    selection: str = "certified"         # "certified" (risk delta) or "estimate" (the 1-SE rule)
    delta: float = 0.1                   # certified: risk that a certified budget is missed
    select_share: float = 0.3            # certified: share of val that chooses (the rest certifies)
    count_router_time: bool = True       # expected costs include each stage's own time
    dispatcher_time_share: float | None = 0.25  # dispatcher ms <= this x fastest model's (None: off)
    dispatcher: DispatcherConfig = field(default_factory=DispatcherConfig)
    seed: int = 0
    save_routers: bool = True
    embed_models: bool = False           # copy zoo checkpoints into each RUN/routers/*.pt
    zoos: Sequence[str] = ZOOS           # "all": every model; "base": the uncompressed ones
    kinds: Sequence[str] | None = None   # router kinds to fit (router.kinds); None: every one
    progress: bool = True

    def __post_init__(self) -> None:
        self.sacrifices = [float(s) for s in self.sacrifices]
        if not self.sacrifices or any(not -0.2 < s <= 1.0 for s in self.sacrifices):
            raise RouterError(f"sacrifices must be fractions in (-0.2, 1] (0.01 = one point; "
                              f"a negative level asks for a gain), got {self.sacrifices}")
        if self.selection == "estimate" and any(s < 0 for s in self.sacrifices):
            raise RouterError("a negative level (asking for an answer more accurate than the "
                              "reference) needs --selection certified: the estimate rule falls "
                              "back to the reference, which cannot meet it")
        if self.threads < 1 or self.repeats < 1 or self.warmup < 0:
            raise RouterError("need threads >= 1, repeats >= 1, warmup >= 0")
        if self.costs not in ("measured", "profile"):
            raise RouterError(f"costs must be 'measured' or 'profile', got {self.costs!r}")
        if self.learned_folds == 1 or self.learned_folds < 0:
            raise RouterError(f"learned_folds must be 0 or >= 2, got {self.learned_folds}")
        if not 0 < self.learned_fit_share < 1:
            raise RouterError(f"learned_fit_share must be in (0, 1), got {self.learned_fit_share}")
        if self.selection not in SELECTIONS:
            raise RouterError(f"selection must be one of {SELECTIONS}, got {self.selection!r}")
        check_delta(self.delta)
        if not 0 < self.select_share < 1:
            raise RouterError(f"select_share must be in (0, 1), got {self.select_share}")
        if self.margin_z < 0 or self.cost_samples < 1:
            raise RouterError("need margin_z >= 0 and cost_samples >= 1")
        if self.dispatcher_time_share is not None and self.dispatcher_time_share <= 0:
            raise RouterError("dispatcher_time_share must be > 0 (or None to switch the time cap off)")
        if self.label_policy not in LABEL_KINDS:
            raise RouterError(f"label_policy must be one of {LABEL_KINDS}, got {self.label_policy!r}")
        if not self.zoos or any(z not in ZOOS for z in self.zoos):
            raise RouterError(f"zoos must be some of {ZOOS}, got {list(self.zoos)}")
        if self.kinds is not None:
            from router.kinds import ROUTER_KINDS
            unknown = [k for k in self.kinds if k not in ROUTER_KINDS]
            if unknown or not self.kinds:
                raise RouterError(f"unknown router kinds {unknown}; use some of "
                                  f"{list(ROUTER_KINDS)} (or leave --kinds out for every one)")
        bad = [k for k in self.oracle_kinds if k not in LABEL_KINDS]
        if bad:
            raise RouterError(f"unknown oracle kinds {bad}; use some of {LABEL_KINDS}")
