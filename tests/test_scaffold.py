"""Checks of the scaffold: synthetic IDX round trip, splits, tables, checkpoints."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import zoo
from common.tables import PredictionTable
from zoo.checkpoint import load_model, save_checkpoint
from zoo.data import DataError, prepare_data, read_idx


def test_idx_round_trip_and_splits(fake_fmnist_dir, tmp_path):
    images = read_idx(fake_fmnist_dir / "train-images-idx3-ubyte.gz")
    assert images.shape == (400, 28, 28)
    b = prepare_data(tmp_path, data_dir=fake_fmnist_dir, download=False, seed=3)
    assert len(b.train) + len(b.val) == 400 and len(b.val) == 40 and len(b.test) == 100
    assert not set(b.splits.train) & set(b.splits.val)
    again = prepare_data(tmp_path, data_dir=fake_fmnist_dir, download=False, seed=3)
    assert again.splits.fingerprint == b.splits.fingerprint
    limited = prepare_data(tmp_path, data_dir=fake_fmnist_dir, download=False, seed=3,
                           limit_train=50, limit_eval=20)
    assert (limited.splits.train == b.splits.train[:50]).all() and len(limited.test) == 20


def test_missing_data_names_path(tmp_path):
    with pytest.raises(DataError, match=str(tmp_path)):
        prepare_data(tmp_path / "run", dataset="mnist", data_dir=tmp_path, download=False)


def test_truncated_idx_is_refused(fake_fmnist_dir, tmp_path):
    import gzip
    raw = gzip.open(fake_fmnist_dir / "t10k-labels-idx1-ubyte.gz").read()
    bad = tmp_path / "t10k-labels-idx1-ubyte.gz"
    with gzip.open(bad, "wb") as f:
        f.write(raw[:-5])
    with pytest.raises(DataError, match="truncated"):
        read_idx(bad)


def test_prediction_table_round_trip(tmp_path):
    labels = np.array([0, 1, 1])
    preds = np.array([[0, 0], [1, 0], [0, 1]])
    probs = np.zeros((3, 2, 2), dtype=np.float16)
    t = PredictionTable(["a", "b"], labels, preds, probs, np.arange(3), "val", {"dataset": "x"})
    t.save(tmp_path)
    u = PredictionTable.load(tmp_path, "val")
    assert u.model_names == ["a", "b"] and (u.preds == preds).all()
    assert u.correct.tolist() == [[True, True], [True, False], [False, True]]
    assert u.meta["dataset"] == "x"


def test_checkpoint_round_trip(tmp_path):
    m = zoo.create_model("tiny_vgg2", num_classes=10, in_channels=1, input_size=28)
    save_checkpoint(tmp_path / "c.pt", model_name="tiny_vgg2", arch=m.arch.to_dict(),
                    state_dict=m.state_dict())
    m2, ckpt = load_model(tmp_path / "c.pt")
    x = torch.randn(2, 1, 28, 28)
    assert torch.equal(m.eval()(x), m2(x)) and ckpt["model_name"] == "tiny_vgg2"
