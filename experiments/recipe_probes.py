"""Recipe probes for the standard preset's best model (issue 33, item 5): variations of the
``standard`` recipe of one model (default tiny_vgg5), each trained on the standard split's 54k
training images and read on its 6,000 VALIDATION images only. Nothing here evaluates the test
split: a recipe is chosen on val, and its test accuracy comes from one train-zoo run of the
final preset afterwards. Not part of the library.

    python experiments/recipe_probes.py base flip ls0.1 ep8 w0.625 erase0.25 flip+ls0.1
    python experiments/recipe_probes.py --seeds 0 1 base flip+ep8 --threads 2 --amp auto

A probe is ``base`` (the preset's recipe as it is) or ``+``-joined changes to it:
``flip`` (augment with horizontal flips only, ``TrainConfig.crop=False``), ``crop`` (the
existing crop + flip augmentation), ``ls<S>`` (label smoothing S), ``ep<N>`` (N epochs),
``w<W>`` (width W), ``erase<P>`` (random erasing with probability P), ``drop<D>`` (classifier
dropout D), ``lr<L>`` (peak learning rate L), ``kd<A>`` (distillation weight A from the mean
softmax of ``--teachers``, trained models of ``--teacher-run``; ``zoo.distill``), ``T<t>``
(distillation temperature t), ``bs<N>`` (batch size N), ``wd<D>`` (AdamW
decoupled weight decay D; with ``sgd``, L2 decay D), ``sgd`` (SGD with momentum 0.9, cycled by
one-cycle, instead of AdamW; give it its rate with ``lr<L>``).

Each (probe, seed) trains into ``SCRATCH/<probe>@s<seed>/`` (resumable: a killed probe goes on
from its last finished epoch) and appends one row to ``--csv``; rows already there are not
trained again. ``seconds`` is training + per-epoch validation here (bf16 under ``--amp auto``
on a CPU with native bf16; on a shared machine it varies with the load). ``est_avx2_s`` is the
time the same training would take on the AVX2-only 2-core CPU the preset is budgeted for, in
float32: ``AVX2_S_PER_EPOCH`` (the preset's figure for the model at width 0.5, from its bench)
x epochs x the counted-MACs ratio of the probe's width to 0.5 (``width_cost``: a lower bound).
"""
from __future__ import annotations

import argparse
import csv
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common.io import read_csv, write_csv  # noqa: E402
from zoo.amp import resolve_amp  # noqa: E402
from zoo.data import prepare_data  # noqa: E402
from zoo.presets import ModelRecipe, get_preset  # noqa: E402
from zoo.registry import build_arch, create_model, model_arch  # noqa: E402
from zoo.costs import count_macs  # noqa: E402
from zoo.distill import teacher_log_probs  # noqa: E402
from zoo.rundir import RunDir  # noqa: E402
from zoo.train import TrainConfig, fit  # noqa: E402
from zoo.train_zoo import load_teachers  # noqa: E402

# tiny_vgg5 at width 0.5, float32, one epoch of 54k images on the 2-core AVX2 EPYC
# (zoo/presets.py::_standard: 54,000 / 267 images/s)
AVX2_S_PER_EPOCH = {"tiny_vgg5": 202.0, "tiny_vgg4": 135.0, "tiny_vgg3": 99.0,
                    "tiny_vgg2": 66.0, "tiny_vgg1": 37.0}
BASE_WIDTH = 0.5
COLUMNS = ["probe", "model", "seed", "width", "epochs", "augment", "crop", "label_smoothing",
           "distill", "distill_temperature", "teachers",
           "erase", "dropout", "lr", "amp", "train_accuracy", "val_loss", "val_accuracy",
           "best_epoch_val_accuracy", "seconds", "est_avx2_s"]


