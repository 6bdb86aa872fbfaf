"""zoo.train (the loop), zoo.train_zoo and train-zoo: resume after a cut, skip, cards, ladder."""
from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F

from common.io import read_csv, read_json
from scripts.train_zoo import main as train_zoo_main
from zoo.checkpoint import load_model
from zoo.data import normalize, prepare_data
from zoo.registry import model_arch
from zoo.train import TrainConfig, fit, make_optimizer
from zoo.train_zoo import ladder_violations, train_zoo_model

TINY = dict(epochs=3, batch_size=32, optimizer="adam", lr=3e-3, weight_decay=0.0,
            schedule="cosine", patience=None)


@pytest.fixture
def bundle(tmp_path, fake_fmnist_dir):
    return prepare_data(tmp_path / "run", "fashion-mnist", fake_fmnist_dir, seed=0,
                        limit_train=96, limit_eval=40, download=False)


def _arch(bundle, name="tiny_vgg1", width=0.25):
    info = bundle.info
    return model_arch(name, num_classes=info.num_classes, in_channels=info.in_channels,
                      input_size=info.input_size, width=width)


def test_one_step_lowers_the_loss_on_a_fixed_batch(bundle):
    from zoo.vgg import VGG
    torch.manual_seed(0)
    model = VGG(_arch(bundle)).eval()          # eval: no dropout noise in the comparison
    x = normalize(bundle.train.images[:32], bundle.info)
    y = bundle.train.labels[:32]
    opt = make_optimizer(model, TrainConfig(**{**TINY, "lr": 1e-3}))
    before = F.cross_entropy(model(x), y)
    before.backward()
    opt.step()
    with torch.no_grad():
        after = F.cross_entropy(model(x), y)
    assert after.item() < before.item()


def test_cut_short_run_resumes_and_equals_an_uncut_run(tmp_path, bundle):
    cfg = TrainConfig(**TINY)

    class Cut(Exception):
        pass

    def cut_after_first(epoch, row):
        if epoch == 1:
            raise Cut

    # uncut reference
    ref = train_zoo_model(tmp_path / "a", "tiny_vgg1", _arch(bundle), bundle, cfg,
                          command="test", progress=False, log_epochs=False)
    # cut after epoch 1: the state file holds epoch 1, no card yet
    with pytest.raises(Cut):
        train_zoo_model(tmp_path / "b", "tiny_vgg1", _arch(bundle), bundle, cfg, command="test",
                        progress=False, on_epoch_end=cut_after_first, log_epochs=False)
    state = tmp_path / "b" / "zoo" / "tiny_vgg1" / "train_state.pt"
    assert state.exists() and not (tmp_path / "b" / "zoo" / "tiny_vgg1" / "card.json").exists()
    resumed = train_zoo_model(tmp_path / "b", "tiny_vgg1", _arch(bundle), bundle, cfg,
                              command="test", progress=False, log_epochs=False)
    assert resumed.status == "resumed" and not state.exists()
    history = read_csv(tmp_path / "b" / "zoo" / "tiny_vgg1" / "history.csv")
    assert [int(r["epoch"]) for r in history] == [1, 2, 3]
    for key in ("train_loss", "train_accuracy", "val_loss", "val_accuracy", "lr", "seconds"):
        assert key in history[0]
    # same seed, same data order: the resumed run ends where the uncut one did
    a = load_model(tmp_path / "a" / "zoo" / "tiny_vgg1" / "checkpoint.pt")[0]
    b = load_model(tmp_path / "b" / "zoo" / "tiny_vgg1" / "checkpoint.pt")[0]
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert ka == kb and torch.allclose(va, vb, atol=1e-5), ka
    assert resumed.card["val_accuracy"] == pytest.approx(ref.card["val_accuracy"])


