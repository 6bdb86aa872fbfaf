"""bench-routers: the routing targets with PASS/FAIL, from the answers selected on val in one
evaluate-routers run.

    python -m scripts.bench_routers --run runs/quick [--noise 0.1] [--min-ratio 2]
                                    [--low-level 0.005] [--strict]

Reads RUN/results/routers.csv only (no model is run). Exit status 0, or 1 with --strict when
a target fails.
"""
from __future__ import annotations

import argparse
import sys

from router.bench import bench_routers, format_bench, load_rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="bench-routers", description=__doc__.split("\n\n")[0])
    p.add_argument("--run", required=True, help="run directory with results/routers.csv")
    p.add_argument("--noise", type=float, default=0.10,
                   help="timing noise allowed when comparing the selected answer with the "
                        "cheapest adequate single model (fraction of its images/s)")
    p.add_argument("--min-ratio", type=float, default=2.0,
                   help="images/s ratio to the cheapest adequate single model required at low "
                        "sacrifice levels, whole zoo")
    p.add_argument("--low-level", type=float, default=0.005,
                   help="levels up to this sacrifice carry the --min-ratio target")
    p.add_argument("--strict", action="store_true", help="exit 1 when any target fails")
    a = p.parse_args(argv)
    try:
        rep = bench_routers(load_rows(a.run), noise=a.noise, min_ratio=a.min_ratio,
                            low_level=a.low_level)
    except (FileNotFoundError, ValueError) as e:
        print(f"bench-routers: {e}", file=sys.stderr)
        return 2
    print(format_bench(rep, f"{a.run}/results/routers.csv"))
    return 1 if a.strict and not rep.all_passed else 0


if __name__ == "__main__":
    sys.exit(main())
