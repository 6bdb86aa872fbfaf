"""`compress`: compressed variants of a trained VGG as zoo members, plus the compression table.

Example: ``compress --run runs/quick --base vgg19_small --variants struct-l1-30 int8-static``.
Without a trained base in the run (or with ``--weights FILE``, a torchvision state dict) it
measures the cost-only columns on a torchvision-shape model at ``--input-size``.

Under ``torchrun --standalone --nproc-per-node N -m scripts.compress -- --run ...`` the variants
are built across the ranks (each rank its share, into the variants' own folders); rank 0 then
measures every variant alone, in one process, and writes the tables (``zoo.compress.run``).
"""
from __future__ import annotations

import argparse
import shlex
import sys
from dataclasses import replace

from zoo.compress.measure import MeasureSettings
from zoo.amp import AMP_CHOICES, resolve_amp
from zoo.compress.run import PRESETS, CompressConfig, run_compress
from zoo.distributed import init_distributed, launched_by_torchrun
from zoo.rundir import RunDir


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="compress", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", required=True, help="run directory (RUN/zoo/<base> is the base)")
    p.add_argument("--base", required=True, nargs="+",
                   help="base model name(s), e.g. vgg19_small or vgg19; with several (e.g. "
                        "tiny_vgg2 tiny_vgg2@s1 tiny_vgg4 --variants int8-static) each base gets "
                        "the same variants, one after the other")
    p.add_argument("--preset", choices=sorted(PRESETS), default=None,
                   help="quick: 8 variants, 1 fine-tune epoch on 20000 train images at lr "
                        "3e-4 (~5-8 min for vgg19_small width 0.25); full: 9 variants, 3 "
                        "epochs (QAT 1), all train images, lr 1e-4, prune sweep. Explicit flags "
                        "override it.")
    p.add_argument("--variants", nargs="+", default=None,
                   help="e.g. struct-l1-30 struct-l2-10-deep unstruct-30 int8-dynamic int8-static "
                        "qat8 qat4 prune+int8 res-20; 'struct'/'unstruct' take --ratio/--norm/"
                        "--layers")
    p.add_argument("--ratio", type=float, default=None, help="pruning fraction, e.g. 0.3")
    p.add_argument("--norm", choices=["l1", "l2"], default=None, help="filter norm (default l1)")
    p.add_argument("--layers", default=None,
                   help="convs to prune: deep (second half, default), all, or indices '8,9,10'")
    p.add_argument("--finetune-epochs", type=int, default=None,
                   help="fine-tune / QAT epochs (default 1; 0 = none)")
    p.add_argument("--finetune-lr", type=float, default=None,
                   help="Adam learning rate (cosine to 0) of the pruning fine-tunes "
                        "(default 1e-4; quick preset 3e-4)")
    p.add_argument("--qat-epochs", type=int, default=None,
                   help="quantization-aware training epochs (default: --finetune-epochs; "
                        "full preset 1)")
    p.add_argument("--qat-lr", type=float, default=5e-5,
                   help="Adam learning rate (cosine to 0) of quantization-aware training")
    p.add_argument("--limit-train", type=int, default=None,
                   help="fine-tune and calibrate on this many train images (random subset)")
    p.add_argument("--sweep", choices=["prune"], default=None,
                   help="also write results/prune_sweep.csv (0..80%%, no fine-tune)")
    p.add_argument("--weights", default=None,
                   help="torchvision vgg19 state dict (cost-only mode, loaded weights_only)")
    p.add_argument("--input-size", type=int, default=224, help="cost-only mode input side")
    p.add_argument("--num-classes", type=int, default=1000, help="cost-only mode classes")
    p.add_argument("--width", type=float, default=1.0,
                   help="cost-only mode conv width multiplier (1.0 = torchvision's vgg19)")
    p.add_argument("--threads", type=int, default=2, help="torch threads for timing")
    p.add_argument("--device", default="cpu", help="device for fine-tuning (quantized: cpu)")
    p.add_argument("--calib-images", type=int, default=256,
                   help="train images for static int8 calibration")
    p.add_argument("--latency-runs", type=int, default=10, help="batch-1 timed runs (min)")
    p.add_argument("--batch-repeats", type=int, default=3, help="batch-64 timed repeats (min)")
    p.add_argument("--big-batch", type=int, default=64,
                   help="the large timing batch (the *_b64 columns; recorded as big_batch)")
    p.add_argument("--budget-s", type=float, default=3.0,
                   help="soft cap on timing seconds per model (minimum runs still run)")
    p.add_argument("--no-memory", action="store_true", help="skip the peak-memory subprocess")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--amp", choices=list(AMP_CHOICES), default="off",
                   help="bf16: pruning and resolution fine-tunes under bfloat16 autocast "
                   "(QAT stays float32); auto: bf16 where the hardware has it; see train-zoo --amp")
    p.add_argument("--no-progress", action="store_true")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    preset = PRESETS.get(args.preset or "", {})
    variants = args.variants or preset.get("variants")
    if not variants:
        print("compress: name --variants (or --preset quick|standard|full)", file=sys.stderr)
        return 2
    pick = lambda v, key, default: v if v is not None else preset.get(key, default)  # noqa: E731
    if len(set(args.base)) != len(args.base):
        print(f"compress: --base names a model twice ({' '.join(args.base)}): name each once",
              file=sys.stderr)
        return 2
    if len(args.base) > 1:
        # several bases compress trained zoo members; cost-only mode takes one base at a time
        missing = [b for b in args.base if not RunDir(args.run).checkpoint(b).exists()]
        if args.weights or missing:
            print(f"compress: several bases must all be trained members of {args.run} (missing: "
                  f"{' '.join(missing) or 'none'}) and take no --weights; train them first or "
                  "compress a cost-only base on its own", file=sys.stderr)
            return 2
    cfg = CompressConfig(
        run=args.run, base=args.base[0], variants=variants, ratio=args.ratio, norm=args.norm,
        layers=args.layers, finetune_epochs=pick(args.finetune_epochs, "finetune_epochs", 1),
        finetune_lr=pick(args.finetune_lr, "finetune_lr", 1e-4), qat_lr=args.qat_lr,
        qat_epochs=pick(args.qat_epochs, "qat_epochs", None),
        limit_train=pick(args.limit_train, "limit_train", None),
        sweep=args.sweep == "prune" or bool(preset.get("sweep")), weights=args.weights,
        threads=args.threads, device=args.device, input_size=args.input_size,
        num_classes=args.num_classes, width=args.width, calib_images=args.calib_images,
        seed=args.seed, amp=resolve_amp(args.amp, args.device),
        measure=MeasureSettings(threads=args.threads, big_batch=args.big_batch,
                                latency_runs=args.latency_runs, batch_repeats=args.batch_repeats,
                                budget_s=args.budget_s, memory=not args.no_memory),
        progress=not args.no_progress,
        command=shlex.join(["compress", *(sys.argv[1:] if argv is None else argv)]))
    dist = init_distributed(args.device) if launched_by_torchrun() else None
    try:
        for base in args.base:          # one base after the other; each keeps its own rows
            run_compress(replace(cfg, base=base), dist=dist)
    except (FileNotFoundError, ValueError) as e:
        print(f"compress: {e}", file=sys.stderr)
        return 2
    finally:
        if dist is not None:
            dist.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