def test_finished_model_is_skipped_and_other_settings_refused(tmp_path, bundle):
    cfg = TrainConfig(**{**TINY, "epochs": 1})
    first = train_zoo_model(tmp_path, "tiny_vgg1", _arch(bundle), bundle, cfg, command="c1",
                            progress=False, log_epochs=False)
    card = json.loads((tmp_path / "zoo" / "tiny_vgg1" / "card.json").read_text())
    for key in ("arch", "split_fingerprint", "val_accuracy", "test_accuracy", "params",
                "train_seconds", "command", "checkpoint_sha256"):
        assert key in card, key
    assert card["command"] == "c1" and card["split_fingerprint"] == bundle.splits.fingerprint
    again = train_zoo_model(tmp_path, "tiny_vgg1", _arch(bundle), bundle, cfg, command="c2",
                            progress=False, log_epochs=False)
    assert again.status == "skipped" and again.card == first.card
    with pytest.raises(ValueError, match="other settings.*delete"):
        train_zoo_model(tmp_path, "tiny_vgg1", _arch(bundle), bundle,
                        TrainConfig(**{**TINY, "epochs": 2}), command="c3", progress=False)


def test_bad_config_names_the_field():
    with pytest.raises(ValueError, match="epochs=0"):
        TrainConfig(epochs=0)
    with pytest.raises(ValueError, match="optimizer='rmsprop'"):
        TrainConfig(optimizer="rmsprop")


def test_ladder_violations_by_hand():
    assert ladder_violations(["a", "b", "c"], [0.80, 0.85, 0.90]) == []
    bad = ladder_violations(["a", "b", "c"], [0.80, 0.90, 0.85])
    assert len(bad) == 1 and bad[0].startswith("c (85.00%)") and "b (90.00%)" in bad[0]
    assert len(ladder_violations(["a", "b"], [0.8, 0.8])) == 1   # equal is not more accurate


def test_train_zoo_script_end_to_end(tmp_path, fake_fmnist_dir, capsys):
    argv = ["--run", str(tmp_path / "run"), "--preset", "smoke", "--models", "tiny_vgg1",
            "tiny_vgg2", "--data-dir", str(fake_fmnist_dir), "--no-download", "--no-progress",
            "--threads", "1"]
    assert train_zoo_main(argv) == 0
    out = capsys.readouterr().out
    rows = read_csv(tmp_path / "run" / "results" / "train_zoo.csv")
    assert [r["model"] for r in rows] == ["tiny_vgg1", "tiny_vgg2"]
    assert all(r["status"] == "trained" for r in rows)
    assert "ladder" in out
    assert train_zoo_main(argv) == 0
    rows = read_csv(tmp_path / "run" / "results" / "train_zoo.csv")
    assert all(r["status"] == "skipped" for r in rows)
    assert train_zoo_main(argv[:-2] + ["--models", "no_such_model"]) == 2
    assert "unknown models" in capsys.readouterr().err


def test_val_fraction_is_fixed_by_the_first_call_and_a_change_is_refused(tmp_path,
                                                                           fake_fmnist_dir, capsys):
    """--val-fraction 0.25 of the fake 400-image pool holds out 100 val images and trains on
    300; a later call without the flag keeps it, another value is refused, 0 is refused."""
    run = tmp_path / "run"
    argv = ["--run", str(run), "--preset", "smoke", "--models", "tiny_vgg1", "--data-dir",
            str(fake_fmnist_dir), "--no-download", "--no-progress", "--threads", "1",
            "--limit-train", "1000", "--limit-eval", "1000"]
    assert train_zoo_main(argv + ["--val-fraction", "0.25"]) == 0
    assert read_json(run / "config.json")["val_fraction"] == 0.25
    splits = read_json(next((run / "splits").glob("*.json")))
    assert (len(splits["train"]), len(splits["val"])) == (300, 100)
    assert train_zoo_main(argv) == 0                            # keeps the run's 0.25
    assert read_json(run / "config.json")["val_fraction"] == 0.25
    capsys.readouterr()
    assert train_zoo_main(argv + ["--val-fraction", "0.1"]) == 2
    assert "val_fraction: 0.25 -> 0.1" in capsys.readouterr().err
    assert train_zoo_main(argv[:1] + [str(tmp_path / "new")] + argv[2:]
                          + ["--val-fraction", "0"]) == 2
    assert "(0, 0.5]" in capsys.readouterr().err


