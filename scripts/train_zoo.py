"""train-zoo: train the model zoo of a preset into ``RUN/zoo/<model>/``; resumable.

    train-zoo --run runs/quick [--preset quick|full] [--models tiny_vgg1 ...] [--epochs N]
              [--dataset fashion-mnist] [--data-dir D] [--no-download] [--limit-train N]
              [--limit-eval N] [--seed S] [--device cpu|cuda] [--threads N] [--width W]
              [--amp off|bf16|auto] [--ddp-macs M] [--ddp-models NAME ...]
              [--seeds S ...] [--committees MODEL:K ...]

``--seeds 0 1 2`` trains every requested model once per seed: the first seed keeps the plain name
(``tiny_vgg2``), the others are ``tiny_vgg2@s1``, ``tiny_vgg2@s2``. ``--committees tiny_vgg2:3``
then builds zoo member ``committee-tiny_vgg2x3`` from three seeds of tiny_vgg2 (the seeds given,
continued by consecutive ones where fewer than 3; missing members are trained first): one
module answering with its members' mean probability (``zoo.committee``).

Under ``torchrun --nproc-per-node N -m scripts.train_zoo -- --run ...`` the ranks share the work:
models below ``--ddp-macs`` million MACs per input are spread across the ranks, the others (and
those named by ``--ddp-models``) train with DDP on every rank; rank 0 writes train_zoo.csv
(``zoo.distributed``). The ``--`` keeps torchrun from reading ``--run`` as its own option.
"""
from __future__ import annotations

import argparse
import shlex
import sys

from common.io import write_csv
from zoo.data import DataError, prepare_data
from zoo.amp import AMP_CHOICES, resolve_amp
from zoo.distributed import DDP_MIN_MACS, Dist, init_distributed, launched_by_torchrun
from zoo.committee import parse_committee
from zoo.presets import PRESETS, Preset, get_preset
from zoo.registry import list_models
from zoo.torchvision_models import torchvision_archs
from zoo.rundir import RunConfig, RunDir, check_val_fraction
from zoo.train_zoo import ZooRunSettings, ladder_rows, ladder_violations, train_zoo

COLUMNS = ["model", "status", "width", "batch_norm", "params", "macs", "epochs", "best_epoch",
           "val_accuracy", "test_accuracy", "train_seconds"]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="train-zoo", description=__doc__.split("\n\n")[0])
    p.add_argument("--run", required=True, help="run directory (created if missing)")
    p.add_argument("--preset", default="quick", choices=sorted(PRESETS))
    p.add_argument("--models", nargs="+", help="models to train (default: the preset's), "
                   "listed cheapest first: the order the accuracy ladder is checked in")
    p.add_argument("--dataset", default=None, help="dataset (default: the preset's)")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--no-download", action="store_true")
    p.add_argument("--epochs", type=int, help="epochs for every model (overrides the preset)")
    p.add_argument("--lr", type=float, help="peak learning rate for every model")
    p.add_argument("--width", type=float, help="width multiplier for every model")
    p.add_argument("--limit-train", type=int, help="first N training indices")
    p.add_argument("--limit-eval", type=int, help="first N val and test indices")
    p.add_argument("--seed", type=int, default=None,
                   help="split and training seed (default: the run's, fixed by its first call; "
                   "0 for a new run)")
    p.add_argument("--val-fraction", type=float, default=None,
                   help="share of the training pool held out as val, where every router is "
                   "fitted, selected and certified (default 0.1; fixed by the run's first call, "
                   "and a later call without it keeps the run's)")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    p.add_argument("--amp", choices=list(AMP_CHOICES), default=None,
                   help="bf16: training steps under bfloat16 autocast (2-3x faster on CPUs with "
                   "AVX512-BF16 or AMX; evaluation stays float32); auto: bf16 only where the "
                   "CPU (or GPU) has it natively; default off")
    p.add_argument("--no-progress", action="store_true", help="no tqdm bars")
    p.add_argument("--ddp-macs", type=float, default=DDP_MIN_MACS / 1e6,
                   help="under torchrun: models with at least this many million MACs per input "
                   "train with DDP on every rank, the others are spread across the ranks "
                   f"(default {DDP_MIN_MACS / 1e6:.0f}: vgg19_small at full width; 0: every "
                   "model DDP; inf: none)")
    p.add_argument("--ddp-models", nargs="+", default=None,
                   help="under torchrun: these models train with DDP whatever their MACs")
    p.add_argument("--seeds", type=int, nargs="+", default=None,
                   help="train every model once per seed; the first keeps the plain name, the "
                   "others are MODEL@sSEED (default: the preset's, else --seed)")
    p.add_argument("--teachers", nargs="+", default=None, metavar="MODEL",
                   help="knowledge distillation: every model of this call that is not a teacher "
                   "learns from the teachers' mean softmax as well as from the labels (the "
                   "teachers: finished models of the run, or earlier in --models)")
    p.add_argument("--distill", type=float, default=None,
                   help="weight of the distillation term, 0..1 (default 0.5 with --teachers)")
    p.add_argument("--distill-temperature", type=float, default=None,
                   help="softmax temperature of both sides of the distillation term (default 2)")
    p.add_argument("--committees", nargs="+", default=None, metavar="MODEL:K",
                   help="build committee-MODELxK from K seeds of MODEL (trained if missing); "
                   "default: the preset's (none but standard-committee's)")
    return p.parse_args(argv)


