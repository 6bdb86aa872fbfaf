"""Committees (zoo.committee): k same-architecture models as one vmapped module answering with
their mean probability; a zoo member like any other (checkpoint, card, tables); train-zoo's
--seeds / --committees; scripts/bench_committee.py."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from common.io import read_csv
from common.tables import PredictionTable
from scripts.bench_committee import main as bench_main
from scripts.train_zoo import main as train_zoo_main
from zoo.arch_kinds import build_from_arch
from zoo.checkpoint import load_model, save_checkpoint
from zoo.committee import (Committee, committee_arch, committee_member_names, committee_name,
                           parse_committee, registry_name, seed_model_name)
from zoo.costs import CostSettings, count_macs, count_params, macs_model
from zoo.profile import ProfileConfig, load_tables, profile_run
from zoo.registry import build_arch, model_arch
from zoo.rundir import RunDir, check_model_name


def _members(k: int = 3, name: str = "tiny_vgg2", width: float = 0.25):
    """k tiny VGGs with BatchNorm, different weights and non-trivial running statistics."""
    arch = model_arch(name, num_classes=10, in_channels=1, input_size=28, width=width)
    arch.batch_norm = True
    members = []
    for s in range(k):
        torch.manual_seed(s)
        m = build_arch(arch)
        for mod in m.modules():
            if isinstance(mod, torch.nn.BatchNorm2d):
                mod.running_mean.normal_()
                mod.running_var.uniform_(0.5, 2.0)
                mod.weight.data.normal_(1.0, 0.2)
        members.append(m.eval())
    return arch, members


@torch.inference_mode()
def _mean_softmax(members, x):
    return torch.stack([m(x).softmax(dim=1) for m in members]).mean(dim=0)


@pytest.mark.parametrize("mode", ["vmap", "loop"])
def test_committee_equals_members_one_by_one(mode):
    _, members = _members()
    committee = Committee(members, mode=mode).eval()
    x = torch.randn(16, 1, 28, 28)
    with torch.inference_mode():
        out = committee(x)
    assert out.shape == (16, 10)
    torch.testing.assert_close(out.softmax(dim=1), _mean_softmax(members, x), atol=1e-5,
                               rtol=0)
    torch.testing.assert_close(out.exp().sum(dim=1), torch.ones(16))  # log of a probability
    assert committee.mode == mode                                      # vmap did not fall back
    # BN statistics are stacked too: in train mode the committee still answers as in eval
    committee.train()
    with torch.inference_mode():
        torch.testing.assert_close(committee(x), out)


def test_loop_members_follow_new_weights_and_a_move():
    """The loop runs member modules whose tensors are views of the stacked ones: weights loaded
    afterwards (copied in place) are what it runs, and a move to another dtype rebuilds them."""
    _, first = _members()
    committee = Committee(first).eval()
    x = torch.randn(8, 1, 28, 28)
    with torch.inference_mode():
        committee(x)                                     # builds the members
    others = []
    for s in range(3):                                   # other weights, same architecture
        torch.manual_seed(100 + s)
        others.append(build_arch(first[0].arch).eval())
    committee.load_state_dict(Committee(others).state_dict())
    with torch.inference_mode():
        torch.testing.assert_close(committee(x).softmax(dim=1), _mean_softmax(others, x),
                                   atol=1e-5, rtol=0)
        wide = committee.to(torch.float64)(x.double())
    members = committee._loop_cache[1]                  # rebuilt on the moved tensors
    assert {t.dtype for m in members for t in m.state_dict().values()
            if t.is_floating_point()} == {torch.float64}
    torch.testing.assert_close(wide.softmax(dim=1), _mean_softmax(others, x),
                               atol=1e-5, rtol=0)


def test_committee_refuses_members_of_different_architectures():
    _, a = _members(1, "tiny_vgg1")
    _, b = _members(1, "tiny_vgg2")
    with pytest.raises(ValueError, match="one architecture"):
        Committee([a[0], b[0]])


def test_checkpoint_round_trip_through_the_zoo_loader(tmp_path):
    arch, members = _members()
    committee = Committee(members)
    x = torch.randn(8, 1, 28, 28)
    with torch.inference_mode():
        expected = committee(x)
    names = ["tiny_vgg2", "tiny_vgg2@s1", "tiny_vgg2@s2"]
    carch = committee_arch(arch.to_dict(), names)
    assert carch["kind"] == "committee" and carch["k"] == 3 and carch["members"] == names
    path = save_checkpoint(tmp_path / "committee-tiny_vgg2x3" / "checkpoint.pt",
                           model_name="committee-tiny_vgg2x3", arch=carch,
                           state_dict=committee.state_dict())
    loaded, ckpt = load_model(path)                       # torch.load(weights_only=True)
    assert isinstance(loaded, Committee) and loaded.k == 3
    assert ckpt["state_dict"]["stacked.features.0.weight"].shape[0] == 3
    with torch.inference_mode():
        torch.testing.assert_close(loaded(x), expected, atol=1e-6, rtol=0)
    # costs: k times a member's MACs and parameters, counted on the committee itself
    module, on = macs_model(carch)
    assert on == "model"
    assert count_macs(module, (1, 1, 28, 28)) == 3 * count_macs(members[0], (1, 1, 28, 28))
    assert count_params(loaded)[0] == 3 * count_params(members[0])[0]
    assert isinstance(build_from_arch(carch), Committee)


def test_names_and_specs():
    assert seed_model_name("tiny_vgg2", 0, 0) == "tiny_vgg2"
    assert seed_model_name("tiny_vgg2", 2, 0) == "tiny_vgg2@s2"
    assert registry_name("tiny_vgg2@s2") == "tiny_vgg2" == registry_name("tiny_vgg2")
    assert committee_name("tiny_vgg2", 3) == "committee-tiny_vgg2x3"
    assert parse_committee("tiny_vgg3:3") == ("tiny_vgg3", 3)
    for bad in ("tiny_vgg3", "tiny_vgg3:1", "tiny_vgg3:x", ":3"):
        with pytest.raises(ValueError, match="MODEL:K"):
            parse_committee(bad)
    assert committee_member_names("m", 2, [4, 7, 9]) == ["m", "m@s7"]
    with pytest.raises(ValueError, match="needs 3 seeds"):
        committee_member_names("m", 3, [0])
    assert check_model_name("tiny_vgg2@s1") == "tiny_vgg2@s1"
    for bad in ("", "..", "a/b"):
        with pytest.raises(ValueError, match="plain folder name"):
            check_model_name(bad)


def test_names_with_at_are_table_columns(tmp_path):
    names = ["tiny_vgg1", "tiny_vgg1@s1", "committee-tiny_vgg1x2"]
    n, c = 5, 10
    probs = np.full((n, len(names), c), 0.1, dtype=np.float16)
    t = PredictionTable(names, np.zeros(n, dtype=np.int64), np.zeros((n, 3), dtype=np.int64),
                        probs, np.arange(n), "val", {})
    t.save(tmp_path)
    back = PredictionTable.load(tmp_path, "val")
    assert back.model_names == names and back.model_index("tiny_vgg1@s1") == 1


def test_train_zoo_seeds_and_committee_then_bench(tmp_path, fake_fmnist_dir, capsys):
    run = tmp_path / "run"
    argv = ["--run", str(run), "--preset", "smoke", "--models", "tiny_vgg1", "--seeds", "0", "1",
            "--committees", "tiny_vgg1:2", "--data-dir", str(fake_fmnist_dir), "--no-download",
            "--no-progress", "--threads", "1", "--epochs", "1", "--limit-train", "256",
            "--limit-eval", "64"]
    assert train_zoo_main(argv) == 0
    out = capsys.readouterr().out
    rd = RunDir(run)
    assert set(rd.finished_models()) == {"tiny_vgg1", "tiny_vgg1@s1", "committee-tiny_vgg1x2"}
    c0, c1 = rd.read_card("tiny_vgg1"), rd.read_card("tiny_vgg1@s1")
    assert (c0["train_config"]["seed"], c1["train_config"]["seed"]) == (0, 1)
    assert (run / "zoo" / "tiny_vgg1@s1" / "history.csv").exists()
    card = rd.read_card("committee-tiny_vgg1x2")
    assert card["parent"] is None and card["k"] == 2
    assert card["members"] == ["tiny_vgg1", "tiny_vgg1@s1"]
    assert card["member_val_accuracy"] == {"tiny_vgg1": c0["val_accuracy"],
                                           "tiny_vgg1@s1": c1["val_accuracy"]}
    assert card["arch"]["kind"] == "committee" and card["arch"]["member_arch"] == c0["arch"]
    rows = read_csv(run / "results" / "train_zoo.csv")
    assert [(r["model"], r["status"]) for r in rows] == [
        ("tiny_vgg1", "trained"), ("tiny_vgg1@s1", "trained"),
        ("committee-tiny_vgg1x2", "built")]
    assert int(rows[2]["macs"]) == 2 * int(rows[0]["macs"])
    assert "ladder" not in out          # one plain model: nothing to compare
    # the committee's checkpoint answers as its two members do
    committee, _ = load_model(rd.checkpoint("committee-tiny_vgg1x2"))
    members = [load_model(rd.checkpoint(m))[0] for m in card["members"]]
    x = torch.randn(4, 1, 28, 28)
    with torch.inference_mode():
        torch.testing.assert_close(committee(x).softmax(1), _mean_softmax(members, x),
                                   atol=1e-5, rtol=0)
    # profile-zoo: the committee is a column of the tables (its mean probability) and has a cost
    res = profile_run(run, ProfileConfig(
        batch_size=64, progress=False, costs=CostSettings(threads=1, throughput_batch=32,
                                                          budget_s=0.1, memory="off",
                                                          min_latency_runs=1,
                                                          min_throughput_repeats=1)))
    names = ["tiny_vgg1", "tiny_vgg1@s1", "committee-tiny_vgg1x2"]
    assert sorted(res.costs.models) == sorted(names)
    assert res.costs.models["committee-tiny_vgg1x2"].macs == 2 * res.costs.models["tiny_vgg1"].macs
    val = load_tables(run, ("val",))["val"]
    assert sorted(val.model_names) == sorted(names)
    probs = val.probs.astype(np.float32)
    mean = (probs[:, val.model_index("tiny_vgg1")] + probs[:, val.model_index("tiny_vgg1@s1")]) / 2
    np.testing.assert_allclose(probs[:, val.model_index("committee-tiny_vgg1x2")], mean, atol=2e-3)
    # again: everything skipped, committee included
    assert train_zoo_main(argv) == 0
    assert {r["status"] for r in read_csv(run / "results" / "train_zoo.csv")} == {"skipped"}
    capsys.readouterr()
    # the bench: committee as one module against its members one after the other
    assert bench_main(["--run", str(run), "--batch", "32", "--threads", "1", "--rounds", "1"]) == 0
    out = capsys.readouterr().out
    rows = read_csv(run / "results" / "committees.csv")
    assert [r["committee"] for r in rows] == ["committee-tiny_vgg1x2"]
    r = rows[0]
    assert int(r["k"]) == 2 and int(r["batch"]) == 32 and int(r["threads"]) == 1
    assert float(r["committee_ms_per_image"]) > 0 and float(r["members_ms_per_image"]) > 0
    assert float(r["speedup"]) == pytest.approx(float(r["members_ms_per_image"])
                                                / float(r["committee_ms_per_image"]), rel=1e-3)
    # one round: the interval is that round's ratio, and the verdict reads it
    assert float(r["speedup_lo"]) == float(r["speedup"]) == float(r["speedup_hi"])
    assert r["verdict"] == ("faster" if float(r["speedup"]) > 1 else
                            "slower" if float(r["speedup"]) < 1 else "same")
    assert "committee-tiny_vgg1x2" in out and "no 95% interval" in out


def test_bench_committee_verdict_reads_the_whole_interval():
    from scripts.bench_committee import verdict
    assert verdict(1.02, 1.10) == "faster"
    assert verdict(0.90, 0.99) == "slower"
    assert verdict(0.97, 1.03) == verdict(1.0, 1.2) == verdict(0.8, 1.0) == "same"


def test_train_zoo_refuses_bad_committee_specs(tmp_path, capsys):
    assert train_zoo_main(["--run", str(tmp_path / "r"), "--committees", "tiny_vgg1"]) == 2
    assert "MODEL:K" in capsys.readouterr().err
    assert train_zoo_main(["--run", str(tmp_path / "r"), "--committees", "nope:2"]) == 2
    assert "unknown models" in capsys.readouterr().err


def test_jobs_of_the_committee_preset_and_of_seeds():
    """standard-committee trains the six standard models with seed 0 and the two extra seeds
    of tiny_vgg5 its committee needs; --seeds trains every model once per seed."""
    from types import SimpleNamespace

    from zoo.train_zoo import ZooRunSettings, zoo_jobs
    bundle = SimpleNamespace(info=SimpleNamespace(num_classes=10, in_channels=1, input_size=28,
                                                  name="fashion-mnist"))
    jobs = zoo_jobs(bundle, ZooRunSettings(preset="standard-committee"))
    std = zoo_jobs(bundle, ZooRunSettings(preset="standard"))
    assert [j.name for j in jobs] == [j.name for j in std] + ["tiny_vgg5@s1", "tiny_vgg5@s2"]
    for a, b in zip(jobs, std):              # the standard models train exactly as in standard
        assert (a.arch, a.config) == (b.arch, b.config)
    extra = {j.name: j for j in jobs[len(std):]}
    assert extra["tiny_vgg5@s2"].config.seed == 2
    assert extra["tiny_vgg5@s2"].arch == jobs[5].arch        # same architecture as tiny_vgg5
    # and the same recipe, label smoothing included: only the seed differs
    assert extra["tiny_vgg5@s2"].config.label_smoothing == jobs[5].config.label_smoothing == 0.1
    seeded = zoo_jobs(bundle, ZooRunSettings(preset="smoke", models=["tiny_vgg1", "tiny_vgg2"],
                                             seeds=[3, 4], committees=["tiny_vgg1:3"]))
    assert [(j.name, j.config.seed) for j in seeded] == [
        ("tiny_vgg1", 3), ("tiny_vgg2", 3), ("tiny_vgg1@s4", 4), ("tiny_vgg2@s4", 4),
        ("tiny_vgg1@s5", 5)]
