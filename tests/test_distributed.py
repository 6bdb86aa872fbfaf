"""zoo.distributed and train-zoo under torchrun: 2 ranks with gloo on this CPU (processes spawned
here over a file store, or torchrun --standalone on a free port), tiny models, bounded time."""
from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from common.io import read_csv
from tests import dist_workers as W
from zoo.checkpoint import load_model
from zoo.data import prepare_data
from zoo.distributed import (DDP_MIN_MACS, assign_to_ranks, launch_env, launched_by_torchrun,
                             parallel_modes, shard_bounds, training_images)
from zoo.profile import build_table, load_tables
from zoo.rundir import RunDir
from zoo.train import TrainConfig, evaluate, fit
from zoo.train_zoo import train_zoo_model
from zoo.vgg import VGG

ROOT = Path(__file__).resolve().parents[1]


def spawn(fn, *args) -> None:
    mp.spawn(fn, args=(2, *args), nprocs=2, join=True)


# ---- the rule, the split, the environment (no processes) --------------------------------------

def test_rule_puts_the_large_model_under_ddp_and_spreads_the_rest():
    macs = {"tiny_vgg1": 7_100_000, "tiny_vgg5": 205_100_000, "vgg19_small": 362_600_000}
    assert set(parallel_modes(macs, 1).values()) == {"single"}        # one process: unchanged
    modes = parallel_modes(macs, 4)
    assert modes == {"tiny_vgg1": "across", "tiny_vgg5": "across", "vgg19_small": "ddp"}
    assert DDP_MIN_MACS == 300_000_000
    assert parallel_modes(macs, 2, ddp_models=["tiny_vgg1"])["tiny_vgg1"] == "ddp"
    assert set(parallel_modes(macs, 2, ddp_min_macs=0).values()) == {"ddp"}
    assert set(parallel_modes(macs, 2, ddp_min_macs=math.inf).values()) == {"across"}


def test_assignment_gives_every_model_to_exactly_one_rank_longest_first():
    costs = {"a": 1.0, "b": 5.0, "c": 3.0, "d": 3.0, "e": 0.0}
    owner = assign_to_ranks(costs, 2)
    assert list(owner) == list(costs) and set(owner.values()) <= {0, 1}
    # b -> 0, c -> 1, d -> 1 (1 has 3 < 5), a -> 0 (5 < 6), e -> 0 (6 = 6: the lower rank)
    assert owner == {"a": 0, "b": 0, "c": 1, "d": 1, "e": 0}
    assert set(assign_to_ranks(costs, 8).values()) == {0, 1, 2, 3, 4}
    assert assign_to_ranks(costs, 1) == {m: 0 for m in costs}
    cfg = TrainConfig(epochs=2, batch_size=32, max_batches_per_epoch=3)
    assert training_images(cfg, 1000) == 2 * 96 and training_images(cfg, 50) == 2 * 50


def test_shards_cover_every_item_once():
    for n in (0, 1, 7, 41):
        for world in (1, 2, 3):
            parts = [shard_bounds(n, r, world) for r in range(world)]
            assert parts[0][0] == 0 and parts[-1][1] == n
            assert all(a[1] == b[0] for a, b in zip(parts, parts[1:]))
            assert max(h - lo for lo, h in parts) - min(h - lo for lo, h in parts) <= 1


def test_torchrun_environment_is_read_and_its_absence_means_one_process():
    assert launch_env({}).world_size == 1 and not launched_by_torchrun({})
    env = launch_env({"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2"})
    assert (env.rank, env.world_size, env.local_rank, env.local_world_size) == (3, 4, 1, 2)
    assert launched_by_torchrun({"RANK": "0", "WORLD_SIZE": "2"})
    assert not launched_by_torchrun({"RANK": "0", "WORLD_SIZE": "1"})
    with pytest.raises(ValueError, match="outside"):
        launch_env({"RANK": "2", "WORLD_SIZE": "2"})