def _pct(v: float) -> str:
    return f"{100 * v:6.2f}"


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    preset = get_preset(args.preset)
    tv = set(torchvision_archs())
    try:
        committee_models = [parse_committee(c)[0] for c in args.committees or []]
    except ValueError as e:
        print(f"train-zoo: {e}", file=sys.stderr)
        return 2
    if args.seeds is not None and len(set(args.seeds)) != len(args.seeds):
        print(f"train-zoo: --seeds must be distinct, got {args.seeds}", file=sys.stderr)
        return 2
    unknown = [m for m in [*(args.models or []), *committee_models]
               if m not in list_models() and m not in tv]
    if unknown:
        print(f"train-zoo: unknown models {unknown}; known: {', '.join(list_models())} and "
              "torchvision's classifiers (e.g. resnet18, mobilenet_v3_small)",
              file=sys.stderr)
        return 2
    if (args.distill is not None or args.distill_temperature is not None) and not args.teachers:
        print("train-zoo: --distill and --distill-temperature need --teachers (the models the "
              "others learn from)", file=sys.stderr)
        return 2
    dist = init_distributed(args.device) if launched_by_torchrun() else None
    try:
        return _run(args, argv, preset, dist)
    finally:
        if dist is not None:
            dist.close()


def _run(args: argparse.Namespace, argv: list[str], preset: Preset, dist: Dist | None) -> int:
    rd = RunDir(args.run)
    limit_train = args.limit_train if args.limit_train is not None else preset.limit_train
    limit_eval = args.limit_eval if args.limit_eval is not None else preset.limit_eval
    main_rank = dist is None or dist.is_main

    # a run keeps the seed and val share its first call fixed; a new run takes the defaults
    fixed = rd.load_config() if rd.config_path.exists() else RunConfig()
    if args.seed is None:
        args.seed = fixed.seed
    val_fraction = args.val_fraction if args.val_fraction is not None else fixed.val_fraction
    try:
        check_val_fraction(val_fraction)
    except ValueError as e:
        print(f"train-zoo: {e}", file=sys.stderr)
        return 2

    def data():
        config = rd.ensure_config(RunConfig(
            dataset=args.dataset or preset.dataset, data_dir=args.data_dir, seed=args.seed,
            limit_train=limit_train, limit_eval=limit_eval, download=not args.no_download,
            val_fraction=val_fraction, preset=args.preset))
        return config, prepare_data(rd.root, **config.data_kwargs())
    try:   # under torchrun rank 0 writes the config and splits (and downloads) first
        config, bundle = data() if dist is None else dist.main_first(data)
    except (DataError, ValueError) as e:
        print(f"train-zoo: {e}", file=sys.stderr)
        return 2
    if main_rank:
        print(f"data: {config.dataset} train {len(bundle.train)} / val {len(bundle.val)} / test "
              f"{len(bundle.test)}, split {bundle.splits.fingerprint}")
    settings = ZooRunSettings(preset=args.preset, models=args.models, epochs=args.epochs,
                              width=args.width, lr=args.lr, seed=args.seed, device=args.device,
                              threads=args.threads, amp=resolve_amp(args.amp, args.device),
                              progress=not args.no_progress, ddp_min_macs=args.ddp_macs * 1e6,
                              ddp_models=args.ddp_models, seeds=args.seeds,
                              committees=args.committees, teachers=args.teachers,
                              distill=args.distill,
                              distill_temperature=args.distill_temperature)
    command = shlex.join(["train-zoo", *argv])
    try:
        rows = train_zoo(rd.root, bundle, settings, command=command, dist=dist)
    except ValueError as e:
        print(f"train-zoo: {e}", file=sys.stderr)
        return 2
    if not main_rank:      # rank 0 writes the table and checks the ladder
        return 0
    write_csv(rd.results / "train_zoo.csv", rows, COLUMNS)

    w = max([12, *(len(r["model"]) for r in rows)])
    print(f"\n{'model':<{w}} {'status':<8} {'params':>10} {'MMACs':>8} {'epochs':>6} "
          f"{'val %':>7} {'test %':>7} {'seconds':>8}")
    for r in rows:
        print(f"{r['model']:<{w}} {r['status']:<8} {r['params']:>10,} {r['macs'] / 1e6:>8.1f} "
              f"{r['epochs']:>6} {_pct(r['val_accuracy']):>7} {_pct(r['test_accuracy']):>7} "
              f"{r['train_seconds']:>8.0f}")
    ladder = ladder_rows(rows)      # other seeds' models and committees are not ladder steps
    names = [r["model"] for r in ladder]
    for split in ("val", "test") if len(ladder) > 1 else ():
        bad = ladder_violations(names, [r[f"{split}_accuracy"] for r in ladder])
        if bad:
            print(f"WARNING: the accuracy ladder does NOT hold on {split} (models in the preset's "
                  f"order, cheapest first; others last):\n  " + "\n  ".join(bad)
                  + "\n  (the report's ladder table says which steps are beyond noise)")
        else:
            print(f"ladder holds on {split}: each model more accurate than every one before it")
    by_macs = [r["model"] for r in sorted(ladder, key=lambda r: r["macs"])]
    if by_macs != names:
        print(f"note: ordered by counted MACs the models are {by_macs} (MACs are a count, not "
              "a time: profile-zoo measures the seconds that order the router's tables)")
    print(f"wrote {rd.results / 'train_zoo.csv'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
