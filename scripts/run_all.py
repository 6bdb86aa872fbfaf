"""`run-all`: the whole study in one command: train-zoo, compress, profile-zoo,
evaluate-routers, report; resumable, and a second call does no work again.

Under torchrun (``torchrun --standalone --nproc-per-node N -m scripts.run_all -- --preset ...``)
train-zoo, compress and profile-zoo share their work over the ranks (timings stay on rank 0,
in one process); evaluate-routers and report run on rank 0."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from scripts.pipeline import PRESETS, STAGES, run_pipeline, summary_lines
from zoo.distributed import init_distributed, launched_by_torchrun
from zoo.rundir import check_val_fraction


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="run-all", description=__doc__)
    p.add_argument("--preset", choices=sorted(PRESETS), default="quick",
                   help="quick: minutes on a 2-core CPU; standard: a well-trained study with "
                   "int8 copies of the tiny models, levels from -0.5%% (30-48 min on a 2-core CPU "
                   "with native bf16, estimated 2.0-2.2 h with AVX2 only); standard-committee: "
                   "standard plus seed committees, val "
                   f"{round(100 * PRESETS['standard-committee'].val_fraction)}%%, levels from "
                   "-0.1%%; full: the whole study (GPU advised)")
    p.add_argument("--run", type=Path, default=None, help="run directory (default runs/<preset>)")
    p.add_argument("--dataset", default="fashion-mnist")
    p.add_argument("--data-dir", default=None, help="folder holding the dataset files")
    p.add_argument("--no-download", action="store_true", help="never download data")
    p.add_argument("--val-fraction", type=float, default=None,
                   help="share of the training pool held out as val (train-zoo; default "
                        "the preset's: " + ", ".join(
                            f"{v.val_fraction:g} for {k}" for k, v in PRESETS.items()
                            if v.val_fraction is not None) + ", else 0.1)")
    p.add_argument("--device", default=None, help="cpu or cuda for training (default: cpu)")
    p.add_argument("--amp", choices=["off", "bf16", "auto"], default=None,
                   help="mixed precision for train-zoo and compress's fine-tunes: bf16 trains "
                   "2-3x faster on CPUs with AVX512-BF16 or AMX; auto: bf16 only where the hardware has "
                   "it (default: the preset's: auto for standard, off for quick and full)")
    p.add_argument("--seed", type=int, default=None,
                   help="split and training seed of a new run (train-zoo; default 0): another "
                   "seed is a replicate of the study on another train/val split; the committee "
                   "members then train with seeds S, S+1, ...; a run keeps the seed its first "
                   "call fixed")
    p.add_argument("--threads", type=int, default=None,
                   help="CPU threads for compress, profile-zoo and evaluate-routers timings "
                   "(default: the preset's, 2)")
    p.add_argument("--stages", nargs="+", choices=[s for s, _ in STAGES], default=None,
                   help="run only these stages (in pipeline order)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    preset = PRESETS[args.preset]
    run = args.run or Path("runs") / preset.name
    data_args = ["--dataset", args.dataset]
    if args.data_dir:
        data_args += ["--data-dir", args.data_dir]
    if args.no_download:
        data_args.append("--no-download")
    val_fraction = args.val_fraction if args.val_fraction is not None else preset.val_fraction
    if val_fraction is not None:
        try:
            check_val_fraction(val_fraction)
        except ValueError as e:
            print(f"run-all: {e}", file=sys.stderr)
            return 2
        data_args += ["--val-fraction", str(val_fraction)]
    if args.seed is not None:
        data_args += ["--seed", str(args.seed)]
    device_args = ["--device", args.device] if args.device else []
    if args.threads is not None and args.threads < 1:
        print(f"run-all: --threads {args.threads}: use at least 1", file=sys.stderr)
        return 2
    dist = init_distributed(args.device or "cpu") if launched_by_torchrun() else None
    if dist is None or dist.is_main:
        print(f"run-all: preset {preset.name} ({preset.expected}) into {run}"
              + (f" on {dist.world_size} ranks ({dist.backend})" if dist else ""))
    try:
        run_pipeline(run, preset, data_args, device_args, args.stages, amp=args.amp,
                     threads=args.threads, dist=dist)
    finally:
        if dist is not None:
            dist.close()
    if dist is not None and not dist.is_main:
        return 0
    print("\n== summary ==")
    for line in summary_lines(run):
        print(line)
    index = run / "reports" / "index.html"
    print(f"report: {index.resolve() if index.exists() else '(not written)'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
