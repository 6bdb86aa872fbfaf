"""profile-zoo: prediction tables (val, test) and measured costs for every finished model.

Writes RUN/costs.json, RUN/tables/<split>.{npz,json} and RUN/results/zoo_profile.csv, reusing
whatever is still current; prints one row per model, cheapest first.

Under torchrun (``torchrun --nproc-per-node N -m scripts.profile_zoo -- --run DIR ...``) the
predictions behind the tables are spread over the ranks (zoo.profile_parallel); rank 0 then
assembles the tables and times every model alone, in one process.
"""
from __future__ import annotations

import argparse
from dataclasses import replace
from typing import Sequence

from zoo.costs import CostSettings
from zoo.distributed import init_distributed, launched_by_torchrun
from zoo.profile_parallel import predict_sharded
from zoo.rundir import RunDir
from zoo.profile import SPLITS, ProfileConfig, format_summary, profile_run


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="profile-zoo", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", required=True, help="run directory (holds zoo/<model>/...)")
    p.add_argument("--splits", nargs="+", default=["val", "test"], choices=SPLITS,
                   help="splits to tabulate (default: val test; add train when needed)")
    p.add_argument("--models", nargs="+", default=None,
                   help="only these finished models (default: every finished model)")
    p.add_argument("--threads", type=int, default=2, help="torch threads, fixed and recorded")
    p.add_argument("--device", default="cpu", help="device to time and predict on")
    p.add_argument("--batch", type=int, default=256,
                   help="batch size for throughput timing and for the tables (default 256)")
    p.add_argument("--budget-s", type=float, default=10.0,
                   help="soft cap on timing seconds per model; minimum repeats still run")
    p.add_argument("--memory", choices=["rss", "off"], default="rss",
                   help="peak memory: RSS in a fresh subprocess (rss) or not measured (off)")
    p.add_argument("--force", action="store_true", help="ignore caches and redo everything")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    settings = CostSettings(threads=args.threads, device=args.device,
                            throughput_batch=args.batch, budget_s=args.budget_s,
                            memory=args.memory)
    config = ProfileConfig(splits=tuple(args.splits), models=args.models, batch_size=args.batch,
                           force=args.force, progress=not args.no_progress, costs=settings)
    dist = init_distributed(args.device) if launched_by_torchrun() else None
    try:
        if dist is not None:
            shares = predict_sharded(args.run, config, dist)
            if not dist.is_main:
                return 0
            print(f"predictions on {dist.world_size} ranks: " + "; ".join(
                f"rank {r}: {len(d)}" for r, d in shares.items())
                + " model/split tables; costs timed by rank 0 alone, in one process")
            if config.force:     # predictions were just redone; redo the costs too
                RunDir(args.run).costs.unlink(missing_ok=True)
            config = replace(config, force=False)
        result = profile_run(args.run, config)
    finally:
        if dist is not None:
            dist.close()
    m = result.costs.machine
    print(f"{len(result.rows)} models, cheapest first (ms per image at batch {args.batch}); "
          f"measured {len(result.measured)}, reused {len(result.reused_costs)} costs; "
          f"predicted {len(result.predicted)}, reused {len(result.reused_predictions)} "
          "model/split tables")
    print(f"machine: {m.get('cpu')}, {m.get('threads')} threads, torch {m.get('torch')}, "
          f"device {m.get('device')}; MB = 1e6 bytes; timings are medians after warm-up")
    print(format_summary(result.rows, config.splits))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
