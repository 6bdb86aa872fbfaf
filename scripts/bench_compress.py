"""bench_compress: the compression targets of issue 6, measured in one run, PASS/FAIL each.

Times torchvision-shape ``vgg19`` at 224 (random weights unless ``--weights``; cost-only mode:
no data, no fine-tuning) at batch 1 and ``--batch`` (default 8) with ``--threads`` (default 2):
fp32, int8-dynamic, int8-static, qat4, struct-l1-30 and prune+int8; then reads a trained run's
``compression.csv`` for the accuracy deltas: ``--accuracy-csv``, by default
``RUN/results/compression.csv`` of the ``--run`` directory (what ``compress`` writes for a
trained run; the cost-only files go beside it, as ``compression_cost_only.csv``). Example::

    python -m scripts.bench_compress --run runs/bench_vgg19 \\
        --accuracy-csv runs/quick/results/compression.csv
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from zoo.compress.bench import run_bench


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="bench_compress", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", default="runs/bench_vgg19",
                   help="an empty (or earlier bench) run directory for the cost-only vgg19 files")
    p.add_argument("--accuracy-csv", default=None,
                   help="a trained run's compression.csv for the accuracy targets "
                        "(default: RUN/results/compression.csv)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--batch", type=int, default=8, help="the batch the speedups are timed at")
    p.add_argument("--input-size", type=int, default=224)
    p.add_argument("--weights", default=None, help="torchvision vgg19 state dict (optional)")
    p.add_argument("--latency-runs", type=int, default=5, help="batch-1 timed runs (min)")
    p.add_argument("--batch-repeats", type=int, default=3, help="big-batch timed repeats (min)")
    p.add_argument("--no-progress", action="store_true")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    accuracy_csv = args.accuracy_csv
    if accuracy_csv is None:
        accuracy_csv = Path(args.run) / "results" / "compression.csv"
        if not accuracy_csv.exists():
            print(f"bench_compress: {accuracy_csv} does not exist, so the accuracy targets are "
                  "not judged; pass --accuracy-csv PATH (a trained run's "
                  "results/compression.csv, written by `compress`) to judge them")
            accuracy_csv = None
    elif not Path(accuracy_csv).exists():
        print(f"bench_compress: --accuracy-csv {accuracy_csv} does not exist, so the accuracy "
              "targets are not judged; pass a trained run's results/compression.csv")
        accuracy_csv = None
    try:
        res = run_bench(args.run, accuracy_csv=accuracy_csv, threads=args.threads,
                        batch=args.batch, input_size=args.input_size, weights=args.weights,
                        latency_runs=args.latency_runs, batch_repeats=args.batch_repeats,
                        progress=not args.no_progress)
    except (FileNotFoundError, ValueError) as e:
        print(f"bench_compress: {e}", file=sys.stderr)
        return 2
    print(f"\ntargets (cost: vgg19@{args.input_size}, batch {args.batch}, {args.threads} threads,"
          f" one run on a shared CPU; accuracy: {res.accuracy_csv or 'not judged'})")
    for t in res.targets:
        print(t.line())
    n_ok = sum(t.ok for t in res.targets)
    print(f"{n_ok}/{len(res.targets)} targets met")
    return 0


if __name__ == "__main__":
    sys.exit(main())