def test_one_process_card_says_world_size_one(tmp_path, fake_fmnist_dir):
    bundle = W.bundle_for(tmp_path, fake_fmnist_dir)
    cfg = TrainConfig(**{**W.RESUME_CONFIG, "epochs": 1, "max_batches_per_epoch": 1})
    card = train_zoo_model(tmp_path, "tiny_vgg1", W.arch_for(bundle, "tiny_vgg1"), bundle, cfg,
                           command="t", progress=False, log_epochs=False).card
    assert card["world_size"] == 1 and card["global_batch"] == 16
    assert card["parallel"]["mode"] == "single"


# ---- two ranks, spawned here ------------------------------------------------------------------

@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory, fake_fmnist_dir):
    """One spawn of 2 ranks: sharded evaluation of the initial model, then a DDP fit."""
    root = tmp_path_factory.mktemp("ddp")
    bundle = W.bundle_for(root / "run", fake_fmnist_dir)     # fixes the splits before the ranks
    spawn(W.ddp_fit_and_evaluate, root / "store", root / "run", fake_fmnist_dir, root)
    return root, bundle


def test_ddp_on_two_ranks_equals_one_process_on_the_global_batch(ddp_run):
    root, bundle = ddp_run
    torch.manual_seed(0)
    ref = VGG(W.arch_for(bundle))
    fit(ref, bundle.train, bundle.val, bundle.info, TrainConfig(**W.DDP_CONFIG), progress=False)
    want = ref.state_dict()
    for rank in (0, 1):
        got = torch.load(root / f"weights-{rank}.pt", weights_only=True)
        assert list(got) == list(want)      # plain BatchNorm again: the same keys
        for k, v in want.items():
            assert torch.allclose(got[k].float(), v.float(), rtol=1e-4, atol=1e-5), (rank, k)
    # and training moved the weights, so the comparison says something
    torch.manual_seed(0)
    init = VGG(W.arch_for(bundle)).state_dict()
    assert not torch.allclose(init["features.0.weight"], want["features.0.weight"])


def test_sharded_evaluation_equals_one_process(ddp_run):
    root, bundle = ddp_run
    torch.manual_seed(0)
    model = VGG(W.arch_for(bundle))
    for rank in (0, 1):
        got = json.loads((root / f"eval-{rank}.json").read_text())
        for split in ("val", "test"):       # 41 images: 21 + 20
            want = evaluate(model, getattr(bundle, split), bundle.info, batch_size=8)
            assert got[split]["accuracy"] == want["accuracy"]
            assert got[split]["top5"] == want["top5"]
            assert got[split]["loss"] == pytest.approx(want["loss"], rel=1e-5)


def test_resume_under_two_ranks_continues_from_the_last_epoch(tmp_path, fake_fmnist_dir):
    run = tmp_path / "run"
    bundle = W.bundle_for(run, fake_fmnist_dir)
    model_dir = run / "zoo" / "tiny_vgg2"
    spawn(W.ddp_train_zoo_model, tmp_path / "store1", run, fake_fmnist_dir, tmp_path, 1)
    assert (model_dir / "train_state.pt").exists() and not (model_dir / "card.json").exists()
    assert [int(r["epoch"]) for r in read_csv(model_dir / "history.csv")] == [1]
    spawn(W.ddp_train_zoo_model, tmp_path / "store2", run, fake_fmnist_dir, tmp_path, 0)
    assert [json.loads((tmp_path / f"status-0-{r}.json").read_text()) for r in (0, 1)] == \
        ["resumed", "resumed"]
    assert [int(r["epoch"]) for r in read_csv(model_dir / "history.csv")] == [1, 2, 3]
    card = json.loads((model_dir / "card.json").read_text())
    assert card["world_size"] == 2 and card["global_batch"] == 16
    assert card["parallel"]["mode"] == "ddp" and card["parallel"]["per_rank_batch"] == 8
    assert not (model_dir / "train_state.pt").exists()
    # the interrupted two-rank run ends where one uninterrupted process does
    torch.manual_seed(0)
    ref = VGG(W.arch_for(bundle))
    fit(ref, bundle.train, bundle.val, bundle.info, TrainConfig(**W.RESUME_CONFIG),
        progress=False)
    got, _ = load_model(model_dir / "checkpoint.pt")
    for (k, a), b in zip(got.state_dict().items(), ref.state_dict().values()):
        assert torch.allclose(a.float(), b.float(), rtol=1e-3, atol=1e-4), k


