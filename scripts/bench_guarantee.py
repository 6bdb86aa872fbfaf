"""bench-guarantee: how often the answer selected on val misses its budget, today's rule
against the certified one, over many resampled val splits of one run.

    python -m scripts.bench_guarantee --run runs/standard [--draws 500] [--delta 0.1]
        [--sacrifices 0 0.005 0.01 0.02 0.05 0.1] [--max-stages 2] [--learned] [--committee]
        [--estimate-weight W] [--committee-grid G] [--rules estimate certified] [--zoos all base]
        [--population pool|val] [--draw-size N] [--strict]

Reads RUN/tables/{val,test}.npz and the costs in RUN/routers/fits.json (run evaluate-routers
first); writes RUN/results/guarantee.csv and RUN/reports/guarantee.png (+ .csv) and prints a
PASS/FAIL line per target. Exit status 0, or 1 with --strict when a target fails.
"""
from __future__ import annotations

import argparse
import sys
import time

from common.io import write_csv
from common.tables import PredictionTable
from router.guarantee import COLUMNS, GuaranteeConfig, format_rows, judge, run_costs, \
    run_guarantee
from zoo.rundir import RunDir


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="bench-guarantee", description=__doc__.split("\n\n")[0])
    p.add_argument("--run", required=True, help="run directory (evaluate-routers has run)")
    p.add_argument("--draws", type=int, default=500, help="resampled val splits")
    p.add_argument("--delta", type=float, default=0.1, help="risk level of the certified rule")
    p.add_argument("--sacrifices", type=float, nargs="+",
                   default=[0.0, 0.005, 0.01, 0.02, 0.05, 0.1])
    p.add_argument("--max-stages", type=int, default=2,
                   help="longest cascade chain (evaluate-routers uses 3; 2 keeps 500 draws to "
                        "minutes); another value is named in the file: guarantee*_s<N>.csv")
    p.add_argument("--select-share", type=float, default=0.3,
                   help="certified rule: share of each draw that chooses (the rest certifies)")
    p.add_argument("--learned", action="store_true",
                   help="include the learned cascade, its heads refitted on every draw (slow)")
    p.add_argument("--committee", action="store_true",
                   help="include the committee cascade (growing committees, up to --max-stages "
                        "members); the results go to guarantee[_val]_committee.csv/.png")
    p.add_argument("--estimate-weight", type=float, default=None,
                   help="certified rule: weight of the select part's own noise in the bound "
                        "a candidate is predicted to get (default router.certify."
                        "ESTIMATE_WEIGHT); study it with --population val, never on test; "
                        "the results go to guarantee[_val]_w<W>.csv/.png")
    p.add_argument("--committee-grid", type=int, default=None,
                   help="thresholds per stage of the committee cascade's grid (default: the "
                        "cascade's, 24); the results go to guarantee[_val]_g<G>.csv/.png")
    p.add_argument("--rules", nargs="+", choices=["estimate", "certified"],
                   default=["estimate", "certified"],
                   help="which rules to run (the estimate rule fits on the whole draw: the "
                        "slower one with --committee --max-stages 3)")
    p.add_argument("--zoos", nargs="+", default=None,
                   help="which of the run's zoos (default: every one, e.g. all base)")
    p.add_argument("--population", choices=["pool", "val"], default="pool",
                   help="pool: val and test pooled (the benchmark); val: val alone, draws of "
                        "half its size (to study design choices without the test split)")
    p.add_argument("--draw-size", type=int, default=None,
                   help="images per draw (default: the run's val size; half of it with "
                        "--population val): what a val split of that size would give; the "
                        "results then go to guarantee[_val]_n<N>.csv/.png")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--strict", action="store_true", help="exit 1 when a target fails")
    p.add_argument("--no-progress", action="store_true")
    a = p.parse_args(argv)
    rd = RunDir(a.run)
    try:
        cvec, names, zoos, head_ms = run_costs(a.run)
        val = PredictionTable.load(rd.tables, "val").select_models(names)
        test = PredictionTable.load(rd.tables, "test").select_models(names)
    except (FileNotFoundError, KeyError, ValueError) as e:
        print(f"bench-guarantee: {e}", file=sys.stderr)
        return 2
    if a.estimate_weight is not None and a.estimate_weight < 0:
        print(f"bench-guarantee: --estimate-weight {a.estimate_weight}: a weight of the "
              "estimate's noise is >= 0 (0: no guard)", file=sys.stderr)
        return 2
    if a.committee_grid is not None and a.committee_grid < 2:
        print(f"bench-guarantee: --committee-grid {a.committee_grid}: use 2 or more thresholds "
              "per stage", file=sys.stderr)
        return 2
    cfg = GuaranteeConfig(draws=a.draws, delta=a.delta, sacrifices=a.sacrifices,
                          max_stages=a.max_stages, select_share=a.select_share,
                          learned=a.learned, committee=a.committee, rules=a.rules,
                          estimate_weight=a.estimate_weight,
                          committee_grid=a.committee_grid, seed=a.seed,
                          progress=not a.no_progress)
    if a.zoos:
        unknown = sorted(set(a.zoos) - set(zoos))
        if unknown:
            print(f"bench-guarantee: --zoos {' '.join(unknown)}: the run has zoos "
                  f"{' '.join(zoos)}", file=sys.stderr)
            return 2
        zoos = {z: zoos[z] for z in a.zoos}
    t0 = time.perf_counter()
    on_val = a.population == "val"
    population = val.n_samples + (0 if on_val else test.n_samples)
    if a.draw_size is not None and not 100 <= a.draw_size <= population:
        print(f"bench-guarantee: --draw-size {a.draw_size}: use 100 to {population} (the "
              "images of the population drawn from)", file=sys.stderr)
        return 2
    n_draw = a.draw_size or (val.n_samples // 2 if on_val else val.n_samples)
    rows = run_guarantee(val, None if on_val else test, cvec, zoos, cfg,
                         learned_extra_ms=head_ms, draw_size=n_draw)
    name = ("guarantee_val" if on_val else "guarantee") + \
        (f"_n{a.draw_size}" if a.draw_size else "") + ("_committee" if a.committee else "") + \
        (f"_w{a.estimate_weight:g}" if a.estimate_weight is not None else "") + \
        (f"_g{a.committee_grid}" if a.committee_grid else "") + \
        (f"_s{a.max_stages}" if a.max_stages != 2 else "")
    path = write_csv(rd.results / f"{name}.csv", rows, COLUMNS)
    from reports.guarantee import plot_guarantee
    png, _ = plot_guarantee(rows, rd.root / "reports" / f"{name}.png")
    verdict = judge(rows)
    pop = (f"{val.n_samples} val images" if on_val
           else f"{val.n_samples + test.n_samples} pooled val+test images")
    print(f"bench-guarantee {a.run}: {a.draws} draws of {n_draw} images (with "
          f"replacement) from {pop}; "
          f"cascades of <= {a.max_stages} stages" + (", learned cascade" if a.learned else "")
          + (", committee cascade" if a.committee else "")
          + "; dispatchers left out (their networks would train on every draw); "
          f"{time.perf_counter() - t0:.0f}s")
    print("miss: share of draws whose deployed answer's accuracy drop against the draw's "
          "reference, measured on the whole population, exceeds s")
    print(format_rows(rows))
    print("\n".join(verdict.lines))
    print(f"wrote {path} and {png}")
    return 1 if a.strict and not all(verdict.passed.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
