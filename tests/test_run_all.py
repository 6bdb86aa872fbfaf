"""run-all end to end on the `smoke` preset: synthetic Fashion-MNIST files, three narrow tiny
VGGs, one compressed variant pair, every stage for real.

One run directory goes through three calls: cut short after profile-zoo (as if interrupted
between stages), completed by a second call that only runs what is missing, and a third call
that does no work at all.
"""
from __future__ import annotations

import json
import os

import pytest

from common.io import read_csv
from scripts.run_all import main
from tests.conftest import make_fake_idx_dataset


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("run-all")
    data = make_fake_idx_dataset(root / "data", n_train=500, n_test=150)
    run = root / "run"
    common = ["--preset", "smoke", "--run", str(run), "--dataset", "fashion-mnist",
              "--data-dir", str(data), "--no-download"]
    return run, common


def test_run_all_interrupted_then_completed_then_idle(smoke_run, capsys):
    run, common = smoke_run
    # 1. cut short between stages: only the first three ran
    assert main(common + ["--stages", "train-zoo", "compress", "profile-zoo"]) == 0
    assert (run / "tables" / "test.npz").exists()
    assert not (run / "results" / "routers.csv").exists()
    first = capsys.readouterr().out
    assert "[3/5] profile-zoo: finished" in first
    stamps = {p.stem: p.stat().st_mtime_ns for p in (run / "stages").glob("*.json")}
    assert set(stamps) == {"train-zoo", "compress", "profile-zoo"}

    # 2. the same command completes the run, redoing none of the finished stages
    assert main(common) == 0
    second = capsys.readouterr().out
    for stage in ("train-zoo", "compress", "profile-zoo"):
        assert f"{stage}: done already, skipped" in second
        assert (run / "stages" / f"{stage}.json").stat().st_mtime_ns == stamps[stage]
    assert "[4/5] evaluate-routers: finished" in second
    assert "[5/5] report: finished" in second

    # every stage's product is there, and the zoo holds the models and the variants
    zoo = sorted(p.name for p in (run / "zoo").iterdir() if (p / "card.json").exists())
    assert zoo == ["tiny_vgg1", "tiny_vgg2", "tiny_vgg3", "tiny_vgg3-int8-dynamic",
                   "tiny_vgg3-res-20"]
    costs = json.loads((run / "costs.json").read_text())
    assert set(zoo) <= set(json.dumps(costs).replace('"', " ").split())
    rows = read_csv(run / "results" / "routers.csv")
    assert {r["family"] for r in rows} >= {"best-single", "dispatcher", "cascade", "ceiling"}
    assert {float(r["sacrifice"]) for r in rows} == {0.0, 0.05}
    assert (run / "results" / "compression.csv").exists()
    index = run / "reports" / "index.html"
    assert index.exists()
    # both zoos: the smoke zoo holds compressed variants, so the base zoo is fitted too
    assert {r["zoo"] for r in rows} == {"all", "base"}
    # the summary names the best single model and the answer selected on val per level and
    # zoo, and the page
    assert "[all: whole zoo] best single model" in second
    assert "[base: uncompressed models only] best single model" in second
    assert "sacrifice 0.0%: selected on val" in second
    assert "sacrifice 5.0%: selected on val" in second  # the run's own levels
    assert "no selected row" not in second
    # every stage that ran is in stages.csv, with its wall clock
    stages = read_csv(run / "results" / "stages.csv")
    assert [r["stage"] for r in stages] == ["train-zoo", "compress", "profile-zoo",
                                            "evaluate-routers", "report"]
    assert all(float(r["seconds"]) >= 0 and r["started"] <= r["finished"] for r in stages)
    assert f"report: {index.resolve()}" in second

    # 3. a third call does no work
    before = {p: p.stat().st_mtime_ns for p in run.rglob("*") if p.is_file()}
    assert main(common) == 0
    third = capsys.readouterr().out
    assert third.count("done already, skipped") == 5
    after = {p: p.stat().st_mtime_ns for p in run.rglob("*") if p.is_file()}
    assert after == before


def test_run_all_names_missing_data_clearly(tmp_path, capsys):
    empty = tmp_path / "nothing"
    empty.mkdir()
    with pytest.raises(RuntimeError, match="stage train-zoo failed"):
        main(["--preset", "smoke", "--run", str(tmp_path / "run"), "--data-dir", str(empty),
              "--no-download"])  # an explicit --data-dir is not silently replaced
    err = capsys.readouterr().err
    assert str(empty) in err and "fashion-mnist" in err.lower()
    assert not os.path.exists(tmp_path / "run" / "stages" / "train-zoo.json")


def test_run_all_hands_val_fraction_to_train_zoo_only_when_given(monkeypatch, tmp_path, capsys):
    """--val-fraction reaches train-zoo (the stage that fixes the run's data settings) with the
    other data arguments; without it nothing is added, so a run keeps its own; a share outside
    (0, 0.5] is refused before any stage runs."""
    import scripts.run_all as run_all
    seen = []
    monkeypatch.setattr(run_all, "run_pipeline",
                        lambda run, preset, data_args, *a, **k: seen.append(data_args))
    base = ["--preset", "smoke", "--run", str(tmp_path / "run")]
    assert main(base + ["--val-fraction", "0.2"]) in (0, None)
    assert main(base) in (0, None)
    assert seen[0][-2:] == ["--val-fraction", "0.2"]
    assert "--val-fraction" not in seen[1]
    capsys.readouterr()
    assert main(base + ["--val-fraction", "0.9"]) == 2 and len(seen) == 2
    assert "(0, 0.5]" in capsys.readouterr().err
    # standard-committee holds out 30 % unless told otherwise
    committee = ["--preset", "standard-committee", "--run", str(tmp_path / "c")]
    assert main(committee) in (0, None)
    assert main(committee + ["--val-fraction", "0.1"]) in (0, None)
    assert seen[2][-2:] == ["--val-fraction", "0.3"] and seen[3][-2:] == ["--val-fraction", "0.1"]
    # --seed reaches train-zoo too (a replicate on another split); nothing without it
    assert main(base + ["--seed", "3"]) in (0, None)
    assert seen[4][-2:] == ["--seed", "3"] and "--seed" not in seen[1]
