"""The whole study as ordered stages, each one a console script's ``main``, resumable.

Every stage skips work that is already current; on top of that ``run_pipeline`` stamps each
finished stage in ``RUN/stages/<stage>.json`` with the argument list it ran with, so a second
call does no work at all. When a stage does run, every later stamp is dropped so that the later
stages see its new output.

Under torchrun (``dist`` of several ranks) the stages in ``SHARED_STAGES`` run on every rank and
share their work; the others, the stamps and ``stages.csv`` belong to rank 0 while the other
ranks wait for it.
"""
from __future__ import annotations

import datetime as dt
import importlib
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from common.io import read_csv, read_json, write_csv, write_json
from zoo.distributed import Dist
from zoo.committee import committee_member_names, parse_committee
from zoo.presets import get_preset
from zoo.rundir import RunConfig, RunDir


@dataclass
class PipelinePreset:
    """Arguments for each stage (``--run`` and data flags are added by the pipeline)."""

    name: str
    train_args: list[str]
    compress_args: list[str]
    # further compress calls after the first
    compress_more: list[list[str]] = field(default_factory=list)
    # a train-zoo preset: after those, one more compress call makes static int8 copies of
    # every tiny model it trains, every seed (``tiny_models``, named from the run's seed)
    int8_tiny_of: str | None = None
    profile_args: list[str] = field(default_factory=lambda: ["--threads", "2"])
    evaluate_args: list[str] = field(default_factory=lambda: [
        "--sacrifices", "0", "0.005", "0.01", "0.02", "0.05", "0.1", "--threads", "2"])
    report_args: list[str] = field(default_factory=list)
    expected: str = ""
    # share of the training pool held out as val, where run-all is not told (None: train-zoo's
    # own default, 0.1)
    val_fraction: float | None = None


def tiny_models(preset: str, seed: int = 0) -> list[str]:
    """The tiny models train-zoo trains for ``preset`` with ``--seed seed``, in its order: each
    model, then the other seeds its committee needs (``MODEL@sK``, K = seed + 1, ...; the
    run's own seed keeps the plain name)."""
    train = get_preset(preset)
    k_of = dict(parse_committee(c) for c in train.committees)
    return [name for m in train.models if m.startswith("tiny_vgg")
            for name in committee_member_names(m, k_of.get(m, 1),
                                               range(seed, seed + k_of.get(m, 1)))]


def run_seed(run: Path, data_args: list[str]) -> int:
    """The seed train-zoo splits and trains ``run`` with: ``--seed`` of ``data_args``, else the
    one the run's config fixed, else ``RunConfig.seed`` (train-zoo's default for a new run)."""
    if "--seed" in data_args:
        return int(data_args[data_args.index("--seed") + 1])
    rd = RunDir(run)
    return rd.load_config().seed if rd.config_path.exists() else RunConfig.seed

PRESETS: dict[str, PipelinePreset] = {
    "quick": PipelinePreset(
        name="quick",
        train_args=["--preset", "quick"],
        compress_args=["--base", "vgg19_small", "--preset", "quick"],
        expected="about 30 minutes on a 2-core CPU",
    ),
    "standard": PipelinePreset(
        name="standard",
        train_args=["--preset", "standard", "--amp", "auto"],
        compress_args=["--base", "vgg19_small", "--preset", "standard", "--amp", "auto"],
        # static int8 copies of the five tiny models (calibration only, no training): the fast
        # stages a committee cascade needs to be both more accurate and faster (issue 33)
        int8_tiny_of="standard",
        evaluate_args=["--sacrifices", "-0.005", "0", "0.005", "0.01", "0.02", "0.05", "0.1",
                       "--threads", "2"],
        expected=("30-48 minutes on a 2-core CPU with native bf16 (AVX512-BF16 or AMX); "
                  "estimated 2.0-2.2 hours where it has AVX2 only"),
    ),
    "full": PipelinePreset(
        name="full",
        train_args=["--preset", "full"],
        compress_args=["--base", "vgg19_small", "--preset", "full"],
        expected=("about 12-13 hours on a 2-core CPU with --amp bf16 (the five tiny VGGs alone "
                  "took 3.5-4.5 h); about 20-30 minutes on one H100 GPU"),
    ),
    "smoke": PipelinePreset(
        name="smoke",
        train_args=["--preset", "smoke", "--threads", "1", "--no-progress"],
        compress_args=["--base", "tiny_vgg3", "--variants", "int8-dynamic", "res-20",
                       "--finetune-epochs", "0", "--limit-train", "128", "--calib-images", "64",
                       "--threads", "1", "--latency-runs", "2", "--batch-repeats", "1",
                       "--no-memory", "--no-progress"],
        profile_args=["--threads", "1", "--budget-s", "0.2", "--memory", "off",
                      "--no-progress"],
        evaluate_args=["--sacrifices", "0", "0.05", "--threads", "1", "--repeats", "1",
                       "--dispatcher-epochs", "2", "--timing-samples", "0", "--no-progress"],
        report_args=["--dpi", "50"],
        expected="under a minute: a plumbing check on a few hundred images, numbers mean nothing",
    ),
}