def test_seed_is_fixed_by_the_first_call_and_a_change_is_refused(tmp_path, fake_fmnist_dir,
                                                                  capsys):
    """train-zoo --seed 2 splits and trains with seed 2; a later call without --seed keeps the
    run's seed (the model is skipped, not refused), another seed is refused with the fix."""
    run = tmp_path / "run"
    argv = ["--run", str(run), "--preset", "smoke", "--models", "tiny_vgg1", "--data-dir",
            str(fake_fmnist_dir), "--no-download", "--no-progress", "--threads", "1"]
    assert train_zoo_main(argv + ["--seed", "2"]) == 0
    assert read_json(run / "config.json")["seed"] == 2
    assert read_json(run / "zoo" / "tiny_vgg1" / "card.json")["train_config"]["seed"] == 2
    assert train_zoo_main(argv) == 0
    assert [r["status"] for r in read_csv(run / "results" / "train_zoo.csv")] == ["skipped"]
    capsys.readouterr()
    assert train_zoo_main(argv + ["--seed", "0"]) == 2
    assert "seed: 2 -> 0" in capsys.readouterr().err


def test_bf16_autocast_step_lowers_the_loss_and_keeps_float32_weights(bundle):
    from zoo.train import autocast_context
    from zoo.vgg import VGG
    torch.manual_seed(0)
    model = VGG(_arch(bundle)).eval()
    x = normalize(bundle.train.images[:32], bundle.info)
    y = bundle.train.labels[:32]
    opt = make_optimizer(model, TrainConfig(**{**TINY, "lr": 1e-3, "amp": "bf16"}))
    with autocast_context(torch.device("cpu"), "bf16"):
        logits = model(x)
        before = F.cross_entropy(logits, y)
    assert logits.dtype == torch.bfloat16          # the forward really ran in bfloat16
    before.backward()
    opt.step()
    assert all(p.dtype == torch.float32 for p in model.parameters())
    with torch.no_grad():
        after = F.cross_entropy(model(x), y)
    assert after.item() < before.item()


def test_amp_is_part_of_what_is_trained():
    from zoo.train import identity_diffs
    with pytest.raises(ValueError, match="amp='fp16'"):
        TrainConfig(amp="fp16")
    off, bf16 = TrainConfig(**TINY), TrainConfig(**{**TINY, "amp": "bf16"})
    assert off.identity()["amp"] == "off" and bf16.identity()["amp"] == "bf16"
    old_card = {k: v for k, v in off.to_dict().items() if k != "amp"}  # written before amp
    assert identity_diffs(old_card, off) == []
    assert identity_diffs(old_card, bf16) == ["amp: 'off' -> 'bf16'"]
    assert identity_diffs(bf16.identity(), off) == ["amp: 'bf16' -> 'off'"]
    # device, threads and channels_last may change between a cut run and its resumption
    assert identity_diffs({**bf16.to_dict(), "threads": 7, "device": "cuda"}, bf16) == []


def test_bf16_model_trains_end_to_end_and_its_card_says_so(tmp_path, bundle):
    cfg = TrainConfig(**{**TINY, "epochs": 1, "amp": "bf16"})
    res = train_zoo_model(tmp_path, "tiny_vgg1", _arch(bundle), bundle, cfg, command="c",
                          progress=False, log_epochs=False)
    assert res.card["train_config"]["amp"] == "bf16"
    with pytest.raises(ValueError, match="amp: 'bf16' -> 'off'"):
        train_zoo_model(tmp_path, "tiny_vgg1", _arch(bundle), bundle,
                        TrainConfig(**{**TINY, "epochs": 1}), command="c", progress=False)


