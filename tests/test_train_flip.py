"""TrainConfig.crop: ``augment`` with ``crop=False`` flips images and does nothing else."""
from __future__ import annotations

import torch

from zoo.data import prepare_data
from zoo.train import TrainConfig, augment_batch, fit, identity_diffs


def test_flip_only_mirrors_whole_images_about_half_the_time():
    gen = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (2000, 1, 8, 8), generator=gen, dtype=torch.uint8)
    out = augment_batch(x, torch.Generator().manual_seed(1), crop=False)
    assert out.shape == x.shape and out.dtype == torch.uint8
    same = (out == x).flatten(1).all(1)
    mirrored = (out == x.flip(-1)).flatten(1).all(1)
    assert bool((same | mirrored).all())              # no shift, no padding: a flip or nothing
    assert abs(float(mirrored.float().mean()) - 0.5) < 0.05   # 2000 draws: sd about 0.011
    # neither crop nor flip: the batch as it was
    assert augment_batch(x, torch.Generator().manual_seed(1), crop=False, flip=False) is x


def test_crop_default_is_the_old_crop_and_flip():
    x = torch.randint(0, 256, (64, 1, 8, 8), generator=torch.Generator().manual_seed(2),
                      dtype=torch.uint8)
    a = augment_batch(x, torch.Generator().manual_seed(3))
    b = augment_batch(x, torch.Generator().manual_seed(3), crop=True)
    assert torch.equal(a, b)
    assert TrainConfig().crop is True                 # existing presets train as before


def test_crop_is_part_of_what_is_trained_and_older_cards_read_it_as_true():
    old_card = {k: v for k, v in TrainConfig().identity().items() if k != "crop"}
    assert identity_diffs(old_card, TrainConfig()) == []
    assert identity_diffs(old_card, TrainConfig(augment=True, crop=False)) == \
        ["augment: False -> True", "crop: True -> False"]


def test_fit_trains_with_flip_only(tmp_path, fake_fmnist_dir):
    from zoo.registry import create_model
    bundle = prepare_data(tmp_path / "run", "fashion-mnist", fake_fmnist_dir, seed=0,
                          limit_train=64, limit_eval=32, download=False)
    info = bundle.info
    torch.manual_seed(0)
    model = create_model("tiny_vgg1", num_classes=info.num_classes,
                         in_channels=info.in_channels, input_size=info.input_size, width=0.25)
    cfg = TrainConfig(epochs=1, batch_size=16, lr=3e-3, augment=True, crop=False)
    res = fit(model, bundle.train, bundle.val, info, cfg, progress=False)
    assert res.epochs_run == 1 and res.history[0]["train_loss"] > 0