PRESETS["standard-committee"] = PipelinePreset(
    name="standard-committee",
    train_args=["--preset", "standard-committee", "--amp", "auto"],
    compress_args=["--base", "vgg19_small", "--preset", "standard", "--amp", "auto"],
    # static int8 copies of every tiny model: calibration only (no training), about 10 s each
    int8_tiny_of="standard-committee",
    # -0.1 %, not -0.5 %: the committee gains 0.2-0.5 points, and certifying a gain of s needs
    # an observed gain near s + 0.3 points (-0.5 % was never certified; on val-only draws of
    # runs/committee-v20, bench_guarantee --committee certified -0.2 % in 6 % of draws and
    # -0.1 % in 17 %)
    evaluate_args=["--sacrifices", "-0.001", "0", "0.005", "0.01", "0.02", "0.05", "0.1",
                   "--threads", "2"],
    expected=("standard plus 2 more trainings of tiny_vgg5 (about 7 more minutes with native "
              "bf16, 40 estimated on a 2-core AVX2 CPU) and int8 copies of them; val 30 %"),
    # val 30 %: certifying a gain needs certify images. On val-only draws of runs/committee-v20
    # (bench_guarantee --population val --committee, 2 stages, 100 draws), draws of 3,000 /
    # 6,000 / 9,000 images: the share certified at -0.1 % 5 / 18 / 34 %, the mean gain at s = 0
    # 0.01 / 0.10 / 0.14 points, the median speedup at s = 0 1.00x / 1.00x / 1.71x and at 0.5 %
    # 2.5x / 16.6x / 22.2x. 0.2 -> 0.3 is the 6,000 -> 9,000 step. The price: 42,000 training
    # images instead of 48,000 (at 0.2) or 54,000 (tiny_vgg5 93.82 % test at 0.2 against 93.88 %
    # at 0.1, seed noise)
    val_fraction=0.3,
)

STAGES: list[tuple[str, str]] = [
    ("train-zoo", "scripts.train_zoo"),
    ("compress", "scripts.compress"),
    ("profile-zoo", "scripts.profile_zoo"),
    ("evaluate-routers", "scripts.evaluate_routers"),
    ("report", "scripts.report"),
]


@dataclass
class StageOutcome:
    stage: str
    ran: bool
    seconds: float


def with_threads(args: list[str], threads: int | None) -> list[str]:
    """``args`` with the value after ``--threads`` set to ``threads`` (added if absent)."""
    out = list(args)
    if threads is None:
        return out
    if "--threads" in out:
        out[out.index("--threads") + 1] = str(threads)
    else:
        out += ["--threads", str(threads)]
    return out


