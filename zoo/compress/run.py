"""``compress`` on a run directory: build, save, card and measure each variant of one base.

Each variant becomes ``RUN/zoo/<base>-<variant>/{checkpoint.pt, card.json}`` (card last) so
``profile-zoo`` and the routers take it as one more zoo member; finished variants are skipped
(loaded back, then measured again with the others so all timings come from one run). Tables:
``RUN/results/compression.csv`` (one block of rows per base: compressing a second base keeps
the first one's rows), ``weight_hist.csv`` and, with ``sweep``, ``prune_sweep.csv`` (these two
hold the latest base only). A variant cut short resumes its fine-tune at the last finished
epoch: each fine-tune's state is saved after every epoch under ``RUN/compress_work/`` and
deleted once the variant is saved.

Cost-only mode (no trained base in the run, or ``weights`` given): a torchvision-shape model
at ``input_size`` with random or user-supplied weights; variants are saved under
``RUN/cost_only/`` (no cards: they are not zoo members) and calibrated on random inputs, with
no fine-tuning or QAT training; accuracy columns stay empty. Its tables carry a ``_cost_only``
suffix (``results/compression_cost_only.csv``, ...) so they never overwrite a trained base's.
"""
from __future__ import annotations

import datetime as dt
import hashlib
import json
import re
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from common.io import read_csv, write_csv, write_json
from zoo.checkpoint import file_sha256, load_model, read_checkpoint, save_checkpoint
from zoo.compress.measure import COLUMNS, EXTRA_COLUMNS, MeasureSettings, format_table, \
    histogram_edges, measure, weight_histogram
from zoo.compress.structured import fold_batchnorm
from zoo.compress.sweep import SWEEP_COLUMNS, prune_sweep
from zoo.compress.unstructured import write_sparse_file
from zoo.compress.variants import CompressContext, Variant, VariantSpec, make_variant, \
    parse_variant, put_pruned
from zoo.data import DatasetInfo, prepare_data
from zoo.registry import model_arch
from zoo.rundir import RunDir
from zoo.vgg import VGG

PRESETS: dict[str, dict[str, Any]] = {
    # quick: ~5-8 min for a vgg19_small of width 0.25 on Fashion-MNIST on a 2-core CPU. The
    # fine-tune budget was chosen on val: struct-l1-30 recovered to 74.5% (Adam 1e-4, 6000
    # images), 80.8% (1e-3, 6000), 82.1% (3e-4, 6000), 86.3% (3e-4, 20000) vs 85.8% for the base
    # (first 2000 val images); see docs/compress.md.
    "quick": {"variants": ["struct-l1-30", "unstruct-30", "int8-dynamic", "int8-static", "qat8",
                           "qat4", "prune+int8", "res-20"],
              # 10k fine-tune images (20k before: compress took 886 s of the 85-minute quick
              # run on an AVX2-only CPU)
              "finetune_epochs": 1, "limit_train": 10000, "finetune_lr": 3e-4, "sweep": False},
    # standard: the quick preset's variants and fine-tune budget on the standard preset's
    # better-trained vgg19_small (width 0.25, 5 epochs); bf16 fine-tunes where native (run-all)
    "standard": {"variants": ["struct-l1-30", "unstruct-30", "int8-dynamic", "int8-static",
                              "qat8", "qat4", "prune+int8", "res-20"],
                 "finetune_epochs": 1, "limit_train": 20000, "finetune_lr": 3e-4, "sweep": False},
    "full": {"variants": ["struct-l1-30", "struct-l2-10-deep", "unstruct-30", "int8-dynamic",
                          "int8-static", "qat8", "qat4", "prune+int8", "res-20"],
             "finetune_epochs": 3, "limit_train": None, "finetune_lr": 1e-4, "sweep": True,
             # QAT starts from the trained model with observers calibrated on real images and
             # trains in float32 (no bf16): on a 2-core CPU one epoch of the full-width
             # vgg19_small is ~20 min, so 3 would add ~80 min per scheme to the whole run
             "qat_epochs": 1},
}