# ---- compress: the variants across ranks -------------------------------------------------------

# struct-l1-30 and prune+int8 share one pruned model (one group); res-20 and int8-dynamic alone
COMPRESS_VARIANTS = ["struct-l1-30", "int8-dynamic", "prune+int8", "res-20"]
# figures of one process's clock and load, never equal between two runs
TIMING_COLUMNS = {"latency_ms_b1", "latency_ms_b64", "speedup_b1", "speedup_b64",
                  "peak_memory_mb", "cpu_percent", "images_per_second_b64"}


def test_compress_groups_and_work():
    from zoo.compress.run import group_work, variant_groups
    from zoo.compress.variants import parse_variant
    specs = [parse_variant(v) for v in [*COMPRESS_VARIANTS, "struct-l2-30", "qat8"]]
    groups = [[s.name for s in g] for g in variant_groups(specs)]
    assert groups == [["struct-l1-30", "prune+int8"], ["int8-dynamic"], ["res-20"],
                      ["struct-l2-30"], ["qat8"]]     # prune+int8 prunes l1 30% deep, as struct
    cfg = W.compress_config(Path("run"), COMPRESS_VARIANTS)
    cfg.finetune_epochs, cfg.qat_epochs = 3, 1
    work = [group_work(g, cfg) for g in variant_groups(specs)]
    assert work == pytest.approx([3.2, 0.1, 3.1, 3.1, 1.1])   # the shared fine-tune counted once


def compress_rows(run: Path) -> dict[str, dict[str, str]]:
    return {r["variant"]: r for r in read_csv(run / "results" / "compression.csv")}


def test_compress_on_two_ranks_builds_each_variant_once_like_one_process(tmp_path,
                                                                         fake_fmnist_dir):
    from tests.test_compress import make_tiny_run
    from zoo.compress.run import run_compress
    run = make_tiny_run(tmp_path / "run", fake_fmnist_dir)
    one = tmp_path / "one"
    shutil.copytree(run, one)
    spawn(W.compress_on_ranks, tmp_path / "store1", run, tmp_path, COMPRESS_VARIANTS, "a")
    got = [json.loads((tmp_path / f"compress-a-{r}.json").read_text()) for r in (0, 1)]
    names = [f"tiny_vgg3-{v}" for v in COMPRESS_VARIANTS]
    for name in names:      # built exactly once, by one rank
        assert sum(line.endswith(f"compress: building {name}") for g in got
                   for line in g["log"]) == 1, name
    assert got[0]["built"] == COMPRESS_VARIANTS and got[0]["skipped"] == []
    assert got[0]["rows"] == 1 + len(COMPRESS_VARIANTS) and got[1]["rows"] == 0
    assert got[1]["built"] and set(got[1]["built"]) < set(COMPRESS_VARIANTS)
    cards = {n: json.loads((run / "zoo" / n / "card.json").read_text()) for n in names}
    assert {c["parallel"]["rank"] for c in cards.values()} == {0, 1}
    assert cards["tiny_vgg3-struct-l1-30"]["parallel"]["rank"] == \
        cards["tiny_vgg3-prune+int8"]["parallel"]["rank"]
    settings = json.loads((run / "results" / "compression_settings.json").read_text())
    assert settings["parallel"]["world_size"] == 2
    assert "rank 0 alone" in settings["parallel"]["measured_by"]
    # the table lists each variant once and equals one process's, timings aside
    run_compress(W.compress_config(one, COMPRESS_VARIANTS), log=lambda line: None)
    rows, ref = compress_rows(run), compress_rows(one)
    assert list(rows) == list(ref) == ["tiny_vgg3", *COMPRESS_VARIANTS]
    for v in ref:
        for col, want in ref[v].items():
            if col not in TIMING_COLUMNS:
                assert rows[v][col] == want, (v, col)
    for n in names:
        a, b = (json.loads((r / "zoo" / n / "card.json").read_text()) for r in (run, one))
        assert a["checkpoint_sha256"] != "" and a["test_accuracy"] == b["test_accuracy"]
        assert "parallel" not in b                       # one process: the card as before
    # a second launch finds every variant finished: nothing is built again
    spawn(W.compress_on_ranks, tmp_path / "store2", run, tmp_path, COMPRESS_VARIANTS, "b")
    again = [json.loads((tmp_path / f"compress-b-{r}.json").read_text()) for r in (0, 1)]
    assert again[0]["built"] == [] and again[0]["skipped"] == COMPRESS_VARIANTS
    assert not any("building" in line for g in again for line in g["log"])
    assert list(compress_rows(run)) == ["tiny_vgg3", *COMPRESS_VARIANTS]


