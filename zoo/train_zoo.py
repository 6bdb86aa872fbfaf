"""Training a zoo into a run directory: every model of a preset, its card, the ladder check.

``train_zoo_model`` trains one model into ``RUN/zoo/<model>/`` (history.csv, a resumable state
file, checkpoint.pt, then card.json, which marks it finished) or skips one already finished
with the same settings. ``train_zoo`` does that for each model a preset names (once per seed:
the first seed keeps the plain name, the others are ``<model>@s<seed>``), then builds the
requested committees (``build_committee``: ``committee-<model>x<k>`` from k seeds of one model,
``zoo.committee``) and returns one ``train_zoo.csv`` row per base model (``zoo_row``);
``ladder_violations`` says where a costlier model is not more accurate than a cheaper one. The
training loop itself is ``zoo.train``.

Under torchrun (``dist``, a ``zoo.distributed.Dist`` of several ranks) ``train_zoo`` spreads the
models over the ranks and trains the large ones with DDP on all of them (the rule is
``zoo.distributed.parallel_modes``); every card records the world size and the global batch.
"""
from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable

import torch

from common.io import read_json, write_json
from zoo.arch_kinds import build_from_arch
from zoo.checkpoint import file_sha256, load_model, save_checkpoint
from zoo.committee import (KIND as COMMITTEE_KIND, Committee, committee_arch, committee_name,
                           parse_committee, registry_name, seed_model_name)
from zoo.costs import count_macs
from zoo.data import DatasetInfo
from zoo.distill import teacher_log_probs
from zoo.distributed import (DDP_MIN_MACS, DataParallel, Dist, assign_to_ranks, parallel_modes,
                             per_rank_batch, training_images)
from zoo.presets import flip_makes_sense, get_preset
from zoo.registry import arch_from_dict, build_arch, model_arch
from zoo.torchvision_models import TorchvisionArch
from zoo.rundir import RunDir
from zoo.train import EpochCallback, TrainConfig, evaluate, fit, identity_diffs
from zoo.vgg import VGGArch


# ---- one zoo model into a run directory -------------------------------------------------------

@dataclass
class ZooModelResult:
    """What ``train_zoo_model`` did for one model: "trained", "resumed" or "skipped"."""

    model_name: str
    status: str
    card: dict[str, Any]


def card_mismatch(card: dict[str, Any], arch: dict[str, Any], config: TrainConfig,
                  split_fingerprint: str) -> list[str]:
    """Why an existing card does not describe the requested model (empty: it does)."""
    out = []
    if card.get("arch") != arch:
        out.append(f"arch {card.get('arch')} -> {arch}")
    if card.get("split_fingerprint") != split_fingerprint:
        out.append(f"split_fingerprint {card.get('split_fingerprint')} -> {split_fingerprint}")
    out += [f"train_config.{d}" for d in identity_diffs(card.get("train_config") or {}, config)]
    return out


def load_teachers(rd: RunDir, names: list[str], student: str,
                  device: str | torch.device = "cpu") -> list[torch.nn.Module]:
    """Finished models ``names`` of the run, loaded to teach ``student``; a teacher not trained
    yet is refused with the fix."""
    missing = [t for t in names if not rd.card(t).exists()]
    if missing:
        raise ValueError(f"{student} distils from {', '.join(missing)}, not trained in "
                         f"{rd.root}; train {'them' if len(missing) > 1 else 'it'} first "
                         f"(list {'them' if len(missing) > 1 else 'it'} before {student} "
                         "in --models, or run train-zoo for them)")
    return [load_model(rd.checkpoint(t), device)[0] for t in names]


def zoo_teacher(rd: RunDir, model_name: str, config: TrainConfig, bundle: Any, *,
                progress: bool = True) -> torch.Tensor:
    """The distillation targets of ``model_name``: the log mean softmax of ``config.teachers``,
    finished models of the run, on the training images (``zoo.distill``)."""
    teachers = load_teachers(rd, config.teachers, model_name, config.device)
    return teacher_log_probs(teachers, bundle.train, bundle.info,
                             batch_size=config.eval_batch_size, device=config.device,
                             progress=progress, desc=f"{model_name} teacher")


