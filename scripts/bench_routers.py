"""bench-routers: print the router targets with PASS/FAIL from one evaluate-routers run.

    python -m scripts.bench_routers --run runs/quick [--max-drop 0.003] [--min-ratio 3]
                                    [--max-router-share 0.05] [--strict]

Reads RUN/results/routers.csv only (no model is run). Exit status 0, or 1 with --strict when
a target fails.
"""
from __future__ import annotations

import argparse
import sys

from router.bench import bench_routers, format_bench, load_rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="bench-routers", description=__doc__.split("\n")[0])
    p.add_argument("--run", required=True, help="run directory with results/routers.csv")
    p.add_argument("--max-drop", type=float, default=0.003,
                   help="accuracy below the best single model allowed (fraction; 0.003 = 0.3 pt)")
    p.add_argument("--min-ratio", type=float, default=3.0,
                   help="images/s ratio to the best single model required")
    p.add_argument("--max-router-share", type=float, default=0.05,
                   help="largest share of routed time the router itself may take")
    p.add_argument("--strict", action="store_true", help="exit 1 when any target fails")
    a = p.parse_args(argv)
    rep = bench_routers(load_rows(a.run), max_drop=a.max_drop, min_ratio=a.min_ratio,
                        max_router_share=a.max_router_share)
    print(format_bench(rep, f"{a.run}/results/routers.csv"))
    return 1 if a.strict and not rep.all_passed else 0


if __name__ == "__main__":
    sys.exit(main())