@dataclass
class CompressConfig:
    """Everything ``run_compress`` does, from the command line."""

    run: str
    base: str
    variants: list[str]
    ratio: float | None = None
    norm: str | None = None
    layers: str | None = None
    finetune_epochs: int = 1
    finetune_lr: float = 1e-4      # Adam, cosine to 0: pruning fine-tunes
    qat_lr: float = 5e-5           # Adam, cosine to 0: quantization-aware training
    qat_epochs: int | None = None  # quantization-aware training epochs; None: finetune_epochs
    limit_train: int | None = None
    sweep: bool = False
    weights: str | None = None
    threads: int = 2
    device: str = "cpu"
    input_size: int = 224          # cost-only mode
    num_classes: int = 1000        # cost-only mode
    width: float = 1.0             # cost-only mode: conv width multiplier
    calib_images: int = 256
    seed: int = 0
    amp: str = "off"               # "bf16": float fine-tunes under bfloat16 autocast (not QAT)
    measure: MeasureSettings = field(default_factory=MeasureSettings)
    progress: bool = True
    command: str = ""


@dataclass
class CompressResult:
    rows: list[dict[str, Any]]
    sweep: list[dict[str, Any]]
    built: list[str]
    skipped: list[str]
    cost_only: bool


def result_paths(results: Path, cost_only: bool) -> dict[str, Path]:
    """Where the tables go: ``compression.csv`` etc., with ``_cost_only`` in cost-only mode."""
    sfx = "_cost_only" if cost_only else ""
    return {"compression": results / f"compression{sfx}.csv",
            "weight_hist": results / f"weight_hist{sfx}.csv",
            "prune_sweep": results / f"prune_sweep{sfx}.csv",
            "settings": results / f"compression_settings{sfx}.json"}


def merge_rows(path: Path, rows: list[dict[str, Any]], base: str) -> list[dict[str, Any]]:
    """Rows of other bases already in ``path`` (kept as read) followed by ``rows``."""
    old = read_csv(path) if path.exists() else []
    return [r for r in old if r.get("base") != base] + rows


def qat_epochs(cfg: CompressConfig) -> int:
    """Epochs of quantization-aware training: ``qat_epochs``, else ``finetune_epochs``."""
    return cfg.finetune_epochs if cfg.qat_epochs is None else cfg.qat_epochs


def variant_recipe(spec: VariantSpec, cfg: CompressConfig, base_id: str) -> dict[str, Any]:
    """Everything a variant's weights depend on; a saved variant whose recipe differs is rebuilt.

    ``base_id``: the base checkpoint's SHA-256 (cost-only: the weights file's, or the seed).
    """
    r: dict[str, Any] = {"base": base_id, "variant": spec.name, "method": spec.method,
                         "seed": cfg.seed}
    if spec.method in ("struct", "prune+int8"):
        r.update(ratio=spec.ratio, norm=spec.norm, layers=spec.layers)
    if spec.method in ("struct", "unstruct", "prune+int8", "res"):
        r.update(finetune_epochs=cfg.finetune_epochs, finetune_lr=cfg.finetune_lr,
                 limit_train=cfg.limit_train)
        if cfg.amp != "off":  # left out when off, so recipes saved before it still match
            r["amp"] = cfg.amp
    if spec.method in ("qat8", "qat4"):
        r.update(finetune_epochs=qat_epochs(cfg), qat_lr=cfg.qat_lr,
                 limit_train=cfg.limit_train)
    if spec.method in ("int8-static", "qat8", "qat4", "prune+int8"):
        r.update(calib_images=cfg.calib_images, limit_train=cfg.limit_train)
    return r


WORK_DIR = "compress_work"


def _work_dir(root: Path, name: str, recipe: dict[str, Any]) -> Path:
    """RUN/compress_work/<variant>-<recipe hash>: its fine-tunes' resumable states. States of
    the same variant under another recipe are deleted (they can never resume)."""
    digest = hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:12]
    work = root / WORK_DIR / f"{name}-{digest}"
    if work.parent.is_dir():
        for old in work.parent.iterdir():
            if old != work and re.fullmatch(re.escape(name) + r"-[0-9a-f]{12}", old.name):
                shutil.rmtree(old, ignore_errors=True)
    return work


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def _load_base(cfg: CompressConfig, rd: RunDir) -> tuple[VGG, dict[str, Any], bool]:
    """(base model, its checkpoint dict or a stand-in, cost_only)."""
    if cfg.weights is None and rd.checkpoint(cfg.base).exists():
        if not rd.card(cfg.base).exists():
            raise FileNotFoundError(f"{rd.card(cfg.base)} missing: {cfg.base} is not finished; "
                                    "re-run `train-zoo` for it")
        model, ckpt = load_model(rd.checkpoint(cfg.base))
        if ckpt["arch"].get("kind", "vgg") != "vgg":
            raise ValueError(f"base {cfg.base} is itself a compressed variant "
                             f"(kind {ckpt['arch']['kind']!r}); compress a plain VGG")
        return model, ckpt, False
    try:
        arch = model_arch(cfg.base, num_classes=cfg.num_classes, in_channels=3,
                          input_size=cfg.input_size, width=cfg.width)
    except KeyError as e:
        raise FileNotFoundError(f"no trained {cfg.base} in {rd.root / 'zoo'} and {e}; train it "
                                "with `train-zoo` or pass --weights") from None
    torch.manual_seed(cfg.seed)  # the same random base on every call (variants are reused)
    model = VGG(arch).eval()
    if cfg.weights is not None:
        state = torch.load(cfg.weights, map_location="cpu", weights_only=True)
        if isinstance(state, dict) and "state_dict" in state:
            state = state["state_dict"]
        try:
            model.load_state_dict(state)
        except RuntimeError as e:
            raise ValueError(f"--weights {cfg.weights} does not fit {cfg.base} at "
                             f"{cfg.num_classes} classes ({str(e)[:300]}); pass a torchvision "
                             "vgg19 state dict or set --num-classes") from None
    return model, {"arch": arch.to_dict(), "data": {}}, True


