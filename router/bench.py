"""The routing targets, read from the *selected* rows of one ``routers.csv`` (one run).

At every level and for each zoo, evaluate-routers marks one deployable answer ``selected``:
the one validation said was cheapest within the target (possibly the cheapest adequate single
model itself). Nothing here picks among test rows; the selected rows are reported as they came
out on test, held or not.

Targets (a point counts toward a speed target only where its budget is certified on val, where
the run certified, and held on test; speed targets are judged on the lower end of the 95 %
interval of the per-round speedup, where the run recorded one):

1. ``not_slower``: at every level, in each zoo, the selected answer is at least as fast as
   ``cheapest-single`` (images/s ratio >= 1 - ``noise``; timing noise on a shared CPU);
2. ``speedup_low_sacrifice``: at every level s <= ``low_level`` (0.5%) the selected answer over
   the whole zoo runs at >= ``min_ratio`` (2x) the cheapest adequate single model's images/s
   (the base zoo's figure is printed beside it, no target);
3. ``speedup_at_1pct``: at s = 1 % the selected answer over the whole zoo runs at >= 2x the best
   single model;
4. ``more_accurate_2x`` (committees, issue 33): at some level s <= 0 (a level that asks for at
   least the reference's accuracy) the selected answer over the whole zoo is >= ``gain``
   (0.3 points) more accurate on test than the best single model and >= ``min_ratio`` its
   images/s, both on the pessimistic end: the lower end of the gain's 95 % interval from its
   paired test standard error, and of the speedup's; every such level is printed, not only
   the one that passes, with the gain's test figure beside its interval (a gain whose SE the
   run did not record cannot be judged on its lower end and does not pass);
5. ``certified_s0_2x``: at s = 0 the selected answer over the whole zoo is certified (not the
   reference answering alone) and >= ``min_ratio`` the best single model;
6. (reported) each selected row's budget on test, overhead share (router + wasted seconds over
   routed seconds) and the gap each deployable router recovers between a cost-matched random
   router and the per-sample ceiling; the widest speedup interval of a selected row relative
   to its median; the largest gap between two timings of one configuration registered twice
   (the whole-zoo and base-zoo routers are often the same chain).

Every ratio is between two timings of the same CSV, measured side by side in the same rounds.
Numbers only (no torch): ``bench_routers(rows)`` -> ``BenchReport``; ``format_bench`` prints it.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from router.kinds import kind_families
from common.io import read_csv

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
    certified: bool | None = None     # budget certified on val (None: the run did not certify)
    drop_ucb: float | None = None     # its upper confidence bound of the drop, from val
    best_lo: float | None = None      # 95 % interval of vs_best (per-round ratios)
    best_hi: float | None = None
    cheapest_lo: float | None = None  # ... of vs_cheapest
    cheapest_hi: float | None = None
    status: str = ""                  # held / within test noise / violated
    gain_se: float | None = None      # paired test SE of (acc - ref acc); None: not recorded

    @property
    def counts(self) -> bool:
        """Counts toward a speed target: certified (where the run certified) and held."""
        return self.budget_held and self.certified is not False

    def gain_interval(self, ref_accuracy: float, z: float = 1.96) -> tuple[float, float] | None:
        """95 % interval of (accuracy - the zoo's best single model's) on test, from the paired
        standard error: routers.csv's ``gain_se`` where the run wrote it; otherwise recovered
        from ``margin_se`` = (acc - (ref - s)) / SE, so SE = (acc - (ref - s)) / margin_se
        (routers.csv files written before ``gain_se``). (0, 0) for the reference itself (the
        same answers: SE 0, or margin None with a zero difference); None where the SE cannot
        be recovered (no ``gain_se``, and a margin of 0 or unknown)."""
        gain = self.accuracy - ref_accuracy
        if self.gain_se is not None and not math.isnan(self.gain_se):
            return gain - z * self.gain_se, gain + z * self.gain_se
        if self.margin_se is None or math.isnan(self.margin_se):
            return (0.0, 0.0) if abs(gain) < _EPS and self.method.startswith("single:") else None
        if abs(self.margin_se) < _EPS:
            return None
        se = (self.accuracy - (ref_accuracy - self.sacrifice)) / self.margin_se
        return gain - z * se, gain + z * se

    def gain_lower(self, ref_accuracy: float) -> float | None:
        """The lower end of ``gain_interval`` (None where it cannot be recovered)."""
        iv = self.gain_interval(ref_accuracy)
        return None if iv is None else iv[0]

    def pessimistic(self, which: str) -> float:
        """The interval's lower end of ``vs_best`` / ``vs_cheapest`` (the median where absent)."""
        lo = self.best_lo if which == "best" else self.cheapest_lo
        return lo if lo is not None else (self.vs_best if which == "best" else self.vs_cheapest)


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
    twin_gap: tuple[float, str] | None = None   # largest same-configuration timing gap
    widest_interval: tuple[float, str] | None = None  # widest selected interval / median
    best_accuracy: dict[str, float] = field(default_factory=dict)   # zoo -> best single's test
    gain: float = 0.003

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
                  min_ratio: float = 2.0, low_level: float = 0.005,
                  gain: float = 0.003) -> BenchReport:
    """Check the targets on the selected rows of one routers.csv (see the module docstring)."""
    need = {"method", "family", "zoo", "sacrifice", "selected", "accuracy", "images_per_second",
            "budget_held", "speedup_vs_best", "speedup_vs_cheapest_single", "overhead_share"}
    missing = sorted(need - set(rows[0])) if rows else sorted(need)
    if missing:
        raise ValueError(f"routers.csv lacks columns {missing}; it was written by an older "
                         "evaluate-routers: re-run it")
    best = {r["zoo"]: r["method"].split(":", 1)[-1] for r in rows if r["family"] == "best-single"}
    best_acc = {r["zoo"]: float(r["accuracy"]) for r in rows if r["family"] == "best-single"}
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
        cert = r.get("certified", "")
        points.append(SelectedPoint(r["zoo"], float(r["sacrifice"]), r["method"],
                                    float(r["accuracy"]), _true(r["budget_held"]), ips,
                                    _f(r["speedup_vs_best"]) or 0.0,
                                    _f(r["speedup_vs_cheapest_single"]) or 0.0, cheap,
                                    _f(r["overhead_share"]) or 0.0,
                                    _f(r.get("budget_margin_se")),
                                    None if cert in ("", None) else _true(cert),
                                    _f(r.get("certified_drop_ucb")),
                                    _f(r.get("speedup_vs_best_lo")),
                                    _f(r.get("speedup_vs_best_hi")),
                                    _f(r.get("speedup_vs_cheapest_lo")),
                                    _f(r.get("speedup_vs_cheapest_hi")),
                                    r.get("budget_status", ""),
                                    _f(r.get("gain_se"))))
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
        if r["family"] in kind_families() or r["family"] == "oracle-executed":
            gap.setdefault((r["zoo"], float(r["sacrifice"])), {})[r["method"]] = \
                _f(r.get("gap_recovered"))
    low = [p for p in points if p.zoo == "all" and p.sacrifice <= low_level + _EPS]
    at1 = [p for p in points if p.zoo == "all" and abs(p.sacrifice - 0.01) < _EPS]
    passed = {
        "not_slower": all(p.pessimistic("cheapest") >= 1.0 - noise - _EPS for p in points),
        "speedup_low_sacrifice": bool(low) and all(
            p.counts and p.pessimistic("cheapest") >= min_ratio - _EPS for p in low),
        "speedup_at_1pct": bool(at1) and all(
            p.counts and p.pessimistic("best") >= min_ratio - _EPS for p in at1),
        "more_accurate_2x": any(_gain_clears(p, best_acc.get("all"), gain)
                                and p.pessimistic("best") >= min_ratio - _EPS
                                for p in points if p.zoo == "all" and p.sacrifice <= _EPS),
        "certified_s0_2x": any(p.certified is True and not p.method.startswith("single:")
                               and p.pessimistic("best") >= min_ratio - _EPS
                               for p in points if p.zoo == "all" and abs(p.sacrifice) < _EPS),
    }
    widths = [((p.best_hi - p.best_lo) / p.vs_best, f"{p.method} ({p.zoo}, s={p.sacrifice:g})")
              for p in points if p.best_lo is not None and p.best_hi is not None and p.vs_best]
    first = rows[0]
    return BenchReport(best, first.get("threads", ""), first.get("timing_samples", ""), noise,
                       min_ratio, low_level, points, dict(sorted(gap.items())), passed,
                       twin_gap(rows), max(widths) if widths else None, best_acc, gain)


