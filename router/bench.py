"""The routing targets, read from the *selected* rows of one ``routers.csv`` (one run).

At every level and for each zoo, evaluate-routers marks one deployable answer ``selected``:
the one validation said was cheapest within the target (possibly the cheapest adequate single
model itself). Nothing here picks among test rows; the selected rows are reported as they came
out on test, held or not.

Targets:

1. ``not_slower``: at every level, in each zoo, the selected answer is at least as fast as
   ``cheapest-single`` (images/s ratio >= 1 - ``noise``; timing noise on a shared CPU);
2. ``speedup_low_sacrifice``: at every level s <= ``low_level`` (0.5%) the selected answer over
   the whole zoo runs at >= ``min_ratio`` (2x) the cheapest adequate single model's images/s
   (the base zoo's figure is printed beside it, no target);
3. (reported) each selected row's budget on test, overhead share (router + wasted seconds over
   routed seconds) and the gap each deployable router recovers between a cost-matched random
   router and the per-sample ceiling.

Every ratio is between two timings of the same CSV, measured side by side in the same rounds.
Numbers only (no torch): ``bench_routers(rows)`` -> ``BenchReport``; ``format_bench`` prints it.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from common.io import read_csv

DEPLOYABLE = ("dispatcher", "cascade", "learned")
_EPS = 1e-9


@dataclass
class SelectedPoint:
    """The answer selected on val at one level of one zoo, with its test figures."""

    zoo: str
    sacrifice: float
    method: str
    accuracy: float
    budget_held: bool
    images_per_second: float
    vs_best: float                    # images/s over the zoo's best single model
    vs_cheapest: float                # images/s over the level's cheapest adequate single model
    cheapest: str                     # that model's name
    overhead_share: float             # (router + wasted seconds) / routed seconds
    margin_se: float | None = None    # (test acc - target) / paired test SE; None: not known


@dataclass
class BenchReport:
    """What ``format_bench`` prints; ``passed`` maps each target to PASS (True) or FAIL."""

    best_single: dict[str, str]                 # zoo -> best single model (reference)
    threads: str
    timing_samples: str
    noise: float
    min_ratio: float
    low_level: float
    points: list[SelectedPoint]
    gap: dict[tuple[str, float], dict[str, float | None]] = field(default_factory=dict)
    passed: dict[str, bool] = field(default_factory=dict)

    @property
    def all_passed(self) -> bool:
        return all(self.passed.values())


def _f(v: Any) -> float | None:
    """CSV cell -> float (None for an empty cell)."""
    if v is None or v == "":
        return None
    return float(v)


def _true(v: Any) -> bool:
    return str(v).strip().lower() in ("1", "true", "1.0")


def load_rows(run: str | Path) -> list[dict[str, str]]:
    """RUN/results/routers.csv rows, with an error that names the command that writes it."""
    path = Path(run) / "results" / "routers.csv"
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist; run `evaluate-routers --run {run}` first")
    rows = read_csv(path)
    if not rows:
        raise ValueError(f"{path} has no rows; re-run `evaluate-routers --run {run}`")
    return rows


def bench_routers(rows: Sequence[Mapping[str, str]], *, noise: float = 0.10,
                  min_ratio: float = 2.0, low_level: float = 0.005) -> BenchReport:
    """Check the targets on the selected rows of one routers.csv (see the module docstring)."""
    need = {"method", "family", "zoo", "sacrifice", "selected", "accuracy", "images_per_second",
            "budget_held", "speedup_vs_best", "speedup_vs_cheapest_single", "overhead_share"}
    missing = sorted(need - set(rows[0])) if rows else sorted(need)
    if missing:
        raise ValueError(f"routers.csv lacks columns {missing}; it was written by an older "
                         "evaluate-routers: re-run it")
    best = {r["zoo"]: r["method"].split(":", 1)[-1] for r in rows if r["family"] == "best-single"}
    points: list[SelectedPoint] = []
    for r in rows:
        if not _true(r["selected"]):
            continue
        ips = _f(r["images_per_second"])
        if ips is None:
            raise ValueError(f"the selected row {r['method']} ({r['zoo']}, sacrifice "
                             f"{r['sacrifice']}) was not timed; re-run evaluate-routers")
        cheap = next((c["method"].split(":", 1)[-1] for c in rows
                      if c["family"] == "cheapest-single" and c["zoo"] == r["zoo"]
                      and c["sacrifice"] == r["sacrifice"]), "?")
        points.append(SelectedPoint(r["zoo"], float(r["sacrifice"]), r["method"],
                                    float(r["accuracy"]), _true(r["budget_held"]), ips,
                                    _f(r["speedup_vs_best"]) or 0.0,
                                    _f(r["speedup_vs_cheapest_single"]) or 0.0, cheap,
                                    _f(r["overhead_share"]) or 0.0,
                                    _f(r.get("budget_margin_se"))))
    if not points:
        raise ValueError("routers.csv has no selected row; re-run evaluate-routers (it marks the "
                         "answer validation selects at each level)")
    seen: dict[tuple[str, float], str] = {}
    for p in points:
        key = (p.zoo, p.sacrifice)
        if key in seen:
            raise ValueError(f"two rows are selected at zoo {p.zoo}, sacrifice {p.sacrifice:g} "
                             f"({seen[key]}, {p.method}); re-run evaluate-routers")
        seen[key] = p.method
    points.sort(key=lambda p: (p.zoo != "all", p.zoo, p.sacrifice))
    gap: dict[tuple[str, float], dict[str, float | None]] = {}
    for r in rows:
        if r["family"] in DEPLOYABLE or r["family"] == "oracle-executed":
            gap.setdefault((r["zoo"], float(r["sacrifice"])), {})[r["method"]] = \
                _f(r.get("gap_recovered"))
    low = [p for p in points if p.zoo == "all" and p.sacrifice <= low_level + _EPS]
    passed = {
        "not_slower": all(p.vs_cheapest >= 1.0 - noise - _EPS for p in points),
        "speedup_low_sacrifice": bool(low) and all(p.vs_cheapest >= min_ratio - _EPS
                                                   for p in low),
    }
    first = rows[0]
    return BenchReport(best, first.get("threads", ""), first.get("timing_samples", ""), noise,
                       min_ratio, low_level, points, dict(sorted(gap.items())), passed)


def _verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def _se(v: float | None) -> str:
    return "" if v is None or math.isnan(v) else f"{v:+.1f}"


def budget_summary(points: Sequence[SelectedPoint]) -> str:
    """One line: how many selected answers held their budget on test, and how far the misses
    are in paired test standard errors (SE column: test accuracy minus target over the SE of
    the difference to the best single model on the same images)."""
    miss = [p for p in points if not p.budget_held]
    line = (f"budget on test: {len(points) - len(miss)} of {len(points)} selected answers held "
            "it (SE = margin in paired test standard errors)")
    if miss:
        known = [p.margin_se for p in miss if p.margin_se is not None]
        within = sum(1 for v in known if v >= -1.0)
        line += (f"; {len(miss)} missed, {within} of them by less than one SE"
                 + (f" (worst {min(known):+.1f} SE)" if known else ""))
    return line


def format_bench(rep: BenchReport, source: str = "") -> str:
    """The selected answers as text, one PASS/FAIL per target."""
    out = [f"bench-routers {source}".rstrip(),
           f"  measured in one run: threads {rep.threads or '?'}, timed on "
           f"{rep.timing_samples or '?'} test images; best single model per zoo: "
           + ", ".join(f"{z} {m}" for z, m in rep.best_single.items()),
           "  every row below is the answer selected on val at its level (never a pick on test)",
           "",
           f"{'zoo':<5}{'sacrifice':>9}  {'selected':<30}{'test acc':>9} {'held':>5}{'SE':>6}"
           f"{'x best':>8}{'x cheapest':>11}  {'cheapest adequate single':<28}{'overhead':>9}"]
    for p in rep.points:
        out.append(f"{p.zoo:<5}{p.sacrifice:>9g}  {p.method:<30}{p.accuracy:>9.4f} "
                   f"{'held' if p.budget_held else 'MISS':>5}{_se(p.margin_se):>6}"
                   f"{p.vs_best:>7.2f}x{p.vs_cheapest:>10.2f}x"
                   f"  {p.cheapest:<28}{100 * p.overhead_share:>8.1f}%")
    out.append("")
    out.append(budget_summary(rep.points))
    out.append("")
    slow = min(rep.points, key=lambda p: p.vs_cheapest)
    out.append(f"[{_verdict(rep.passed['not_slower'])}] the selected answer is at least as fast "
               f"as the cheapest adequate single model at every level (within "
               f"{100 * rep.noise:g}% timing noise): slowest {slow.method} ({slow.zoo}, s="
               f"{slow.sacrifice:g}) at {slow.vs_cheapest:.2f}x")
    low = [p for p in rep.points if p.sacrifice <= rep.low_level + 1e-9]
    low_all = [p for p in low if p.zoo == "all"]
    if low_all:
        worst = min(low_all, key=lambda p: p.vs_cheapest)
        base = ", ".join(f"s={p.sacrifice:g} {p.vs_cheapest:.2f}x ({p.method})"
                         for p in low if p.zoo == "base")
        out.append(f"[{_verdict(rep.passed['speedup_low_sacrifice'])}] at s <= "
                   f"{100 * rep.low_level:g}% the selected answer over the whole zoo is >= "
                   f"{rep.min_ratio:g}x the cheapest adequate single model: lowest "
                   f"{worst.vs_cheapest:.2f}x at s={worst.sacrifice:g}"
                   + (f"; over the base zoo: {base}" if base else ""))
    else:
        out.append(f"[{_verdict(False)}] no level <= {100 * rep.low_level:g}% was evaluated "
                   "(evaluate-routers --sacrifices 0 0.005 ...)")
    out += ["", "gap recovered (0 = cost-matched random router, 1 = per-sample ceiling; "
            "oracle rows route by the true label, a bound):"]
    gm = list(dict.fromkeys(m for d in rep.gap.values() for m in d))
    out.append(f"{'zoo':<5}{'sacrifice':>9}  " + "  ".join(f"{m:>24}" for m in gm))
    for (zoo, lv), d in rep.gap.items():
        out.append(f"{zoo:<5}{lv:>9g}  " + "  ".join(
            f"{'' if d.get(m) is None or math.isnan(d[m]) else f'{d[m]:.3f}':>24}" for m in gm))
    verdicts = ", ".join(f"{k} {_verdict(v)}" for k, v in rep.passed.items())
    out += ["", f"targets: {verdicts}"]
    return "\n".join(out)