def test_torch_files_that_cannot_be_used_are_refused_with_the_fix(tmp_path, bundle):
    from zoo.checkpoint import load_model, load_torch_file
    from zoo.train import STATE_FORMAT, _load_state
    cfg = TrainConfig(**{**TINY, "epochs": 1})
    ckpt = tmp_path / "zoo" / "tiny_vgg1" / "checkpoint.pt"
    train_zoo_model(tmp_path, "tiny_vgg1", _arch(bundle), bundle, cfg, command="c",
                    progress=False, log_epochs=False)
    data = ckpt.read_bytes()
    ckpt.write_bytes(data[: len(data) // 2])                  # cut short, as by a full disk
    with pytest.raises(ValueError, match="checkpoint .*cannot be read.*delete it and re-run"):
        load_model(ckpt)
    state = tmp_path / "state.pt"
    torch.save({"format": "something-else/1"}, state)
    with pytest.raises(ValueError, match=f"not a training state file \\(format 'something-else/1', "
                                         f"expected '{STATE_FORMAT}'\\); delete it"):
        _load_state(state, cfg)
    torch.save([1, 2], state)
    with pytest.raises(ValueError, match="format 'list'"):
        load_torch_file(state, STATE_FORMAT, what="x", fix="y")


def test_bench_train_measures_both_precisions(capsys):
    from scripts.bench_train import main as bench_main
    assert bench_main(["--models", "tiny_vgg1", "tiny_vgg2", "--width", "0.25", "--batch", "16",
                       "--steps", "1", "--repeats", "1", "--no-progress"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].split() == ["model", "width", "fp32", "img/s", "bf16", "img/s", "bf16/fp32"]
    for line, name in zip(lines[1:], ["tiny_vgg1", "tiny_vgg2"]):
        model, width, fp32, bf16, ratio = line.split()
        assert model == name and float(width) == 0.25 and float(fp32) > 0 and float(bf16) > 0
        assert float(ratio.rstrip("x")) == pytest.approx(float(bf16) / float(fp32), rel=0.02,
                                                         abs=0.01)
    assert bench_main(["--models", "nope", "--no-progress"]) == 2
    assert "unknown model 'nope'" in capsys.readouterr().err


def test_keep_best_restores_the_lowest_val_loss_and_keep_last_the_final_epoch(bundle):
    from zoo.train import evaluate
    from zoo.vgg import VGG
    for keep in ("best", "last"):
        torch.manual_seed(0)
        model = VGG(_arch(bundle))
        cfg = TrainConfig(**{**TINY, "epochs": 4, "lr": 2e-2, "keep": keep})
        res = fit(model, bundle.train, bundle.val, bundle.info, cfg, progress=False)
        losses = [r["val_loss"] for r in res.history]
        expect = losses.index(min(losses)) + 1 if keep == "best" else 4
        assert res.best_epoch == expect and res.epochs_run == 4
        assert res.best_val_loss == pytest.approx(losses[expect - 1])
        # the returned weights are that epoch's: evaluating them again gives its val loss
        again = evaluate(model, bundle.val, bundle.info, 512, torch.device("cpu"))
        assert again["loss"] == pytest.approx(losses[expect - 1], rel=1e-4)
    with pytest.raises(ValueError, match="keep='first'"):
        TrainConfig(keep="first")


def test_full_preset_runs_tiny_vgg5_to_the_end_and_leaves_the_others_as_trained():
    from zoo.presets import get_preset
    from zoo.train import identity_diffs
    full = get_preset("full")
    five = full.train_config(full.recipe("tiny_vgg5"))
    assert (five.patience, five.keep, five.epochs) == (None, "last", 40)
    big = full.train_config(full.recipe("vgg19_small"))
    assert (big.patience, big.keep, big.lr) == (None, "last", 5e-4)
    for deep in (five, big):        # the two that overfit get real decay and random erasing
        assert (deep.weight_decay, deep.erase) == (0.05, 0.5)
    four = full.train_config(full.recipe("tiny_vgg4"))
    assert (four.patience, four.keep, four.epochs) == (8, "best", 30)
    # a card written before `keep` existed still matches the configs that keep the best epoch
    old_card = {k: v for k, v in four.identity().items() if k != "keep"}
    assert identity_diffs(old_card, four) == []
    assert identity_diffs(old_card, five) == [
        "epochs: 30 -> 40", "erase: 0.0 -> 0.5", "keep: 'best' -> 'last'", "patience: 8 -> None",
        "weight_decay: 0.0005 -> 0.05"]
    assert (four.weight_decay, four.erase) == (5e-4, 0.0)


def test_train_zoo_table_and_ladder_cover_models_from_earlier_calls(tmp_path, fake_fmnist_dir,
                                                                     capsys):
    base = ["--run", str(tmp_path / "run"), "--preset", "smoke", "--data-dir",
            str(fake_fmnist_dir), "--no-download", "--no-progress", "--threads", "1"]
    assert train_zoo_main([*base, "--models", "tiny_vgg2"]) == 0
    capsys.readouterr()
    assert train_zoo_main([*base, "--models", "tiny_vgg1"]) == 0
    out = capsys.readouterr().out
    rows = read_csv(tmp_path / "run" / "results" / "train_zoo.csv")
    # the preset's order (cheapest first), whatever order the calls came in
    assert [(r["model"], r["status"]) for r in rows] == [("tiny_vgg1", "trained"),
                                                       ("tiny_vgg2", "earlier")]
    assert [float(r["width"]) for r in rows] == [0.25, 0.25]        # the smoke preset's width
    v1, v2 = (float(r["val_accuracy"]) for r in rows)
    assert ("ladder holds on val" in out) == (v2 > v1)               # two models compared


def test_random_erase_fills_one_rectangle_per_chosen_image():
    from zoo.train import random_erase
    x = torch.full((400, 1, 28, 28), 7, dtype=torch.uint8)
    assert torch.equal(random_erase(x, torch.Generator().manual_seed(0), 0.0), x)
    out = random_erase(x, torch.Generator().manual_seed(0), 1.0)
    assert torch.equal(x, torch.full_like(x, 7))          # the input is left as it is
    changed = out[:, 0] != 7                               # (B, H, W)
    assert bool(changed.flatten(1).any(1).all())           # p=1: every image is erased
    for img in changed[:50]:
        rows = img.any(1).nonzero().flatten()
        cols = img.any(0).nonzero().flatten()
        h = int(rows.max() - rows.min()) + 1
        w = int(cols.max() - cols.min()) + 1
        # everything changed lies in one box no larger than 40% of the image (+ rounding),
        # and almost all of that box is changed (noise equals 7 with probability 1/256)
        assert h * w <= 0.4 * 28 * 28 + 28 + 1
        assert int(img.sum()) >= 0.9 * h * w
    # the same generator state draws the same rectangles and noise
    again = random_erase(x, torch.Generator().manual_seed(0), 1.0)
    assert torch.equal(out, again)


def test_random_erase_rate_follows_p():
    from zoo.train import random_erase
    x = torch.zeros((4000, 1, 16, 16), dtype=torch.uint8)
    out = random_erase(x, torch.Generator().manual_seed(1), 0.25)
    rate = float((out != 0).flatten(1).any(1).float().mean())
    assert abs(rate - 0.25) < 0.03          # 4000 draws: sd of the rate is about 0.007


def test_erase_is_validated_and_part_of_what_is_trained():
    from zoo.train import identity_diffs
    with pytest.raises(ValueError, match="erase=1.5"):
        TrainConfig(erase=1.5)
    old_card = {k: v for k, v in TrainConfig().identity().items() if k != "erase"}
    assert identity_diffs(old_card, TrainConfig()) == []      # older cards read erase as 0
    assert identity_diffs(old_card, TrainConfig(erase=0.5)) == ["erase: 0.0 -> 0.5"]


def test_fused_optimizers_match_the_plain_update(bundle):
    """make_optimizer's fused kernels give the foreach update up to float rounding."""
    import copy

    from zoo.vgg import VGG
    x = normalize(bundle.train.images[:16], bundle.info)
    y = bundle.train.labels[:16]
    for name in ("adam", "sgd"):
        torch.manual_seed(0)
        a = VGG(_arch(bundle)).eval()            # eval: no dropout, so both see the same net
        b, start = copy.deepcopy(a), copy.deepcopy(a)
        cfg = TrainConfig(**{**TINY, "optimizer": name, "lr": 1e-2, "weight_decay": 1e-2})
        fused = make_optimizer(a, cfg)
        assert all(g.get("fused") for g in fused.param_groups)
        groups = [{"params": g["params"], "weight_decay": g["weight_decay"]}
                  for g in make_optimizer(b, cfg).param_groups]
        plain = (torch.optim.AdamW(groups, lr=1e-2, foreach=True) if name == "adam" else
                 torch.optim.SGD(groups, lr=1e-2, momentum=0.9, foreach=True))
        for _ in range(3):
            for model, opt in ((a, fused), (b, plain)):
                opt.zero_grad()
                F.cross_entropy(model(x), y).backward()
                opt.step()
        for pa, pb in zip(a.parameters(), b.parameters()):
            assert torch.allclose(pa, pb, atol=1e-5), name
        moved = max(float((pa - p0).abs().max()) for pa, p0 in zip(a.parameters(),
                                                                  start.parameters()))
        assert moved > 1e-3, name          # the steps did change the weights


def test_a_run_too_short_for_one_cycle_trains_with_a_fallback_schedule(tmp_path, capsys):
    """`train-zoo --models tiny_vgg1 --epochs 1 --limit-train 512` (quick preset: one-cycle,
    batch 128) is 4 steps: torch's OneCycleLR divided by zero there; the run now trains on a
    cosine schedule, says so once, and writes its checkpoint."""
    from tests.conftest import make_fake_idx_dataset

    data = make_fake_idx_dataset(tmp_path / "data", n_train=600, n_test=40)
    argv = ["--run", str(tmp_path / "run"), "--models", "tiny_vgg1", "--epochs", "1",
            "--limit-train", "512", "--limit-eval", "40", "--width", "0.25",
            "--data-dir", str(data), "--no-download", "--no-progress", "--threads", "1"]
    assert train_zoo_main(argv) == 0
    out = capsys.readouterr().out
    assert out.count("one-cycle needs at least") == 1, out
    rows = read_csv(tmp_path / "run" / "results" / "train_zoo.csv")
    assert [(r["model"], r["status"]) for r in rows] == [("tiny_vgg1", "trained")]
    assert (tmp_path / "run" / "zoo" / "tiny_vgg1" / "checkpoint.pt").exists()

    # every short length gets a schedule that steps through the run; long ones keep one-cycle
    from zoo.train import ONECYCLE_MIN_STEPS, make_scheduler, schedule_fallback
    for total in range(1, ONECYCLE_MIN_STEPS + 2):
        cfg = TrainConfig(epochs=1, batch_size=8, schedule="onecycle", lr=1e-2)
        opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(2))], lr=1e-2)
        sched = make_scheduler(opt, cfg, total)
        for _ in range(total):
            opt.step()
            sched.step()
        short = total < ONECYCLE_MIN_STEPS
        assert (schedule_fallback(cfg, total) is not None) == short
        assert isinstance(sched, torch.optim.lr_scheduler.OneCycleLR) != short