def stage_argv(preset: PipelinePreset, stage: str, run: Path, data_args: list[str],
               device_args: list[str], *, amp: str | None = None,
               threads: int | None = None) -> list[str]:
    """The argument list one stage is called with.

    ``amp`` (e.g. ``"bf16"``) is passed to the stages that train, train-zoo and compress;
    ``threads`` replaces the preset's ``--threads`` of the stages that time models on the CPU.
    """
    base = ["--run", str(run)]
    amp_args = ["--amp", amp] if amp else []
    if stage == "train-zoo":
        return base + data_args + device_args + preset.train_args + amp_args
    if stage == "compress":
        args = device_args + preset.compress_args + amp_args
    elif stage == "profile-zoo":
        args = preset.profile_args
    elif stage == "evaluate-routers":
        args = preset.evaluate_args
    else:
        return base + preset.report_args
    return base + with_threads(args, threads)


def stage_argvs(preset: PipelinePreset, stage: str, run: Path, data_args: list[str],
                device_args: list[str], *, amp: str | None = None,
                threads: int | None = None) -> list[list[str]]:
    """Every argument list one stage is called with, in order: ``stage_argv``'s, then (for
    compress) one per ``preset.compress_more`` and the int8 copies of ``preset.int8_tiny_of``'s
    tiny models, named from the run's seed (``run_seed``)."""
    argvs = [stage_argv(preset, stage, run, data_args, device_args, amp=amp, threads=threads)]
    if stage == "compress":
        more = list(preset.compress_more)
        if preset.int8_tiny_of is not None:
            tiny = tiny_models(preset.int8_tiny_of, run_seed(run, data_args))
            more.append(["--base", *tiny, "--variants", "int8-static"])
        argvs += [["--run", str(run)] + with_threads(device_args + m, threads) for m in more]
    return argvs


STAGE_COLUMNS = ["stage", "seconds", "started", "finished", "preset"]
# stages whose main() shares its work over the ranks when launched by torchrun
SHARED_STAGES = ("train-zoo", "compress", "profile-zoo")


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def append_stage_row(run: Path, row: dict) -> Path:
    """Add one finished stage to ``RUN/results/stages.csv`` (rewritten atomically)."""
    path = Path(run) / "results" / "stages.csv"
    rows = read_csv(path) if path.exists() else []
    return write_csv(path, rows + [row], STAGE_COLUMNS)


def _stamp_path(run: Path, stage: str) -> Path:
    return run / "stages" / f"{stage}.json"


def _call_stage(module, argv: list[str], stage: str, dist: Dist | None) -> object:
    """One call of a stage's ``main``; under torchrun a shared stage runs on every rank, any
    other on rank 0 while the rest wait, and the first failing rank's code is returned."""
    if dist is None:
        return module.main(argv)
    try:
        code = module.main(argv) if dist.is_main or stage in SHARED_STAGES else 0
    except Exception as e:
        code = f"{type(e).__name__}: {e}"
    return next((c for c in dist.gather_objects(code) if c not in (None, 0)), 0)