def _gain_clears(p: SelectedPoint, ref_accuracy: float | None, gain: float) -> bool:
    """The lower end of ``p``'s gain interval over the reference is >= ``gain``."""
    lo = None if ref_accuracy is None else p.gain_lower(ref_accuracy)
    return lo is not None and lo >= gain - _EPS


def twin_gap(rows: Sequence[Mapping[str, str]]) -> tuple[float, str] | None:
    """The largest relative gap in images/s between rows of one configuration timed under
    two keys in the same run (the same family and settings, e.g. one chain registered by the
    whole zoo and by the base zoo): |a - b| / min(a, b), with what it was."""
    first_of: dict[tuple[str, str], tuple[str, float, str]] = {}   # -> (zoo, ips, where)
    worst: tuple[float, str] | None = None
    for r in rows:
        ips = _f(r.get("images_per_second"))
        if r["family"] not in kind_families() or ips is None:
            continue
        key = (r["family"], r.get("settings", ""))
        where = f"{r['method']} ({r['zoo']}, s={float(r['sacrifice']):g})"
        if key not in first_of:
            first_of[key] = (r["zoo"], ips, where)
        elif first_of[key][0] != r["zoo"]:           # another zoo: a separately timed twin
            _, other, at = first_of[key]
            g = abs(ips - other) / min(ips, other)
            if worst is None or g > worst[0]:
                worst = (g, f"{at} vs {where}")
    return worst


