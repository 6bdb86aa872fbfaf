"""add-model: a torchvision classifier with its own preprocessing joins a run and goes through
profile-zoo and evaluate-routers like any other member."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from common.tables import PredictionTable
from scripts.add_model import main as add_main
from scripts.evaluate_routers import main as eval_main
from tests.conftest import make_fake_idx_dataset
from tests.router_run import make_router_run
from zoo.checkpoint import load_model, preprocess_of
from zoo.data import prepare_data
from zoo.preprocess import Preprocess
from zoo.profile import ProfileConfig, profile_run
from zoo.costs import CostSettings
from zoo.rundir import RunDir
from zoo.torchvision_models import build_torchvision

FAST = ProfileConfig(progress=False, batch_size=128,
                     costs=CostSettings(threads=1, budget_s=0.2, memory="off",
                                        min_latency_runs=2, min_throughput_repeats=1))


@pytest.fixture(scope="module")
def run_with_resnet(tmp_path_factory):
    root = tmp_path_factory.mktemp("add-model")
    data = make_fake_idx_dataset(root / "data", n_train=600, n_test=120)
    run = make_router_run(root / "run", data, {"tiny_vgg1": 1, "tiny_vgg2": 2})
    torch.manual_seed(0)
    weights = root / "resnet18.pt"
    torch.save(build_torchvision("resnet18", 10).state_dict(), weights)
    assert add_main(["--run", str(run), "--arch", "resnet18", "--weights", str(weights),
                     "--preprocess", "imagenet", "--resize", "36", "--crop", "32"]) == 0
    profile_run(run, FAST)
    return run, weights


def test_added_member_keeps_its_preprocessing_through_profile(run_with_resnet):
    run, _ = run_with_resnet
    rd = RunDir(run)
    model, ckpt = load_model(rd.checkpoint("resnet18"))
    pre = preprocess_of(ckpt)
    assert isinstance(pre, Preprocess) and (pre.resize, pre.crop, pre.channels) == (36, 32, 3)
    card = json.loads(rd.card("resnet18").read_text())
    assert card["parent"] is None and card["variant"] == "added"
    val = PredictionTable.load(rd.tables, "val")
    assert "resnet18" in val.model_names
    bundle = prepare_data(run, **rd.load_config().data_kwargs())
    ids = {int(i): k for k, i in enumerate(bundle.val.ids)}
    x = bundle.val.images[[ids[int(i)] for i in val.sample_ids]]
    with torch.inference_mode():
        direct = model(pre(x)).argmax(1).numpy()               # grey -> 3 channels, 36 -> 32
    assert np.array_equal(val.preds[:, val.model_names.index("resnet18")], direct)
    assert card["val_accuracy"] == pytest.approx(float((direct == val.labels).mean()))


def test_added_member_is_routed_by_evaluate_routers(run_with_resnet):
    run, _ = run_with_resnet
    assert eval_main(["--run", str(run), "--sacrifices", "0", "--threads", "1", "--repeats", "1",
                      "--dispatcher-epochs", "1", "--timing-samples", "0", "--no-progress"]) == 0
    rows = (RunDir(run).results / "routers.csv").read_text()
    assert "single:resnet18" in rows and "share_resnet18" in rows


def test_add_model_errors_name_the_fix(run_with_resnet, tmp_path):
    run, weights = run_with_resnet
    with pytest.raises(FileExistsError, match="--force"):
        add_main(["--run", str(run), "--arch", "resnet18", "--weights", str(weights)])
    wrong = tmp_path / "r18-1000.pt"
    torch.save(build_torchvision("resnet18", 1000).state_dict(), wrong)
    with pytest.raises(ValueError, match="fine-tune the model to this run's 10 classes"):
        add_main(["--run", str(run), "--arch", "resnet18", "--weights", str(wrong),
                  "--name", "r18-wrong"])
    with pytest.raises(FileNotFoundError, match="not a run directory"):
        add_main(["--run", str(tmp_path / "nowhere"), "--arch", "resnet18"])
    with pytest.raises(ValueError, match="kept for committees"):
        add_main(["--run", str(run), "--arch", "resnet18", "--weights", str(weights),
                  "--name", "committee-mine"])


def test_the_page_runs_an_added_member_through_its_own_preprocessing(run_with_resnet):
    from router.web.service import TimingConfig, WebService
    run, _ = run_with_resnet
    service = WebService.load(run, TimingConfig(threads=1, repeats=1), load_samples=False,
                              load_routers=False)
    rd = RunDir(run)
    bundle = prepare_data(run, **rd.load_config().data_kwargs())
    x = bundle.test.images[:3]
    cards = service.predict_batch([{m.name: img for m in service.models} for img in x],
                                  [None] * 3)
    model, ckpt = load_model(rd.checkpoint("resnet18"))
    with torch.inference_mode():
        direct = model(preprocess_of(ckpt)(x)).argmax(1).tolist()
    assert [next(c.pred for c in cs if c.name == "resnet18") for cs in cards] == direct