# ---- torchrun -m scripts.train_zoo ------------------------------------------------------------

def torchrun(args: list[str], nproc: int = 2, timeout: int = 120,
             module: str = "scripts.train_zoo") -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    # ``--`` ends torchrun's own options: its ``--run-path`` would take ``--run`` as ambiguous
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
           f"--nproc-per-node={nproc}", "-m", module, "--", *args]
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout)


def test_torchrun_train_zoo_trains_every_model_once_and_the_ddp_model_profiles(
        tmp_path, fake_fmnist_dir):
    run = tmp_path / "run"
    args = ["--run", str(run), "--preset", "smoke", "--models", "tiny_vgg1", "tiny_vgg2",
            "tiny_vgg3", "--data-dir", str(fake_fmnist_dir), "--no-download", "--no-progress",
            "--threads", "1", "--ddp-models", "tiny_vgg3"]
    done = torchrun(args)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    out = done.stdout
    for name in ("tiny_vgg1", "tiny_vgg2", "tiny_vgg3"):
        assert out.count(f"{name}: trained;") == 1, out
    rows = read_csv(run / "results" / "train_zoo.csv")
    assert [r["model"] for r in rows] == ["tiny_vgg1", "tiny_vgg2", "tiny_vgg3"]
    assert {r["status"] for r in rows} == {"trained"}
    cards = {m: json.loads((run / "zoo" / m / "card.json").read_text())
             for m in ("tiny_vgg1", "tiny_vgg2", "tiny_vgg3")}
    across = [cards[m]["parallel"] for m in ("tiny_vgg1", "tiny_vgg2")]
    assert [p["mode"] for p in across] == ["across", "across"]
    assert {p["rank"] for p in across} == {0, 1}           # one model on each rank
    assert all(cards[m]["world_size"] == 1 for m in ("tiny_vgg1", "tiny_vgg2"))
    ddp = cards["tiny_vgg3"]
    assert ddp["world_size"] == 2 and ddp["global_batch"] == 32
    assert ddp["parallel"] == {"mode": "ddp", "world_size": 2, "global_batch": 32,
                               "per_rank_batch": 16, "launch_world_size": 2, "backend": "gloo"}
    # a model trained on 2 ranks loads and profiles like any other
    bundle = prepare_data(run, **RunDir(run).load_config().data_kwargs())
    model, ckpt = load_model(run / "zoo" / "tiny_vgg3" / "checkpoint.pt")
    table = build_table({"tiny_vgg3": model}, bundle.test, bundle.info, "test")
    assert float(table.correct[:, 0].mean()) == pytest.approx(ddp["test_accuracy"])
    assert ckpt["extra"]["parallel"]["mode"] == "ddp"
    # a second launch finds everything finished
    again = torchrun(args)
    assert again.returncode == 0, again.stderr[-3000:]
    assert {r["status"] for r in read_csv(run / "results" / "train_zoo.csv")} == {"skipped"}
    # profile-zoo: predictions shared over the ranks, the tables those of one process
    prof = torchrun(["--run", str(run), "--threads", "1", "--budget-s", "0.1", "--memory", "off",
                     "--no-progress"], module="scripts.profile_zoo")
    assert prof.returncode == 0, prof.stdout[-3000:] + prof.stderr[-3000:]
    assert "predictions on 2 ranks" in prof.stdout and "reused 6 model/split" in prof.stdout
    tables = load_tables(run, ("val", "test"))
    models = {m: load_model(run / "zoo" / m / "checkpoint.pt")[0] for m in cards}
    for split in ("val", "test"):
        t = tables[split]
        ref = build_table(models, bundle.split(split), bundle.info, split, order=t.model_names)
        assert (t.preds == ref.preds).all() and (t.sample_ids == ref.sample_ids).all()
        assert abs(t.probs.astype(float) - ref.probs.astype(float)).max() < 2e-3


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="the NCCL path needs 2 CUDA GPUs")
def test_torchrun_on_two_gpus_with_nccl(tmp_path, fake_fmnist_dir):
    run = tmp_path / "run"
    done = torchrun(["--run", str(run), "--preset", "smoke", "--models", "tiny_vgg1",
                     "tiny_vgg2", "--data-dir", str(fake_fmnist_dir), "--no-download",
                     "--no-progress", "--device", "cuda", "--ddp-models", "tiny_vgg2"])
    assert done.returncode == 0, done.stderr[-3000:]
    card = json.loads((run / "zoo" / "tiny_vgg2" / "card.json").read_text())
    assert card["parallel"]["backend"] == "nccl" and card["world_size"] == 2


