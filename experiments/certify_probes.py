"""Two probes of the certified selection at s <= 0, on val-only draws (never the test split).

    python experiments/certify_probes.py paths --run runs/committee-v20 [--draws 60]
    python experiments/certify_probes.py reference --run runs/committee-v20 [--draws 100]

``paths``: each draw's certified path at -0.1 %, 0 and 0.5 % (cascades and committee cascades
of up to 2 stages, as ``bench_guarantee``), tested by the fixed sequence (what the project
does), Wiens' fallback procedure (the first candidate at a share f of delta, the others
sharing the rest, a passed test's level carried on to the next) and Bonferroni; prints the
share of draws where something cheaper than the reference is certified and the median and
mean speedup over the draw's reference on the path's own costs.

``reference``: ``bench_guarantee --population val`` with the draw's reference chosen on the
select part alone instead of the whole draw (the project's reference is the most accurate
single model on all of val; this measures what that choice costs a committee, it changes
nothing). Its rows go to ``RUN/results/guarantee_val_committee.csv``; run the plain
``bench_guarantee`` with the same flags for the other arm.
"""
from __future__ import annotations

import argparse
import sys
from typing import Sequence

import numpy as np

import router.guarantee as guarantee
from common.tables import PredictionTable
from oracle.policy import reference_index
from router.certified import certify_context, certify_level
from router.certify import certifies, split_calibration
from router.deferral import rows_of
from zoo.rundir import RunDir

LEVELS = (-0.001, 0.0, 0.005)
DELTA = 0.1


def fallback(counts: Sequence[tuple[int, int]], n: int, s: float, weights: Sequence[float],
             delta: float = DELTA) -> list[bool]:
    """Wiens' fallback procedure over a path: hypothesis i is tested at ``weights[i] x delta``
    plus the level of hypothesis i - 1 where that one passed. Family-wise error <= delta; the
    fixed sequence is weights (1, 0, 0, ...), Bonferroni (1/K, ..., 1/K)."""
    out, carried = [], 0.0
    for (loss, gain), w in zip(counts, weights):
        level = w * delta + carried
        ok = level > 0 and certifies(loss, gain, n, s, level)
        out.append(ok)
        carried = level if ok else 0.0
    return out


def schemes(k: int) -> dict[str, list[float]]:
    """The weight vectors compared on a path of ``k`` candidates."""
    if k == 0:
        return {}
    rest = (lambda f: [f] + [(1 - f) / (k - 1)] * (k - 1) if k > 1 else [1.0])
    return {"fixed sequence": [1.0] + [0.0] * (k - 1), "fallback 0.9": rest(0.9),
            "fallback 0.75": rest(0.75), "fallback 0.5": rest(0.5), "Bonferroni": [1 / k] * k}


def paths(run: str, draws: int) -> None:
    cvec, names, _, _ = guarantee.run_costs(run)
    val = PredictionTable.load(RunDir(run).tables, "val").select_models(names)
    cfg = guarantee.GuaranteeConfig(max_stages=2, committee=True, rules=["certified"])
    rng = np.random.default_rng(0)
    found: dict[tuple[str, float], list[float]] = {}
    for d in range(draws):
        draw = rows_of(val, rng.integers(0, val.n_samples, val.n_samples // 2))
        ref = reference_index(draw, cvec)
        base = guarantee._context(draw, cvec, cvec, ref, cfg, d)
        ctx = certify_context("draw", draw, cvec, ref, base.settings, select_share=0.3,
                              log=base.log)
        for s in LEVELS:
            rec = certify_level(ctx, s, DELTA, guarantee._kinds(cfg)).record
            counts = [(p["loss"], p["gain"]) for p in rec["path"]]
            for name, w in schemes(len(counts)).items():
                ok = fallback(counts, rec["certify_samples"], s, w)
                costs = [p["cost"] for p, o in zip(rec["path"], ok) if o]
                found.setdefault((name, s), []).append(
                    float(cvec[ref]) / min(costs) if costs else 0.0)
            if not counts:
                for name in schemes(1):
                    found.setdefault((name, s), []).append(0.0)
    for (name, s), sp in sorted(found.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        sp_a = np.asarray(sp)
        speed = np.where(sp_a > 0, sp_a, 1.0)
        print(f"s={100 * s:+.1f}%  {name:15s} certified in {100 * np.mean(sp_a > 0):3.0f}% of "
              f"{len(sp_a)} draws; speedup median {np.median(speed):.2f}x mean "
              f"{speed.mean():.2f}x")


def reference_on_select(argv: list[str]) -> int:
    """``bench_guarantee`` with each draw's reference chosen on its select part only."""
    from scripts.bench_guarantee import main
    seeds = iter(range(10 ** 9))

    def pick(draw: PredictionTable, costs: np.ndarray) -> int:
        select, _ = split_calibration(draw.n_samples, 0.3, next(seeds))  # the draw's own seed
        return reference_index(rows_of(draw, select), costs)
    guarantee.reference_index = pick
    return main(argv + ["--population", "val", "--committee", "--rules", "certified"])


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in ("paths", "reference"):
        print(__doc__)
        return 2
    which, rest = argv[0], argv[1:]
    if which == "reference":
        return reference_on_select(rest)
    p = argparse.ArgumentParser(prog="certify_probes paths")
    p.add_argument("--run", required=True)
    p.add_argument("--draws", type=int, default=60)
    a = p.parse_args(rest)
    paths(a.run, a.draws)
    return 0


if __name__ == "__main__":
    sys.exit(main())