def test_train_zoo_trains_a_torchvision_classifier(tmp_path, fake_fmnist_dir):
    """`train-zoo --models mobilenet_v3_small`: built by name with the data's channels, trained
    by the same loop and recipes, saved as a plain checkpoint that rebuilds to the same outputs,
    and resumed as skipped; a ResNet at 28 px gets the small-input stem."""
    argv = ["--run", str(tmp_path / "run"), "--preset", "smoke", "--models",
            "mobilenet_v3_small", "--data-dir", str(fake_fmnist_dir), "--no-download",
            "--no-progress", "--threads", "1"]
    assert train_zoo_main(argv) == 0
    rows = read_csv(tmp_path / "run" / "results" / "train_zoo.csv")
    assert [(r["model"], r["status"]) for r in rows] == [("mobilenet_v3_small", "trained")]
    assert int(rows[0]["macs"]) > 0
    ckpt_path = tmp_path / "run" / "zoo" / "mobilenet_v3_small" / "checkpoint.pt"
    model, ckpt = load_model(ckpt_path)
    assert ckpt["arch"]["kind"] == "torchvision" and ckpt["arch"]["in_channels"] == 1
    x = torch.randint(0, 256, (4, 1, 28, 28), dtype=torch.uint8)
    again, _ = load_model(ckpt_path)
    info = prepare_data(tmp_path / "run", data_dir=str(fake_fmnist_dir), download=False).info
    with torch.inference_mode():
        assert torch.equal(model(normalize(x, info)), again(normalize(x, info)))
    assert train_zoo_main(argv) == 0
    assert read_csv(tmp_path / "run" / "results" / "train_zoo.csv")[0]["status"] == "skipped"
    r18 = model_arch("resnet18", num_classes=10, in_channels=1, input_size=28)
    assert r18.small_input and r18.to_dict()["in_channels"] == 1
    assert not model_arch("resnet18", num_classes=10, in_channels=3, input_size=224).small_input


