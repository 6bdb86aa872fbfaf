"""Snapshot-committee probes (issue 33): could a committee come cheaper than k seeds? Fast
geometric ensembling (Garipov et al., 2018): from a trained model, run short learning-rate
cycles (one-cycle up to a peak, down to ~0), keep the weights at the end of each, and average
the snapshots' probabilities with the model's own. Each cycle costs one epoch (or ``ep<F>``
of one), where a seed committee member costs a whole training. VALIDATION images only: the
probe reads the run's own split and never the test split. Not part of the library.

    python experiments/snapshot_probes.py --run runs/standard lr5e-4 lr2e-3 lr1e-3+flip
    python experiments/snapshot_probes.py --run runs/standard lr1e-3+flip+c4

A variant is ``+``-joined parts: ``lr<L>`` (the cycle's peak rate; required), ``c<N>``
(cycles, default 2), ``ep<F>`` (epochs per cycle, default 1), ``flip`` (horizontal-flip
augmentation during the cycles, ``TrainConfig.crop=False``). Every cycle starts from the
previous snapshot and trains with the preset's recipe for the model (label smoothing
included), seed 100 + cycle. Prints, per cycle, the snapshot's val accuracy and that of the
mean probability of the model and every snapshot so far.
"""
from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from zoo.amp import resolve_amp  # noqa: E402
from zoo.checkpoint import load_model  # noqa: E402
from zoo.data import prepare_data  # noqa: E402
from zoo.presets import get_preset  # noqa: E402
from zoo.train import fit, normalizer  # noqa: E402


def parse_variant(name: str) -> dict[str, Any]:
    """``lr1e-3+flip+c4`` -> {"lr": 1e-3, "cycles": 4, "epochs": 1.0, "flip": True}."""
    out: dict[str, Any] = {"lr": None, "cycles": 2, "epochs": 1.0, "flip": False}
    for tok in name.split("+"):
        if tok == "flip":
            out["flip"] = True
        elif tok.startswith("lr"):
            out["lr"] = float(tok[2:])
        elif tok.startswith("ep"):
            out["epochs"] = float(tok[2:])
        elif tok.startswith("c"):
            out["cycles"] = int(tok[1:])
        else:
            raise SystemExit(f"snapshot_probes: unknown part {tok!r} in {name!r}")
    if out["lr"] is None:
        raise SystemExit(f"snapshot_probes: {name!r} has no peak rate; add lr<L>, e.g. lr1e-3")
    return out


@torch.inference_mode()
def probabilities(model: torch.nn.Module, images: torch.Tensor, info: Any,
                  batch_size: int = 512) -> torch.Tensor:
    """Softmax of ``model`` over uint8 ``images``, in eval mode."""
    model.eval()
    norm = normalizer(info, "cpu")
    return torch.cat([F.softmax(model(norm(images[s:s + batch_size])).float(), 1)
                      for s in range(0, len(images), batch_size)])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("variants", nargs="+")
    p.add_argument("--run", default="runs/standard", help="a trained run (its split is used)")
    p.add_argument("--model", default="tiny_vgg5")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--amp", default="auto", choices=["off", "bf16", "auto"])
    p.add_argument("--data-dir", default="/usr/share/datasets/fashion-mnist")
    p.add_argument("--out", default=None, help="JSON of the val accuracies (default: none)")
    args = p.parse_args(argv)

    run = Path(args.run)
    ckpt = run / "zoo" / args.model / "checkpoint.pt"
    if not ckpt.exists():
        raise SystemExit(f"snapshot_probes: {ckpt} does not exist; train it first "
                         f"(train-zoo --run {run} --models {args.model})")
    cfg = json.loads((run / "config.json").read_text())
    torch.set_num_threads(args.threads)
    bundle = prepare_data(run, cfg["dataset"], args.data_dir, seed=cfg["seed"],
                          download=False, val_fraction=cfg.get("val_fraction", 0.1))
    info, labels = bundle.info, bundle.val.labels
    preset = get_preset(cfg.get("preset") or "standard")
    amp = resolve_amp(args.amp, "cpu")
    base, _ = load_model(ckpt)

    def acc(probs: torch.Tensor) -> float:
        return 100 * float((probs.argmax(1) == labels).float().mean())

    p0 = probabilities(base, bundle.val.images, info)
    print(f"{args.model} of {run}: val {acc(p0):.2f}% on {len(labels)} val images "
          f"(split {bundle.splits.fingerprint}); amp {amp}", flush=True)
    results: dict[str, list[float]] = {}
    for name in args.variants:
        v = parse_variant(name)
        recipe = replace(preset.recipe(args.model), epochs=1, lr=v["lr"])
        over: dict[str, Any] = dict(augment=True, crop=False) if v["flip"] else {}
        steps = max(1, int(len(bundle.train) // preset.base.batch_size * v["epochs"]))
        model, probs = copy.deepcopy(base), [p0]
        for c in range(v["cycles"]):
            config = preset.train_config(recipe, seed=100 + c, threads=args.threads, amp=amp,
                                         max_batches_per_epoch=steps, **over)
            t0 = time.perf_counter()
            fit(model, bundle.train, bundle.val, info, config, progress=False, log_epochs=False)
            probs.append(probabilities(model, bundle.val.images, info))
            print(f"{name} cycle {c + 1}: snapshot {acc(probs[-1]):.2f}%, mean of "
                  f"{len(probs)} {acc(torch.stack(probs).mean(0)):.2f}% "
                  f"({time.perf_counter() - t0:.0f} s)", flush=True)
        results[name] = [acc(q) for q in probs] + [acc(torch.stack(probs).mean(0))]
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
