"""The registry's models: forward passes at several input sizes, hand-worked sizes and counts."""
from __future__ import annotations

import pytest
import torch

from zoo import create_model, list_models, model_arch
from zoo.vgg import VGG, feature_shape


def _width(name: str) -> float:
    return 0.125 if name.startswith("vgg19") else 1.0  # keep the big ones small and fast


def _sizes(name: str) -> list[int]:
    # torchvision's vgg19 has five floor-mode pools: 32 is its smallest input.
    return [32, 40] if name == "vgg19" else [16, 28, 32]


CASES = [(n, s, c) for n in list_models() if n.startswith(("tiny_vgg", "vgg19"))
         for s in _sizes(n) for c in (1, 3)]


@pytest.mark.parametrize("name,size,channels", CASES)
def test_forward_every_model(name: str, size: int, channels: int) -> None:
    model = create_model(name, num_classes=7, in_channels=channels, input_size=size,
                         width=_width(name)).eval()
    with torch.no_grad():
        out = model(torch.randn(2, channels, size, size))
    assert out.shape == (2, 7)
    assert torch.isfinite(out).all()


def test_registry_names() -> None:
    names = list_models()
    for n in [f"tiny_vgg{d}" for d in range(1, 6)] + ["vgg19", "vgg19_small"]:
        assert n in names
    assert list_models("tiny_vgg*") == [f"tiny_vgg{d}" for d in range(1, 6)]


def test_vgg19_too_small_input_is_refused() -> None:
    # 28 -> 14 -> 7 -> 3 -> 1 -> 0: the fifth pool leaves no pixels.
    with pytest.raises(ValueError, match="too small"):
        create_model("vgg19", num_classes=10, in_channels=1, input_size=28, width=0.125)
    # vgg19_small pools with ceil_mode: 28 -> 14 -> 7 -> 4 -> 2 -> 1.
    arch = model_arch("vgg19_small", num_classes=10, in_channels=1, input_size=28, width=0.125)
    assert feature_shape(arch) == (64, 1, 1)


# For 3x32x32 inputs: tiny_vgg1/2 pool once (64 x 16 x 16 = 16384), tiny_vgg3/4 twice
# (128 x 8 x 8 = 8192), tiny_vgg5 three times (256 x 4 x 4 = 4096).
@pytest.mark.parametrize("name,flat", [("tiny_vgg1", 16384), ("tiny_vgg2", 16384),
                                       ("tiny_vgg3", 8192), ("tiny_vgg4", 8192),
                                       ("tiny_vgg5", 4096)])
def test_tiny_flattened_sizes(name: str, flat: int) -> None:
    model = create_model(name, num_classes=10, in_channels=3, input_size=32)
    assert model.flat_features == flat
    assert model.classifier[0].in_features == flat
    with torch.no_grad():
        assert model.avgpool(model.features(torch.zeros(1, 3, 32, 32))).flatten(1).shape[1] == flat


# Parameter counts worked out by hand (3x32x32 input, 10 classes, no BatchNorm).
# conv k->n (3x3, bias): 9*k*n + n.   3->64: 1,792   64->64: 36,928   64->128: 73,856
#   128->128: 147,584   128->256: 295,168   256->256: 590,080
# classifier F-512-512-10: (F*512 + 512) + (512*512 + 512 = 262,656) + (512*10 + 10 = 5,130)
#   F=16384: 8,389,120   F=8192: 4,194,816   F=4096: 2,097,664
# tiny_vgg1: 1,792 + 8,389,120 + 262,656 + 5,130                          = 8,658,698
# tiny_vgg2: tiny_vgg1 + 36,928                                            = 8,695,626
# tiny_vgg3: convs 1,792 + 36,928 + 73,856 + 147,584 = 260,160
#            + 4,194,816 + 262,656 + 5,130                                 = 4,722,762
# tiny_vgg4: convs 1,792 + 2*36,928 + 73,856 + 2*147,584 = 444,672
#            + 4,194,816 + 262,656 + 5,130                                 = 4,907,274
# tiny_vgg5: convs 444,672 + 295,168 + 2*590,080 = 1,920,000
#            + 2,097,664 + 262,656 + 5,130                                 = 4,285,450
@pytest.mark.parametrize("name,params", [("tiny_vgg1", 8_658_698), ("tiny_vgg2", 8_695_626),
                                         ("tiny_vgg3", 4_722_762), ("tiny_vgg4", 4_907_274),
                                         ("tiny_vgg5", 4_285_450)])
def test_tiny_parameter_counts(name: str, params: int) -> None:
    model = create_model(name, num_classes=10, in_channels=3, input_size=32)
    assert sum(p.numel() for p in model.parameters()) == params


# Fashion-MNIST's 1x28x28. tiny_vgg4 pools 28 -> 14 -> 7: F = 128 x 7 x 7 = 6,272.
# tiny_vgg5 pools in ceil mode, 28 -> 14 -> 7 -> 4: F = 256 x 4 x 4 = 4,096 (floor mode
# would give 7 -> 3 and F = 2,304, fewer parameters than tiny_vgg4).
# conv 1->64: 9*1*64 + 64 = 640.
# tiny_vgg4: convs 640 + 2*36,928 + 73,856 + 2*147,584 = 443,520
#            + (6,272*512 + 512 = 3,211,776) + 262,656 + 5,130                = 3,923,082
# tiny_vgg5: convs 443,520 + 295,168 + 2*590,080 = 1,918,848
#            + (4,096*512 + 512 = 2,097,664) + 262,656 + 5,130                = 4,284,298
@pytest.mark.parametrize("name,flat,params", [("tiny_vgg4", 6272, 3_923_082),
                                              ("tiny_vgg5", 4096, 4_284_298)])
def test_tiny_at_28_pixels(name: str, flat: int, params: int) -> None:
    model = create_model(name, num_classes=10, in_channels=1, input_size=28)
    assert model.flat_features == flat
    assert sum(p.numel() for p in model.parameters()) == params
    with torch.no_grad():
        assert model(torch.zeros(2, 1, 28, 28)).shape == (2, 10)


def test_batch_norm_adds_two_parameters_per_channel() -> None:
    # tiny_vgg3 has 64 + 64 + 128 + 128 = 384 conv channels: BN adds 2 * 384 = 768.
    arch = model_arch("tiny_vgg3", num_classes=10, in_channels=3, input_size=32)
    arch.batch_norm = True
    assert sum(p.numel() for p in VGG(arch).parameters()) == 4_722_762 + 768


def test_vgg19_is_torchvision_sized() -> None:
    # torchvision's vgg19 at 1000 classes: 143,667,240 parameters (its documented count).
    with torch.device("meta"):  # count without allocating 575 MB
        model = create_model("vgg19", num_classes=1000, in_channels=3, input_size=224)
    assert sum(p.numel() for p in model.parameters()) == 143_667_240