# ---- on a GPU the dataset moves to the device once ---------------------------------------------

def test_on_device_moves_images_and_labels_as_a_whole():
    from zoo.data import ImageSet
    from zoo.train import data_stays_on, on_device
    s = ImageSet(torch.zeros((6, 1, 4, 4), dtype=torch.uint8), torch.arange(6))
    assert on_device(s, "cpu") is s                    # already there: no copy
    m = on_device(s, "meta")                           # a device that holds no data
    assert m.images.device.type == m.labels.device.type == "meta"
    assert (m.images.shape, m.images.dtype, m.labels.dtype) == (s.images.shape, torch.uint8,
                                                                 torch.int64)
    assert m.ids is s.ids and on_device(m, "meta") is m
    assert data_stays_on(torch.device("cuda")) and not data_stays_on(torch.device("cpu"))


def _count_to_calls(monkeypatch, bundle, batches: int, *, gpu_path: bool) -> int:
    """``Tensor.to`` calls during a 2-epoch fit with ``batches`` batches per epoch (augment and
    erase on); ``gpu_path``: the code path GPUs take, run here on the CPU."""
    import zoo.train
    from zoo.vgg import VGG
    monkeypatch.setattr(zoo.train, "data_stays_on", lambda device: gpu_path)
    calls = []
    real = torch.Tensor.to

    def to(self, *args, **kwargs):
        calls.append(self.dtype)
        return real(self, *args, **kwargs)
    torch.manual_seed(0)
    model = VGG(_arch(bundle))
    cfg = TrainConfig(**{**TINY, "epochs": 2, "batch_size": 8, "augment": True, "erase": 0.5,
                         "max_batches_per_epoch": batches})
    with monkeypatch.context() as m:
        m.setattr(torch.Tensor, "to", to)
        res = fit(model, bundle.train, bundle.val, bundle.info, cfg, progress=False)
    assert len(res.history) == 2 and all(math.isfinite(r["train_loss"]) for r in res.history)
    return len(calls)


