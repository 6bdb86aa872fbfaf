"""zoo.profile and profile-zoo: tables from controlled models, caching, refusal of stale tables."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from common.tables import CostTable, PredictionTable, TableMismatchError
from scripts.profile_zoo import main
from zoo.checkpoint import file_sha256, load_model, save_checkpoint
from zoo.costs import CostSettings
from zoo.data import DatasetInfo, ImageSet, prepare_data
from zoo.profile import (ProfileConfig, build_table, load_tables, predict_model, profile_run,
                         topk_accuracy)
from zoo.rundir import RunConfig, RunDir
from tests.router_run import add_model as add_trained_model

FAST = ["--threads", "1", "--budget-s", "0.2", "--no-progress"]


# ---- a tiny fake model whose predictions are known -----------------------------------------

class FirstRowLogits(nn.Module):
    """logits = (first three pixels of row 0) * 255 / 50, optionally reversed."""

    def __init__(self, reverse: bool = False):
        super().__init__()
        self.reverse = reverse

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = x[:, 0, 0, :3] * 255 / 50
        return z.flip(1) if self.reverse else z


def test_table_from_controlled_models_equals_hand_values():
    info = DatasetInfo("toy", 3, 1, 4, ["a", "b", "c"], mean=[0.0], std=[1.0])
    images = torch.zeros(3, 1, 4, 4, dtype=torch.uint8)
    images[0, 0, 0, :3] = torch.tensor([100, 0, 0])    # logits [2, 0, 0]
    images[1, 0, 0, :3] = torch.tensor([0, 150, 50])   # logits [0, 3, 1]
    images[2, 0, 0, :3] = torch.tensor([0, 0, 0])      # logits [0, 0, 0]: argmax ties -> 0
    data = ImageSet(images, torch.tensor([0, 2, 0]), torch.tensor([10, 11, 12]))
    models = {"fwd": FirstRowLogits(), "rev": FirstRowLogits(reverse=True)}
    t = build_table(models, data, info, "val", order=["rev", "fwd"], meta={"dataset": "toy"})
    assert t.model_names == ["rev", "fwd"]
    # fwd: [2,0,0] -> 0, [0,3,1] -> 1, ties -> 0; rev: [0,0,2] -> 2, [1,3,0] -> 1, ties -> 0
    assert t.preds.tolist() == [[2, 0], [1, 1], [0, 0]]
    assert t.labels.tolist() == [0, 2, 0] and t.sample_ids.tolist() == [10, 11, 12]
    assert t.correct.tolist() == [[False, True], [False, False], [True, True]]
    e2, e3 = np.exp(2), np.exp(3)
    fwd = np.array([[e2, 1, 1] / (e2 + 2), [1, e3, np.e] / (1 + e3 + np.e), [1 / 3] * 3])
    assert t.probs.dtype == np.float16
    np.testing.assert_allclose(t.probs[:, 1].astype(np.float64), fwd, atol=1e-3)
    np.testing.assert_allclose(t.probs[:, 0].astype(np.float64), fwd[:, ::-1], atol=1e-3)
    # top-2 of fwd on sample 1 is {1, 2} (label 2 inside); sample 0 label 0 is top-1
    assert topk_accuracy(t, 2)[1] == pytest.approx(1.0)


def test_prediction_table_round_trip_keeps_arrays_and_meta(tmp_path):
    rng = np.random.default_rng(0)
    probs = rng.random((5, 2, 4)).astype(np.float16)
    t = PredictionTable(["a", "b"], rng.integers(0, 4, 5), probs.argmax(2), probs,
                        np.arange(5) * 7, "test",
                        {"dataset": "toy", "checkpoint_hashes": {"a": "1", "b": "2"}})
    t.save(tmp_path)
    with np.load(tmp_path / "test.npz") as z:
        assert sorted(z.files) == sorted(["model_names", "labels", "preds", "probs",
                                          "sample_ids"])
    u = PredictionTable.load(tmp_path, "test")
    assert u.model_names == t.model_names and u.split == "test"
    for k in ("labels", "preds", "probs", "sample_ids"):
        assert np.array_equal(getattr(u, k), getattr(t, k))
    assert u.meta["checkpoint_hashes"] == {"a": "1", "b": "2"}


# ---- a tiny run made here (no train-zoo) ---------------------------------------------------

def add_model(run: Path, name: str, bundle, seed: int) -> None:
    """Save an untrained width-0.25 VGG with a card carrying the shared card fields."""
    add_trained_model(run, name, bundle, steps=0, seed=seed)


@pytest.fixture(scope="module")
def profiled_run(tmp_path_factory, fake_fmnist_dir):
    """A run with tiny_vgg1 and tiny_vgg2 (width 0.25), profiled once through main([...])."""
    run = tmp_path_factory.mktemp("run")
    cfg = RunConfig(data_dir=str(fake_fmnist_dir), download=False, limit_eval=30)
    RunDir(run).save_config(cfg)
    bundle = prepare_data(run, **cfg.data_kwargs())
    for i, name in enumerate(["tiny_vgg1", "tiny_vgg2"]):
        add_model(run, name, bundle, seed=i)
    assert main(["--run", str(run), "--batch", "64", *FAST]) == 0
    return run


def _copy(run: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "run"
    shutil.copytree(run, dst)
    return dst


def test_profile_zoo_end_to_end(profiled_run, fake_fmnist_dir, capsys):
    rd = RunDir(profiled_run)
    costs = CostTable.load(rd.costs)
    assert set(costs.models) == {"tiny_vgg1", "tiny_vgg2"}
    assert costs.machine["threads"] == 1 and costs.machine["torch"] == torch.__version__
    tables = load_tables(profiled_run, ["val", "test"])
    val, test = tables["val"], tables["test"]
    # models sorted by measured ms per image at the big batch
    assert val.model_names == costs.sorted_names() == test.model_names
    bundle = prepare_data(profiled_run, **rd.load_config().data_kwargs())
    assert len(test.labels) == 30 and len(val.labels) == 30  # limit_eval
    assert np.array_equal(test.sample_ids, bundle.test.ids.numpy())
    assert np.array_equal(val.labels, bundle.val.labels.numpy())
    # the table holds exactly what the checkpoint predicts
    for i, name in enumerate(test.model_names):
        model, _ = load_model(rd.checkpoint(name))
        preds, probs = predict_model(model, bundle.test, bundle.info)
        assert np.array_equal(test.preds[:, i], preds)
        assert np.array_equal(test.probs[:, i], probs)
        assert test.meta["checkpoint_hashes"][name] == file_sha256(rd.checkpoint(name))
    assert test.meta["split_fingerprint"] == bundle.splits.fingerprint
    np.testing.assert_allclose(test.probs.astype(np.float32).sum(2), 1.0, atol=1e-2)

    # second call: nothing measured, nothing predicted, files untouched
    stamps = {p: p.stat().st_mtime_ns for p in [rd.costs, *rd.tables.glob("*.npz")]}
    capsys.readouterr()
    assert main(["--run", str(profiled_run), "--batch", "64", *FAST]) == 0
    out = capsys.readouterr().out
    assert "measured 0, reused 2 costs; predicted 0, reused 4" in out
    assert "tiny_vgg1" in out and "img/s@b256" in out
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps


def test_new_variant_only_profiles_the_new_model(profiled_run, fake_fmnist_dir, tmp_path):
    run = _copy(profiled_run, tmp_path)
    rd = RunDir(run)
    bundle = prepare_data(run, **rd.load_config().data_kwargs())
    add_model(run, "tiny_vgg3", bundle, seed=5)
    with pytest.raises(TableMismatchError, match="tiny_vgg3"):
        load_tables(run)  # the whole-zoo table now lacks a finished model
    config = ProfileConfig(batch_size=64, progress=False,
                           costs=CostSettings(threads=1, throughput_batch=64, budget_s=0.2,
                                              memory="off"))
    res = profile_run(run, config)
    assert res.measured == ["tiny_vgg3"]
    assert sorted(res.predicted) == ["tiny_vgg3/test", "tiny_vgg3/val"]
    assert set(load_tables(run)["val"].model_names) == {"tiny_vgg1", "tiny_vgg2", "tiny_vgg3"}


def test_changed_checkpoint_is_refused_with_the_model_name(profiled_run, tmp_path):
    run = _copy(profiled_run, tmp_path)
    rd = RunDir(run)
    model, ckpt = load_model(rd.checkpoint("tiny_vgg2"))
    with torch.no_grad():
        next(model.parameters()).add_(1.0)
    save_checkpoint(rd.checkpoint("tiny_vgg2"), model_name="tiny_vgg2", arch=ckpt["arch"],
                    state_dict=model.state_dict(), data=ckpt["data"])
    with pytest.raises(TableMismatchError, match="checkpoint of model 'tiny_vgg2' changed"):
        load_tables(run, ["val"])
    shutil.rmtree(rd.model_dir("tiny_vgg1"))
    with pytest.raises(TableMismatchError, match="'tiny_vgg1', which is no longer"):
        load_tables(run, ["test"])


def test_changed_split_is_refused_with_the_fingerprint(profiled_run, tmp_path):
    run = _copy(profiled_run, tmp_path)
    rd = RunDir(run)
    cfg = rd.load_config()
    cfg.limit_eval = 20
    rd.save_config(cfg)
    with pytest.raises(TableMismatchError, match="split fingerprint"):
        load_tables(run, ["val", "test"])


def test_bad_requests_name_the_problem(profiled_run, tmp_path):
    with pytest.raises(ValueError, match="not finished"):
        main(["--run", str(profiled_run), "--models", "vgg19", *FAST])
    with pytest.raises(ValueError, match="unknown split"):
        ProfileConfig(splits=("holdout",))
    empty = tmp_path / "empty"
    RunDir(empty).save_config(RunConfig())
    with pytest.raises(FileNotFoundError, match="no finished models"):
        main(["--run", str(empty), *FAST])