def parse_probe(name: str, base: ModelRecipe) -> tuple[ModelRecipe, dict[str, Any]]:
    """The recipe and the TrainConfig overrides that probe ``name`` trains with."""
    recipe, over = base, {}
    if name == "base":
        return recipe, over
    for tok in name.split("+"):
        if tok == "flip":
            over.update(augment=True, crop=False)
        elif tok == "crop":
            over.update(augment=True, crop=True)
        elif tok == "sgd":
            over["optimizer"] = "sgd"
        elif tok.startswith("ls"):
            over["label_smoothing"] = float(tok[2:])
        elif tok.startswith("ep"):
            recipe = replace(recipe, epochs=int(tok[2:]))
        elif tok.startswith("wd"):
            over["weight_decay"] = float(tok[2:])
        elif tok.startswith("w"):
            recipe = replace(recipe, width=float(tok[1:]))
        elif tok.startswith("erase"):
            over["erase"] = float(tok[5:])
        elif tok.startswith("drop"):
            recipe = replace(recipe, dropout=float(tok[4:]))
        elif tok.startswith("bs"):
            over["batch_size"] = int(tok[2:])
        elif tok.startswith("kd"):
            over["distill"] = float(tok[2:])
        elif tok.startswith("T"):
            over["distill_temperature"] = float(tok[1:])
        elif tok.startswith("lr"):
            recipe = replace(recipe, lr=float(tok[2:]))
        else:
            raise SystemExit(f"recipe_probes: unknown probe part {tok!r} in {name!r}")
    return recipe, over


def width_cost(model: str, width: float, info: Any) -> float:
    """Counted MACs per image at ``width`` over those at BASE_WIDTH.

    A lower bound on the float32 time ratio: on the Xeon width 0.75 cost tiny_vgg4 2.6x width
    0.5 in float32 for 2.25x the MACs. (A timed bench was tried here first; on the shared 2-core
    machine it gave 1.10x for 1.56x the MACs, noise.)"""
    def macs(w: float) -> float:
        net = create_model(model, num_classes=info.num_classes, in_channels=info.in_channels,
                           input_size=info.input_size, width=w)
        return count_macs(net, (1, info.in_channels, info.input_size, info.input_size))
    return 1.0 if width == BASE_WIDTH else macs(width) / macs(BASE_WIDTH)


def zoo_teacher(run: Path, names: list[str], bundle: Any,
                progress: bool = True) -> torch.Tensor:
    """The mean softmax of trained models ``names`` of ``run`` on the training images, as logs;
    prints the teacher's val accuracy (val only)."""
    teachers = load_teachers(RunDir(run), names, "the probe")
    t0 = time.perf_counter()
    logp = teacher_log_probs(teachers, bundle.train, bundle.info, progress=progress)
    val = teacher_log_probs(teachers, bundle.val, bundle.info, progress=False)
    acc = float((val.argmax(1) == bundle.val.labels).float().mean())
    print(f"teacher {'+'.join(names)} from {run}: val {100 * acc:.2f}%, "
          f"{time.perf_counter() - t0:.0f} s for train + val", flush=True)
    return logp


def read_rows(path: Path) -> list[dict[str, str]]:
    """The rows so far (none before the first probe)."""
    return read_csv(path) if path.exists() else []


