"""Bad input refused where it enters the library API (router.api_inputs): layout, size and
channels against what the classifier was fitted on, class counts, one value rule for numpy
and torch. Every expected value is worked out by hand."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from torch import nn

from router.api import ImageData, Member, build_table, fit_router, load_images, routed_classifier
from router.api_inputs import to_uint8
from router.artifact import RoutedClassifier
from router.base import RouterError
from zoo.preprocess import Preprocess


# ---- one value rule for numpy and torch --------------------------------------------------

def test_floats_in_unit_range_scale_alike_for_numpy_and_torch():
    a = np.array([[0.0, 0.2, 1.0]], dtype=np.float32)           # 0.2 * 255 = 51
    assert to_uint8(a).tolist() == [[0, 51, 255]]
    assert torch.equal(to_uint8(a), to_uint8(torch.from_numpy(a)))
    assert to_uint8(np.array([0, 7, 255], dtype=np.int64)).tolist() == [0, 7, 255]
    for bad, match in [(np.array([0.0, 12.0, 200.0]), "0-255 pixels"),
                       (np.array([-1.5, 0.3]), "normalis"),
                       (np.array([0.0, np.nan]), "NaN"),
                       (np.array([0, 300]), "0..255"),
                       (np.array([True, False]), "uint8")]:
        for x in (bad, torch.from_numpy(bad)):                  # refused alike
            with pytest.raises(RouterError, match=match):
                to_uint8(x)


def test_load_images_treats_numpy_and_torch_floats_alike():
    rng = np.random.default_rng(0)
    x = rng.random((4, 1, 6, 6)).astype(np.float32)
    y = np.array([0, 1, 0, 1])
    from_np = load_images((x, y)).images
    from_torch = load_images((torch.from_numpy(x), y)).images    # used to be refused
    assert torch.equal(from_np, from_torch)
    assert from_np[0, 0, 0, 0].item() == round(float(x[0, 0, 0, 0]) * 255)
    with pytest.raises(RouterError, match=r"\[0, 1\]"):            # used to be clamped silently
        load_images((x * 255.0, y))
    with pytest.raises(RouterError, match=r"\[0, 1\]"):
        load_images((torch.from_numpy(x) * 255.0, y))


# ---- layout ------------------------------------------------------------------------------

def test_load_images_turns_channel_last_batches_channel_first():
    rng = np.random.default_rng(1)
    y = np.arange(5) % 2
    for shape in [(5, 28, 28, 1), (5, 32, 32, 3)]:
        nhwc = rng.integers(0, 256, shape, dtype=np.uint8)
        for x in (nhwc, torch.from_numpy(nhwc)):
            d = load_images((x, y))
            assert d.shape == (shape[3], shape[1], shape[2])
            assert torch.equal(d.images, torch.from_numpy(nhwc).permute(0, 3, 1, 2))
    grey = rng.integers(0, 256, (5, 9, 9), dtype=np.uint8)        # (N, H, W): one channel
    assert load_images((grey, y)).shape == (1, 9, 9)
    with pytest.raises(RouterError, match="channel axis"):
        load_images((np.zeros((5, 6, 6, 6), np.uint8), y))
    with pytest.raises(RouterError, match="RGBA"):
        load_images((np.zeros((5, 8, 8, 4), np.uint8), y))
    # one image per item (a dataset): HWC arrays and CHW tensors, same rule
    items = [(nhwc[0], 0), (torch.from_numpy(nhwc[1]).permute(2, 0, 1), 1)]
    d = load_images(items)
    assert d.shape == (3, 32, 32)
    assert torch.equal(d.images[0], torch.from_numpy(nhwc[0]).permute(2, 0, 1))
    with pytest.raises(RouterError, match="channel-last"):
        ImageData(torch.zeros(2, 8, 8, 3, dtype=torch.uint8), np.zeros(2), ["a"])


def flat_member(name: str, shape: tuple[int, int, int], classes: int = 2, seed: int = 0) -> Member:
    torch.manual_seed(seed)
    c = shape[0]
    return Member(name, nn.Sequential(nn.Flatten(), nn.Linear(int(np.prod(shape)), classes)),
                  Preprocess([0.5] * c, [0.5] * c))


def fitted_on(shape: tuple[int, int, int], n: int = 40):
    x = torch.randint(0, 256, (n, *shape), dtype=torch.uint8,
                      generator=torch.Generator().manual_seed(0))
    data = ImageData(x, np.arange(n) % 2, ["a", "b"])
    members = [flat_member("small", shape, seed=0), flat_member("big", shape, seed=1)]
    fitted = fit_router("cascade", build_table(members, data, "val"), np.array([1.0, 2.0]), 0.1,
                        selection="estimate")
    return data, members, fitted


def test_classifier_refuses_layout_size_and_channels_with_the_fix(tmp_path):
    data, members, fitted = fitted_on((3, 32, 32))
    clf = routed_classifier(fitted, members, data=data)
    assert clf.meta["input_shape"] == [3, 32, 32] and clf.meta["num_classes"] == 2
    x = data.images[:4]
    assert len(clf(x).preds) == 4
    cases = [(x.permute(0, 2, 3, 1), ["channel-last", "permute(0, 3, 1, 2)", "(N, 3, 32, 32)"]),
             (x.permute(0, 2, 3, 1).numpy(), ["channel-last", "transpose(0, 3, 1, 2)"]),
             (x[..., :16, :16], ["16x16", "32x32", "size=32"]),
             (x[:, :1], ["1 channel", "3-channel", "expand(-1, 3, -1, -1)"]),
             (x.float() / 255, ["uint8", "load_images"])]
    for bad, words in cases:
        with pytest.raises(RouterError) as e:
            clf(bad)
        assert all(w in str(e.value) for w in words), str(e.value)
        assert "mat1" not in str(e.value)
    # the recorded shape travels with the artifact and is checked after loading
    mods = {m.name: m.model for m in members}
    path = clf.save(tmp_path / "r.pt")
    again = RoutedClassifier.load(path, model_provider=lambda name, ckpt: (mods[name], None))
    assert again.meta["input_shape"] == [3, 32, 32]
    with pytest.raises(RouterError, match="size=32"):
        again(x[..., :16, :16])
    assert np.array_equal(again(x).preds, clf(x).preds)


def test_routed_classifier_needs_the_shape_and_refuses_other_class_counts():
    data, members, fitted = fitted_on((1, 8, 8))
    with pytest.raises(RouterError, match="data=val"):
        routed_classifier(fitted, members)
    with pytest.raises(RouterError, match=r"input_shape= gives images of shape \(1, 9, 9\) "
                                          r"but data= gives \(1, 8, 8\)"):
        routed_classifier(fitted, members, data=data, input_shape=(1, 9, 9))
    assert routed_classifier(fitted, members, input_shape=(1, 8, 8)).meta["num_classes"] == 2
    three = [members[0], flat_member("big", (1, 8, 8), classes=3)]
    with pytest.raises(RouterError, match="'big' gives 3 outputs but the router was fitted on 2"):
        routed_classifier(fitted, three, data=data)
    # every fit records its class count; one without (an older fit) is checked member by member
    unknown = dataclasses.replace(fitted, details={})
    with pytest.raises(RouterError, match="'big' gives 3 outputs but member 'small' gives 2"):
        routed_classifier(unknown, three, input_shape=(1, 8, 8))     # no class count known
    wrong_size = [members[0], flat_member("big", (1, 6, 6))]         # built for 6x6 images
    with pytest.raises(RouterError, match="'big' cannot classify a 1x8x8 image"):
        routed_classifier(fitted, wrong_size, data=data)


def test_preprocess_refuses_channel_counts_it_was_not_built_for():
    rgb = torch.tensor([[[[30]], [[60]], [[90]]]], dtype=torch.uint8)   # (1, 3, 1, 1)
    grey = Preprocess([0.0], [1.0], channels=1)
    assert grey(rgb).flatten().tolist() == pytest.approx([60 / 255])    # RGB -> plain mean
    with pytest.raises(ValueError, match="got 4 channels"):
        grey(torch.zeros(1, 4, 2, 2, dtype=torch.uint8))
    with pytest.raises(ValueError, match="got 2 channels"):
        Preprocess([0.0] * 3, [1.0] * 3, channels=3)(torch.zeros(1, 2, 2, 2, dtype=torch.uint8))
    assert Preprocess([0.0] * 3, [1.0] * 3, channels=3)(rgb[:, :1]).shape == (1, 3, 1, 1)