def train_zoo_model(run_dir: str | Path, model_name: str, arch: Any, bundle: Any,
                    config: TrainConfig, *, command: str, progress: bool = True,
                    on_epoch_end: EpochCallback | None = None,
                    log_epochs: bool = True, data_parallel: DataParallel | None = None,
                    placement: dict[str, Any] | None = None) -> ZooModelResult:
    """Train ``model_name`` (built from ``arch``: a ``VGGArch`` or a torchvision classifier's
    ``TorchvisionArch``) into ``RUN/zoo/<model>/``.

    Writes history.csv and a resumable ``train_state.pt`` each epoch, then checkpoint.pt and,
    last, card.json (which marks the model finished); removes the state file. A finished model
    whose card matches ``arch``, ``config`` and the split is skipped; a card that does not
    match is an error (a different model must not silently replace one other steps used).

    ``data_parallel``: train with DDP on every rank (called on all of them); rank 0 writes the
    files and every rank returns its card. ``placement`` goes into the card's ``parallel``
    (how the run was launched); the card also records ``world_size`` (processes that trained
    this model) and ``global_batch``.
    """
    rd = RunDir(run_dir)
    arch_dict = arch.to_dict()
    fingerprint = bundle.splits.fingerprint
    card_path, ckpt_path = rd.card(model_name), rd.checkpoint(model_name)
    if card_path.exists() and ckpt_path.exists():
        card = read_json(card_path)
        diffs = card_mismatch(card, arch_dict, config, fingerprint)
        if not diffs:
            return ZooModelResult(model_name, "skipped", card)
        raise ValueError(f"{model_name} in {rd.root} is finished but was trained with other "
                         f"settings ({'; '.join(diffs)}); use a new --run directory, the "
                         f"original settings, or delete {rd.model_dir(model_name)} to retrain")
    state_path = rd.model_dir(model_name) / "train_state.pt"
    status = "resumed" if state_path.exists() else "trained"
    teacher = (zoo_teacher(rd, model_name, config, bundle, progress=progress)
               if config.distill > 0 else None)
    torch.manual_seed(config.seed)  # the initial weights depend on the seed only
    model = build_arch(arch)
    dp = data_parallel
    result = fit(model, bundle.train, bundle.val, bundle.info, config, state_path=state_path,
                 history_path=rd.history(model_name), progress=progress, desc=model_name,
                 on_epoch_end=on_epoch_end, log_epochs=log_epochs, data_parallel=dp,
                 teacher_log_probs=teacher)
    device = config.device
    evaluate_on = evaluate if dp is None else dp.evaluate
    val = evaluate_on(model, bundle.val, bundle.info, config.eval_batch_size, device,
                      config.channels_last)
    test = evaluate_on(model, bundle.test, bundle.info, config.eval_batch_size, device,
                       config.channels_last)
    world = 1 if dp is None else dp.world_size
    parallel = {"mode": "single" if dp is None else "ddp", "world_size": world,
                "global_batch": config.batch_size,
                "per_rank_batch": per_rank_batch(config.batch_size, world), **(placement or {})}
    if dp is not None and not dp.is_main:     # rank 0 writes; the others take its card
        return ZooModelResult(model_name, status, dp.dist.broadcast_object(None))
    model.to("cpu", memory_format=torch.contiguous_format)
    params = sum(p.numel() for p in model.parameters())
    metrics = {"val_accuracy": val["accuracy"], "val_loss": val["loss"], "val_top5": val["top5"],
               "test_accuracy": test["accuracy"], "test_loss": test["loss"],
               "test_top5": test["top5"], "best_epoch": result.best_epoch,
               "epochs_run": result.epochs_run, "stopped_early": result.stopped_early,
               "train_seconds": round(result.seconds, 2)}
    save_checkpoint(ckpt_path, model_name=model_name, arch=arch_dict,
                    state_dict=model.state_dict(), parent=None, metrics=metrics,
                    train_config=config.to_dict(), data=bundle.info.to_dict(),
                    extra={"split_fingerprint": fingerprint, "command": command,
                           "threads": torch.get_num_threads(), "parallel": parallel})
    card = {"model_name": model_name, "arch": arch_dict, "parent": None, "variant": None,
            "dataset": bundle.info.to_dict(), "split_fingerprint": fingerprint,
            "val_accuracy": val["accuracy"], "test_accuracy": test["accuracy"],
            "params": params, "train_seconds": round(result.seconds, 2),
            "train_config": config.to_dict(), "command": command,
            "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "checkpoint_sha256": file_sha256(ckpt_path),
            "metrics": metrics, "threads": torch.get_num_threads(),
            "n_train": len(bundle.train), "n_val": len(bundle.val), "n_test": len(bundle.test),
            "world_size": world, "global_batch": config.batch_size, "parallel": parallel}
    write_json(card_path, card)
    state_path.unlink(missing_ok=True)
    if dp is not None:
        dp.dist.broadcast_object(card)
    return ZooModelResult(model_name, status, card)


