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

Under torchrun (``dist`` of several ranks) the variants still to build are spread over the
ranks the way ``train-zoo`` spreads models (``zoo.distributed.assign_to_ranks``; a ``struct``
variant and ``prune+int8`` with the same pruning stay together: they share one fine-tuned
pruned model). Each rank writes the variants it builds into their own folders; after a barrier
rank 0 alone reads every variant back from disk, measures them all in one process (every
timing is one worker's) and writes the tables, exactly as one process does.
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
from zoo.data import DatasetInfo, ImageSet, prepare_data
from zoo.distributed import Dist, assign_to_ranks
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
    # standard: the quick preset's variants on the standard preset's better-trained
    # vgg19_small (width 0.25), fine-tuned on 20k images; bf16 fine-tunes where native
    # (run-all). 10k images (measured, docs/results.md) saved only 45 of ~270 s and lost up to
    # 0.37 val points (2.2 for res-20), so the standard fine-tunes keep 20k.
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
          command: str, placement: dict[str, Any] | None = None) -> dict[str, Any]:
    card = {"model_name": name, "arch": v.arch, "parent": base, "variant": v.spec.name,
            "dataset": info.to_dict(), "split_fingerprint": fingerprint,
            "val_accuracy": val_acc, "test_accuracy": test_acc, "params": params,
            "train_seconds": v.seconds, "train_config": v.train_config, "command": command,
            "created": _now(), "checkpoint_sha256": file_sha256(ckpt_path),
            "compression": v.extra}
    if placement is not None:     # under torchrun: which rank built it (as train-zoo's cards)
        card["parallel"] = placement
    return card


@dataclass
class _Setup:
    """What every variant of one ``compress`` call is built from and measured against."""

    rd: RunDir
    specs: list[VariantSpec]
    base: VGG
    cost_only: bool
    bundle: Any                    # zoo.data's bundle; None in cost-only mode
    info: DatasetInfo | None
    ctx: CompressContext
    test: ImageSet | None
    out_root: Path
    base_path: Path
    base_id: str


def _setup(cfg: CompressConfig) -> _Setup:
    """Parse the variants, load the base and the data; cost-only: save the base file once."""
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
    return _Setup(rd, specs, base, cost_only, bundle, info, ctx, test, out_root, base_path,
                  base_id)


def _variant_current(cfg: CompressConfig, s: _Setup, spec: VariantSpec) -> bool:
    """Whether ``spec`` is saved (card too, unless cost-only) with the recipe asked for now."""
    d = s.out_root / f"{cfg.base}-{spec.name}"
    if not (d / "checkpoint.pt").exists() or not (s.cost_only or (d / "card.json").exists()):
        return False
    recipe = variant_recipe(spec, cfg, s.base_id)
    return read_checkpoint(d / "checkpoint.pt").get("extra", {}).get("recipe") == recipe


def _ensure_variant(cfg: CompressConfig, s: _Setup, spec: VariantSpec, log,
                    placement: dict[str, Any] | None = None
                    ) -> tuple[Any, dict[str, Any], Path, Path | None, bool]:
    """Build ``spec`` into ``<out_root>/<base>-<variant>/`` (checkpoint, then card), or load it
    back when saved with the same recipe. Returns (the model as saved, its arch, checkpoint
    path, sparse-weights file or None, reused). ``placement`` goes into a new card."""
    from zoo.costs import count_params
    from zoo.train import evaluate
    ctx, info, out_root = s.ctx, s.info, s.out_root
    name = f"{cfg.base}-{spec.name}"
    ckpt_path = out_root / name / "checkpoint.pt"
    recipe = variant_recipe(spec, cfg, s.base_id)
    done = ckpt_path.exists() and (s.cost_only or (out_root / name / "card.json").exists())
    sparse_path = out_root / name / "sparse_weights.pt" if spec.method == "unstruct" else None
    if done:
        model, ck = load_model(ckpt_path)
        if ck.get("extra", {}).get("recipe") != recipe:
            log(f"compress: {name} was built with other settings or another base; "
                "rebuilding it")
            done = False
    if done:
        arch = ck["arch"]
        log(f"compress: {name} done already, reusing it")
        if spec.method == "struct":
            put_pruned(ctx, spec, model, ck.get("train_config", {}), ck.get("extra", {}))
        if sparse_path is not None and not sparse_path.exists():
            write_sparse_file(model, sparse_path)
        return model, arch, ckpt_path, sparse_path, True
    log(f"compress: building {name}")
    ctx.work_dir = None if s.cost_only else _work_dir(s.rd.root, name, recipe)
    v = make_variant(s.base, spec, ctx)
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
    if not s.cost_only:
        val_acc = evaluate(model, s.bundle.val, info)["accuracy"]
        test_acc = evaluate(model, s.test, info)["accuracy"]
        params = count_params(model)[0]
        write_json(out_root / name / "card.json",
                   _card(name, cfg.base, v, info, s.bundle.splits.fingerprint, val_acc,
                         test_acc, params, ckpt_path, cfg.command, placement))
    if ctx.work_dir is not None:      # saved with its card: the states are spent
        shutil.rmtree(ctx.work_dir, ignore_errors=True)
    return model, v.arch, ckpt_path, sparse_path, False


