"""The issue's headline targets, read from one ``routers.csv`` (one evaluate-routers run).

Targets (meant for the full preset; the quick preset is reported as measured):

1. the best deployable router (dispatcher or cascade, never an oracle or the ceiling) within
   ``max_drop`` (0.3 points) of the best single model's test accuracy has at least
   ``min_ratio`` (3x) its images per second;
2. that router's own time (everything that is not a zoo model's forward pass) is at most
   ``max_router_share`` (5%) of its routed time;
3. every deployable router is faster than the best single model at every level;
4. (reported, no target) the share of the gap between a cost-matched random router and the
   per-sample ceiling that each router recovers (``gap_recovered``).

Every ratio is between two timings of the same CSV, so they were measured side by side.
This module reads numbers only (no torch): ``bench_routers(rows)`` -> ``BenchReport``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from oracle.io import read_csv

DEPLOYABLE = ("dispatcher", "cascade")
_EPS = 1e-9


@dataclass
class RouterPoint:
    """One timed deployable router at one sacrifice level."""

    method: str
    sacrifice: float
    accuracy: float
    images_per_second: float
    ratio: float                    # images/s over the best single model's (same run)
    router_share: float             # router seconds / routed seconds
    budget_held: bool
    gap_recovered: float | None


@dataclass
class BenchReport:
    """What ``format_bench`` prints; ``passed`` maps each target to PASS (True) or FAIL."""

    best_single: str
    best_accuracy: float
    best_images_per_second: float
    threads: str
    timing_samples: str
    max_drop: float
    min_ratio: float
    max_router_share: float
    headline: RouterPoint | None            # fastest deployable within max_drop, or None
    most_accurate: RouterPoint              # most accurate deployable (shown when none qualify)
    slowest: RouterPoint                    # deployable row with the lowest ratio
    points: list[RouterPoint]
    gap: dict[float, dict[str, float | None]] = field(default_factory=dict)  # level -> method
    passed: dict[str, bool] = field(default_factory=dict)

    @property
    def all_passed(self) -> bool:
        return all(self.passed.values())


def _f(v: Any) -> float | None:
    """CSV cell -> float (None for an empty cell)."""
    if v is None or v == "":
        return None
    return float(v)


def load_rows(run: str | Path) -> list[dict[str, str]]:
    """RUN/results/routers.csv rows, with an error that names the command that writes it."""
    path = Path(run) / "results" / "routers.csv"
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist; run `evaluate-routers --run {run}` first")
    rows = read_csv(path)
    if not rows:
        raise ValueError(f"{path} has no rows; re-run `evaluate-routers --run {run}`")
    return rows


def bench_routers(rows: Sequence[Mapping[str, str]], *, max_drop: float = 0.003,
                  min_ratio: float = 3.0, max_router_share: float = 0.05) -> BenchReport:
    """Check the targets on the rows of one routers.csv (see the module docstring)."""
    need = {"method", "family", "sacrifice", "accuracy", "images_per_second", "router_share",
            "gap_recovered", "budget_held"}
    missing = sorted(need - set(rows[0])) if rows else sorted(need)
    if missing:
        raise ValueError(f"routers.csv lacks columns {missing}; it was written by an older "
                         "evaluate-routers: re-run it")
    best_rows = [r for r in rows if r["family"] == "best-single"]
    if not best_rows:
        raise ValueError("routers.csv has no best-single row; re-run evaluate-routers")
    best = best_rows[0]
    best_ips = _f(best["images_per_second"])
    if best_ips is None or best_ips <= 0:
        raise ValueError("the best single model has no timing in routers.csv; re-run "
                         "evaluate-routers (timing is on by default)")
    best_acc = float(best["accuracy"])
    points = []
    for r in rows:
        if r["family"] not in DEPLOYABLE:
            continue
        ips = _f(r["images_per_second"])
        if ips is None:
            raise ValueError(f"deployable router {r['method']} at sacrifice {r['sacrifice']} "
                             "was not timed; re-run evaluate-routers")
        points.append(RouterPoint(r["method"], float(r["sacrifice"]), float(r["accuracy"]), ips,
                                  ips / best_ips, _f(r["router_share"]) or 0.0,
                                  r["budget_held"] == "True", _f(r["gap_recovered"])))
    if not points:
        raise ValueError("routers.csv has no dispatcher or cascade rows; re-run evaluate-routers")
    ok = [p for p in points if p.accuracy >= best_acc - max_drop - _EPS]
    headline = max(ok, key=lambda p: (p.images_per_second, p.accuracy)) if ok else None
    most_accurate = max(points, key=lambda p: (p.accuracy, p.images_per_second))
    slowest = min(points, key=lambda p: p.ratio)
    gap: dict[float, dict[str, float | None]] = {}
    for r in rows:
        if r["family"] in DEPLOYABLE or r["family"] == "oracle-executed":
            gap.setdefault(float(r["sacrifice"]), {})[r["method"]] = _f(r["gap_recovered"])
    passed = {
        "accuracy": headline is not None,
        "speed": headline is not None and headline.ratio >= min_ratio - _EPS,
        "router_time": headline is not None and headline.router_share <= max_router_share + _EPS,
        "faster_everywhere": slowest.ratio > 1.0,
    }
    return BenchReport(best["method"].split(":", 1)[-1], best_acc, best_ips,
                       best.get("threads", ""), best.get("timing_samples", ""), max_drop,
                       min_ratio, max_router_share, headline, most_accurate, slowest, points,
                       dict(sorted(gap.items())), passed)


def _verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def _point(p: RouterPoint, best_acc: float) -> str:
    return (f"{p.method} at sacrifice {p.sacrifice:g}: accuracy {p.accuracy:.4f} "
            f"({100 * (p.accuracy - best_acc):+.2f} points), {p.images_per_second:.0f} images/s")


def format_bench(rep: BenchReport, source: str = "") -> str:
    """The headline as text, one PASS/FAIL per target."""
    out = [f"bench-routers {source}".rstrip(),
           f"  measured in one run: threads {rep.threads or '?'}, timed on "
           f"{rep.timing_samples or '?'} test images",
           f"  best single model: {rep.best_single}, test accuracy {rep.best_accuracy:.4f}, "
           f"{rep.best_images_per_second:.0f} images/s", ""]
    h = rep.headline
    drop = 100 * rep.max_drop
    if h is None:
        out.append(f"[{_verdict(False)}] no deployable router within {drop:.2g} points of the "
                   f"best single model; most accurate: {_point(rep.most_accurate, rep.best_accuracy)}")
        out.append(f"[{_verdict(False)}] images/s ratio: n/a (no router qualifies; the most "
                   f"accurate one runs at {rep.most_accurate.ratio:.2f}x)")
        out.append(f"[{_verdict(False)}] router time share of routed time: n/a (the most "
                   f"accurate router's is {100 * rep.most_accurate.router_share:.1f}%)")
    else:
        out.append(f"[{_verdict(True)}] best deployable router within {drop:.2g} points: "
                   f"{_point(h, rep.best_accuracy)}")
        out.append(f"[{_verdict(rep.passed['speed'])}] images/s ratio to the best single model: "
                   f"{h.ratio:.2f}x (target >= {rep.min_ratio:g}x)")
        out.append(f"[{_verdict(rep.passed['router_time'])}] router time share of routed time: "
                   f"{100 * h.router_share:.1f}% (target <= {100 * rep.max_router_share:g}%)")
    worst_share = max(rep.points, key=lambda p: p.router_share)
    out.append(f"       (largest router time share of any deployable row: "
               f"{100 * worst_share.router_share:.1f}%, {worst_share.method} at "
               f"{worst_share.sacrifice:g})")
    s = rep.slowest
    out.append(f"[{_verdict(rep.passed['faster_everywhere'])}] every deployable router faster "
               f"than the best single model at every level: slowest is {s.method} at sacrifice "
               f"{s.sacrifice:g}, {s.ratio:.2f}x")
    out += ["", "images/s ratio to the best single model, per level (held = accuracy budget "
            "held on test):"]
    methods = list(dict.fromkeys(p.method for p in rep.points))
    levels = sorted({p.sacrifice for p in rep.points})
    by = {(p.method, p.sacrifice): p for p in rep.points}
    out.append(f"{'sacrifice':>9}  " + "  ".join(f"{m:>22}" for m in methods))
    for lv in levels:
        cells = []
        for m in methods:
            p = by.get((m, lv))
            cells.append(f"{'':>22}" if p is None else
                         f"{p.ratio:>6.2f}x {p.accuracy:.4f} {'held' if p.budget_held else 'MISS':>4}")
        out.append(f"{lv:>9g}  " + "  ".join(f"{c:>22}" for c in cells))
    out += ["", "gap recovered (0 = cost-matched random router, 1 = per-sample ceiling; "
            "oracle rows route by the true label, a bound):"]
    gm = list(dict.fromkeys(m for d in rep.gap.values() for m in d))
    out.append(f"{'sacrifice':>9}  " + "  ".join(f"{m:>24}" for m in gm))
    for lv, d in rep.gap.items():
        out.append(f"{lv:>9g}  " + "  ".join(
            f"{'' if d.get(m) is None or math.isnan(d[m]) else f'{d[m]:.3f}':>24}" for m in gm))
    verdicts = ", ".join(f"{k} {_verdict(v)}" for k, v in rep.passed.items())
    out += ["", f"targets: {verdicts}"]
    return "\n".join(out)