# ---- the whole zoo ----------------------------------------------------------------------------

def ladder_violations(names: list[str], accuracies: list[float]) -> list[str]:
    """Pairs breaking the ladder: a model (listed later = costlier) not more accurate than an
    earlier (cheaper) one. Empty when the accuracies rise strictly along ``names``."""
    out = []
    for j in range(len(names)):
        for i in range(j):
            if not accuracies[j] > accuracies[i]:
                out.append(f"{names[j]} ({100 * accuracies[j]:.2f}%) is not more accurate than "
                           f"the cheaper {names[i]} ({100 * accuracies[i]:.2f}%)")
    return out


@dataclass
class ZooRunSettings:
    """What ``train-zoo`` was asked for, beyond the run's data settings."""

    preset: str = "quick"
    models: list[str] | None = None      # None: the preset's models
    epochs: int | None = None
    width: float | None = None
    lr: float | None = None
    seed: int = 0
    device: str = "cpu"
    threads: int | None = None
    amp: str | None = None               # None: the preset's ("off")
    progress: bool = True
    # under torchrun (zoo.distributed.parallel_modes): DDP from this many MACs per input, and
    # for these models whatever their MACs; the others are spread across the ranks
    ddp_min_macs: float = DDP_MIN_MACS
    ddp_models: list[str] | None = None
    # training seeds: every model once per seed (None: the preset's, else [seed]); the first
    # keeps the plain name, the others are <model>@s<seed>
    seeds: list[int] | None = None
    # "MODEL:K" committees (None: the preset's): built from the first K seeds of MODEL (the
    # seeds list continued by consecutive seeds where it is shorter), trained if missing
    committees: list[str] | None = None
    # knowledge distillation for every model of the call that is not a teacher (None: the
    # preset's recipes decide); distill defaults to 0.5 where teachers are given
    teachers: list[str] | None = None
    distill: float | None = None
    distill_temperature: float | None = None

    def distill_overrides(self, model_name: str) -> dict[str, Any]:
        """The TrainConfig fields the call's distillation flags set for ``model_name``."""
        if not self.teachers or model_name in self.teachers:
            return {}
        return {"teachers": list(self.teachers),
                "distill": 0.5 if self.distill is None else self.distill,
                "distill_temperature": self.distill_temperature}

    def run_seeds(self) -> list[int]:
        seeds = list(self.seeds if self.seeds is not None else
                     get_preset(self.preset).seeds or [self.seed])
        if not seeds or len(set(seeds)) != len(seeds):
            raise ValueError(f"seeds must be distinct and at least one, got {seeds}")
        return seeds

    def committee_specs(self) -> list[tuple[str, int]]:
        specs = self.committees if self.committees is not None else \
            get_preset(self.preset).committees
        return [parse_committee(c) for c in specs]

    def committee_seeds(self, k: int) -> list[int]:
        """The seeds of a k-member committee: the run's seeds, continued past the last one."""
        seeds = self.run_seeds()
        while len(seeds) < k:
            seeds.append(max(seeds) + 1)
        return seeds[:k]