def run_compress(cfg: CompressConfig, log=print, dist: Dist | None = None) -> CompressResult:
    """Build (or reuse), save and measure every variant; write the tables.

    ``dist`` of several ranks (torchrun): call on every rank; see ``run_compress_parallel``.
    """
    if dist is not None and dist.enabled:
        return run_compress_parallel(cfg, dist, log)
    return _measure_and_write(cfg, _setup(cfg), log)


def _measure_and_write(cfg: CompressConfig, s: _Setup, log,
                       parallel: dict[str, Any] | None = None) -> CompressResult:
    """Measure the base, build or reuse each variant and measure it; write the tables.
    ``parallel``: how a torchrun launch built the variants (recorded in the settings file)."""
    from zoo.costs import count_params
    base, info, test, fa = s.base, s.info, s.test, s.base.arch
    ms = cfg.measure
    ms.threads = cfg.threads
    log(f"compress: measuring base {cfg.base}")
    base_row = measure(base, variant=cfg.base, base=cfg.base, model_name=cfg.base,
                       arch=fa.to_dict(), checkpoint=s.base_path, settings=ms, test=test,
                       info=info)
    folded_params = count_params(fold_batchnorm(base))[0]  # what pruning is measured against
    edges = histogram_edges(base)
    hist = weight_histogram(base, cfg.base, edges)
    rows, built, skipped = [base_row], [], []
    base_shape = (fa.in_channels, fa.input_size, fa.input_size)  # every variant gets base inputs

    for spec in tqdm(s.specs, desc="variants", disable=not cfg.progress):
        name = f"{cfg.base}-{spec.name}"
        model, arch, ckpt_path, sparse_path, reused = _ensure_variant(cfg, s, spec, log)
        (skipped if reused else built).append(spec.name)
        row = measure(model, variant=spec.name, base=cfg.base, model_name=name, arch=arch,
                      checkpoint=ckpt_path, settings=ms, test=test, info=info,
                      input_shape=base_shape, base_row=base_row, sparse_file=sparse_path,
                      ref_params=folded_params)
        rows.append(row)
        hist += weight_histogram(model, spec.name, edges)
        del model

    paths = result_paths(s.rd.results, s.cost_only)
    write_csv(paths["compression"], merge_rows(paths["compression"], rows, cfg.base),
              COLUMNS + EXTRA_COLUMNS)
    write_csv(paths["weight_hist"], hist, ["variant", "bin_left", "bin_right", "count"])
    sweep_rows: list[dict[str, Any]] = []
    if cfg.sweep:
        sweep_rows = prune_sweep(base, test=test, info=info, settings=ms,
                                 norm=cfg.norm or "l1", layers=cfg.layers or "deep",
                                 progress=cfg.progress)
        write_csv(paths["prune_sweep"], sweep_rows, SWEEP_COLUMNS)
    settings = {"base": cfg.base, "cost_only": s.cost_only, "threads": cfg.threads,
                "measure": asdict(ms), "torch": torch.__version__, "created": _now(),
                "command": cfg.command, "finetune_epochs": cfg.finetune_epochs,
                "finetune_lr": cfg.finetune_lr, "qat_lr": cfg.qat_lr,
                "qat_epochs": qat_epochs(cfg), "limit_train": cfg.limit_train,
                "weights": cfg.weights}
    if parallel is not None:
        settings["parallel"] = parallel
    write_json(paths["settings"], settings)
    log(format_table(rows))
    return CompressResult(rows, sweep_rows, built, skipped, s.cost_only)


# ---- under torchrun: the variants across ranks ------------------------------------------------

