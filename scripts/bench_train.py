"""bench_train: training images/s in float32 and with ``--amp bf16``, and their ratio, per model.

    python -m scripts.bench_train [--models tiny_vgg1 ... vgg19_small] [--threads 2]

Random in-memory batches at Fashion-MNIST's shape (1x28x28, 10 classes) unless --input-size /
--channels / --classes say otherwise; forward + backward + AdamW step, channels_last.
"""
from __future__ import annotations

import argparse
import sys

from zoo.data import DatasetInfo
from zoo.train_bench import measure_amp_speedups

DEFAULT_MODELS = ["tiny_vgg1", "tiny_vgg3", "tiny_vgg5", "vgg19_small"]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="bench_train", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=DEFAULT_MODELS)
    p.add_argument("--width", type=float, default=1.0)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--steps", type=int, default=3, help="training steps per timed repeat")
    p.add_argument("--repeats", type=int, default=3, help="timed repeats (median)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--input-size", type=int, default=28)
    p.add_argument("--channels", type=int, default=1)
    p.add_argument("--classes", type=int, default=10)
    p.add_argument("--device", default="cpu")
    p.add_argument("--no-progress", action="store_true")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    info = DatasetInfo(name="random", num_classes=args.classes, in_channels=args.channels,
                       input_size=args.input_size, classes=[str(i) for i in range(args.classes)],
                       mean=[0.5] * args.channels, std=[0.25] * args.channels)
    try:
        rows = measure_amp_speedups(args.models, info, width=args.width, batch_size=args.batch,
                                    steps=args.steps, repeats=args.repeats, threads=args.threads,
                                    device=args.device, progress=not args.no_progress)
    except (KeyError, ValueError, RuntimeError) as e:
        print(f"bench_train: {e.args[0] if e.args else e}", file=sys.stderr)
        return 2
    print(f"{'model':<14}{'width':>6}{'fp32 img/s':>12}{'bf16 img/s':>12}{'bf16/fp32':>11}")
    for r in rows:
        print(f"{r.model:<14}{r.width:>6.2f}{r.fp32_images_per_second:>12.0f}"
              f"{r.bf16_images_per_second:>12.0f}{r.speedup:>10.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