@dataclass
class ZooJob:
    """One model of a ``train_zoo`` call: how it is built and trained."""

    index: int                            # 1-based place in the call's list
    name: str
    arch: VGGArch | TorchvisionArch
    config: TrainConfig
    width: float

    def describe(self) -> str:
        c = self.config
        shape = (f"torchvision {self.arch.name}{', small-input stem' if self.arch.small_input else ''}, "
                 if isinstance(self.arch, TorchvisionArch) else
                 f"width {self.width}, {'BN, ' if self.arch.batch_norm else ''}")
        return (f"{shape}{c.epochs} epochs, "
                f"lr {c.lr}, {c.optimizer}/{c.schedule}"
                f"{', bf16 autocast' if c.amp == 'bf16' else ''}")


def zoo_jobs(bundle: Any, settings: ZooRunSettings) -> list[ZooJob]:
    """The requested models (default: the preset's) with their architectures and configs: once
    per seed (``settings.run_seeds()``; seeds after the first as ``<model>@s<seed>``), then the
    seeded members committees need that are not among those."""
    preset = get_preset(settings.preset)
    seeds = settings.run_seeds()
    wanted = [(seed_model_name(m, s, seeds[0]), m, s)
              for s in seeds for m in settings.models or preset.models]
    names = {w[0] for w in wanted}
    for model, k in settings.committee_specs():
        for s in settings.committee_seeds(k):
            name = seed_model_name(model, s, seeds[0])
            if name not in names:
                wanted.append((name, model, s))
                names.add(name)
    return [_job(i + 1, name, model, seed, bundle, settings)
            for i, (name, model, seed) in enumerate(wanted)]


def _job(index: int, name: str, model: str, seed: int, bundle: Any,
         settings: ZooRunSettings) -> ZooJob:
    """Zoo member ``name``: registered ``model`` trained with ``seed``, as the preset says."""
    preset = get_preset(settings.preset)
    info = bundle.info
    recipe = preset.recipe(model, epochs=settings.epochs, width=settings.width, lr=settings.lr)
    arch = model_arch(model, num_classes=info.num_classes, in_channels=info.in_channels,
                      input_size=info.input_size, width=recipe.width)
    arch.batch_norm = recipe.batch_norm
    if recipe.dropout is not None:
        arch.dropout = recipe.dropout
    config = preset.train_config(recipe, seed=seed, device=settings.device,
                                 threads=settings.threads, amp=settings.amp,
                                 **settings.distill_overrides(name))
    if config.augment and not flip_makes_sense(info.name):
        config.flip = False
    return ZooJob(index, name, arch, config, recipe.width)


def train_zoo(run_dir: str | Path, bundle: Any, settings: ZooRunSettings, *, command: str,
              log: Callable[[str], None] = print, dist: Dist | None = None
              ) -> list[dict[str, Any]]:
    """Train (or resume, or skip) every requested model (once per seed), then build (or skip)
    every requested committee on rank 0; return one summary row per base model of the run
    (status trained / resumed / skipped / built, or "earlier" for one finished by an earlier
    call and not named in this one): the preset's models in its order, cheapest first, then
    other models, the other seeds' models, the committees.

    ``dist`` of several ranks (torchrun): see ``train_zoo_parallel``; call it on every rank.
    """
    preset = get_preset(settings.preset)
    info = bundle.info
    jobs = zoo_jobs(bundle, settings)
    if dist is not None and dist.enabled:
        rows = train_zoo_parallel(run_dir, bundle, jobs, settings, dist, command=command,
                                  log=log)
    else:
        rows = []
        for job in jobs:
            log(f"[{job.index}/{len(jobs)}] {job.name}: {job.describe()}")
            res = train_zoo_model(run_dir, job.name, job.arch, bundle, job.config,
                                  command=command, progress=settings.progress)
            rows.append(_logged_row(job, len(jobs), res, info, log))
    if dist is None or dist.is_main:
        seeds = settings.run_seeds()
        for model, k in settings.committee_specs():
            members = [seed_model_name(model, s, seeds[0]) for s in settings.committee_seeds(k)]
            res = build_committee(run_dir, model, members, bundle, command=command, log=log)
            rows.append(zoo_row(res.model_name, res.status, res.card, info))
    # base models the run finished in an earlier call that this one did not name: the table
    # and the ladder cover the run's whole zoo (compressed variants, with a parent, are not here)
    rd = RunDir(run_dir)
    named = {r["model"] for r in rows}
    for name in rd.finished_models():
        if name in named:
            continue
        card = rd.read_card(name)
        if card.get("parent") is None:
            rows.append(zoo_row(name, "earlier", card, info))
    order = {m: i for i, m in enumerate(preset.models)}
    rows.sort(key=lambda r: (_row_group(r["model"]),           # stable: others keep theirs
                             order.get(registry_name(r["model"]), len(order))))
    return rows