@pytest.mark.slow
def test_run_all_under_torchrun_runs_each_stage_once_and_then_skips(tmp_path, fake_fmnist_dir):
    run = tmp_path / "run"
    args = ["--preset", "smoke", "--run", str(run), "--data-dir", str(fake_fmnist_dir),
            "--no-download"]
    done = torchrun(args, module="scripts.run_all", timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "on 2 ranks (gloo)" in done.stdout and (run / "reports" / "index.html").exists()
    stages = read_csv(run / "results" / "stages.csv")
    assert [r["stage"] for r in stages] == ["train-zoo", "compress", "profile-zoo",
                                            "evaluate-routers", "report"]   # rank 0 alone
    built = json.loads((run / "results" / "compression_settings.json").read_text())["parallel"]
    assert set(built["built_by_rank"].values()) == {0, 1}      # compress shared by both ranks
    again = torchrun(args, module="scripts.run_all", timeout=300)
    assert again.returncode == 0 and again.stdout.count("done already, skipped") == 5
    assert len(read_csv(run / "results" / "stages.csv")) == 5


@pytest.mark.slow
def test_torchrun_compress_builds_across_ranks_then_skips_everything(tmp_path, fake_fmnist_dir):
    from tests.test_compress import FAST, make_tiny_run
    run = make_tiny_run(tmp_path / "run", fake_fmnist_dir)
    args = ["--run", str(run), "--base", "tiny_vgg3", "--variants", *COMPRESS_VARIANTS, *FAST]
    done = torchrun(args, module="scripts.compress", timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    for v in COMPRESS_VARIANTS:
        assert done.stdout.count(f"compress: building tiny_vgg3-{v}\n") == 1, done.stdout
    assert "measured by rank 0 alone, in one process" in done.stdout
    assert list(compress_rows(run)) == ["tiny_vgg3", *COMPRESS_VARIANTS]
    again = torchrun(args, module="scripts.compress", timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "building" not in again.stdout and again.stdout.count("done already") == 4
    assert list(compress_rows(run)) == ["tiny_vgg3", *COMPRESS_VARIANTS]
