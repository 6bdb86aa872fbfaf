"""evaluate-routers: fit the dispatcher and the cascade on val, score and time every router on test.

    evaluate-routers --run runs/quick [--sacrifices 0 0.005 0.01 0.02 0.05 0.1] [--threads 2]
                     [--repeats 11] [--timing-samples 2000] [--costs measured]
                     [--selection certified|estimate] [--delta 0.1] [--select-share 0.3]
                     [--margin-z 1]

The answer selected at each level is certified by default: with probability >= 1 - delta over
the draw of the labelled val images its expected accuracy drop against the reference is at
most the level (``--selection estimate``: the older one-standard-error rule, no guarantee).

Writes RUN/results/routers.csv, RUN/results/router_predictions.npz and RUN/routers/*.pt.
"""
from __future__ import annotations

import argparse
import sys

from router.dispatcher import DispatcherConfig
from router.evaluate import DEFAULT_SACRIFICES, EvalConfig, evaluate_run


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="evaluate-routers", description=__doc__.split("\n")[0])
    p.add_argument("--run", required=True, help="run directory (made by train-zoo/profile-zoo)")
    p.add_argument("--sacrifices", type=float, nargs="+", default=list(DEFAULT_SACRIFICES),
                   help="accuracy sacrifice levels as fractions (0.01 = one point)")
    p.add_argument("--threads", type=int, default=2, help="torch threads, fixed and recorded")
    p.add_argument("--device", default="cpu",
                   help="where the zoo models run and are timed: cpu, cuda, cuda:1 or auto "
                        "(int8 models stay on the CPU; the device column says where)")
    p.add_argument("--repeats", type=int, default=11,
                   help="timed rounds after the warm-up, every routing once per round in a "
                        "shuffled order; speedups are per-round ratios (median, 95%% interval)")
    p.add_argument("--warmup", type=int, default=1, help="untimed warm-up runs per method")
    p.add_argument("--timing-samples", type=int, default=2000,
                   help="time on the first N test images (0 = all of them)")
    p.add_argument("--batch-size", type=int, default=256, help="batch size of each model group")
    p.add_argument("--label-policy", default="budget", choices=["overlap", "accuracy", "budget"],
                   help="oracle policy the label-mode dispatcher maps predicted labels through")
    p.add_argument("--cascade-max-stages", type=int, default=3)
    p.add_argument("--costs", choices=["measured", "profile"], default="measured",
                   help="costs the fits minimise: ms/image timed here on val images (default) or "
                        "RUN/costs.json from profile-zoo")
    p.add_argument("--costs-from", default=None, metavar="FITS_JSON",
                   help="reuse the ms/image, routing overheads and dispatcher architectures a "
                        "previous evaluate-routers measured and chose (its RUN/routers/fits.json): "
                        "the same tables then give the same choices, which is how a change is "
                        "checked to move no selection")
    p.add_argument("--cost-samples", type=int, default=1000,
                   help="val images the measured costs are timed on")
    p.add_argument("--selection", choices=["certified", "estimate"], default="certified",
                   help="certified: choose on a part of val, certify the budget at risk --delta "
                        "on the rest (Learn-then-Test fixed-sequence testing); estimate: the "
                        "older rule (val accuracy minus --margin-z paired SEs), no guarantee")
    p.add_argument("--delta", type=float, default=0.1,
                   help="certified: the risk that a certified budget is missed (0.1 = 10%%)")
    p.add_argument("--select-share", type=float, default=0.3,
                   help="certified: share of val that fits and chooses; the rest certifies")
    p.add_argument("--margin-z", type=float, default=1.0,
                   help="estimate rule: fits keep val accuracy minus this many paired standard "
                        "errors at the target (1 = the one-standard-error rule, 0 = none)")
    p.add_argument("--dispatcher-time-share", type=float, default=0.25,
                   help="dispatcher ms/image at most this share of the fastest model's (0 = off; "
                        "the cap of 1/4 of the cheapest model's MACs always holds)")
    p.add_argument("--dispatcher-epochs", type=int, default=30,
                   help="dispatcher training epochs at most (early stopping on the held-out part)")
    p.add_argument("--learned-folds", type=int, default=5,
                   help="learned cascade: cross-fitting folds for its deferral heads (0: heads on "
                        "half of val, thresholds on the other half)")
    p.add_argument("--kinds", nargs="+", default=None, metavar="KIND",
                   help="router kinds to fit (default: every kind of router/kinds.py: "
                        "dispatcher-label dispatcher-sample cascade learned-cascade "
                        "committee-cascade)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-save-routers", action="store_true", help="do not write RUN/routers/*.pt")
    p.add_argument("--embed-models", action="store_true",
                   help="copy the zoo checkpoints each router can choose into its RUN/routers/*.pt "
                        "(self-contained files; tens of MB each) instead of referencing them")
    p.add_argument("--no-progress", action="store_true")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    cfg = EvalConfig(sacrifices=a.sacrifices, threads=a.threads, device=a.device,
                     repeats=a.repeats,
                     warmup=a.warmup, timing_samples=a.timing_samples or None,
                     batch_size=a.batch_size, label_policy=a.label_policy,
                     cascade_max_stages=a.cascade_max_stages, learned_folds=a.learned_folds,
                     costs=a.costs, costs_from=a.costs_from,
                     cost_samples=a.cost_samples, margin_z=a.margin_z,
                     selection=a.selection, delta=a.delta, select_share=a.select_share,
                     dispatcher_time_share=a.dispatcher_time_share or None,
                     dispatcher=DispatcherConfig(epochs=a.dispatcher_epochs, seed=a.seed,
                                                 progress=not a.no_progress),
                     seed=a.seed, save_routers=not a.no_save_routers, kinds=a.kinds,
                     embed_models=a.embed_models, progress=not a.no_progress)
    evaluate_run(a.run, cfg)
    return 0


if __name__ == "__main__":
    sys.exit(main())
