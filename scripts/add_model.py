"""`add-model`: a trained torchvision classifier of your own joins a run as a zoo member.

Example: ``add-model --run runs/mine --arch resnet50 --weights resnet50_ft.pt --preprocess
imagenet``. The weights are a state dict for the run's number of classes (``torch.save(
model.state_dict(), path)``); nothing is downloaded. Then ``profile-zoo``, ``evaluate-routers``
and ``report`` treat it like any other member, through its own preprocessing.
"""
from __future__ import annotations

import argparse
import sys

from zoo.add_model import PREPROCESS_CHOICES, AddModelConfig, add_model


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="add-model", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", required=True, help="run directory (made by train-zoo)")
    p.add_argument("--arch", required=True,
                   help="torchvision classifier name, e.g. resnet18, resnet50, mobilenet_v3_small")
    p.add_argument("--weights", default=None,
                   help="state dict file of the trained model (omit: random weights, for tests)")
    p.add_argument("--name", default=None, help="member name in the run (default: --arch)")
    p.add_argument("--preprocess", choices=PREPROCESS_CHOICES, default="imagenet",
                   help="imagenet: Resize 256, CenterCrop 224, ImageNet mean/std, grey repeated "
                        "to 3 channels (pretrained torchvision models); dataset: the run's own "
                        "mean/std at its own size")
    p.add_argument("--resize", type=int, default=None, help="override the resize (shorter side)")
    p.add_argument("--crop", type=int, default=None, help="override the centre crop")
    p.add_argument("--in-channels", type=int, default=None,
                   help="channels of the model's first convolution (default 3 for imagenet, "
                        "the data's for dataset)")
    p.add_argument("--small-input", action="store_true",
                   help="the model was built with a small-input ResNet stem (3x3 conv, no pool)")
    p.add_argument("--force", action="store_true", help="replace a member of the same name")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    add_model(a.run, AddModelConfig(arch=a.arch, weights=a.weights, name=a.name,
                                    preprocess=a.preprocess, resize=a.resize, crop=a.crop,
                                    in_channels=a.in_channels, small_input=a.small_input,
                                    force=a.force))
    return 0


if __name__ == "__main__":
    sys.exit(main())