def variant_groups(specs: list[VariantSpec]) -> list[list[VariantSpec]]:
    """The variants in groups built by one process, in the given order: ``struct`` variants
    and ``prune+int8`` with the same pruning (ratio, norm, layers) share one fine-tuned pruned
    model (``CompressContext.cache``), so they stay together; every other variant is alone."""
    groups: dict[Any, list[VariantSpec]] = {}
    for spec in specs:
        key = (("struct",) + spec.prune_key if spec.method in ("struct", "prune+int8")
               else spec.name)
        groups.setdefault(key, []).append(spec)
    return list(groups.values())


def group_work(group: list[VariantSpec], cfg: CompressConfig) -> float:
    """A group's estimated work in training epochs over the fine-tune images (the pruning
    fine-tune a group shares counted once; a post-training quantization 0.1), to balance ranks."""
    work = 0.1 * len(group)
    if any(s.method in ("struct", "prune+int8") for s in group):
        work += cfg.finetune_epochs
    for s in group:
        if s.method in ("unstruct", "res"):
            work += cfg.finetune_epochs
        elif s.method in ("qat8", "qat4"):
            work += qat_epochs(cfg)
    return work


def run_compress_parallel(cfg: CompressConfig, dist: Dist, log=print) -> CompressResult:
    """``run_compress`` on every rank of ``dist``: the variants not yet built are spread over
    the ranks (``variant_groups`` weighted by ``group_work``, ``assign_to_ranks``; decided on
    rank 0 before any rank writes), each rank builds its share into the variants' own folders,
    then every rank waits for the others (errors are gathered and raised on every rank). Rank 0
    then runs the one-process pass: it reads every variant back from disk, measures them all
    alone (every timing is one worker's) and writes the tables; it returns that result, with
    ``built`` naming what any rank built. The other ranks return their own ``built`` only."""
    s = dist.main_first(lambda: _setup(cfg))   # rank 0 first: a cost-only base file
    if str(cfg.device).startswith("cuda"):
        s.ctx.device = dist.device            # this rank's own GPU
    s.ctx.progress = cfg.progress and dist.is_main
    groups = variant_groups(s.specs)

    def plan() -> dict[str, float]:
        return {g[0].name: group_work(g, cfg) for g in groups
                if not all(_variant_current(cfg, s, spec) for spec in g)}
    work = dist.broadcast_object(plan() if dist.is_main else None)
    owner = assign_to_ranks(work, dist.world_size)
    if dist.is_main:
        shares = "; ".join(
            f"rank {r}: " + (", ".join(sp.name for g in groups if owner.get(g[0].name) == r
                                       for sp in g) or "-") for r in range(dist.world_size))
        log(f"compress: {len(work)} of {len(groups)} variant groups to build on "
            f"{dist.world_size} ranks ({dist.backend}); {shares}")
    placement = {"mode": "across", "rank": dist.rank, "launch_world_size": dist.world_size,
                 "backend": dist.backend}
    prefix = f"[rank {dist.rank}] "
    built: list[str] = []
    error = None
    for group in groups:
        if owner.get(group[0].name) != dist.rank:
            continue
        try:
            for spec in group:
                *_, reused = _ensure_variant(cfg, s, spec, lambda m: log(prefix + m), placement)
                if not reused:
                    built.append(spec.name)
        except Exception as e:   # the others must hear of it, not wait for this rank forever
            error = f"{group[0].name} on rank {dist.rank}: {type(e).__name__}: {e}"
            break
    gathered = dist.gather_objects((built, error))      # every rank's share done: the barrier
    errors = [e for _, e in gathered if e]
    if errors:
        raise ValueError("; ".join(errors))
    if not dist.is_main:
        return CompressResult([], [], built, [], s.cost_only)
    built_by = {n: r for r, (names, _) in enumerate(gathered) for n in names}
    log(f"compress: variants built on {dist.world_size} ranks; every figure of the table is "
        "measured by rank 0 alone, in one process, from the saved files")
    res = _measure_and_write(cfg, s, log, parallel={
        "world_size": dist.world_size, "backend": dist.backend, "built_by_rank": built_by,
        "measured_by": "rank 0 alone, in one process, after every rank finished"})
    res.built = [sp.name for sp in s.specs if sp.name in built_by or sp.name in res.built]
    res.skipped = [sp.name for sp in s.specs if sp.name not in res.built]
    return res