def test_gpu_path_copies_the_dataset_once_per_fit_not_per_batch(monkeypatch, bundle):
    # GPU path: the same number of copies for 2 and 8 batches per epoch (none per batch)
    assert _count_to_calls(monkeypatch, bundle, 2, gpu_path=True) == \
        _count_to_calls(monkeypatch, bundle, 8, gpu_path=True)
    # the CPU path sends every batch (images and labels) to the device: the count can differ
    cpu = [_count_to_calls(monkeypatch, bundle, n, gpu_path=False) for n in (2, 8)]
    assert cpu[1] - cpu[0] >= 2 * 2 * (8 - 2)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_fit_on_cuda_sends_no_batch_from_the_host(bundle, monkeypatch):
    from zoo.vgg import VGG
    host_to_gpu = []
    real = torch.Tensor.to

    def to(self, *args, **kwargs):
        out = real(self, *args, **kwargs)
        if self.device.type == "cpu" and out.device.type == "cuda":
            host_to_gpu.append(tuple(self.shape))
        return out
    counts = []
    for batches in (2, 6):
        host_to_gpu.clear()
        torch.manual_seed(0)
        cfg = TrainConfig(**{**TINY, "epochs": 2, "batch_size": 8, "augment": True,
                             "erase": 0.5, "device": "cuda", "max_batches_per_epoch": batches})
        with monkeypatch.context() as m:
            m.setattr(torch.Tensor, "to", to)
            fit(VGG(_arch(bundle)), bundle.train, bundle.val, bundle.info, cfg, progress=False)
        counts.append(len(host_to_gpu))
        assert tuple(bundle.train.images.shape) in host_to_gpu      # the whole set, once
        assert host_to_gpu.count(tuple(bundle.train.images.shape)) == 1
    assert counts[0] == counts[1]
