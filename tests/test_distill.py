"""Knowledge distillation from zoo members (zoo.distill, TrainConfig.distill, train-zoo)."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from test_train import TINY as TRAIN_TINY, _arch, bundle  # noqa: F401  (bundle: a fixture)
from zoo.checkpoint import load_model
from zoo.data import ImageSet, normalize
from zoo.distill import distillation_loss, teacher_log_probs
from zoo.registry import build_arch
from zoo.train import TrainConfig, fit
from zoo.train_zoo import train_zoo_model

TINY = {**TRAIN_TINY, "epochs": 1}


def test_distillation_loss_against_hand_worked_values():
    student = torch.zeros(1, 2)                        # uniform student
    teacher = torch.tensor([[0.75, 0.25]]).log()
    # T = 1: KL(p || u) = 0.75 ln(0.75 / 0.5) + 0.25 ln(0.25 / 0.5)
    assert float(distillation_loss(student, teacher, 1.0)) == pytest.approx(
        0.75 * math.log(1.5) + 0.25 * math.log(0.5), abs=1e-6)
    # T = 2: the teacher softens to sqrt(p) normalised (0.633975, 0.366025); times T^2 = 4
    q = (0.866025 / 1.366025, 0.5 / 1.366025)
    expected = 4 * (q[0] * math.log(q[0] / 0.5) + q[1] * math.log(q[1] / 0.5))
    assert float(distillation_loss(student, teacher, 2.0)) == pytest.approx(expected, abs=1e-5)
    # a student that already says what the teacher says loses nothing
    assert float(distillation_loss(teacher.clone(), teacher, 3.0)) == pytest.approx(0, abs=1e-6)


def test_teacher_log_probs_is_the_log_of_the_members_mean_softmax(bundle):
    info = bundle.info
    torch.manual_seed(0)
    a, b = build_arch(_arch(bundle)).eval(), build_arch(_arch(bundle, "tiny_vgg2")).eval()
    got = teacher_log_probs([a, b], bundle.train, info, batch_size=40, progress=False)
    x = normalize(bundle.train.images, info)
    with torch.no_grad():
        mean = (F.softmax(a(x), 1) + F.softmax(b(x), 1)) / 2
    assert got.shape == (len(bundle.train), info.num_classes)
    assert torch.allclose(got.exp(), mean, atol=1e-6)


def test_with_weight_one_only_the_teacher_teaches(bundle):
    """distill = 1: the labels are not read, so training on shuffled labels gives the same
    weights; with weight 0.5 they are, and the weights differ."""
    info = bundle.info
    teacher = torch.randn(len(bundle.train), info.num_classes).log_softmax(1)
    shuffled = ImageSet(bundle.train.images, bundle.train.labels.roll(1))

    def train(images: ImageSet, weight: float) -> dict[str, torch.Tensor]:
        torch.manual_seed(0)
        model = build_arch(_arch(bundle))
        cfg = TrainConfig(**TINY, distill=weight, teachers=["t"])
        fit(model, images, bundle.val, info, cfg, progress=False, teacher_log_probs=teacher)
        return model.state_dict()

    same_a, same_b = train(bundle.train, 1.0), train(shuffled, 1.0)
    assert all(torch.allclose(same_a[k], same_b[k]) for k in same_a)
    half_a, half_b = train(bundle.train, 0.5), train(shuffled, 0.5)
    assert not all(torch.allclose(half_a[k], half_b[k]) for k in half_a)


def test_distillation_settings_are_checked_with_the_fix(bundle):
    with pytest.raises(ValueError, match="teachers and a weight > 0 together"):
        TrainConfig(**TINY, distill=0.5)
    with pytest.raises(ValueError, match="distill=1.5"):
        TrainConfig(**TINY, distill=1.5, teachers=["t"])
    with pytest.raises(ValueError, match="distill_temperature"):
        TrainConfig(**TINY, distill=0.5, teachers=["t"], distill_temperature=0)
    model, info = build_arch(_arch(bundle)), bundle.info
    with pytest.raises(ValueError, match="needs teacher_log_probs"):
        fit(model, bundle.train, bundle.val, info, TrainConfig(**TINY, distill=0.5,
                                                                teachers=["t"]), progress=False)
    with pytest.raises(ValueError, match="same training images"):
        fit(model, bundle.train, bundle.val, info,
            TrainConfig(**TINY, distill=0.5, teachers=["t"]), progress=False,
            teacher_log_probs=torch.zeros(3, info.num_classes))
    with pytest.raises(ValueError, match="config.distill is 0"):
        fit(model, bundle.train, bundle.val, info, TrainConfig(**TINY), progress=False,
            teacher_log_probs=torch.zeros(len(bundle.train), info.num_classes))


def test_train_zoo_distils_from_finished_members_and_records_them(tmp_path, bundle):
    student = TrainConfig(**TINY, distill=0.5, teachers=["tiny_vgg1"])
    run = tmp_path / "zoo_run"
    with pytest.raises(ValueError, match="tiny_vgg1, not trained in .*train it first"):
        train_zoo_model(run, "tiny_vgg2", _arch(bundle, "tiny_vgg2"), bundle, student,
                        command="t", progress=False, log_epochs=False)
    train_zoo_model(run, "tiny_vgg1", _arch(bundle), bundle, TrainConfig(**TINY),
                    command="t", progress=False, log_epochs=False)
    res = train_zoo_model(run, "tiny_vgg2", _arch(bundle, "tiny_vgg2"), bundle, student,
                          command="t", progress=False, log_epochs=False)
    assert res.status == "trained"
    assert res.card["train_config"]["teachers"] == ["tiny_vgg1"]
    assert res.card["train_config"]["distill"] == 0.5
    _, ckpt = load_model(run / "zoo" / "tiny_vgg2" / "checkpoint.pt")
    assert ckpt["train_config"]["teachers"] == ["tiny_vgg1"]
    # what it distilled from is part of what was trained: another weight is another model
    with pytest.raises(ValueError, match="train_config.distill"):
        train_zoo_model(run, "tiny_vgg2", _arch(bundle, "tiny_vgg2"), bundle,
                        TrainConfig(**TINY, distill=0.3, teachers=["tiny_vgg1"]),
                        command="t", progress=False, log_epochs=False)
    # and the plain model, trained without a teacher, is still the same model to older cards
    again = train_zoo_model(run, "tiny_vgg1", _arch(bundle), bundle, TrainConfig(**TINY),
                            command="t", progress=False, log_epochs=False)
    assert again.status == "skipped"


def test_train_zoo_command_distils_every_model_but_the_teachers(tmp_path, fake_fmnist_dir,
                                                                 capsys):
    from common.io import read_json
    from scripts.train_zoo import main as train_zoo_main
    run = tmp_path / "run"
    argv = ["--run", str(run), "--preset", "smoke", "--data-dir", str(fake_fmnist_dir),
            "--no-download", "--no-progress", "--threads", "1"]
    assert train_zoo_main([*argv, "--distill", "0.5"]) == 2
    assert "need --teachers" in capsys.readouterr().err
    assert train_zoo_main([*argv, "--models", "tiny_vgg1", "tiny_vgg2", "--teachers",
                           "tiny_vgg1", "--distill", "0.7", "--distill-temperature", "3"]) == 0
    plain = read_json(run / "zoo" / "tiny_vgg1" / "card.json")["train_config"]
    student = read_json(run / "zoo" / "tiny_vgg2" / "card.json")["train_config"]
    assert plain["teachers"] == [] and plain["distill"] == 0
    assert student["teachers"] == ["tiny_vgg1"] and student["distill"] == 0.7
    assert student["distill_temperature"] == 3