def append_row(path: Path, row: dict[str, Any]) -> None:
    """Append ``row``; a CSV written with other columns (an older version of this script) is
    first rewritten under today's, its missing fields blank, so no row lands under the wrong
    header."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists():
        with path.open(newline="") as f:
            header = next(csv.reader(f), [])
        if header != COLUMNS:
            write_csv(path, read_rows(path), COLUMNS)      # atomic; missing fields blank
    new = not path.exists()
    with path.open("a", newline="") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS)
        if new:
            w.writeheader()
        w.writerow(row)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("probes", nargs="*", default=["base"])
    p.add_argument("--model", default="tiny_vgg5")
    p.add_argument("--preset", default="standard")
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--amp", default="auto", choices=["off", "bf16", "auto"])
    p.add_argument("--data-dir", default="/usr/share/datasets/fashion-mnist")
    p.add_argument("--scratch", default="/tmp/recipe_probes")
    p.add_argument("--csv", default="/tmp/recipe_probes/probes.csv")
    p.add_argument("--teacher-run", default="runs/standard",
                   help="run whose trained models teach the kd<A> probes")
    p.add_argument("--teachers", nargs="+", default=["tiny_vgg2", "tiny_vgg3", "tiny_vgg4"])
    p.add_argument("--table-only", action="store_true", help="print the CSV's table and stop")
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)

    scratch, csv_path = Path(args.scratch), Path(args.csv)
    done = {(r["probe"], r["model"], int(r["seed"])) for r in read_rows(csv_path)}
    if not args.table_only:
        preset = get_preset(args.preset)
        amp = resolve_amp(args.amp, "cpu")
        # the split of any run with seed 0 (as runs/standard): same fingerprint
        bundle = prepare_data(scratch / "data", "fashion-mnist", args.data_dir, seed=0,
                              download=False)
        info = bundle.info
        print(f"data: train {len(bundle.train)} / val {len(bundle.val)}, split "
              f"{bundle.splits.fingerprint}; amp {amp}; threads {args.threads}", flush=True)
        base = preset.recipe(args.model)
        teacher = None
        for seed in args.seeds:
            for name in args.probes:
                if (name, args.model, seed) in done:
                    print(f"{name} seed {seed}: in {csv_path} already", flush=True)
                    continue
                recipe, over = parse_probe(name, base)
                if over.get("distill", 0) > 0:
                    over["teachers"] = list(args.teachers)
                    if teacher is None:
                        teacher = zoo_teacher(Path(args.teacher_run), args.teachers, bundle,
                                              progress=not args.no_progress)
                config: TrainConfig = preset.train_config(recipe, seed=seed,
                                                          threads=args.threads, amp=amp, **over)
                arch = model_arch(args.model, num_classes=info.num_classes,
                                  in_channels=info.in_channels, input_size=info.input_size,
                                  width=recipe.width)
                arch.batch_norm = recipe.batch_norm
                if recipe.dropout is not None:
                    arch.dropout = recipe.dropout
                out = scratch / f"{name}@s{seed}"
                out.mkdir(parents=True, exist_ok=True)
                torch.manual_seed(config.seed)          # as train_zoo_model: init from the seed
                model = build_arch(arch)
                print(f"== {name} seed {seed}: width {recipe.width}, {recipe.epochs} epochs, "
                      f"{over or 'preset config'}", flush=True)
                t0 = time.perf_counter()
                res = fit(model, bundle.train, bundle.val, info, config,
                          state_path=out / "train_state.pt", history_path=out / "history.csv",
                          progress=not args.no_progress, log_epochs=True, desc=name,
                          teacher_log_probs=teacher if config.distill > 0 else None)
                wall = time.perf_counter() - t0
                (out / "train_state.pt").unlink(missing_ok=True)
                last = res.history[-1]
                est = (AVX2_S_PER_EPOCH.get(args.model, float("nan")) * recipe.epochs
                       * width_cost(args.model, recipe.width, info))
                append_row(csv_path, {
                    "probe": name, "model": args.model, "seed": seed, "width": recipe.width,
                    "epochs": recipe.epochs, "augment": config.augment, "crop": config.crop,
                    "label_smoothing": config.label_smoothing, "erase": config.erase,
                    "distill": config.distill, "distill_temperature": config.distill_temperature,
                    "teachers": "+".join(config.teachers),
                    "dropout": arch.dropout, "lr": config.lr, "amp": amp,
                    "train_accuracy": round(last["train_accuracy"], 5),
                    "val_loss": round(last["val_loss"], 5),
                    "val_accuracy": round(last["val_accuracy"], 5),
                    "best_epoch_val_accuracy": round(max(r["val_accuracy"]
                                                         for r in res.history), 5),
                    "seconds": round(res.seconds, 1), "est_avx2_s": round(est)})
                print(f"{name} seed {seed}: val {100 * last['val_accuracy']:.2f}% in "
                      f"{res.seconds:.0f} s here ({wall:.0f} s wall)", flush=True)

    rows = [r for r in read_rows(csv_path)]
    print(f"\n{'probe':<24} {'model':<10} {'seed':>4} {'ep':>3} {'width':>6} {'train %':>8} "
          f"{'val %':>7} {'s here':>7} {'est AVX2 s':>10}")
    for r in rows:
        print(f"{r['probe']:<24} {r['model']:<10} {r['seed']:>4} {r['epochs']:>3} "
              f"{float(r['width']):>6.3f} {100 * float(r['train_accuracy']):>8.2f} "
              f"{100 * float(r['val_accuracy']):>7.2f} {float(r['seconds']):>7.0f} "
              f"{r['est_avx2_s']:>10}")
    print(f"wrote {csv_path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
