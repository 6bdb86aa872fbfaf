"""bench_committee: each committee of a run as one batched module against its members run one
after the other.

    python -m scripts.bench_committee --run RUN [--batch 256] [--threads 2] [--rounds 7]

For every committee member of the run (``committee-<model>x<k>``, built by ``train-zoo
--committees``): the same ``--batch`` images of the run's val split (tiled if fewer), already
normalised, at ``--threads`` torch threads under ``torch.inference_mode``; one warm-up run of
each side, then ``--rounds`` rounds, each timing both sides once (their order alternating from
round to round, so drifts in machine load hit both), and the median per side. Prints ms per
image for both and the speedup (members' time / the committee's): the median of the per-round
ratios with its 95 % interval (order statistics, as evaluate-routers' speedups; 21 rounds give
a proper one, fewer than 6 only the range). The verdict "no slower" is read on the interval:
``faster`` when its lower end is above 1, ``slower`` when its upper end is below 1, ``same``
when it holds 1 (the two sides do the same arithmetic, so "same" is what a sound module gives).
Checks both give the same mean probabilities, and writes ``RUN/results/committees.csv``.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

from common.io import write_csv
from router.timing import paired_speedup
from zoo.checkpoint import load_model, preprocess_of
from zoo.committee import KIND
from zoo.costs import _big_batch
from zoo.data import DataError, prepare_data
from zoo.preprocess import prepare
from zoo.rundir import RunDir

COLUMNS = ["committee", "k", "members", "batch", "threads", "rounds", "committee_ms_per_image",
           "members_ms_per_image", "speedup", "speedup_lo", "speedup_hi", "verdict",
           "max_prob_diff", "mode"]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="bench_committee", description=__doc__.split("\n\n")[0])
    p.add_argument("--run", required=True, help="a run directory with committee members")
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=21,
                   help="timed rounds after one warm-up (6 or more for a 95%% interval)")
    args = p.parse_args(argv)
    if args.batch < 1 or args.threads < 1 or args.rounds < 1:
        p.error("--batch, --threads and --rounds must be at least 1")
    return args


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


@torch.inference_mode()
def bench_one(committee: torch.nn.Module, members: list[torch.nn.Module], x: torch.Tensor,
              rounds: int) -> dict[str, float]:
    """Median seconds per batch of the committee and of its members one after the other
    (the mean of their softmax, what the committee computes), the paired speedup (members /
    committee per round: median, 95 % interval) and the largest difference between the two
    sides' mean probabilities."""
    def one_by_one() -> torch.Tensor:
        return torch.stack([m(x).softmax(dim=1) for m in members]).mean(dim=0)

    def stacked() -> torch.Tensor:
        return committee(x).softmax(dim=1)

    diff = float((stacked() - one_by_one()).abs().max())       # the warm-up, checked
    times: dict[str, list[float]] = {"committee": [], "members": []}
    for r in range(rounds):
        order = [("committee", stacked), ("members", one_by_one)]
        for side, fn in order if r % 2 == 0 else order[::-1]:
            times[side].append(_timed(fn))
    speedup, lo, hi = paired_speedup(times["members"], times["committee"])
    return {"committee_s": statistics.median(times["committee"]),
            "members_s": statistics.median(times["members"]), "max_prob_diff": diff,
            "speedup": speedup, "speedup_lo": lo, "speedup_hi": hi}


def verdict(lo: float, hi: float) -> str:
    """``faster`` / ``slower`` when the whole speedup interval is above / below 1, else
    ``same``."""
    return "faster" if lo > 1.0 else "slower" if hi < 1.0 else "same"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(list(sys.argv[1:] if argv is None else argv))
    rd = RunDir(args.run)
    committees = [m for m in rd.finished_models()
                  if rd.read_card(m).get("arch", {}).get("kind") == KIND]
    if not committees:
        print(f"bench_committee: {rd.root} has no committee members; build them with "
              "`train-zoo --run RUN --committees MODEL:K`", file=sys.stderr)
        return 2
    try:
        bundle = prepare_data(rd.root, **rd.load_config().data_kwargs())
    except (DataError, FileNotFoundError, ValueError) as e:
        print(f"bench_committee: {e}", file=sys.stderr)
        return 2
    old_threads = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    rows = []
    try:
        for name in committees:
            committee, ckpt = load_model(rd.checkpoint(name))
            member_names = ckpt["arch"]["members"]
            members = [load_model(rd.checkpoint(m))[0] for m in member_names]
            how = preprocess_of(ckpt, bundle.info)
            x = prepare(_big_batch(bundle.val.images, args.batch), how).contiguous()
            res = bench_one(committee, members, x, args.rounds)
            c_ms = 1000 * res["committee_s"] / args.batch
            m_ms = 1000 * res["members_s"] / args.batch
            rows.append({"committee": name, "k": len(member_names),
                         "members": " ".join(member_names), "batch": args.batch,
                         "threads": args.threads, "rounds": args.rounds,
                         "committee_ms_per_image": float(f"{c_ms:.6g}"),
                         "members_ms_per_image": float(f"{m_ms:.6g}"),
                         "speedup": round(res["speedup"], 4),
                         "speedup_lo": round(res["speedup_lo"], 4),
                         "speedup_hi": round(res["speedup_hi"], 4),
                         "verdict": verdict(res["speedup_lo"], res["speedup_hi"]),
                         "max_prob_diff": f"{res['max_prob_diff']:.2e}",
                         "mode": committee.mode})
    finally:
        torch.set_num_threads(old_threads)
    w = max(len(r["committee"]) for r in rows)
    span = "95% interval" if args.rounds >= 6 else "range (under 6 rounds: no 95% interval)"
    print(f"batch {args.batch}, {args.threads} threads, median of {args.rounds} rounds after a "
          f"warm-up (ms per image); speedup = median per-round ratio, [{span}]")
    print(f"{'committee':<{w}} {'k':>2} {'one module':>10} {'one by one':>10} {'speedup':>8} "
          f"{'interval':>13}  verdict")
    for r in rows:
        print(f"{r['committee']:<{w}} {r['k']:>2} {r['committee_ms_per_image']:>10.4f} "
              f"{r['members_ms_per_image']:>10.4f} {r['speedup']:>7.2f}x "
              f"[{r['speedup_lo']:.2f}-{r['speedup_hi']:.2f}]  {r['verdict']}")
    for r in rows:
        if float(r["max_prob_diff"]) > 1e-4:
            print(f"WARNING: {r['committee']} and its members one by one differ by up to "
                  f"{r['max_prob_diff']} in mean probability")
    path = write_csv(Path(rd.results) / "committees.csv", rows, COLUMNS)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