def _card(name: str, base: str, v: Variant, info: DatasetInfo, fingerprint: str,
          val_acc: float, test_acc: float, params: int, ckpt_path: Path,
          command: str) -> dict[str, Any]:
    return {"model_name": name, "arch": v.arch, "parent": base, "variant": v.spec.name,
            "dataset": info.to_dict(), "split_fingerprint": fingerprint,
            "val_accuracy": val_acc, "test_accuracy": test_acc, "params": params,
            "train_seconds": v.seconds, "train_config": v.train_config, "command": command,
            "created": _now(), "checkpoint_sha256": file_sha256(ckpt_path),
            "compression": v.extra}


def run_compress(cfg: CompressConfig, log=print) -> CompressResult:
    """Build (or reuse), save and measure every variant; write the tables."""
    from zoo.costs import count_params
    from zoo.train import evaluate
    rd = RunDir(cfg.run)
    specs: list[VariantSpec] = [parse_variant(v, cfg.ratio, cfg.norm, cfg.layers)
                                for v in cfg.variants]
    names = [s.name for s in specs]
    if len(set(names)) != len(names):
        raise ValueError(f"variants repeat a name: {names}")
    base, base_ckpt, cost_only = _load_base(cfg, rd)
    bundle = None
    if not cost_only:
        bundle = prepare_data(rd.root, **rd.load_config().data_kwargs())
    info = DatasetInfo.from_dict(base_ckpt["data"]) if base_ckpt.get("data") else (
        bundle.info if bundle else None)
    train = bundle.train if bundle else None
    if train is not None and cfg.limit_train and cfg.limit_train < len(train):
        g = torch.Generator().manual_seed(cfg.seed)
        train = train.subset(torch.randperm(len(train), generator=g)[:cfg.limit_train].sort()[0])
    fa = base.arch
    ctx = CompressContext(info=info, train=train, val=bundle.val if bundle else None,
                          finetune_epochs=cfg.finetune_epochs, lr=cfg.finetune_lr,
                          qat_lr=cfg.qat_lr, qat_epochs=qat_epochs(cfg),
                          calib_images=cfg.calib_images, seed=cfg.seed, device=cfg.device, amp=cfg.amp,
                          progress=cfg.progress,
                          cost_only_input=(fa.in_channels, fa.input_size, fa.input_size))
    test = bundle.test if bundle else None
    out_root = rd.root / ("cost_only" if cost_only else "zoo")
    torch.set_num_threads(cfg.threads)

    # the base row: its own checkpoint file (cost-only: saved once for its size)
    if cost_only:
        base_path = out_root / cfg.base / "checkpoint.pt"
        base_id = (f"{cfg.base} {json.dumps(fa.to_dict(), sort_keys=True)} " +
                   (f"weights {file_sha256(cfg.weights)}" if cfg.weights
                    else f"random seed {cfg.seed}"))
        if not base_path.exists() or read_checkpoint(base_path)["extra"].get("base_id") != base_id:
            save_checkpoint(base_path, model_name=cfg.base, arch=fa.to_dict(),
                            state_dict=base.state_dict(),
                            extra={"weights": cfg.weights, "base_id": base_id})
    else:
        base_path = rd.checkpoint(cfg.base)
        base_id = file_sha256(base_path)
    ms = cfg.measure
    ms.threads = cfg.threads
    log(f"compress: measuring base {cfg.base}")
    base_row = measure(base, variant=cfg.base, base=cfg.base, model_name=cfg.base,
                       arch=fa.to_dict(), checkpoint=base_path, settings=ms, test=test, info=info)
    folded_params = count_params(fold_batchnorm(base))[0]  # what pruning is measured against
    edges = histogram_edges(base)
    hist = weight_histogram(base, cfg.base, edges)
    rows, built, skipped = [base_row], [], []
    base_shape = (fa.in_channels, fa.input_size, fa.input_size)  # every variant gets base inputs

    for spec in tqdm(specs, desc="variants", disable=not cfg.progress):
        name = f"{cfg.base}-{spec.name}"
        ckpt_path = out_root / name / "checkpoint.pt"
        recipe = variant_recipe(spec, cfg, base_id)
        done = ckpt_path.exists() and (cost_only or (out_root / name / "card.json").exists())
        sparse_path = out_root / name / "sparse_weights.pt" if spec.method == "unstruct" else None
        if done:
            model, ck = load_model(ckpt_path)
            if ck.get("extra", {}).get("recipe") != recipe:
                log(f"compress: {name} was built with other settings or another base; "
                    "rebuilding it")
                done = False
        if done:
            arch = ck["arch"]
            skipped.append(spec.name)
            log(f"compress: {name} done already, reusing it")
            if spec.method == "struct":
                put_pruned(ctx, spec, model, ck.get("train_config", {}), ck.get("extra", {}))
            if sparse_path is not None and not sparse_path.exists():
                write_sparse_file(model, sparse_path)
        else:
            log(f"compress: building {name}")
            ctx.work_dir = None if cost_only else _work_dir(rd.root, name, recipe)
            v = make_variant(base, spec, ctx)
            v.extra["recipe"] = recipe
            if sparse_path is not None and sparse_path.exists():
                sparse_path.unlink()  # the old variant's; rewritten below
            save_checkpoint(ckpt_path, model_name=name, arch=v.arch, state_dict=v.state_dict,
                            parent=cfg.base, train_config=v.train_config,
                            data=info.to_dict() if info else {}, extra=v.extra,
                            metrics={"compress_seconds": v.seconds})
            if sparse_path is not None:
                write_sparse_file(v.model, sparse_path)
            model, ck = load_model(ckpt_path)  # measure what was saved, not what is in memory
            arch = v.arch
            if not cost_only:
                val_acc = evaluate(model, bundle.val, info)["accuracy"]
                test_acc = evaluate(model, test, info)["accuracy"]
                params = count_params(model)[0]
                write_json(out_root / name / "card.json",
                           _card(name, cfg.base, v, info, bundle.splits.fingerprint, val_acc,
                                 test_acc, params, ckpt_path, cfg.command))
            built.append(spec.name)
            if ctx.work_dir is not None:      # saved with its card: the states are spent
                shutil.rmtree(ctx.work_dir, ignore_errors=True)
        row = measure(model, variant=spec.name, base=cfg.base, model_name=name, arch=arch,
                      checkpoint=ckpt_path, settings=ms, test=test, info=info,
                      input_shape=base_shape, base_row=base_row, sparse_file=sparse_path,
                      ref_params=folded_params)
        rows.append(row)
        hist += weight_histogram(model, spec.name, edges)
        del model

    paths = result_paths(rd.results, cost_only)
    write_csv(paths["compression"], merge_rows(paths["compression"], rows, cfg.base),
              COLUMNS + EXTRA_COLUMNS)
    write_csv(paths["weight_hist"], hist, ["variant", "bin_left", "bin_right", "count"])
    sweep_rows: list[dict[str, Any]] = []
    if cfg.sweep:
        sweep_rows = prune_sweep(base, test=test, info=info, settings=ms,
                                 norm=cfg.norm or "l1", layers=cfg.layers or "deep",
                                 progress=cfg.progress)
        write_csv(paths["prune_sweep"], sweep_rows, SWEEP_COLUMNS)
    write_json(paths["settings"],
               {"base": cfg.base, "cost_only": cost_only, "threads": cfg.threads,
                "measure": asdict(ms), "torch": torch.__version__, "created": _now(),
                "command": cfg.command, "finetune_epochs": cfg.finetune_epochs,
                "finetune_lr": cfg.finetune_lr, "qat_lr": cfg.qat_lr,
                "qat_epochs": qat_epochs(cfg), "limit_train": cfg.limit_train, "weights": cfg.weights})
    log(format_table(rows))
    return CompressResult(rows, sweep_rows, built, skipped, cost_only)