def _row_group(name: str) -> int:
    """0: a plain model (on the ladder), 1: another seed's, 2: a committee."""
    return 2 if name.startswith("committee-") else 1 if "@" in name else 0


def ladder_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The rows the accuracy ladder is checked on: plain models (not other seeds' models, not
    committees, which are not steps of the ladder)."""
    return [r for r in rows if _row_group(r["model"]) == 0]


# ---- committees -------------------------------------------------------------------------------

def build_committee(run_dir: str | Path, model: str, members: list[str], bundle: Any, *,
                    command: str, log: Callable[[str], None] = print,
                    batch_size: int = 512) -> ZooModelResult:
    """Zoo member ``committee-<model>x<k>`` from the finished ``members`` (k seeds of ``model``,
    all of one architecture): checkpoint (the stacked state dict, ``arch`` of kind committee)
    and card (members, k, their val accuracies; no parent: it counts in the base zoo).

    Status "built", or "skipped" when its card names the same member checkpoints (by SHA-256);
    a committee whose members were retrained since is built again ("rebuilt").
    """
    rd = RunDir(run_dir)
    name = committee_name(model, len(members))
    missing = [m for m in members if not (rd.card(m).exists() and rd.checkpoint(m).exists())]
    if missing:
        raise ValueError(f"{name} needs the finished models {missing} in {rd.root}")
    cards = {m: rd.read_card(m) for m in members}
    shas = {m: cards[m]["checkpoint_sha256"] for m in members}
    archs = [cards[m]["arch"] for m in members]
    if any(a != archs[0] for a in archs[1:]):
        raise ValueError(f"{name}: the members {members} are not all of one architecture")
    card_path, ckpt_path = rd.card(name), rd.checkpoint(name)
    status = "built"
    if card_path.exists() and ckpt_path.exists():
        old = read_json(card_path)
        if old.get("member_checkpoints") == shas and \
                old.get("split_fingerprint") == bundle.splits.fingerprint:
            log(f"{name}: skipped (members unchanged)")
            return ZooModelResult(name, "skipped", old)
        status = "rebuilt"
    start = dt.datetime.now()
    committee = Committee([load_model(rd.checkpoint(m))[0] for m in members])
    info = bundle.info
    val = evaluate(committee, bundle.val, info, batch_size)
    test = evaluate(committee, bundle.test, info, batch_size)
    arch = committee_arch(archs[0], members)
    member_val = {m: cards[m]["val_accuracy"] for m in members}
    member_test = {m: cards[m]["test_accuracy"] for m in members}
    metrics = {"val_accuracy": val["accuracy"], "val_loss": val["loss"], "val_top5": val["top5"],
               "test_accuracy": test["accuracy"], "test_loss": test["loss"],
               "test_top5": test["top5"],
               "mean_member_val_accuracy": sum(member_val.values()) / len(members),
               "best_member_val_accuracy": max(member_val.values()),
               "build_seconds": round((dt.datetime.now() - start).total_seconds(), 2)}
    train_seconds = round(sum(c["train_seconds"] for c in cards.values()), 2)
    extra = {"split_fingerprint": bundle.splits.fingerprint, "command": command,
             "members": members, "member_checkpoints": shas}
    save_checkpoint(ckpt_path, model_name=name, arch=arch, state_dict=committee.state_dict(),
                    parent=None, metrics=metrics, train_config=cards[members[0]]["train_config"],
                    data=info.to_dict(), extra=extra)
    card = {"model_name": name, "arch": arch, "parent": None, "variant": None,
            "kind": COMMITTEE_KIND, "members": members, "k": len(members),
            "member_val_accuracy": member_val, "member_test_accuracy": member_test,
            "member_checkpoints": shas,
            "dataset": info.to_dict(), "split_fingerprint": bundle.splits.fingerprint,
            "val_accuracy": val["accuracy"], "test_accuracy": test["accuracy"],
            "params": sum(p.numel() for p in committee.parameters()),
            # what the committee cost to train: its members' training, added up
            "train_seconds": train_seconds,
            "train_config": cards[members[0]]["train_config"], "command": command,
            "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "checkpoint_sha256": file_sha256(ckpt_path), "metrics": metrics,
            "threads": torch.get_num_threads(), "n_train": len(bundle.train),
            "n_val": len(bundle.val), "n_test": len(bundle.test)}
    write_json(card_path, card)
    log(f"{name}: {status} from {', '.join(members)}; val {100 * val['accuracy']:.2f}% (members "
        f"{', '.join(f'{100 * v:.2f}' for v in member_val.values())}) test "
        f"{100 * test['accuracy']:.2f}%")
    return ZooModelResult(name, status, card)


def _logged_row(job: ZooJob, n_jobs: int, res: ZooModelResult, info: DatasetInfo,
                log: Callable[[str], None], prefix: str = "") -> dict[str, Any]:
    card = res.card
    log(f"{prefix}[{job.index}/{n_jobs}] {job.name}: {res.status}; val "
        f"{100 * card['val_accuracy']:.2f}% test {100 * card['test_accuracy']:.2f}% in "
        f"{card['train_seconds']:.0f} s")
    return zoo_row(job.name, res.status, card, info, width=job.width)


def train_zoo_parallel(run_dir: str | Path, bundle: Any, jobs: list[ZooJob],
                       settings: ZooRunSettings, dist: Dist, *, command: str,
                       log: Callable[[str], None] = print) -> list[dict[str, Any]]:
    """Train ``jobs`` on all ranks of ``dist``; every rank returns the rows (in ``jobs`` order).

    First the models across ranks: ``assign_to_ranks`` gives each rank its share by estimated
    work (MACs x training images; a finished model counts 0), which it trains alone; then every
    rank waits for the others (errors are gathered and raised on every rank). Then each DDP
    model in turn on all ranks. The rule: ``parallel_modes`` with ``settings.ddp_min_macs`` and
    ``settings.ddp_models``.
    """
    info = bundle.info
    shape = (1, info.in_channels, info.input_size, info.input_size)
    macs = {j.name: count_macs(build_arch(j.arch), shape) for j in jobs}
    modes = parallel_modes(macs, dist.world_size, ddp_min_macs=settings.ddp_min_macs,
                           ddp_models=settings.ddp_models or ())
    # a student trains after the first phase, when every model it distils from is finished
    modes.update({j.name: "ddp" for j in jobs if j.config.teachers and modes[j.name] == "across"})
    across = [j for j in jobs if modes[j.name] == "across"]
    owner = None
    if dist.is_main:   # decided on rank 0 before any rank writes a card, then told to all
        finished = set(RunDir(run_dir).finished_models())
        owner = assign_to_ranks({j.name: 0.0 if j.name in finished else
                                 macs[j.name] * training_images(j.config, len(bundle.train))
                                 for j in across}, dist.world_size)
    owner = dist.broadcast_object(owner)
    launch = {"launch_world_size": dist.world_size, "backend": dist.backend}
    prefix = f"[rank {dist.rank}] "
    if dist.is_main:
        shares = "; ".join(f"rank {r}: {', '.join(m for m in owner if owner[m] == r) or '-'}"
                           for r in range(dist.world_size))
        ddp = [j.name for j in jobs if modes[j.name] == "ddp"]
        log(f"torchrun: {dist.world_size} ranks ({dist.backend}); models across ranks: "
            f"{shares or '-'}; DDP on every rank: {', '.join(ddp) or '-'}")
    rows: dict[str, dict[str, Any]] = {}
    error = None
    for job in across:
        if owner[job.name] != dist.rank:
            continue
        config = replace(job.config, device=dist.device)
        log(f"{prefix}[{job.index}/{len(jobs)}] {job.name}: {job.describe()}")
        try:
            res = train_zoo_model(run_dir, job.name, job.arch, bundle, config, command=command,
                                  progress=settings.progress and dist.is_main,
                                  placement={"mode": "across", "rank": dist.rank, **launch})
        except Exception as e:   # the others must hear of it, not wait for this rank forever
            error = f"{job.name} on rank {dist.rank}: {type(e).__name__}: {e}"
            break
        rows[job.name] = _logged_row(job, len(jobs), res, info, log, prefix)
    gathered = dist.gather_objects((rows, error))        # every rank's share done: the barrier
    errors = [e for _, e in gathered if e]
    if errors:
        raise ValueError("; ".join(errors))
    for part, _ in gathered:
        rows.update(part)
    for job in jobs:
        if modes[job.name] != "ddp":
            continue
        config = replace(job.config, device=dist.device)
        if dist.is_main:
            log(f"[{job.index}/{len(jobs)}] {job.name}: {job.describe()}; DDP on "
                f"{dist.world_size} ranks, global batch {config.batch_size}")
        res = train_zoo_model(run_dir, job.name, job.arch, bundle, config, command=command,
                              progress=settings.progress, log_epochs=True,
                              data_parallel=DataParallel(dist),
                              placement={"mode": "ddp", **launch})
        rows[job.name] = (_logged_row(job, len(jobs), res, info, log) if dist.is_main
                          else zoo_row(job.name, res.status, res.card, info, width=job.width))
    return [rows[j.name] for j in jobs]


def zoo_row(name: str, status: str, card: dict[str, Any], info: DatasetInfo,
            width: float | None = None) -> dict[str, Any]:
    """One row of ``train_zoo.csv`` from a model's card (MACs counted for one input). ``width``
    is the one asked for; None reads it off the first conv against the registry's width-1
    model (cards do not record it; rounding of channel counts can show, e.g. 0.3 as 0.2969).
    A committee's row: its members' width and BatchNorm, k times their MACs and parameters."""
    shape = (1, info.in_channels, info.input_size, info.input_size)
    if card["arch"].get("kind") == COMMITTEE_KIND:
        arch = arch_from_dict(card["arch"]["member_arch"], info.input_size)
        macs = count_macs(build_from_arch(card["arch"]), shape)
        base = registry_name(card["arch"]["members"][0])
    else:
        arch = arch_from_dict(card["arch"], info.input_size)
        macs = count_macs(build_arch(arch), shape)
        base = registry_name(name)
    if isinstance(arch, TorchvisionArch):
        width = 1.0
    elif width is None:
        full = model_arch(base, num_classes=info.num_classes, in_channels=info.in_channels,
                          input_size=info.input_size, width=1.0)
        width = round(arch.cfg[0] / full.cfg[0], 4)
    return {"model": name, "status": status, "width": width,
            "batch_norm": arch.batch_norm, "params": card["params"], "macs": macs,
            "epochs": card["train_config"]["epochs"],
            "best_epoch": card.get("metrics", {}).get("best_epoch", ""),
            "val_accuracy": card["val_accuracy"], "test_accuracy": card["test_accuracy"],
            "train_seconds": card["train_seconds"]}