def run_pipeline(run: str | Path, preset: PipelinePreset, data_args: list[str] | None = None,
                 device_args: list[str] | None = None, stages: list[str] | None = None,
                 log: Callable[[str], None] = print, *, amp: str | None = None,
                 threads: int | None = None, dist: Dist | None = None) -> list[StageOutcome]:
    """Run the stages in order, skipping stamped ones whose arguments are unchanged.

    ``dist`` (torchrun): call on every rank; rank 0 decides what is skipped and logs.
    """
    run = Path(run)
    main_rank = dist is None or dist.is_main
    if not main_rank:
        def log(line: str) -> None:     # rank 0 tells the story
            return None
    data_args, device_args = data_args or [], device_args or []
    wanted = [s for s, _ in STAGES if stages is None or s in stages]
    outcomes: list[StageOutcome] = []
    invalidate = False
    for i, (stage, module_name) in enumerate(STAGES):
        if stage not in wanted:
            continue
        argvs = stage_argvs(preset, stage, run, data_args, device_args, amp=amp, threads=threads)
        argv = argvs[0]
        stamp = _stamp_path(run, stage)
        skip = (not invalidate and stamp.exists() and read_json(stamp).get("argv") == argv
                and read_json(stamp).get("more", []) == argvs[1:])
        if dist is not None:
            skip = dist.broadcast_object(skip)
        if skip:
            log(f"[{i + 1}/{len(STAGES)}] {stage}: done already, skipped")
            outcomes.append(StageOutcome(stage, False, 0.0))
            continue
        log(f"[{i + 1}/{len(STAGES)}] {stage} {' '.join(argv)}"
            + "".join(f"; then {' '.join(a)}" for a in argvs[1:]))
        started = _now()
        start = time.perf_counter()
        module = importlib.import_module(module_name)
        code: object = 0
        for a in argvs:
            code = _call_stage(module, a, stage, dist)
            if code not in (None, 0):
                break
        if code not in (None, 0):
            raise RuntimeError(f"stage {stage} failed with exit code {code}; fix the cause and "
                               "run the same command again: finished work is kept")
        seconds = time.perf_counter() - start
        finished = _now()
        if main_rank:
            write_json(stamp, {"argv": argv, "more": argvs[1:], "seconds": round(seconds, 1), "started": started,
                               "finished": finished})
            append_stage_row(run, {"stage": stage, "seconds": round(seconds, 1),
                                   "started": started, "finished": finished,
                                   "preset": preset.name})
        log(f"[{i + 1}/{len(STAGES)}] {stage}: finished in {seconds:.0f} s")
        outcomes.append(StageOutcome(stage, True, seconds))
        invalidate = True  # later stages must see this stage's new output
    return outcomes


def summary_lines(run: str | Path, levels: tuple[float, ...] | None = None) -> list[str]:
    """The answer selected on val at each level (default: every level of the run), per zoo,
    from routers.csv (never a pick among test rows): its test accuracy, whether the budget held,
    and both speedups."""
    path = Path(run) / "results" / "routers.csv"
    if not path.exists():
        return [f"no {path} yet: run `evaluate-routers --run {run}`"]
    rows = read_csv(path)
    if not rows or "selected" not in rows[0]:
        return [f"{path} was written by an older evaluate-routers (no selected rows): re-run "
                f"`evaluate-routers --run {run}`"]
    present = sorted({float(r["sacrifice"]) for r in rows if r.get("sacrifice") not in ("", None)})
    if levels is not None:
        wanted = [s for s in levels if any(abs(s - p) < 1e-9 for p in present)]
        present = wanted or present   # a run evaluated at other levels reports those
    levels = tuple(present)
    lines = []
    zoos = list(dict.fromkeys(r.get("zoo") or "all" for r in rows))
    for zoo in zoos:
        at_zoo = [r for r in rows if (r.get("zoo") or "all") == zoo]
        best = [r for r in at_zoo if r.get("family") == "best-single"]
        what = "whole zoo" if zoo == "all" else "uncompressed models only"
        if best:
            b = best[0]
            lines.append(f"[{zoo}: {what}] best single model {b['method'].split(':', 1)[-1]}  "
                         f"accuracy {float(b['accuracy']):.4f}  "
                         f"{float(b['images_per_second'] or 'nan'):.0f} images/s")
        for s in levels:
            sel = [r for r in at_zoo if abs(float(r["sacrifice"]) - s) < 1e-9
                   and str(r.get("selected")) in ("1", "True", "true")]
            if not sel:
                lines.append(f"  sacrifice {s:.1%}: no selected row")
                continue
            r = sel[0]
            held = ("budget held on test" if str(r.get("budget_held")).lower() in ("true", "1")
                    else "budget NOT held on test")
            if s < 0 and str(r.get("certified")).lower() in ("false", "0"):
                held = "nothing certified: no promise made"
            lines.append(f"  sacrifice {s:.1%}: selected on val {r['method']}  accuracy "
                         f"{float(r['accuracy']):.4f} ({held})  "
                         f"{float(r['images_per_second'] or 'nan'):.0f} images/s  "
                         f"{float(r['speedup_vs_best'] or 'nan'):.2f}x best single, "
                         f"{float(r['speedup_vs_cheapest_single'] or 'nan'):.2f}x cheapest "
                         "adequate single")
    return lines