def _verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def _ci(med: float, lo: float | None, hi: float | None) -> str:
    return f"{med:.2f}x" + ("" if lo is None or hi is None else f" [{lo:.2f}-{hi:.2f}]")


def _gain_ci(iv: tuple[float, float] | None) -> str:
    """' [95% CI lo to hi]' in points, empty where the interval is unknown or a point."""
    if iv is None or iv[1] - iv[0] < _EPS:
        return ""
    return f" [95% CI {100 * iv[0]:+.2f} to {100 * iv[1]:+.2f}]"


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
        # a level where nothing was certified: the reference answered and no promise was made
        # (below zero it cannot hold: its drop is 0)
        unpromised = sum(1 for p in miss if p.certified is False)
        if unpromised:
            line += (f"; {unpromised} of the misses at a level where nothing was certified (the "
                     "reference answers, no promise made)")
    return line


def format_bench(rep: BenchReport, source: str = "") -> str:
    """The selected answers as text, one PASS/FAIL per target."""
    # Long by design: one printed paragraph per target, in the order the docstring lists them.
    out = [f"bench-routers {source}".rstrip(),
           f"  measured in one run: threads {rep.threads or '?'}, timed on "
           f"{rep.timing_samples or '?'} test images; best single model per zoo: "
           + ", ".join(f"{z} {m}" for z, m in rep.best_single.items()),
           "  every row below is the answer selected on val at its level (never a pick on test)",
           "",
           f"{'zoo':<5}{'sacrifice':>9}  {'selected':<30}{'cert':>5}{'ucb':>7}{'test acc':>9} "
           f"{'held':>5}{'SE':>6}{'x best [95% CI]':>22}{'x cheapest [95% CI]':>22}  "
           f"{'cheapest adequate single':<28}{'overhead':>9}"]
    for p in rep.points:
        cert = "" if p.certified is None else ("yes" if p.certified else "no")
        ucb = "" if p.drop_ucb is None else f"{100 * p.drop_ucb:.2f}p"
        # "none": nothing was certified (a level below zero), so no promise could be missed
        held = "held" if p.budget_held else ("none" if p.certified is False else "MISS")
        out.append(f"{p.zoo:<5}{p.sacrifice:>9g}  {p.method:<30}{cert:>5}{ucb:>7}"
                   f"{p.accuracy:>9.4f} "
                   f"{held:>5}{_se(p.margin_se):>6}"
                   f"{_ci(p.vs_best, p.best_lo, p.best_hi):>22}"
                   f"{_ci(p.vs_cheapest, p.cheapest_lo, p.cheapest_hi):>22}"
                   f"  {p.cheapest:<28}{100 * p.overhead_share:>8.1f}%")
    out.append("")
    out.append(budget_summary(rep.points))
    out.append("")
    out.append("speed targets: a point counts only where its budget is certified on val (where "
               "the run certified) and held on test, judged on its interval's lower end")
    if rep.widest_interval:
        w, where = rep.widest_interval
        out.append(f"widest 95% interval of a selected speedup: {100 * w:.1f}% of its median "
                   f"({where}; target <= 10%)")
    if rep.twin_gap:
        g, where = rep.twin_gap
        out.append(f"one configuration timed under two keys: largest gap {100 * g:.1f}% "
                   f"({where}; target <= 5%)")
    slow = min(rep.points, key=lambda p: p.pessimistic("cheapest"))
    out.append(f"[{_verdict(rep.passed['not_slower'])}] the selected answer is at least as fast "
               f"as the cheapest adequate single model at every level (within "
               f"{100 * rep.noise:g}% timing noise): slowest {slow.method} ({slow.zoo}, s="
               f"{slow.sacrifice:g}) at {slow.pessimistic('cheapest'):.2f}x (lower end)")
    at1 = [p for p in rep.points if p.zoo == "all" and abs(p.sacrifice - 0.01) < 1e-9]
    if at1:
        p = at1[0]
        out.append(f"[{_verdict(rep.passed['speedup_at_1pct'])}] at s = 1% the selected answer "
                   f"over the whole zoo is >= {rep.min_ratio:g}x the best single model: "
                   f"{p.method} at {p.pessimistic('best'):.2f}x (lower end)"
                   + ("" if p.counts else " (does not count: budget not certified and held)"))
    else:
        out.append(f"[{_verdict(False)}] no level of 1% was evaluated over the whole zoo")
    low = [p for p in rep.points if p.sacrifice <= rep.low_level + 1e-9]
    low_all = [p for p in low if p.zoo == "all"]
    if low_all:
        base = ", ".join(f"s={p.sacrifice:g} {p.vs_cheapest:.2f}x ({p.method})"
                         for p in low if p.zoo == "base")
        worst = min(low_all, key=lambda p: p.pessimistic("cheapest") if p.counts else -1)
        out.append(f"[{_verdict(rep.passed['speedup_low_sacrifice'])}] at s <= "
                   f"{100 * rep.low_level:g}% the selected answer over the whole zoo is >= "
                   f"{rep.min_ratio:g}x the cheapest adequate single model: lowest "
                   f"{worst.pessimistic('cheapest'):.2f}x (lower end) at s={worst.sacrifice:g}"
                   + ("" if worst.counts else " (does not count: not certified and held)")
                   + (f"; over the base zoo: {base}" if base else ""))
    else:
        out.append(f"[{_verdict(False)}] no level <= {100 * rep.low_level:g}% was evaluated "
                   "(evaluate-routers --sacrifices 0 0.005 ...)")
    ref_acc = rep.best_accuracy.get("all")
    at_most0 = [p for p in rep.points if p.zoo == "all" and p.sacrifice <= 1e-9]
    if ref_acc is not None and at_most0:
        levels = "; ".join(f"s={p.sacrifice:g} {p.method} {100 * (p.accuracy - ref_acc):+.2f} "
                           f"points{_gain_ci(p.gain_interval(ref_acc))} at "
                           f"{p.pessimistic('best'):.2f}x" for p in at_most0)
        out.append(f"[{_verdict(rep.passed['more_accurate_2x'])}] at a level s <= 0 the selected "
                   f"answer over the whole zoo is >= {100 * rep.gain:g} points more accurate on "
                   f"test than the best single model and >= {rep.min_ratio:g}x its images/s "
                   f"(lower end): {levels} (the gain is judged on the lower end of its 95% "
                   "interval from the paired test SE, in brackets; no interval: not judged)")
    zero = [p for p in at_most0 if abs(p.sacrifice) < 1e-9]
    if zero:
        p = zero[0]
        out.append(f"[{_verdict(rep.passed['certified_s0_2x'])}] at s = 0 the selected answer "
                   f"over the whole zoo is certified and >= {rep.min_ratio:g}x the best single "
                   f"model: {p.method}, certified {p.certified}, "
                   f"{p.pessimistic('best'):.2f}x (lower end)")
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
